//! The Redis store: one server or a cluster, its connections, every command bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::breaker::Breaker;
use super::cluster::{cluster_client, one_slot_per_master, ClusterSlot};
use super::scripts::{evalsha, parse_version, BUMP, CLAIM, FILL, INVALIDATE_KEY, SET_KEY, TAG_VERSION, VERSION_TTL_MS};
use super::{fresh_version, generation_counter_key, generation_key, push_generation_key, tag_key, Lease};
use crate::error::CacheError;
use crate::policy::duration_ms;
use crate::time::now_ms;

/// Where the commands go: one server or a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// `redis://host:port/db`.
    Single(String),
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); the rest are discovered.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis://…` / `rediss://…` is one server; `redis+cluster://[user:pass@]h1:p1,h2:p2` (or
    /// `rediss+cluster://…`) names seed nodes of a cluster.
    pub(crate) fn parse(url: &str) -> RedisTarget {
        for (scheme, node_scheme) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let rest = rest.trim_end_matches('/');
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let nodes = hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{node_scheme}{auth}{h}"));
                return RedisTarget::Cluster(nodes.collect());
            }
        }
        RedisTarget::Single(url.to_owned())
    }
}

/// A connection: a connection manager (one server) or a cluster connection (one multiplexed
/// connection per node, routed by slot). Both are cheap to clone and reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

// One per cache, never moved.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        /// Replaced by a fresh manager when the current one keeps failing: a manager whose
        /// reconnection ended in an error that is not an I/O error never tries again by itself.
        conn: arc_swap::ArcSwap<ConnectionManager>,
    },
    Cluster {
        nodes: Vec<String>,
        /// Made on first use (it needs the cluster to answer), then kept: the cluster client
        /// reconnects to nodes and follows fail-overs by itself.
        slot: Arc<ClusterSlot>,
    },
}

/// Redis through a `ConnectionManager` (one multiplexed connection that reconnects by
/// itself) or a cluster connection, every command bounded by the command timeout.
///
/// Leases: every invalidation of a key moves a generation counter on and records its new value
/// as the key's generation; a read carries the counter, and a fill stores only if the key's
/// generation is not above what its read saw (no invalidation since). On one server the
/// counter is the prefix's ([`generation_counter_key`]), one key a batch of any size reads
/// once; on a cluster, where a script's keys share a slot, each entry's generation is its own.
///
/// Cluster-safe by construction: every script and pipeline touches one slot (an entry, its
/// generation, its lock and its refresh claim share the hash tag `{ns:key}`); multi-key reads
/// (`MGET`) and `UNLINK` are split by slot by the cluster client; `SCAN` runs on every master;
/// pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH` on channels hash-tagged `{prefix}`, so one
/// shard carries them all and `SPUBLISH` counts every subscriber).
pub(crate) struct RedisStore {
    breaker: Breaker,
    pub(super) target: Target,
    /// ms since the Unix epoch of the last replacement of the connection.
    last_rebuild_ms: std::sync::atomic::AtomicU64,
    pub(super) timeout: Duration,
    /// The generation counter's key on one server ([`generation_counter_key`]); `None` on a
    /// cluster (each entry's generation is its own counter).
    generation_counter: Option<String>,
    fill: Arc<redis::Script>,
    invalidate_key: Arc<redis::Script>,
    bump: redis::Script,
    set_key: redis::Script,
    tag_version: redis::Script,
    claim: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.is_cluster())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The version of each tag a read asked for (`None`: absent).
pub(crate) type Versions = Arc<[Option<u64>]>;

/// What one read returned: the entry's bytes, and what its fill must still see (built into a
/// [`Lease`] only for a miss: a hit needs the versions, not a copy of the tags).
pub(crate) struct RedisRead<'t> {
    pub(crate) bytes: Option<Vec<u8>>,
    /// The generation counter the read saw (`None`: absent, or not a version).
    counter: Option<u64>,
    /// On one server an absent or damaged generation counter: it needs a value before a fill
    /// (`RedisStore::init_tags` gives it one).
    pub(crate) needs_counter: bool,
    /// The tags read (the namespace's implicit tag first) and each one's version (`None`: the
    /// version key is absent, it needs one before a fill); a batch's elements with the same
    /// tags share one list.
    pub(crate) tags: &'t [String],
    versions: Versions,
}

impl RedisRead<'_> {
    /// Tag `i`'s version (`None`: it has none yet).
    pub(crate) fn version(&self, i: usize) -> Option<u64> {
        self.versions.get(i).copied().flatten()
    }

    /// The tags with their versions, the missing ones skipped.
    pub(crate) fn known_versions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tags.iter().zip(self.versions.iter()).filter_map(|(tag, v)| Some((tag.as_str(), (*v)?)))
    }

    /// The lease a fill of this miss needs, and the positions of the tags without a version
    /// (`RedisStore::init_tags` gives them one).
    pub(crate) fn lease(&self) -> (Lease, Vec<usize>) {
        let missing = (0..self.tags.len()).filter(|&i| self.version(i).is_none()).collect();
        let tags = self.tags.iter().enumerate().map(|(i, tag)| (tag.clone(), self.version(i).unwrap_or(0))).collect();
        (Lease { generation: self.counter, namespace_version: None, tags }, missing)
    }
}

fn invalid_url(e: &redis::RedisError) -> CacheError {
    CacheError::Config(format!("invalid Redis URL: {e}"))
}

impl RedisStore {
    /// Connects lazily: building never fails because Redis is down, the first command does
    /// (and is treated as a miss).
    pub(crate) fn new(target: &RedisTarget, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let target = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| invalid_url(&e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
                Target::Single { client, config, conn: arc_swap::ArcSwap::from_pointee(conn) }
            }
            RedisTarget::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(CacheError::Config("a Redis Cluster needs at least one node".to_owned()));
                }
                Target::Cluster {
                    slot: Arc::new(ClusterSlot::new(
                        cluster_client(nodes, timeout, None).map_err(|e| invalid_url(&e))?,
                    )),
                    nodes: nodes.clone(),
                }
            }
        };
        Ok(RedisStore {
            generation_counter: matches!(target, Target::Single { .. }).then(|| generation_counter_key(prefix)),
            breaker: Breaker::default(),
            target,
            last_rebuild_ms: std::sync::atomic::AtomicU64::new(now_ms()),
            timeout,
            fill: Arc::new(redis::Script::new(FILL)),
            invalidate_key: Arc::new(redis::Script::new(INVALIDATE_KEY)),
            bump: redis::Script::new(BUMP),
            set_key: redis::Script::new(SET_KEY),
            tag_version: redis::Script::new(TAG_VERSION),
            claim: redis::Script::new(CLAIM),
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    async fn conn(&self) -> redis::RedisResult<Conn> {
        match &self.target {
            Target::Single { conn, .. } => Ok(Conn::Single(ConnectionManager::clone(&conn.load()))),
            Target::Cluster { slot, .. } => slot.get().await.map(Conn::Cluster),
        }
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, CacheError> {
        if !self.breaker.allow() {
            return Err(CacheError::Unavailable);
        }
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                return Ok(value);
            }
            Ok(Err(err)) if err.is_timeout() => Err(CacheError::Timeout),
            // Redis answered: the connection is fine.
            Ok(Err(err)) if matches!(err.kind(), redis::ErrorKind::Server(_)) => {
                self.breaker.success();
                return Err(CacheError::Redis(err));
            }
            Ok(Err(err)) => Err(CacheError::Redis(err)),
            Err(_) => Err(CacheError::Timeout),
        };
        self.breaker.failure();
        self.maybe_rebuild();
        result
    }

    /// Redis was just reached by another connection (the invalidation channel subscribed
    /// again): close the breaker, so that queued invalidations are retried at once.
    pub(crate) fn reachable(&self) {
        self.breaker.success();
    }

    /// How many times the circuit breaker has opened.
    pub(crate) fn breaker_openings(&self) -> u64 {
        self.breaker.openings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a connection-level failure, at most once a second, start over with a new
    /// (lazy) connection.
    fn maybe_rebuild(&self) {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let last = self.last_rebuild_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self.last_rebuild_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        match &self.target {
            Target::Single { client, config, conn } => {
                if let Ok(fresh) = ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                    conn.store(Arc::new(fresh));
                }
            }
            // The cluster client reconnects and follows fail-overs by itself; a new one could
            // only start again from the seed nodes, which may be the ones that are down.
            Target::Cluster { .. } => {}
        }
    }

    /// One command, bounded by the command timeout as a whole (connecting included): while a
    /// connection reconnects (with retries and backoff) a command would otherwise wait for it.
    pub(super) async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// One script call (all its keys in one slot; `cmd` from [`evalsha`]), bounded like `run`.
    /// A server that does not have the script (restarted, `SCRIPT FLUSH`, a fail-over to a
    /// replica that never saw it) is given it, and the call is made again.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> Result<T, CacheError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            match cmd.query_async::<T>(&mut conn).await {
                Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    script.load_async(&mut conn).await?;
                    cmd.query_async::<T>(&mut conn).await
                }
                result => result,
            }
        })
        .await
    }

    /// The key of `key`'s generation counter (see the type's docs): the prefix's on one server,
    /// the entry's generation on a cluster.
    fn counter_key(&self, key: &str) -> String {
        self.generation_counter.clone().unwrap_or_else(|| generation_key(key))
    }

    /// One round trip (`MGET`; a cluster client splits it by slot): the entry, its
    /// generation counter, and the versions of its tags, the namespace's implicit tag first.
    pub(crate) async fn read<'t>(
        &self,
        key: &str,
        prefix: &str,
        tags: &'t [String],
    ) -> Result<RedisRead<'t>, CacheError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(key).arg(self.counter_key(key));
        for tag in tags {
            cmd.arg(tag_key(prefix, tag));
        }
        let mut values: Vec<Option<Vec<u8>>> = self.run(&cmd).await?;
        let versions = (0..tags.len()).map(|i| parse_version(values.get(2 + i).and_then(Option::as_ref))).collect();
        values.truncate(2);
        let mut values = values.into_iter();
        let (bytes, counter) = (values.next().flatten(), parse_version(values.next().flatten().as_ref()));
        Ok(RedisRead { bytes, counter, needs_counter: self.needs_counter(counter), tags, versions })
    }

    /// Whether a read that saw `counter` needs the generation counter initialised before a fill.
    fn needs_counter(&self, counter: Option<u64>) -> bool {
        self.generation_counter.is_some() && counter.is_none()
    }

    /// `read` of many keys (a batch) in one `MGET`: every entry, the generation counter (the
    /// prefix's once on one server, every entry's generation on a cluster), then each tag
    /// version once (a cluster splits it by slot and asks the masters concurrently).
    pub(crate) async fn read_many<'t>(
        &self,
        prefix: &str,
        reads: &[(&str, &'t [String])],
    ) -> Result<Vec<RedisRead<'t>>, CacheError> {
        let mut cmd = redis::cmd("MGET");
        // Where the entries and counters end in the answer.
        let counted = match &self.generation_counter {
            Some(counter) => {
                for (key, _) in reads {
                    cmd.arg(*key);
                }
                cmd.arg(counter.as_str());
                reads.len() + 1
            }
            None => {
                // One buffer for every generation key (`Cmd::arg` copies it).
                let mut generation = String::new();
                for (key, _) in reads {
                    generation.clear();
                    push_generation_key(&mut generation, key);
                    cmd.arg(*key).arg(generation.as_str());
                }
                2 * reads.len()
            }
        };
        // Each tag version once: where in the answer each read's tags are. A read sharing the
        // previous one's tag set (the same slice: a batch's) shares its positions unhashed.
        let mut tag_at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut positions: Vec<usize> = Vec::new();
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(reads.len());
        for (i, (_, tags)) in reads.iter().enumerate() {
            if let (Some(range), true) = (ranges.last(), i > 0 && std::ptr::eq(reads[i - 1].1, *tags)) {
                ranges.push(range.clone());
                continue;
            }
            let start = positions.len();
            for tag in tags.iter() {
                let next = tag_at.len();
                let at = *tag_at.entry(tag.as_str()).or_insert_with(|| {
                    cmd.arg(tag_key(prefix, tag));
                    next
                });
                positions.push(at);
            }
            ranges.push(start..positions.len());
        }
        let mut values: Vec<Option<Vec<u8>>> = self.run(&cmd).await?;
        let versions: Vec<Option<u64>> =
            values.split_off(counted.min(values.len())).iter().map(|v| parse_version(v.as_ref())).collect();
        let shared_counter = self.generation_counter.as_ref().map(|_| parse_version(values.pop().flatten().as_ref()));
        let mut values = values.into_iter();
        // Reads with the same range (the same tag set) share one list of versions.
        let mut shared: Option<(std::ops::Range<usize>, Versions)> = None;
        Ok(reads
            .iter()
            .zip(ranges)
            .map(|((_, tags), range)| {
                let (bytes, counter) = match shared_counter {
                    Some(counter) => (values.next().flatten(), counter),
                    None => (values.next().flatten(), parse_version(values.next().flatten().as_ref())),
                };
                let of_set = match &shared {
                    Some((r, list)) if *r == range => Arc::clone(list),
                    _ => {
                        let list: Versions =
                            positions[range.clone()].iter().map(|&at| versions.get(at).copied().flatten()).collect();
                        shared = Some((range, Arc::clone(&list)));
                        list
                    }
                };
                RedisRead { bytes, counter, needs_counter: self.needs_counter(counter), tags, versions: of_set }
            })
            .collect())
    }

    /// Current versions of `tags` (one `MGET`; absent ones are `None`).
    pub(crate) async fn tag_versions(&self, prefix: &str, tags: &[&str]) -> Result<Vec<Option<u64>>, CacheError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for tag in tags {
            cmd.arg(tag_key(prefix, tag));
        }
        let values: Vec<Option<Vec<u8>>> = self.run(&cmd).await?;
        Ok(values.iter().map(|v| parse_version(v.as_ref())).collect())
    }

    /// Gives every absent tag version a random start (a version key lost to eviction must not
    /// come back as a value some old entry recorded), repairs one that holds something else, and
    /// fills in `lease`; the same for the generation counter when `counter` (on one server,
    /// absent or damaged: its fresh start is above every generation handed out before). One
    /// script per key (one slot each), all in flight at once.
    pub(crate) async fn init_tags(
        &self,
        prefix: &str,
        lease: &mut Lease,
        missing: &[usize],
        counter: bool,
    ) -> Result<(), CacheError> {
        let counter = self.generation_counter.as_deref().filter(|_| counter);
        let keys = missing.iter().map(|&i| tag_key(prefix, &lease.tags[i].0)).chain(counter.map(str::to_owned));
        let reads = keys.map(|key| async move {
            let mut cmd = evalsha(&self.tag_version, 1);
            cmd.arg(key).arg(fresh_version()).arg(VERSION_TTL_MS);
            let v = self.invoke::<String>(&self.tag_version, &cmd).await?;
            v.parse::<u64>().map_err(|_| CacheError::Config(format!("version {v:?} is not a number")))
        });
        let mut values = futures::future::try_join_all(reads).await?;
        if counter.is_some() {
            lease.generation = values.pop();
        }
        for (&i, v) in missing.iter().zip(values) {
            lease.tags[i].1 = v;
        }
        Ok(())
    }

    /// Stores `bytes` if the key was not invalidated since the lease was taken; `Ok(false)` when
    /// it was. (A tag or namespace invalidated meanwhile makes the stored entry a miss on read.)
    pub(crate) async fn fill(&self, key: &str, lease: &Lease, bytes: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let stored: Vec<i64> = self.invoke(&self.fill, &self.fill_cmd(&[(key, lease, bytes, ttl)])).await?;
        Ok(stored.first() == Some(&1))
    }

    /// One `FILL` of `fills` (on a cluster, one fill: a script's keys share a slot): the
    /// command built in place (every argument copied once, into the command).
    fn fill_cmd(&self, fills: &[(&str, &Lease, &[u8], Duration)]) -> redis::Cmd {
        let mut cmd = evalsha(&self.fill, 1 + 2 * fills.len());
        cmd.arg(self.counter_key(fills.first().map_or("", |fill| fill.0)));
        // One buffer for every generation key (`Cmd::arg` copies it).
        let mut generation = String::new();
        for (key, ..) in fills {
            generation.clear();
            push_generation_key(&mut generation, key);
            cmd.arg(*key).arg(generation.as_str());
        }
        cmd.arg(fresh_version());
        for (_, lease, bytes, ttl) in fills {
            // What the read saw of the counter (`''`: absent), in decimal digits.
            match lease.generation {
                Some(generation) => cmd.arg(generation),
                None => cmd.arg(""),
            };
            cmd.arg(*bytes).arg(duration_ms(*ttl).max(1));
        }
        cmd
    }

    /// `fill` of many entries (a batch): on one Redis, one `FILL` call for them all (one round
    /// trip, one script run; each fill lease-checked as a single one is); on a cluster, where
    /// a script's keys share a slot, each entry's own call, all in flight at once. Each fill's
    /// outcome (a call that fails, fails every fill in it).
    pub(crate) async fn fill_many(&self, fills: &[(&str, &Lease, &[u8], Duration)]) -> Vec<Result<bool, CacheError>> {
        if fills.is_empty() {
            return Vec::new();
        }
        if self.is_cluster() {
            let each = fills.iter().map(|(key, lease, bytes, ttl)| self.fill(key, lease, bytes, *ttl));
            return crate::sync::join_all(each).await;
        }
        match self.invoke::<Vec<i64>>(&self.fill, &self.fill_cmd(fills)).await {
            Ok(stored) => fills.iter().enumerate().map(|(i, _)| Ok(stored.get(i) == Some(&1))).collect(),
            Err(err) => fills.iter().map(|_| Err(err.again())).collect(),
        }
    }

    /// Stores `bytes` under `key` unconditionally and moves the key's generation (see
    /// [`SET_KEY`]): a fill leased before this set is refused.
    pub(crate) async fn set(&self, key: &str, bytes: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let mut cmd = evalsha(&self.set_key, 3);
        cmd.arg(self.counter_key(key)).arg(key).arg(generation_key(key));
        cmd.arg(fresh_version()).arg(bytes).arg(duration_ms(ttl).max(1));
        self.invoke::<i64>(&self.set_key, &cmd).await.map(drop)
    }

    pub(crate) async fn invalidate_key(&self, key: &str) -> Result<(), CacheError> {
        let mut cmd = evalsha(&self.invalidate_key, 3);
        cmd.arg(self.counter_key(key)).arg(key).arg(generation_key(key)).arg(fresh_version());
        self.invoke::<i64>(&self.invalidate_key, &cmd).await.map(drop)
    }

    /// `SET key token NX PX hold` (see [`CLAIM`]): whether this caller got it.
    pub(crate) async fn claim_token(&self, key: &str, token: &str, hold: Duration) -> Result<bool, CacheError> {
        let mut cmd = evalsha(&self.claim, 1);
        cmd.arg(key).arg(token).arg(duration_ms(hold).max(1));
        Ok(self.invoke::<i64>(&self.claim, &cmd).await? == 1)
    }

    /// The raw bytes under `key` (`GET`), for inspection.
    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    pub(crate) async fn unlink(&self, key: &str) -> Result<(), CacheError> {
        self.run::<i64>(redis::cmd("UNLINK").arg(key)).await.map(drop)
    }

    /// Bumps a version key (see [`BUMP`]); returns the new version.
    pub(crate) async fn bump(&self, version_key: &str) -> Result<u64, CacheError> {
        self.invoke(&self.bump, evalsha(&self.bump, 1).arg(version_key).arg(fresh_version()).arg(VERSION_TTL_MS)).await
    }

    /// Ends every representation of `key` but its value: bumps its implicit tag if it exists (`key.rs`).
    pub(crate) async fn end_representations(&self, prefix: &str, key: &str) -> Result<(), CacheError> {
        let mut cmd = evalsha(&self.bump, 1);
        cmd.arg(tag_key(prefix, &crate::key::key_tag(key))).arg(fresh_version()).arg(VERSION_TTL_MS).arg("known");
        self.invoke::<u64>(&self.bump, &cmd).await.map(drop)
    }

    /// Deletes every key matching `pattern` with `SCAN` + `UNLINK` in batches (never `KEYS`),
    /// on every master of a cluster.
    pub(crate) async fn del_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let Target::Cluster { .. } = &self.target else {
            return self.scan_unlink(pattern, None).await;
        };
        let mut cluster_slots = redis::cmd("CLUSTER");
        cluster_slots.arg("SLOTS");
        let slots: redis::Value = self.route(cluster_slots, SingleNodeRoutingInfo::Random).await?;
        let mut removed = 0;
        // Each master is reached through one of its slots: the client routes by its own map.
        for slot in one_slot_per_master(&slots) {
            removed += self.scan_unlink(pattern, Some(slot)).await?;
        }
        Ok(removed)
    }

    /// One command sent to the cluster node `routing` names, bounded like `run`.
    async fn route<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        routing: SingleNodeRoutingInfo,
    ) -> Result<T, CacheError> {
        let value = self
            .bounded(async {
                match self.conn().await? {
                    Conn::Cluster(mut conn) => conn.route_command(cmd, RoutingInfo::SingleNode(routing)).await,
                    Conn::Single(mut conn) => cmd.query_async(&mut conn).await,
                }
            })
            .await?;
        redis::from_redis_value(value).map_err(|e| CacheError::Redis(e.into()))
    }

    /// `SCAN` one server (or one cluster node) and `UNLINK` what matches.
    async fn scan_unlink(&self, pattern: &str, node: Option<u16>) -> Result<u64, CacheError> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = match &node {
                None => self.run(&scan).await?,
                Some(slot) => {
                    let route = redis::cluster_routing::Route::new(*slot, redis::cluster_routing::SlotAddr::Master);
                    self.route(scan, SingleNodeRoutingInfo::SpecificNode(route)).await?
                }
            };
            if !keys.is_empty() {
                removed += self.run::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

impl RedisStore {
    /// One page of the keys matching `pattern`: `SCAN` with `cursor` (on a cluster, on the
    /// `node`-th master, then the next), at most about `count`. The next page's `(node,
    /// cursor)`, or `None` at the end. Never `KEYS`.
    pub(crate) async fn scan_page(
        &self,
        pattern: &str,
        (node, cursor): (usize, u64),
        count: usize,
    ) -> Result<(Vec<String>, Option<(usize, u64)>), CacheError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        let Target::Cluster { .. } = &self.target else {
            let (next, keys): (u64, Vec<String>) = self.run(&scan).await?;
            return Ok((keys, (next != 0).then_some((0, next))));
        };
        let mut cluster_slots = redis::cmd("CLUSTER");
        cluster_slots.arg("SLOTS");
        let slots: redis::Value = self.route(cluster_slots, SingleNodeRoutingInfo::Random).await?;
        let masters = one_slot_per_master(&slots);
        let Some(&slot) = masters.get(node) else { return Ok((Vec::new(), None)) };
        let route = redis::cluster_routing::Route::new(slot, redis::cluster_routing::SlotAddr::Master);
        let (next, keys): (u64, Vec<String>) = self.route(scan, SingleNodeRoutingInfo::SpecificNode(route)).await?;
        let following = if next != 0 {
            Some((node, next))
        } else if node + 1 < masters.len() {
            Some((node + 1, 0))
        } else {
            None
        };
        Ok((keys, following))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_seed_nodes() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/2"),
            RedisTarget::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:7000,b:7001/"),
            RedisTarget::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(
            RedisTarget::parse("rediss+cluster://user:p@ss@a:7000,b:7001"),
            RedisTarget::Cluster(vec!["rediss://user:p@ss@a:7000".into(), "rediss://user:p@ss@b:7001".into()])
        );
    }
}
