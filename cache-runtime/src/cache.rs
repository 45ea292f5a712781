//! The [`Cache`] handle, its builder, and the plain (macro-free) API.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, Format, Json, Stored};
use crate::coherence::{Coherence, Message};
use crate::envelope::{self, Meta};
use crate::error::CacheError;
use crate::fetch::{self, CallOpts, Plain, ResultMode, Spawner};
use crate::flight::Flights;
use crate::key::{self, KeyWriter};
use crate::lock::{Attempt, Locks};
use crate::store::{self, namespace_tag, tag_key, Lease, MemEntry, MemoryStore, RedisRead, RedisStore, RedisTarget};
use crate::sync::lock;
use crate::time::now_ms;
use crate::Cacheable;

/// The namespace used when none is given (by the plain API or by `#[cached]`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The default bound on the bytes the memory store holds ([`CacheBuilder::max_bytes`]).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// The default bound on the bytes the L1 holds ([`CacheBuilder::l1_max_bytes`]).
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 << 20;

/// A cache: process memory (the default) or Redis. Cheap to clone: clones share the store.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::Cache;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::memory();
/// let n: u64 = cache.get_or_fetch("answer", Duration::from_secs(60), || async { 42 }).await;
/// assert_eq!(n, 42);
/// assert_eq!(cache.get::<u64>("answer").await, Some(42));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    prefix: Box<str>,
    default_ttl: Duration,
    store: Store,
    stats: Counters,
    /// Invalidations that failed, retried before the next Redis read.
    pending: std::sync::Mutex<Vec<Op>>,
    has_pending: std::sync::atomic::AtomicBool,
    /// A task is retrying the queued invalidations.
    retrying: std::sync::atomic::AtomicBool,
    /// Misses being computed in this process (single-flight).
    flights: Flights,
    /// Keys being refreshed by this process (stale-while-revalidate, early refresh).
    refreshing: moka::sync::Cache<String, ()>,
    rng: AtomicU64,
    last_error_log_ms: AtomicU64,
    redact_keys: bool,
    format: Format,
    max_value_bytes: usize,
    oversized_logged: std::sync::atomic::AtomicBool,
    /// [`Cache::disabled`]: nothing is read or stored.
    disabled: bool,
}

#[derive(Debug)]
// One per cache, never moved: boxing the larger variant would only add a pointer chase to hits.
#[allow(clippy::large_enum_variant)]
enum Store {
    Memory(MemoryStore),
    Redis {
        redis: Arc<RedisStore>,
        /// The process-memory tier in front of Redis, when enabled (then the same as `channel`).
        l1: Option<Arc<Coherence>>,
        /// The invalidation channel: every invalidation is published on it, L1 or not.
        channel: Arc<Coherence>,
        /// Cross-replica locks of `#[cached(lock)]`.
        locks: Arc<Locks>,
    },
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    stores: AtomicU64,
    dropped_fills: AtomicU64,
    invalidations: AtomicU64,
    oversized: AtomicU64,
}

/// A snapshot of a cache's counters, from [`Cache::stats`].
///
/// ```
/// let stats = cache_runtime::Cache::memory().stats();
/// assert_eq!(stats.hits + stats.misses, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that ran the body (nothing stored, expired, undecodable, or the store failed).
    pub misses: u64,
    /// Reads answered with a stale value.
    pub stale: u64,
    /// Failed or timed-out store operations (each one fell back to the body).
    pub errors: u64,
    /// Values written to the store.
    pub stores: u64,
    /// Fills dropped because what they computed was invalidated meanwhile (stale sets avoided).
    pub dropped_fills: u64,
    /// Keys, tags or namespaces invalidated.
    pub invalidations: u64,
    /// Values not stored because they were larger than `max_value_bytes`.
    pub oversized: u64,
    /// Times the Redis circuit breaker opened (after repeated failures, requests skip Redis
    /// for a second at a time instead of paying the timeout).
    pub circuit_openings: u64,
    /// Entries held in process memory (the memory store, or the L1 in front of Redis).
    pub memory_entries: u64,
    /// Their weight in bytes (see `CacheBuilder::max_bytes`); 0 unless bounded by bytes.
    pub memory_bytes: u64,
}

/// Builds a [`Cache`]. In-memory unless [`redis`](CacheBuilder::redis) is called.
///
/// ```
/// use std::time::Duration;
/// let cache = cache_runtime::Cache::builder()
///     .prefix("myapp")
///     .default_ttl(Duration::from_secs(30))
///     .max_entries(50_000)
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
///
/// Every setting, with Redis (connecting happens on first use):
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = cache_runtime::Cache::builder()
///     .redis("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .default_ttl(Duration::from_secs(300))
///     .command_timeout(Duration::from_millis(250))
///     .max_entries(100_000)
///     .l1(true)
///     .l1_max_entries(10_000)
///     .l1_ttl(Duration::from_secs(30))
///     .coherence_timeout(Duration::from_millis(100))
///     .format(cache_runtime::Format::Json)
///     .max_value_bytes(4 << 20)
///     .redact_keys(true)
///     .random_seed(42)
///     .build()
///     .unwrap();
/// assert!(cache.is_redis());
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    redis: Option<RedisTarget>,
    prefix: String,
    default_ttl: Duration,
    command_timeout: Duration,
    max_entries: u64,
    max_bytes: Option<u64>,
    l1: bool,
    l1_max_entries: u64,
    l1_max_bytes: Option<u64>,
    l1_ttl: Duration,
    l1_staleness_bound: Duration,
    coherence_timeout: Duration,
    random_seed: Option<u64>,
    redact_keys: bool,
    format: Format,
    max_value_bytes: usize,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            redis: None,
            prefix: "cache".to_owned(),
            default_ttl: Duration::from_secs(300),
            command_timeout: Duration::from_millis(250),
            max_entries: 100_000,
            max_bytes: Some(DEFAULT_MAX_BYTES),
            l1: true,
            l1_max_entries: 10_000,
            l1_max_bytes: Some(DEFAULT_L1_MAX_BYTES),
            l1_ttl: Duration::from_secs(30),
            l1_staleness_bound: Duration::from_secs(1),
            coherence_timeout: Duration::from_millis(100),
            random_seed: None,
            redact_keys: false,
            format: Format::Json,
            max_value_bytes: 4 * 1024 * 1024,
        }
    }
}

impl CacheBuilder {
    /// Store entries in Redis at `url` (`redis://host:port/db`). The connection is made on
    /// first use and re-made by itself after a failure; a Redis that is down makes reads miss,
    /// never fail.
    ///
    /// A URL of the form `redis+cluster://[user:password@]host:port,host:port,…` (or
    /// `rediss+cluster://…`) names seed nodes of a Redis Cluster, as
    /// [`redis_cluster`](Self::redis_cluster) does; it lets one `REDIS_URL` setting choose either.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisTarget::parse(&url.into()));
        self
    }

    /// Store entries in a Redis Cluster, reached through any of `nodes` (`redis://host:port`
    /// each; the other nodes and the slot map are discovered, and re-discovered when slots
    /// move). Everything works as on one Redis: each entry's keys share a hash tag, multi-key
    /// reads are split by slot, `clear_namespace` scans every master, and the invalidation and
    /// lock channels use sharded pub/sub.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::builder()
    ///     .redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
    ///     .build()
    ///     .unwrap();
    /// assert!(cache.is_redis());
    /// ```
    pub fn redis_cluster<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.redis = Some(RedisTarget::Cluster(nodes.into_iter().map(Into::into).collect()));
        self
    }

    /// Store entries in process memory (the default).
    pub fn memory(mut self) -> Self {
        self.redis = None;
        self
    }

    /// The first segment of every stored key (default `cache`): lets several applications
    /// share one Redis. ASCII letters, digits and `-_./@+=,` only.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Time to live of entries whose `#[cached]` has no `expire` (default 300 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Upper bound on every Redis command, connection included (default 250 ms). A command
    /// that takes longer is abandoned and the read counts as a miss.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Upper bound on the number of entries held in process memory (default 100,000).
    pub fn max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// Upper bound on the bytes held in process memory (default [`DEFAULT_MAX_BYTES`], 256 MiB,
    /// beside `max_entries`: a few large values cannot exhaust the process). An entry weighs
    /// its key, its value's encoded size (one encode per store) and a fixed overhead per entry;
    /// the least useful entries are evicted to stay under both bounds.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::builder().max_entries(1_000_000).max_bytes(256 << 20).build().unwrap();
    /// # drop(cache);
    /// ```
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = Some(max);
        self
    }

    /// With Redis: keep a bounded process-memory tier (L1, typed values: a hit costs no I/O
    /// and no decoding) in front of Redis, kept coherent across replicas through Redis
    /// pub/sub (default: on).
    pub fn l1(mut self, enabled: bool) -> Self {
        self.l1 = enabled;
        self
    }

    /// Upper bound on the number of entries in the L1 (default 10,000).
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Upper bound on the bytes held by the L1 (default [`DEFAULT_L1_MAX_BYTES`], 64 MiB,
    /// beside `l1_max_entries`). An entry weighs its key, its size in Redis and a fixed
    /// overhead per entry.
    pub fn l1_max_bytes(mut self, max: u64) -> Self {
        self.l1_max_bytes = Some(max);
        self
    }

    /// Longest time an entry stays in the L1, whatever its own ttl (default 30 s): a bound on
    /// staleness should an invalidation message be lost without the channel noticing.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// Longest time the L1 keeps answering after its invalidation channel last proved alive
    /// (default 1 s). The channel's connection is pinged four times per bound; when no answer
    /// comes within the bound, the L1 is flushed and bypassed until the channel is back. So a
    /// replica cut off from Redis (Redis paused, a partition that leaves the connection open)
    /// serves a value that another replica's write invalidated for at most this long after
    /// that write returned. Smaller bounds cost more pings (one per quarter bound).
    pub fn l1_staleness_bound(mut self, bound: Duration) -> Self {
        self.l1_staleness_bound = bound;
        self
    }

    /// How long an invalidation waits for every replica to acknowledge it has dropped the
    /// entry from its L1 (default 100 ms).
    pub fn coherence_timeout(mut self, timeout: Duration) -> Self {
        self.coherence_timeout = timeout;
        self
    }

    /// The payload format of values stored in Redis (default JSON; `Format::MessagePack` with
    /// the `msgpack` feature is smaller and faster). Process memory stores typed values.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Values whose encoded payload is larger than this are not stored, in process memory as in
    /// Redis (default 4 MiB): counted in `stats().oversized` and logged once; the caller still
    /// gets them.
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }

    /// Logs keys and tags as a short hash instead of their text (keys may carry user ids or
    /// other personal data). Off by default.
    pub fn redact_keys(mut self, redact: bool) -> Self {
        self.redact_keys = redact;
        self
    }

    /// Seeds the random source of probabilistic early refresh (`early`), for reproducible
    /// tests. Unseeded by default.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = Some(seed);
        self
    }

    /// Builds the cache. Fails only on an invalid setting, never because Redis is down.
    pub fn build(self) -> Result<Cache, CacheError> {
        if !key::is_valid_segment(&self.prefix) {
            return Err(CacheError::Config(format!(
                "prefix {:?} must be non-empty ASCII letters, digits or `-_./@+=,`",
                self.prefix
            )));
        }
        if self.default_ttl.is_zero() {
            return Err(CacheError::Config("default_ttl must be greater than zero".to_owned()));
        }
        if self.command_timeout.is_zero() {
            return Err(CacheError::Config("command_timeout must be greater than zero".to_owned()));
        }
        if self.l1_staleness_bound < Duration::from_millis(40) {
            return Err(CacheError::Config("l1_staleness_bound must be at least 40 ms".to_owned()));
        }
        let store = match &self.redis {
            None => Store::Memory(MemoryStore::new(self.max_entries, self.max_bytes)),
            Some(target) => {
                let redis = RedisStore::new(target, self.command_timeout)?;
                let channel = Arc::new(Coherence::new(
                    &self.prefix,
                    &redis,
                    self.l1.then_some((self.l1_max_entries, self.l1_max_bytes)),
                    self.l1_ttl,
                    (self.coherence_timeout, self.l1_staleness_bound),
                ));
                Store::Redis {
                    l1: self.l1.then(|| Arc::clone(&channel)),
                    channel,
                    locks: Arc::new(Locks::new(&self.prefix, &redis)),
                    redis: Arc::new(redis),
                }
            }
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                prefix: self.prefix.into_boxed_str(),
                default_ttl: self.default_ttl,
                store,
                stats: Counters::default(),
                pending: std::sync::Mutex::new(Vec::new()),
                has_pending: std::sync::atomic::AtomicBool::new(false),
                retrying: std::sync::atomic::AtomicBool::new(false),
                flights: Flights::default(),
                refreshing: moka::sync::Cache::builder().time_to_live(Duration::from_secs(30)).build(),
                last_error_log_ms: AtomicU64::new(0),
                redact_keys: self.redact_keys,
                disabled: false,
                format: self.format,
                max_value_bytes: self.max_value_bytes,
                oversized_logged: std::sync::atomic::AtomicBool::new(false),
                rng: AtomicU64::new(self.random_seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64)
                })),
            }),
        })
    }
}

/// What a read found.
#[derive(Clone)]
pub(crate) enum Found<V> {
    Value(V),
    Negative,
}

/// How long a found entry stays fresh, and may be served stale (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    pub(crate) fresh_until_ms: u64,
    /// How long the value took to compute (XFetch's Δ).
    pub(crate) recompute_ms: u32,
}

impl Times {
    fn of(meta: &Meta) -> Times {
        Times { fresh_until_ms: meta.fresh_until_ms, recompute_ms: meta.recompute_ms }
    }
}

impl AsRef<Cache> for Cache {
    fn as_ref(&self) -> &Cache {
        self
    }
}

impl Cache {
    /// A builder with the defaults: in memory, prefix `cache`, ttl 300 s.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// An in-memory cache with the default settings.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::memory();
    /// assert!(!cache.is_redis());
    /// ```
    pub fn memory() -> Cache {
        match CacheBuilder::default().build() {
            Ok(cache) => cache,
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }

    /// A Redis cache at `url` with the default settings (see [`CacheBuilder::redis`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::redis("redis://127.0.0.1:6379").unwrap();
    /// assert!(cache.is_redis());
    /// # }
    /// ```
    pub fn redis(url: &str) -> Result<Cache, CacheError> {
        Cache::builder().redis(url).build()
    }

    /// A cache that never stores: every cached call runs its body, every read misses (counted
    /// in `stats().misses`), `set` stores nothing, invalidations succeed and do nothing. For
    /// tests that must see the code behind a `#[cached]` fn run, and for turning caching off by
    /// configuration.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::disabled();
    /// cache.set("k", &1u32, std::time::Duration::from_secs(60)).await.unwrap();
    /// assert_eq!(cache.get::<u32>("k").await, None);
    /// assert_eq!(cache.get_or_fetch("k", std::time::Duration::from_secs(60), || async { 2u32 }).await, 2);
    /// assert_eq!(cache.stats().stores, 0);
    /// # }
    /// ```
    pub fn disabled() -> Cache {
        let mut cache = Cache::memory();
        if let Some(inner) = Arc::get_mut(&mut cache.inner) {
            inner.disabled = true;
        }
        cache
    }

    /// Whether this is a [`Cache::disabled`] cache.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.inner.disabled
    }

    /// Whether entries are stored in Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.store, Store::Redis { .. })
    }

    /// Whether the process-memory tier in front of Redis is in use right now: configured, and
    /// its invalidation channel subscribed. (It starts with the first cached call, and is
    /// bypassed while the channel is down.)
    ///
    /// ```
    /// assert!(!cache_runtime::Cache::memory().l1_live());
    /// ```
    pub fn l1_live(&self) -> bool {
        matches!(&self.inner.store, Store::Redis { l1: Some(c), .. } if c.live())
    }

    /// The ttl used when none is given.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        let (memory_entries, memory_bytes) = match &self.inner.store {
            Store::Memory(mem) => mem.size(),
            Store::Redis { l1: Some(l1), .. } => l1.l1.size(),
            Store::Redis { l1: None, .. } => (0, 0),
        };

        Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            dropped_fills: c.dropped_fills.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            circuit_openings: match &self.inner.store {
                Store::Redis { redis, .. } => redis.breaker_openings(),
                Store::Memory(_) => 0,
            },
            memory_entries,
            memory_bytes,
        }
    }

    /// The plain API scoped to one namespace (the one `#[cached(namespace = "…")]` uses).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let users = cache.namespace("users");
    /// users.set("1", &"ada".to_string(), std::time::Duration::from_secs(60)).await.unwrap();
    /// assert_eq!(users.get::<String>("1").await.as_deref(), Some("ada"));
    /// assert_eq!(cache.get::<String>("1").await, None); // another namespace
    /// # }
    /// ```
    pub fn namespace<'a>(&'a self, namespace: &'a str) -> Namespace<'a> {
        Namespace { cache: self, namespace }
    }

    /// Reads `key` (default namespace). A miss, an expired entry, an entry of another type, an
    /// undecodable entry and an unreachable Redis all read as `None`.
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        self.namespace(DEFAULT_NAMESPACE).get(key).await
    }

    /// What is stored under `key` (default namespace), without decoding the value: when it was
    /// stored, the freshness and staleness left, its tags with their versions, its size and
    /// format; `None` when nothing readable is stored (or Redis cannot be reached).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// cache.set("k", &"v".to_string(), std::time::Duration::from_secs(60)).await.unwrap();
    /// let info = cache.inspect("k").await.unwrap();
    /// assert!(info.fresh_for > std::time::Duration::from_secs(55));
    /// assert!(cache.inspect("other").await.is_none());
    /// # }
    /// ```
    pub async fn inspect(&self, key: &str) -> Option<EntryInfo> {
        self.namespace(DEFAULT_NAMESPACE).inspect(key).await
    }

    /// Stores `value` under `key` (default namespace) for `ttl`.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError> {
        self.namespace(DEFAULT_NAMESPACE).set(key, value, ttl).await
    }

    /// Removes `key` (default namespace).
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.namespace(DEFAULT_NAMESPACE).invalidate(key).await
    }

    /// Cache-aside on `key` (default namespace): the cached value, or `fetch`'s result, stored
    /// for `ttl`. See [`Namespace::get_or_fetch`].
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.namespace(DEFAULT_NAMESPACE).get_or_fetch(key, ttl, fetch).await
    }

    /// Cache-aside for fallible fetches: only `Ok` is stored, an `Err` is returned as is.
    /// See [`Namespace::try_get_or_fetch`].
    pub async fn try_get_or_fetch<T, E, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.namespace(DEFAULT_NAMESPACE).try_get_or_fetch(key, ttl, fetch).await
    }

    /// Removes every entry of namespace `namespace`; returns how many were removed. On Redis
    /// this walks the keyspace with `SCAN MATCH` and `UNLINK`s in batches (never `KEYS`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// cache.namespace("users").set("1", &1u8, ttl).await.unwrap();
    /// cache.set("1", &1u8, ttl).await.unwrap();
    /// assert_eq!(cache.clear_namespace("users").await.unwrap(), 1);
    /// assert_eq!(cache.get::<u8>("1").await, Some(1)); // other namespaces are untouched
    /// # }
    /// ```
    pub async fn clear_namespace(&self, namespace: &str) -> Result<u64, CacheError> {
        let mut ns = String::new();
        key::escape_into(&mut ns, namespace);
        self.apply(Op::Namespace(ns)).await
    }

    /// Removes every entry tagged `tag` (`#[cached(tags = [...])]`), on every replica. O(1):
    /// the tag's version is bumped and entries recorded under an older version stop matching,
    /// including entries being filled while this runs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use cache_runtime::{cached, Cache};
    /// # static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::memory);
    /// #[cached(key = "post:<id>", tags = ["posts"], cache = *CACHE)]
    /// async fn post(id: u32) -> String { format!("post {id}") }
    ///
    /// post(1).await;
    /// CACHE.invalidate_tag("posts").await.unwrap(); // post(1) is computed again next time
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.apply(Op::Tag(tag.to_owned())).await.map(drop)
    }

    // ----- the engine shared by the plain API and the macros -----

    pub(crate) fn key_writer(&self, namespace: &str, capacity_hint: usize) -> KeyWriter {
        KeyWriter::new(&self.inner.prefix, namespace, capacity_hint)
    }

    pub(crate) fn full_key(&self, namespace: &str, key: &str) -> String {
        let mut ns = String::new();
        key::escape_into(&mut ns, namespace);
        let mut writer = self.key_writer(&ns, key.len());
        writer.raw(key);
        writer.finish()
    }

    /// How a key appears in logs: as is, or as a short hash with `redact_keys`.
    pub(crate) fn log_key<'a>(&self, key: &'a str) -> LogKey<'a> {
        LogKey { key, redact: self.inner.redact_keys }
    }

    pub(crate) fn record_hit(&self, key: &str) {
        self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_hits_total").increment(1);
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "hit");
    }

    pub(crate) fn record_miss(&self, key: &str) {
        self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_misses_total").increment(1);
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "miss");
    }

    /// A body (or handler) ran for a miss or a refresh and took `took`.
    pub(crate) fn record_computed(&self, key: &str, took: Duration) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache_compute_seconds").record(took.as_secs_f64());
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), took_ms = took.as_secs_f64() * 1e3, "computed");
    }

    /// Counts a failed store operation and logs it, at most once a second (an outage must not
    /// flood the logs): the log line says how many failures it stands for.
    fn count_result<T>(&self, result: &Result<T, CacheError>, op: &'static str) {
        // Oversized values are counted and logged on their own.
        if let Some(err) = result.as_ref().err().filter(|e| !matches!(e, CacheError::TooLarge(_))) {
            let errors = self.inner.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
            #[cfg(feature = "metrics")]
            metrics::counter!("cache_errors_total", "op" => op).increment(1);
            let now = now_ms();
            let last = self.inner.last_error_log_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .inner
                    .last_error_log_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(target: "cache_runtime", op, error = %err, errors_so_far = errors, "cache store failed; continuing without it");
            }
        }
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// Claims the right to refresh `key` (one refresh per key in this process and, on Redis,
    /// across replicas: `SET …}:r NX PX`). The claim lapses after `hold`.
    pub(crate) async fn claim_refresh(&self, key: &str, hold: Duration) -> bool {
        let local = self.inner.refreshing.entry(key.to_owned()).or_insert(()).is_fresh();
        if !local {
            return false;
        }
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "refresh");
        match &self.inner.store {
            Store::Memory(_) => true,
            Store::Redis { redis, .. } => {
                let claimed = redis.claim_token(&refresh_key(key), "1", hold).await;
                self.count_result(&claimed, "claim refresh");
                if !matches!(claimed, Ok(true)) {
                    self.inner.refreshing.invalidate(key);
                }
                matches!(claimed, Ok(true))
            }
        }
    }

    /// `lock`: on Redis, hold the key's cross-replica lock to compute it, or wait for the
    /// holder's value (woken when it lands). In memory, single-flight already is the lock.
    pub(crate) async fn lock_or_wait<V: Stored, C: Codec<V>>(
        &self,
        key: &str,
        namespace: &str,
        tags: &[String],
        hold: Duration,
    ) -> Locked<V> {
        let Store::Redis { redis, locks, .. } = &self.inner.store else {
            return Locked::Compute { token: None, lookup: None };
        };
        let deadline = now_ms().saturating_add(duration_ms(hold));
        let mut waited = false;
        loop {
            match locks.attempt(redis, key, hold, deadline).await {
                Attempt::Held(token) if !waited => {
                    return Locked::Compute { token: Some(self.held(key, token)), lookup: None }
                }
                Attempt::Held(token) => {
                    // The previous holder may have stored the value meanwhile.
                    let lookup = self.lookup::<V, C>(key, namespace, tags, false).await;
                    if let Some((found, times)) = lookup.hit.as_ref().filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        let ready = Locked::Ready(found.clone(), *times);
                        locks.release(redis, key, &token).await;
                        return ready;
                    }
                    return Locked::Compute { token: Some(self.held(key, token)), lookup: Some(lookup) };
                }
                Attempt::Retry => {
                    waited = true;
                    let lookup = self.lookup::<V, C>(key, namespace, tags, false).await;
                    if let Some((found, times)) = lookup.hit.filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        return Locked::Ready(found, times);
                    }
                }
                Attempt::TimedOut => {
                    let lookup = self.lookup::<V, C>(key, namespace, tags, false).await;
                    if let Some((found, times)) = lookup.hit.as_ref().filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        return Locked::Ready(found.clone(), *times);
                    }
                    return Locked::Compute { token: None, lookup: Some(lookup) };
                }
            }
        }
    }

    /// Releases a lock taken by `lock_or_wait` and wakes its waiters.
    async fn unlock(&self, key: &str, token: &str) {
        if let Store::Redis { redis, locks, .. } = &self.inner.store {
            locks.release(redis, key, token).await;
        }
    }

    fn held(&self, key: &str, token: String) -> HeldLock {
        HeldLock { cache: self.clone(), key: key.to_owned(), token: Some(token) }
    }

    pub(crate) async fn release_refresh(&self, key: &str) {
        self.inner.refreshing.invalidate(key);
        if let Store::Redis { redis, .. } = &self.inner.store {
            let _ = redis.unlink(&refresh_key(key)).await;
        }
    }

    /// A uniform draw in (0, 1] (SplitMix64; seedable for tests with `random_seed`).
    pub(crate) fn random(&self) -> f64 {
        let mut z =
            self.inner.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub(crate) fn record_stale(&self, key: &str) {
        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_stale_total").increment(1);
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "stale");
    }

    /// A fresh hit from process memory (the memory store, or a live L1): no I/O, no future. The
    /// read path tries this first.
    #[inline]
    pub(crate) fn local_hit<V: Stored>(&self, key: &str) -> Option<(Found<V>, Times)> {
        let (store, missing) = match &self.inner.store {
            Store::Memory(mem) => (mem, Some(0)),
            Store::Redis { l1: Some(c), .. } if c.live() => (&c.l1, None),
            Store::Redis { .. } => return None,
        };
        let entry = store.get(key)?;
        // The store already hides an entry past its stale-until instant (its expiry); the
        // clock is read only for an entry that has a stale window after its freshness.
        if entry.meta.fresh_until_ms != entry.meta.stale_until_ms && entry.meta.fresh_until_ms <= now_ms() {
            return None;
        }
        entry_hit(store, &entry, missing)
    }

    /// Reads `key`. A hit is a fresh entry of type `V` whose tags are all current; anything
    /// else (absent, expired, wrong type, undecodable, invalidated tag) is a miss that carries
    /// the lease its fill needs. `lease: None` means "do not store" (the store is failing, or
    /// invalidations that failed earlier could not be applied yet).
    ///
    /// `refresh`: skip the hit, only take the lease (a refresh that must recompute).
    pub(crate) async fn lookup<V: Stored, C: Codec<V>>(
        &self,
        key: &str,
        namespace: &str,
        tags: &[String],
        refresh: bool,
    ) -> Lookup<V> {
        if self.inner.disabled {
            return Lookup { hit: None, lease: None, l1_epoch: None };
        }
        match &self.inner.store {
            Store::Memory(mem) => {
                if let Some(hit) = memory_hit::<V>(mem, key, Some(0), now_ms()).filter(|_| !refresh) {
                    return Lookup { hit: Some(hit), lease: None, l1_epoch: None };
                }
                Lookup { hit: None, lease: Some(mem.lease(key, namespace, tags)), l1_epoch: None }
            }
            Store::Redis { redis, l1, channel, .. } => {
                let mut l1_epoch = None;
                channel.ensure_started(redis);
                if let Some(c) = l1 {
                    if c.live() {
                        // Only a fresh L1 copy: a stale one may already be refreshed in Redis.
                        let fresh = |hit: &(Found<V>, Times)| !refresh && hit.1.fresh_until_ms > now_ms();
                        if let Some(hit) = memory_hit::<V>(&c.l1, key, None, now_ms()).filter(fresh) {
                            return Lookup { hit: Some(hit), lease: None, l1_epoch: None };
                        }
                        l1_epoch = Some(c.epoch());
                    }
                }
                if !self.flush_pending().await {
                    return Lookup { hit: None, lease: None, l1_epoch: None };
                }
                // The namespace is the entry's first, implicit, tag.
                let mut all_tags = Vec::with_capacity(tags.len() + 1);
                all_tags.push(namespace_tag(namespace));
                all_tags.extend_from_slice(tags);
                let result = redis.read(key, &self.inner.prefix, &all_tags).await;
                self.count_result(&result, "get");
                let Ok(mut read) = result else { return Lookup { hit: None, lease: None, l1_epoch: None } };
                if let (Some(c), Some(_)) = (l1, l1_epoch) {
                    for (i, (tag, version)) in read.lease.tags.iter().enumerate() {
                        if !read.missing_tags.contains(&i) {
                            c.l1.learn_tag(tag, *version);
                        }
                    }
                }
                if let Some(bytes) = read.bytes.as_ref().filter(|_| !refresh) {
                    let hit = self.decode_hit::<V, C>(redis, key, bytes, &read).await;
                    // Right after an outage, what was stored before it may be invalidated by a
                    // write whose invalidation is still queued in its writer: a miss.
                    if let Some((hit, meta)) = hit.filter(|(_, meta)| channel.trusted(meta.stored_at_ms)) {
                        if let (Some(c), Some(epoch)) = (l1, l1_epoch) {
                            let value = match &hit.0 {
                                Found::Value(v) => Some(v),
                                Found::Negative => None,
                            };
                            self.l1_insert(c, epoch, key.to_owned(), meta, value, C::memory_size(bytes.len()));
                        }
                        return Lookup { hit: Some(hit), lease: None, l1_epoch: None };
                    }
                }
                if !read.missing_tags.is_empty() {
                    let result = redis.init_tags(&self.inner.prefix, &mut read.lease, &read.missing_tags).await;
                    self.count_result(&result, "init tag versions");
                    if result.is_err() {
                        return Lookup { hit: None, lease: None, l1_epoch: None };
                    }
                    if let Some(c) = l1 {
                        for &i in &read.missing_tags {
                            let (tag, version) = &read.lease.tags[i];
                            c.l1.learn_tag(tag, *version);
                        }
                    }
                }
                Lookup { hit: None, lease: Some(read.lease), l1_epoch }
            }
        }
    }

    /// Puts a copy of what Redis holds into the L1, unless an invalidation arrived since
    /// `epoch` was read (before the Redis read) or the channel is down.
    /// `size`: what the value costs in memory (`Codec::memory_size`), for its weight.
    #[allow(clippy::too_many_arguments)]
    fn l1_insert<V: Stored>(&self, c: &Coherence, epoch: u64, key: String, meta: Meta, value: Option<&V>, size: usize) {
        if c.live() && c.epoch() == epoch {
            let weight = store::entry_weight(key.len(), size);
            let mut entry = mem_entry(meta, value, weight);
            // The L1 keeps it at most `l1_ttl`; its own times (what `max-age` reports) stay.
            entry.expires_ms = entry.expires_ms.min(now_ms().saturating_add(duration_ms(c.l1_ttl)));
            c.l1.insert(key, entry);
        }
    }

    async fn decode_hit<V: Stored, C: Codec<V>>(
        &self,
        redis: &RedisStore,
        key: &str,
        bytes: &[u8],
        read: &RedisRead,
    ) -> Option<((Found<V>, Times), Meta)> {
        let decoded = match envelope::decode(bytes) {
            Ok(decoded) => decoded,
            Err(why) => {
                tracing::warn!(target: "cache_runtime", key, %why, "unreadable cache entry; treating it as a miss");
                return None;
            }
        };
        if decoded.key_hash != envelope::key_hash(key) {
            tracing::warn!(target: "cache_runtime", key, "cache entry was stored under another key; treating it as a miss");
            return None;
        }
        if decoded.meta.fingerprint != envelope::fingerprint::<V>() {
            tracing::warn!(
                target: "cache_runtime",
                key,
                expected = std::any::type_name::<V>(),
                "cache entry was written for another type; treating it as a miss"
            );
            return None;
        }
        if decoded.meta.stale_until_ms <= now_ms() {
            return None;
        }
        if !self.recorded_tags_current(redis, &decoded.meta.tags, read).await {
            return None;
        }
        let times = Times::of(&decoded.meta);
        if decoded.negative {
            return Some(((Found::Negative, times), decoded.meta));
        }
        let Some(format) = decoded.format else {
            tracing::warn!(target: "cache_runtime", key, "cache entry in a format this build cannot read; treating it as a miss");
            return None;
        };
        match C::decode(decoded.payload, format) {
            Ok(value) => Some(((Found::Value(value), times), decoded.meta)),
            Err(err) => {
                tracing::warn!(target: "cache_runtime", key, error = %err, "cache entry does not decode; treating it as a miss");
                None
            }
        }
    }

    /// Whether every tag an entry recorded still has the recorded version. The versions of the
    /// caller's tags came with the read; others (an entry read through the plain API) cost one
    /// more round trip.
    async fn recorded_tags_current(&self, redis: &RedisStore, recorded: &[(String, u64)], read: &RedisRead) -> bool {
        let mut unknown = Vec::new();
        for (tag, version) in recorded {
            match read.lease.tags.iter().position(|(t, _)| t == tag) {
                Some(i) if read.missing_tags.contains(&i) => return false,
                Some(i) if read.lease.tags[i].1 != *version => return false,
                Some(_) => {}
                None => unknown.push((tag.as_str(), *version)),
            }
        }
        if unknown.is_empty() {
            return true;
        }
        let names: Vec<&str> = unknown.iter().map(|(t, _)| *t).collect();
        match redis.tag_versions(&self.inner.prefix, &names).await {
            Ok(current) => current.iter().zip(&unknown).all(|(c, (_, v))| *c == Some(*v)),
            Err(err) => {
                self.count_result::<()>(&Err(err), "get tag versions");
                false
            }
        }
    }

    /// Stores `value` (a negative entry when `None`) under `key` for `ttl`, unless something
    /// the lease depends on was invalidated since the read: then the store is dropped (a slow
    /// read of the old data never overwrites a newer invalidation). Returns whether it stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fill<V: Stored, C: Codec<V>>(
        &self,
        key: String,
        namespace: &str,
        lease: &Lease,
        l1_epoch: Option<u64>,
        value: Option<&V>,
        (ttl, keep): (Duration, Duration),
        recompute: Duration,
    ) -> bool {
        let meta = self.meta::<V>(ttl, keep, recompute, lease.tags.clone());
        let result = match &self.inner.store {
            Store::Memory(mem) => self.checked_payload::<V, C>(value).map(|payload| {
                mem.fill(key.clone(), namespace, lease, mem_entry(meta, value, memory_weight::<V, C>(&key, &payload)))
            }),
            Store::Redis { redis, l1, .. } => match self.encode_entry::<V, C>(&key, &meta, value) {
                Ok(bytes) => {
                    let stored = redis.fill(&key, lease, &bytes, ttl + keep).await;
                    if let (Ok(true), Some(c), Some(epoch)) = (&stored, l1, l1_epoch) {
                        self.l1_insert(c, epoch, key, meta, value, C::memory_size(bytes.len()));
                    }
                    stored
                }
                Err(err) => Err(err),
            },
        };
        self.count_result(&result, "set");
        match result {
            Ok(true) => {
                self.inner.stats.stores.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(false) => {
                self.inner.stats.dropped_fills.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "cache_runtime", namespace, "fill dropped: invalidated while it was computed");
                false
            }
            Err(_) => false,
        }
    }

    /// `keep`: how long the entry outlives its freshness (the serve-stale windows).
    fn meta<V>(&self, ttl: Duration, keep: Duration, recompute: Duration, tags: Vec<(String, u64)>) -> Meta {
        let now = now_ms();
        let fresh_until_ms = now.saturating_add(duration_ms(ttl));
        Meta {
            fingerprint: envelope::fingerprint::<V>(),
            stored_at_ms: now,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(duration_ms(keep)),
            recompute_ms: u32::try_from(recompute.as_millis()).unwrap_or(u32::MAX),
            etag: None,
            tags,
        }
    }

    /// Stores unconditionally (the plain API's `set`).
    async fn store<V: Stored, C: Codec<V>>(&self, key: String, value: &V, ttl: Duration) -> Result<(), CacheError> {
        if self.inner.disabled {
            return Ok(());
        }
        let meta = self.meta::<V>(ttl, Duration::ZERO, Duration::ZERO, Vec::new());
        let result = match &self.inner.store {
            Store::Memory(mem) => self.checked_payload::<V, C>(Some(value)).map(|payload| {
                let weight = memory_weight::<V, C>(&key, &payload);
                mem.insert(key, mem_entry(meta, Some(value), weight));
            }),
            Store::Redis { redis, channel, .. } => match self.encode_entry::<V, C>(&key, &meta, Some(value)) {
                Ok(bytes) => {
                    // Another replica's L1 may hold the previous value: a set is an invalidation
                    // too, published whether this process has an L1 or not.
                    let stored = redis.set(&key, &bytes, ttl).await;
                    if stored.is_ok() {
                        channel.ensure_started(redis);
                        channel.apply_local(&Message::Key(key.clone()));
                        let _ = channel.publish(redis, &Message::Key(key)).await;
                    }
                    stored
                }
                Err(err) => Err(err),
            },
        };
        self.count_result(&result, "set");
        if result.is_ok() {
            self.inner.stats.stores.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Applies one invalidation; one that fails on Redis is queued and retried before this
    /// cache reads from Redis again (so it is never silently lost), and the error returned.
    /// Returns how many entries a namespace clear removed (0 for keys and tags).
    pub(crate) async fn apply(&self, op: Op) -> Result<u64, CacheError> {
        let started = std::time::Instant::now();
        let mut result = self.try_apply(&op).await;
        // A failure while Redis answers otherwise (a fail-over, a dropped connection: not a
        // timeout) is retried here a few times (50, 100, 200 ms) before the write returns:
        // queued, it would reach the other replicas' L1s only after the write returned. A
        // timeout or an open breaker (Redis unreachable: every replica's channel notices within
        // `l1_staleness_bound`) is queued at once.
        for backoff_ms in [50, 100, 200] {
            match &result {
                Err(CacheError::Timeout | CacheError::Unavailable) | Ok(_) => break,
                Err(_) if self.inner.has_pending.load(Ordering::Acquire) => break,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    result = self.try_apply(&op).await;
                }
            }
        }
        self.count_result(&result, "invalidate");
        match result {
            Ok(removed) => {
                self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                metrics::counter!("cache_invalidations_total").increment(1);
                let (kind, what) = match &op {
                    Op::Key(key) => ("key", self.log_key(key).to_string()),
                    Op::Tag(tag) => ("tag", self.log_key(tag).to_string()),
                    Op::Namespace(ns) => ("namespace", ns.clone()),
                };
                tracing::debug!(target: "cache_runtime", kind, what, took_ms = started.elapsed().as_secs_f64() * 1e3, "invalidated");
                Ok(removed)
            }
            Err(err) => {
                lock(&self.inner.pending).push(op);
                self.inner.has_pending.store(true, Ordering::Release);
                self.retry_in_background();
                Err(err)
            }
        }
    }

    /// Keeps retrying queued invalidations until they are applied, so that other replicas
    /// (which read Redis, not this queue) stop seeing what they invalidate as soon as Redis
    /// answers, even if this replica reads nothing meanwhile.
    fn retry_in_background(&self) {
        if self.inner.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.retrying.store(false, Ordering::Release);
            return;
        };
        let cache = self.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if cache.flush_pending().await {
                    break;
                }
            }
            cache.inner.retrying.store(false, Ordering::Release);
            // An invalidation queued between the last flush and the flag reset.
            if cache.inner.has_pending.load(Ordering::Acquire) {
                cache.retry_in_background();
            }
        });
    }

    async fn try_apply(&self, op: &Op) -> Result<u64, CacheError> {
        let prefix = &self.inner.prefix;
        match &self.inner.store {
            Store::Memory(mem) => Ok(match op {
                Op::Key(key) => {
                    mem.invalidate_key(key);
                    0
                }
                Op::Tag(tag) => {
                    mem.bump_tag(tag);
                    0
                }
                Op::Namespace(ns) => mem.clear_namespace(ns, &key::namespace_start(prefix, ns)),
            }),
            Store::Redis { redis, l1, channel, .. } => {
                // Also without an L1: the channel must run to hear the acknowledgements.
                channel.ensure_started(redis);
                // The writer's own L1 first: its next read cannot see what it invalidated.
                if let Some(c) = l1 {
                    match op {
                        Op::Key(key) => c.apply_local(&Message::Key(key.clone())),
                        Op::Tag(tag) => c.forget_tag(tag),
                        Op::Namespace(ns) => c.apply_local(&Message::Namespace(ns.clone())),
                    }
                }
                let (message, removed) = match op {
                    Op::Key(key) => {
                        redis.invalidate_key(key).await?;
                        (Message::Key(key.clone()), 0)
                    }
                    Op::Tag(tag) => {
                        let version = redis.bump(&tag_key(prefix, tag)).await?;
                        (Message::Tag { tag: tag.clone(), version }, 0)
                    }
                    Op::Namespace(ns) => {
                        redis.bump(&tag_key(prefix, &namespace_tag(ns))).await?;
                        // The version bump above is the invalidation; removing the entries only
                        // reclaims memory, so its failure must not stop the replicas' L1s
                        // from hearing of the clear.
                        let removed = match redis.del_matching(&key::namespace_pattern(prefix, ns)).await {
                            Ok(removed) => removed,
                            Err(err) => {
                                tracing::warn!(target: "cache_runtime", namespace = %ns, error = %err, "namespace cleared, but its entries could not all be removed (they read as misses until they expire)");
                                0
                            }
                        };
                        (Message::Namespace(ns.clone()), removed)
                    }
                };
                // Published whatever this process's own L1 setting: other replicas may have one.
                channel.publish(redis, &message).await?;
                Ok(removed)
            }
        }
    }

    /// Retries queued invalidations; `true` when none is left.
    async fn flush_pending(&self) -> bool {
        if !self.inner.has_pending.load(Ordering::Acquire) {
            return true;
        }
        let ops = std::mem::take(&mut *lock(&self.inner.pending));
        let mut failed = Vec::new();
        for op in ops {
            if self.try_apply(&op).await.is_err() {
                failed.push(op);
            } else {
                self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut pending = lock(&self.inner.pending);
        failed.append(&mut pending);
        *pending = failed;
        let empty = pending.is_empty();
        self.inner.has_pending.store(!empty, Ordering::Release);
        empty
    }
}

/// What one `#[invalidates]` call invalidates, rendered before its body runs.
#[doc(hidden)]
#[derive(Debug)]
pub struct Invalidation<'a> {
    cache: &'a Cache,
    ops: Vec<Op>,
}

impl<'a> Invalidation<'a> {
    pub fn new(cache: &'a Cache) -> Self {
        Invalidation { cache, ops: Vec::new() }
    }

    /// A full stored key (built with the cache's key writer).
    pub fn key(mut self, key: String) -> Self {
        self.ops.push(Op::Key(key));
        self
    }

    pub fn tag(mut self, tag: String) -> Self {
        self.ops.push(Op::Tag(tag));
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.ops.push(Op::Namespace(namespace.to_owned()));
        self
    }

    /// Applies every invalidation; failures are logged, counted and queued for retry (they
    /// never fail the request that caused them).
    pub async fn run(&self) {
        for op in &self.ops {
            let _ = self.cache.apply(op.clone()).await;
        }
    }
}

/// One invalidation, kept to be retried when it fails.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A full stored key.
    Key(String),
    Tag(String),
    /// An escaped namespace.
    Namespace(String),
}

/// A cross-replica lock this caller holds (`lock`): released by [`HeldLock::release`] once the
/// value is stored, or, should the caller be cancelled or panic first, by a task its drop spawns
/// (the waiters then go on at once instead of waiting out the hold).
pub(crate) struct HeldLock {
    cache: Cache,
    key: String,
    token: Option<String>,
}

impl HeldLock {
    /// Releases the lock and wakes its waiters.
    pub(crate) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            self.cache.unlock(&self.key, &token).await;
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { cache.unlock(&key, &token).await });
        }
    }
}

/// What `lock_or_wait` gave.
pub(crate) enum Locked<V> {
    /// Compute the value (holding the lock when `token` is set); `lookup`: a newer read to use
    /// instead of the caller's (its lease is the current one).
    Compute { token: Option<HeldLock>, lookup: Option<Lookup<V>> },
    /// The holder's value.
    Ready(Found<V>, Times),
}

/// What a lookup found, and what its fill needs.
pub(crate) struct Lookup<V> {
    pub(crate) hit: Option<(Found<V>, Times)>,
    pub(crate) lease: Option<Lease>,
    /// The L1 epoch before the Redis read, when the L1 is in use.
    pub(crate) l1_epoch: Option<u64>,
}

/// A current, typed entry from process memory, fresh or inside its serve-stale window. `missing`: what a tag this process has
/// no version for counts as (see `MemoryStore::tags_current`).
#[inline]
/// `until`: the entry must last past this instant (ms); `now` for fresh-or-stale reads.
fn memory_hit<V: Stored>(
    store: &MemoryStore,
    key: &str,
    missing: Option<u64>,
    until: u64,
) -> Option<(Found<V>, Times)> {
    let entry = store.get(key)?;
    if entry.meta.stale_until_ms <= until {
        return None;
    }
    entry_hit(store, &entry, missing)
}

/// The value of `entry` if every tag it recorded is current.
fn entry_hit<V: Stored>(store: &MemoryStore, entry: &MemEntry, missing: Option<u64>) -> Option<(Found<V>, Times)> {
    if !store.tags_current(entry, missing) {
        return None;
    }
    let times = Times::of(&entry.meta);
    if entry.negative {
        return Some((Found::Negative, times));
    }
    entry.value.downcast_ref::<V>().map(|v| (Found::Value(v.clone()), times))
}

/// A key as logs show it.
pub(crate) struct LogKey<'a> {
    key: &'a str,
    redact: bool,
}

impl std::fmt::Display for LogKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.redact {
            write!(f, "#{:016x}", envelope::fnv1a(self.key.as_bytes()))
        } else {
            f.write_str(self.key)
        }
    }
}

fn refresh_key(key: &str) -> String {
    format!("{key}:r")
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `weight`: see [`store::entry_weight`].
fn mem_entry<V: Stored>(meta: Meta, value: Option<&V>, weight: u32) -> MemEntry {
    match value {
        Some(v) => {
            MemEntry { expires_ms: meta.stale_until_ms, meta, negative: false, value: Box::new(v.clone()), weight }
        }
        None => MemEntry { expires_ms: meta.stale_until_ms, meta, negative: true, value: Box::new(()), weight },
    }
}

/// The weight of a memory-store entry whose value encodes to `payload`.
fn memory_weight<V: Stored, C: Codec<V>>(key: &str, payload: &[u8]) -> u32 {
    store::entry_weight(key.len(), C::memory_size(payload.len()))
}

impl Cache {
    /// The stored form of a value, unless it is larger than `max_value_bytes` (then it is not
    /// stored: counted in `stats().oversized`, logged once).
    fn encode_entry<V: Stored, C: Codec<V>>(
        &self,
        key: &str,
        meta: &Meta,
        value: Option<&V>,
    ) -> Result<Vec<u8>, CacheError> {
        let payload = self.checked_payload::<V, C>(value)?;
        envelope::encode(key, meta, value.is_none(), self.inner.format, &payload)
            .map_err(|why| CacheError::Config(why.to_owned()))
    }

    /// The encoded value, unless it is larger than `max_value_bytes`, in process memory as in
    /// Redis (a test on the memory store sees what production on Redis does).
    fn checked_payload<V: Stored, C: Codec<V>>(&self, value: Option<&V>) -> Result<Vec<u8>, CacheError> {
        let payload = match value {
            Some(v) => C::encode(v, self.inner.format)?,
            None => Vec::new(),
        };
        if payload.len() > self.inner.max_value_bytes {
            self.inner.stats.oversized.fetch_add(1, Ordering::Relaxed);
            if !self.inner.oversized_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "cache_runtime",
                    bytes = payload.len(),
                    max = self.inner.max_value_bytes,
                    "a value larger than max_value_bytes is not stored (logged once; see stats().oversized)"
                );
            }
            return Err(CacheError::TooLarge(payload.len()));
        }
        Ok(payload)
    }
}

/// Where an inspected entry was found (see [`Cache::inspect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// The in-memory store (a cache built without Redis).
    Memory,
    /// Redis (one server or a cluster).
    Redis,
}

/// What is stored under a key, without decoding its value: for tests and for operators
/// ([`Cache::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The store it was read from.
    pub tier: Tier,
    /// Whether this process's L1 also holds a copy (Redis with the L1 only).
    pub in_l1: bool,
    /// When the value was stored.
    pub stored_at: std::time::SystemTime,
    /// Freshness left (zero once it expired).
    pub fresh_for: Duration,
    /// How long it may still be served stale (`stale`, `stale_if_error`; zero without a window).
    pub stale_for: Duration,
    /// A stored `None` (`cache_none`).
    pub negative: bool,
    /// The tags the entry carries, with the versions it recorded (the namespace not included).
    pub tags: Vec<(String, u64)>,
    /// Bytes it takes: the stored envelope in Redis, the estimated weight in memory.
    pub bytes: usize,
    /// The payload format in Redis (`None` in memory, which holds typed values).
    pub format: Option<Format>,
    /// The `ETag` of a stored response.
    pub etag: Option<String>,
}

impl EntryInfo {
    fn of(tier: Tier, meta: &Meta, negative: bool, bytes: usize, format: Option<Format>) -> EntryInfo {
        let now = now_ms();
        let ms = |until: u64| Duration::from_millis(until.saturating_sub(now));
        EntryInfo {
            tier,
            in_l1: false,
            stored_at: std::time::UNIX_EPOCH + Duration::from_millis(meta.stored_at_ms),
            fresh_for: ms(meta.fresh_until_ms),
            stale_for: ms(meta.stale_until_ms).saturating_sub(ms(meta.fresh_until_ms)),
            negative,
            tags: meta.tags.iter().filter(|(t, _)| !t.starts_with("%%ns:")).cloned().collect(),
            bytes,
            format,
            etag: meta.etag.as_deref().map(str::to_owned),
        }
    }
}

/// The plain API within one namespace, from [`Cache::namespace`].
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    cache: &'a Cache,
    namespace: &'a str,
}

impl Namespace<'_> {
    /// What is stored under `key` in this namespace (see [`Cache::inspect`]).
    pub async fn inspect(&self, key: &str) -> Option<EntryInfo> {
        let full = self.cache.full_key(self.namespace, key);
        match &self.cache.inner.store {
            Store::Memory(mem) => {
                let entry = mem.get(&full)?;
                Some(EntryInfo::of(Tier::Memory, &entry.meta, entry.negative, entry.weight as usize, None))
            }
            Store::Redis { redis, l1, .. } => {
                let bytes = redis.get_raw(&full).await.ok()??;
                let decoded = envelope::decode(&bytes).ok().filter(|d| d.key_hash == envelope::key_hash(&full))?;
                let mut info = EntryInfo::of(Tier::Redis, &decoded.meta, decoded.negative, bytes.len(), decoded.format);
                info.in_l1 = l1.as_ref().is_some_and(|c| c.live() && c.l1.get(&full).is_some());
                Some(info)
            }
        }
    }

    fn escaped(&self) -> String {
        let mut ns = String::new();
        key::escape_into(&mut ns, self.namespace);
        ns
    }

    /// Reads `key`; see [`Cache::get`].
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        match self
            .cache
            .lookup::<T, Json>(&self.cache.full_key(self.namespace, key), &self.escaped(), &[], false)
            .await
            .hit
        {
            Some((Found::Value(v), times)) if times.fresh_until_ms > now_ms() => Some(v),
            Some(_) | None => None,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError> {
        self.cache.store::<T, Json>(self.cache.full_key(self.namespace, key), value, ttl).await
    }

    /// Removes `key`.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.cache.apply(Op::Key(self.cache.full_key(self.namespace, key))).await.map(drop)
    }

    /// Removes every entry of this namespace; see [`Cache::clear_namespace`].
    pub async fn clear(&self) -> Result<u64, CacheError> {
        self.cache.clear_namespace(self.namespace).await
    }

    /// Cache-aside: returns the cached value of `key`, or runs `fetch`, stores its result for
    /// `ttl` and returns it. A store that is down makes this run `fetch` every time; it never
    /// fails because of the cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// let hot = cache.namespace("posts").get_or_fetch("hot", ttl, || async { vec![1, 2, 3] }).await;
    /// assert_eq!(hot, vec![1, 2, 3]);
    /// # }
    /// ```
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let (opts, namespace) = (CallOpts::new().expire(ttl), self.escaped());
        let key = self.cache.full_key(self.namespace, key);
        let call = fetch::Call { cache: self.cache, key, namespace: &namespace, tags: &[], opts: &opts };
        fetch::run::<Plain<T>, _>(call, fetch(), Spawner::inline()).await
    }

    /// Cache-aside for fallible fetches: only `Ok` values are stored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// let r: Result<u32, String> = cache.try_get_or_fetch("k", ttl, || async { Err("db down".to_string()) }).await;
    /// assert!(r.is_err());
    /// assert_eq!(cache.get::<u32>("k").await, None); // errors are never stored
    /// # }
    /// ```
    pub async fn try_get_or_fetch<T, E, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (opts, namespace) = (CallOpts::new().expire(ttl), self.escaped());
        let key = self.cache.full_key(self.namespace, key);
        let call = fetch::Call { cache: self.cache, key, namespace: &namespace, tags: &[], opts: &opts };
        fetch::run::<ResultMode<T, E>, _>(call, fetch(), Spawner::inline()).await
    }
}
