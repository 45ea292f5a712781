//! The two stores: process memory (moka) and Redis (redis-rs `ConnectionManager`, or a cluster
//! connection).
//!
//! Both keep the same invalidation rules:
//! - a per-key **generation**, bumped by every invalidation of the key; a fill stores only if
//!   the generation is the one its read saw (memcache-style leases: a slow read of the old row
//!   can never overwrite a newer invalidation);
//! - a **version** per tag, bumped by every invalidation of the tag; an entry records the
//!   versions its tags had before its value was computed and is valid only while they still
//!   have them (O(1) tag invalidation that also catches entries filled while it runs);
//! - a version per namespace, bumped by `clear_namespace` before it removes the entries, so a
//!   fill that started before the clear cannot store afterwards.

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::envelope::Meta;
use crate::error::CacheError;
use crate::sync::lock;
use crate::time::now_ms;

/// What a read saw, that its fill must still see to be allowed to store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lease {
    pub(crate) generation: Option<u64>,
    pub(crate) namespace_version: Option<u64>,
    /// `(tag, version)` in the caller's order.
    pub(crate) tags: Vec<(String, u64)>,
}

/// A value held in process memory: typed, so a hit is a downcast and a clone, no decoding.
pub(crate) struct MemEntry {
    pub(crate) meta: Meta,
    pub(crate) negative: bool,
    pub(crate) value: Box<dyn Any + Send + Sync>,
    /// Estimated bytes held (key, encoded payload size, bookkeeping): what `max_bytes` bounds.
    pub(crate) weight: u32,
    /// When the store drops it (ms since the epoch): its stale-until instant, or sooner in the
    /// L1 (`l1_ttl`). `meta` keeps the entry's own times, which answers report (`max-age`).
    pub(crate) expires_ms: u64,
}

/// Estimated bytes an entry costs beyond its key and payload (the entry, its `Arc`, moka's
/// node and expiry bookkeeping, the allocator's rounding): 871 bytes per entry measured for
/// a 200-byte value and a 29-byte key (`bench/src/bin/entry_size.rs`), minus those.
pub(crate) const ENTRY_OVERHEAD: usize = 640;

/// The weight of an entry whose key is `key_len` bytes and whose encoded payload is
/// `payload_len` bytes.
pub(crate) fn entry_weight(key_len: usize, payload_len: usize) -> u32 {
    u32::try_from(key_len + payload_len + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl std::fmt::Debug for MemEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEntry").field("meta", &self.meta).field("negative", &self.negative).finish_non_exhaustive()
    }
}

/// Each entry lives until its own expiry (see [`MemEntry::expires_ms`]), whatever the others do.
struct EntryExpiry;

impl EntryExpiry {
    fn remaining(entry: &MemEntry) -> Option<Duration> {
        Some(Duration::from_millis(entry.expires_ms.saturating_sub(now_ms())))
    }
}

impl moka::Expiry<String, Arc<MemEntry>> for EntryExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<MemEntry>, _at: Instant) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<MemEntry>,
        _at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value)
    }
}

const SHARDS: usize = 64;

/// How long a key's generation is remembered after its last invalidation: far longer than
/// any fill takes.
const GENERATION_TTL: Duration = Duration::from_secs(3600);

/// Versions of tags and of namespaces, looked up by name without allocating.
#[derive(Debug, Default)]
struct Versions {
    tags: HashMap<String, u64>,
    namespaces: HashMap<String, u64>,
}

impl Versions {
    fn tag(&self, tag: &str) -> Option<u64> {
        self.tags.get(tag).copied()
    }

    fn namespace(&self, namespace: &str) -> u64 {
        self.namespaces.get(namespace).copied().unwrap_or(0)
    }
}

pub(crate) struct MemoryStore {
    entries: moka::sync::Cache<String, Arc<MemEntry>>,
    /// Bounded by bytes (entries carry a weight) as well as by count.
    weighed: bool,
    generations: moka::sync::Cache<String, u64>,
    versions: RwLock<Versions>,
    /// Serialises a fill's check-and-insert with invalidations of the same key.
    shards: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("entries", &self.entries.entry_count()).finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// At most `max_entries` entries and, with `max_bytes`, at most that many bytes by the
    /// entries' weights. Both bounds are one moka capacity: the capacity is `max_bytes` and no
    /// entry weighs less than `max_bytes / max_entries`, so neither bound can be exceeded.
    pub(crate) fn new(max_entries: u64, max_bytes: Option<u64>) -> Self {
        let entries = moka::sync::Cache::builder().expire_after(EntryExpiry);
        let entries = match max_bytes {
            None => entries.max_capacity(max_entries).build(),
            Some(max_bytes) => {
                let max_entries = max_entries.max(1);
                let floor = u32::try_from(max_bytes.div_ceil(max_entries)).unwrap_or(u32::MAX);
                entries
                    // Never more than `max_entries` entries of at least `floor` each.
                    .max_capacity(max_bytes.min(u64::from(floor).saturating_mul(max_entries)))
                    .weigher(move |_key: &String, entry: &Arc<MemEntry>| entry.weight.max(floor))
                    .build()
            }
        };
        MemoryStore {
            entries,
            weighed: max_bytes.is_some(),
            generations: moka::sync::Cache::builder().time_to_idle(GENERATION_TTL).build(),
            versions: RwLock::new(Versions::default()),
            shards: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<()> {
        &self.shards[usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0)]
    }

    /// Entries held and their total weight, 0 when not bounded by bytes (after applying
    /// pending evictions).
    pub(crate) fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), if self.weighed { self.entries.weighted_size() } else { 0 })
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<MemEntry>> {
        self.entries.get(key)
    }

    /// Whether every tag of `entry` still has the version it recorded. `missing` is what an
    /// unknown tag counts as: version 0 where this store is the source of truth, "unknown"
    /// (not current) where it mirrors Redis.
    pub(crate) fn tags_current(&self, entry: &MemEntry, missing: Option<u64>) -> bool {
        if entry.meta.tags.is_empty() {
            return true;
        }
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        entry.meta.tags.iter().all(|(tag, v)| versions.tag(tag).or(missing) == Some(*v))
    }

    /// The generation of `key` and the versions of its namespace and tags, as they are now.
    pub(crate) fn lease(&self, key: &str, namespace: &str, tags: &[String]) -> Lease {
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Lease {
            generation: Some(self.generations.get(key).unwrap_or(0)),
            namespace_version: Some(versions.namespace(namespace)),
            tags: tags.iter().map(|t| (t.clone(), versions.tag(t).unwrap_or(0))).collect(),
        }
    }

    /// Inserts `entry` if nothing it depends on was invalidated since `lease` was taken.
    pub(crate) fn fill(&self, key: String, namespace: &str, lease: &Lease, entry: MemEntry) -> bool {
        let _key_guard = lock(self.shard(&key));
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = Some(self.generations.get(&key).unwrap_or(0)) == lease.generation
            && Some(versions.namespace(namespace)) == lease.namespace_version
            && lease.tags.iter().all(|(t, v)| versions.tag(t).unwrap_or(0) == *v);
        if current {
            self.entries.insert(key, Arc::new(entry));
        }
        current
    }

    /// Stores without a lease (the plain API's `set`, or a mirror of what Redis holds).
    pub(crate) fn insert(&self, key: String, entry: MemEntry) {
        self.entries.insert(key, Arc::new(entry));
    }

    pub(crate) fn invalidate_key(&self, key: &str) {
        let _key_guard = lock(self.shard(key));
        let next = self.generations.get(key).unwrap_or(0) + 1;
        self.generations.insert(key.to_owned(), next);
        self.entries.invalidate(key);
    }

    /// Bumps a tag's version (here the source of truth); returns the new version.
    pub(crate) fn bump_tag(&self, tag: &str) -> u64 {
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let v = versions.tags.entry(tag.to_owned()).or_insert(0);
        *v += 1;
        *v
    }

    /// Records a tag version learned from Redis (versions only grow).
    pub(crate) fn learn_tag(&self, tag: &str, version: u64) {
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match versions.tags.get_mut(tag) {
            Some(v) => *v = (*v).max(version),
            None => drop(versions.tags.insert(tag.to_owned(), version)),
        }
    }

    /// Forgets what this process knew of a tag's version.
    pub(crate) fn forget_tag(&self, tag: &str) {
        self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner).tags.remove(tag);
    }

    /// Forgets `key` without bumping its generation (an L1 dropping its copy).
    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Bumps the namespace's version (so fills that started before cannot store), then removes
    /// every entry whose key starts with `start`; returns how many.
    pub(crate) fn clear_namespace(&self, namespace: &str, start: &str) -> u64 {
        {
            let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            *versions.namespaces.entry(namespace.to_owned()).or_insert(0) += 1;
        }
        let mut removed = 0;
        for (key, _) in &self.entries {
            if key.starts_with(start) {
                self.entries.invalidate(key.as_str());
                removed += 1;
            }
        }
        removed
    }

    /// Drops everything, versions included (an L1 that may have missed invalidations).
    pub(crate) fn flush(&self) {
        self.entries.invalidate_all();
        *self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Versions::default();
    }
}

/// The keys of one entry's bookkeeping in Redis. The generation shares the entry's hash slot.
pub(crate) fn generation_key(entry_key: &str) -> String {
    format!("{entry_key}:g")
}

pub(crate) fn tag_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:t:{{{tag}}}")
}

/// In Redis, a namespace is an implicit tag of every entry in it: its version is recorded in the
/// entry and checked on read, like a tag's. `%%` can start no rendered tag (a template's text
/// has no `%`, an escaped value has `%` followed by hex digits), so this never meets a user tag.
pub(crate) fn namespace_tag(namespace: &str) -> String {
    format!("%%ns:{namespace}")
}

/// `KEYS`: entry, generation (one hash slot). `ARGV`: the generation the read saw (`''` =
/// absent), the envelope, the ttl in ms, a fresh version. Tags and namespaces are not checked
/// here but on read (the entry records their versions), so the script never crosses a Redis
/// Cluster slot. A generation key holding anything but a version (a foreign string, another
/// type) is repaired with the fresh version, which no reader can have seen: this fill is
/// dropped, the next read's fill succeeds.
const FILL: &str = r"
local g = redis.pcall('GET', KEYS[2])
if type(g) == 'table' or (g and not string.match(g, '^%d+$')) or (g and #g > 18) then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', 86400000)
  return 0
end
if not g then g = '' end
if g ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// `KEYS`: entry, generation. `ARGV`: a fresh version. Bumps the generation (remembered for a
/// day) and drops the entry. A generation that cannot be incremented (a foreign value or type)
/// is replaced by the fresh version: the invalidation is applied all the same.
const INVALIDATE_KEY: &str = r"
local g = redis.pcall('INCR', KEYS[2])
if type(g) ~= 'number' or g < 0 or g > 9007199254740991 then
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('PEXPIRE', KEYS[2], 86400000)
return redis.call('UNLINK', KEYS[1])
";

/// `KEYS`: a tag (or namespace) version. `ARGV`: a fresh start ([`fresh_version`]). `INCR`s
/// the version and returns it. An absent version (evicted) or one that is not a version (a
/// foreign value or type) is replaced by the fresh start: no entry can have recorded it, and it
/// is above every version the replicas' L1s learned before (they keep the highest they saw).
const BUMP: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'string' and string.match(v, '^%d+$') and #v <= 16 and tonumber(v) < 9007199254740000 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
";

/// `KEYS`: a tag (or namespace) version. `ARGV`: a fresh start ([`fresh_version`]). Returns the
/// current version, giving an absent one the fresh start (a version key lost to eviction must
/// not come back as a value some old entry recorded) and replacing one that is not a version (a
/// foreign value or type) the same way.
const TAG_VERSION: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'string' and string.match(v, '^%d+$') and #v <= 16 and tonumber(v) < 9007199254740000 then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// `KEYS`: a claim (a `lock` or a refresh claim). `ARGV`: the token, the hold in ms. `SET NX
/// PX`; a claim key without an expiry is not one of ours (every claim has one): it is replaced,
/// so a foreign value can never block the claim for good. Returns 1 when claimed.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

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
enum Target {
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

/// The cluster connection, made in a task of its own: connecting (seed, `CLUSTER SLOTS`, every
/// node) may take longer than one command's timeout, and must not start over each time one
/// gives up.
struct ClusterSlot {
    client: ClusterClient,
    conn: arc_swap::ArcSwapOption<ClusterConnection>,
    connecting: std::sync::atomic::AtomicBool,
    connected: tokio::sync::Notify,
}

/// Longest a background connection attempt to a cluster may take before the next one starts.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ClusterSlot {
    async fn get(self: &Arc<Self>) -> redis::RedisResult<ClusterConnection> {
        use std::sync::atomic::Ordering;
        if let Some(c) = self.conn.load_full() {
            return Ok(ClusterConnection::clone(&c));
        }
        let connected = self.connected.notified();
        tokio::pin!(connected);
        connected.as_mut().enable();
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let slot = Arc::clone(self);
            tokio::spawn(async move {
                let made = tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, slot.client.get_async_connection()).await;
                if let Ok(Ok(conn)) = made {
                    slot.conn.store(Some(Arc::new(conn)));
                }
                slot.connecting.store(false, Ordering::Release);
                slot.connected.notify_waiters();
            });
        }
        // The caller's command timeout bounds this wait; the attempt goes on without it.
        connected.await;
        self.conn.load_full().map(|c| ClusterConnection::clone(&c)).ok_or_else(|| {
            redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, "no cluster connection yet"))
        })
    }
}

/// Redis through a `ConnectionManager` (one multiplexed connection that reconnects by
/// itself) or a cluster connection, every command bounded by the command timeout.
///
/// Cluster-safe by construction: every script and pipeline touches one slot (an entry, its
/// generation, its lock and its refresh claim share the hash tag `{ns:key}`); multi-key reads
/// (`MGET`) and `UNLINK` are split by slot by the cluster client; `SCAN` runs on every master;
/// pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH` on channels hash-tagged `{prefix}`, so one
/// shard carries them all and `SPUBLISH` counts every subscriber).
pub(crate) struct RedisStore {
    breaker: Breaker,
    target: Target,
    /// ms since the Unix epoch of the last replacement of the connection.
    last_rebuild_ms: std::sync::atomic::AtomicU64,
    timeout: Duration,
    fill: Arc<redis::Script>,
    invalidate_key: Arc<redis::Script>,
    bump: redis::Script,
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

/// What one read returned: the entry's bytes and what its fill must still see.
pub(crate) struct RedisRead {
    pub(crate) bytes: Option<Vec<u8>>,
    pub(crate) lease: Lease,
    /// Tags whose version key is absent (they need a version before a fill).
    pub(crate) missing_tags: Vec<usize>,
}

fn parse_version(raw: Option<&Vec<u8>>) -> Option<u64> {
    std::str::from_utf8(raw?).ok()?.parse().ok()
}

fn seen(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn invalid_url(e: &redis::RedisError) -> CacheError {
    CacheError::Config(format!("invalid Redis URL: {e}"))
}

impl RedisStore {
    /// Connects lazily: building never fails because Redis is down, the first command does
    /// (and is treated as a miss).
    pub(crate) fn new(target: &RedisTarget, timeout: Duration) -> Result<Self, CacheError> {
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
                    slot: Arc::new(ClusterSlot {
                        client: cluster_client(nodes, timeout, None).map_err(|e| invalid_url(&e))?,
                        conn: arc_swap::ArcSwapOption::empty(),
                        connecting: std::sync::atomic::AtomicBool::new(false),
                        connected: tokio::sync::Notify::new(),
                    }),
                    nodes: nodes.clone(),
                }
            }
        };
        Ok(RedisStore {
            breaker: Breaker::default(),
            target,
            last_rebuild_ms: std::sync::atomic::AtomicU64::new(now_ms()),
            timeout,
            fill: Arc::new(redis::Script::new(FILL)),
            invalidate_key: Arc::new(redis::Script::new(INVALIDATE_KEY)),
            bump: redis::Script::new(BUMP),
            tag_version: redis::Script::new(TAG_VERSION),
            claim: redis::Script::new(CLAIM),
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The name of a pub/sub channel of `prefix`: hash-tagged on a cluster, so that all of a
    /// prefix's channels live on one shard.
    pub(crate) fn channel(&self, prefix: &str, name: &str) -> String {
        if self.is_cluster() {
            format!("{{{prefix}}}:{name}")
        } else {
            format!("{prefix}:{name}")
        }
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
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// One script (all its keys in one slot), bounded like `run`.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            invocation.invoke_async::<T>(&mut conn).await
        })
        .await
    }

    /// One round trip (`MGET`; a cluster client splits it by slot): the entry, its generation,
    /// and the versions of its tags, the namespace's implicit tag first.
    pub(crate) async fn read(&self, key: &str, prefix: &str, tags: &[String]) -> Result<RedisRead, CacheError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(key).arg(generation_key(key));
        for tag in tags {
            cmd.arg(tag_key(prefix, tag));
        }
        let mut values: Vec<Option<Vec<u8>>> = self.run(&cmd).await?;
        let tag_values = values.split_off(2.min(values.len()));
        let mut missing_tags = Vec::new();
        let lease = Lease {
            generation: parse_version(values.get(1).and_then(Option::as_ref)),
            namespace_version: None,
            tags: tags
                .iter()
                .zip(tag_values.iter().map(|v| parse_version(v.as_ref())))
                .enumerate()
                .map(|(i, (t, v))| {
                    if v.is_none() {
                        missing_tags.push(i);
                    }
                    (t.clone(), v.unwrap_or(0))
                })
                .collect(),
        };
        Ok(RedisRead { bytes: values.into_iter().next().flatten(), lease, missing_tags })
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
    /// fills in `lease`. One script per tag (one slot each), all in flight at once.
    pub(crate) async fn init_tags(&self, prefix: &str, lease: &mut Lease, missing: &[usize]) -> Result<(), CacheError> {
        let reads = missing.iter().map(|&i| {
            let key = tag_key(prefix, &lease.tags[i].0);
            async move {
                let mut invocation = self.tag_version.prepare_invoke();
                invocation.key(key).arg(fresh_version());
                self.invoke::<String>(&invocation).await
            }
        });
        let values = futures::future::try_join_all(reads).await?;
        for (&i, v) in missing.iter().zip(&values) {
            lease.tags[i].1 =
                v.parse().map_err(|_| CacheError::Config(format!("tag version {v:?} is not a number")))?;
        }
        Ok(())
    }

    /// Stores `bytes` if the key was not invalidated since the lease was taken; `Ok(false)` when
    /// it was. (A tag or namespace invalidated meanwhile makes the stored entry a miss on read.)
    pub(crate) async fn fill(&self, key: &str, lease: &Lease, bytes: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let mut invocation = self.fill.prepare_invoke();
        invocation.key(key).key(generation_key(key));
        invocation.arg(seen(lease.generation));
        invocation.arg(bytes).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        invocation.arg(fresh_version());
        let stored: i64 = self.invoke(&invocation).await?;
        Ok(stored == 1)
    }

    pub(crate) async fn set(&self, key: &str, bytes: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(redis::cmd("SET").arg(key).arg(bytes).arg("PX").arg(ms)).await
    }

    pub(crate) async fn invalidate_key(&self, key: &str) -> Result<(), CacheError> {
        let mut invocation = self.invalidate_key.prepare_invoke();
        invocation.key(key).key(generation_key(key)).arg(fresh_version());
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    /// `SET key token NX PX hold` (see [`CLAIM`]): whether this caller got it.
    pub(crate) async fn claim_token(&self, key: &str, token: &str, hold: Duration) -> Result<bool, CacheError> {
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.claim.prepare_invoke();
        invocation.key(key).arg(token).arg(ms);
        Ok(self.invoke::<i64>(&invocation).await? == 1)
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
        let mut invocation = self.bump.prepare_invoke();
        invocation.key(version_key).arg(fresh_version());
        self.invoke(&invocation).await
    }

    /// `PUBLISH` (`SPUBLISH` on a cluster); returns how many subscribers received it.
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<usize, CacheError> {
        let command = if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        self.run(redis::cmd(command).arg(channel).arg(message)).await
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

    /// A subscription to `channels` (`SUBSCRIBE` on a dedicated connection; on a cluster a
    /// RESP3 cluster connection with `SSUBSCRIBE`, which follows the shard when slots move).
    pub(crate) async fn subscribe(&self, channels: &[&str]) -> redis::RedisResult<Subscription> {
        match &self.target {
            Target::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channels).await?;
                let (sink, stream) = pubsub.split();
                Ok(Subscription::Single { sink, stream })
            }
            Target::Cluster { nodes, .. } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let mut conn = cluster_client(nodes, self.timeout, Some(tx))?.get_async_connection().await?;
                conn.ssubscribe(channels).await?;
                let shard_key = channels.first().map_or_else(String::new, |c| (*c).to_owned());
                Ok(Subscription::Cluster { conn, rx, shard_key })
            }
        }
    }
}

fn cluster_client(
    nodes: &[String],
    timeout: Duration,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout);
    if let Some(push) = push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
    }
    builder.build()
}

/// The first slot of each master in a `CLUSTER SLOTS` reply (`[[start, end, [host, port,
/// id…], replicas…]…]`), one per master.
fn one_slot_per_master(reply: &redis::Value) -> Vec<u16> {
    let redis::Value::Array(ranges) = reply else { return Vec::new() };
    let mut seen = Vec::new();
    let mut slots = Vec::new();
    for range in ranges {
        let redis::Value::Array(fields) = range else { continue };
        let (Some(redis::Value::Int(start)), Some(master)) = (fields.first(), fields.get(2)) else { continue };
        let redis::Value::Array(master) = master else { continue };
        let address: Vec<String> = master.iter().take(2).map(|v| format!("{v:?}")).collect();
        if seen.contains(&address) {
            continue;
        }
        seen.push(address);
        if let Ok(slot) = u16::try_from(*start) {
            slots.push(slot);
        }
    }
    slots
}

/// One received message: its channel and payload.
pub(crate) struct Received {
    pub(crate) channel: String,
    pub(crate) payload: Vec<u8>,
}

/// A live subscription (see [`RedisStore::subscribe`]).
pub(crate) enum Subscription {
    Single {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    /// `shard_key`: a key in the channels' slot (their name), so that a ping goes to the node
    /// that carries the subscription, not to every master.
    Cluster {
        conn: ClusterConnection,
        rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        shard_key: String,
    },
}

impl Subscription {
    /// The next message; `None` once the subscription is lost (messages may have been missed).
    pub(crate) async fn next(&mut self) -> Option<Received> {
        use futures::StreamExt as _;
        match self {
            Subscription::Single { stream, .. } => {
                let msg = stream.next().await?;
                Some(Received { channel: msg.get_channel_name().to_owned(), payload: msg.get_payload_bytes().to_vec() })
            }
            Subscription::Cluster { rx, .. } => loop {
                let push = rx.recv().await?;
                match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        let mut data = push.data.into_iter();
                        let (Some(channel), Some(payload)) = (data.next(), data.next()) else { continue };
                        let (Ok(channel), Ok(payload)) =
                            (redis::from_redis_value::<String>(channel), redis::from_redis_value::<Vec<u8>>(payload))
                        else {
                            continue;
                        };
                        return Some(Received { channel, payload });
                    }
                    // A node connection dropped: the client resubscribes, but what was published
                    // meanwhile is lost.
                    redis::PushKind::Disconnection | redis::PushKind::SUnsubscribe => return None,
                    _ => {}
                }
            },
        }
    }

    /// Whether the subscribed connection still answers, within `timeout`. On one server the
    /// ping goes down the subscription's own connection, so its answer also means that every
    /// message published before it was sent has been received. On a cluster it goes to the
    /// node that carries the channels' shard (a keyed read of that slot), not to every master.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> bool {
        let ping = async {
            match self {
                Subscription::Single { sink, .. } => sink.ping::<redis::Value>().await.is_ok(),
                Subscription::Cluster { conn, shard_key, .. } => {
                    redis::cmd("EXISTS").arg(&*shard_key).query_async::<redis::Value>(conn).await.is_ok()
                }
            }
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(true))
    }
}

/// Consecutive connection-level failures that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker skips Redis before letting one probe through.
const BREAKER_COOLDOWN_MS: u64 = 1000;

/// A circuit breaker: after repeated failures, Redis commands fail at once (no timeout paid)
/// for a cooldown; then one probe goes through, and its success closes the breaker.
#[derive(Debug, Default)]
struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    /// 0 = closed; else ms since the epoch until which it is open.
    open_until_ms: std::sync::atomic::AtomicU64,
    probing: std::sync::atomic::AtomicBool,
    openings: std::sync::atomic::AtomicU64,
}

impl Breaker {
    fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        // Half-open: one probe at a time.
        !self.probing.swap(true, Ordering::AcqRel)
    }

    fn success(&self) {
        use std::sync::atomic::Ordering;
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(target: "cache_runtime", "redis answers again; circuit breaker closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    fn failure(&self) {
        use std::sync::atomic::Ordering;
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if failures >= BREAKER_THRESHOLD || probe_failed {
            let was = self.open_until_ms.swap(now_ms() + BREAKER_COOLDOWN_MS, Ordering::AcqRel);
            if was == 0 {
                self.openings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "cache_runtime",
                    failures,
                    "redis keeps failing; circuit breaker open: requests skip the cache for {BREAKER_COOLDOWN_MS} ms at a time"
                );
            }
        }
    }
}

/// A version for a key that has none, or whose value is not one: the clock in ms × 1024 plus a
/// random part. No entry can have recorded it (every earlier version was handed out earlier, at
/// most 1,024 bumps a millisecond later), it grows with time (so an L1, which keeps the highest
/// version it learned of a tag, accepts a repaired or re-created version), and it stays below
/// 2^53 (exact in Redis's Lua numbers) until the year 2248.
fn fresh_version() -> u64 {
    let random = std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id());
    now_ms().saturating_mul(1024) + (random & 1023)
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

    #[test]
    fn one_slot_is_taken_per_master() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port: i64| Array(vec![BulkString(b"127.0.0.1".to_vec()), Int(port), BulkString(b"id".to_vec())]);
        let reply = Array(vec![
            Array(vec![Int(0), Int(5460), node(30001), node(30004)]),
            Array(vec![Int(5461), Int(10922), node(30002)]),
            Array(vec![Int(10923), Int(12000), node(30003)]),
            // A master owning two ranges is scanned once.
            Array(vec![Int(12001), Int(16383), node(30001)]),
        ]);
        assert_eq!(one_slot_per_master(&reply), vec![0, 5461, 10923]);
        assert!(one_slot_per_master(&Int(3)).is_empty());
    }
}
