//! Building a [`Cache`]: [`CacheBuilder`] and the shortcuts `Cache::memory`, `Cache::redis`,
//! `Cache::disabled`.

#[cfg(feature = "redis")]
use crate::cache::DEFAULT_L1_MAX_BYTES;
use crate::cache::{Cache, Counters, Inner, Store, DEFAULT_MAX_BYTES};
use crate::cdn::{PurgeQueue, PurgeSettings, Purger};
use crate::codec::Format;
#[cfg(feature = "redis")]
use crate::coherence::Coherence;
use crate::error::CacheError;
use crate::flight::Flights;
use crate::key::{self};
#[cfg(feature = "redis")]
use crate::lock::Locks;
use crate::policy::Rng;
use crate::store::MemoryStore;
#[cfg(feature = "redis")]
use crate::store::{RedisStore, RedisTarget};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

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
/// Every setting, with Redis (feature `redis`; connecting happens on first use):
///
/// ```
/// use std::time::Duration;
/// # #[cfg(feature = "redis")]
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
/// # #[cfg(not(feature = "redis"))] fn main() {}
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    #[cfg(feature = "redis")]
    redis: Option<RedisTarget>,
    prefix: String,
    default_ttl: Duration,
    #[cfg(feature = "redis")]
    command_timeout: Duration,
    max_entries: u64,
    max_bytes: Option<u64>,
    #[cfg(feature = "redis")]
    l1: bool,
    #[cfg(feature = "redis")]
    l1_max_entries: u64,
    #[cfg(feature = "redis")]
    l1_max_bytes: Option<u64>,
    #[cfg(feature = "redis")]
    l1_ttl: Duration,
    #[cfg(feature = "redis")]
    l1_staleness_bound: Duration,
    #[cfg(feature = "redis")]
    coherence_timeout: Duration,
    random_seed: Option<u64>,
    redact_keys: bool,
    format: Format,
    max_value_bytes: usize,
    cache_status_name: Option<String>,
    purge: PurgeSettings,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            #[cfg(feature = "redis")]
            redis: None,
            prefix: "cache".to_owned(),
            default_ttl: Duration::from_secs(300),
            #[cfg(feature = "redis")]
            command_timeout: Duration::from_millis(250),
            max_entries: 100_000,
            max_bytes: Some(DEFAULT_MAX_BYTES),
            #[cfg(feature = "redis")]
            l1: true,
            #[cfg(feature = "redis")]
            l1_max_entries: 10_000,
            #[cfg(feature = "redis")]
            l1_max_bytes: Some(DEFAULT_L1_MAX_BYTES),
            #[cfg(feature = "redis")]
            l1_ttl: Duration::from_secs(30),
            #[cfg(feature = "redis")]
            l1_staleness_bound: Duration::from_secs(1),
            #[cfg(feature = "redis")]
            coherence_timeout: Duration::from_millis(100),
            random_seed: None,
            redact_keys: false,
            format: Format::Json,
            max_value_bytes: 4 * 1024 * 1024,
            cache_status_name: None,
            purge: PurgeSettings::default(),
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
    #[cfg(feature = "redis")]
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
    #[cfg(feature = "redis")]
    pub fn redis_cluster<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.redis = Some(RedisTarget::Cluster(nodes.into_iter().map(Into::into).collect()));
        self
    }

    /// Store entries in process memory (the default).
    pub fn memory(self) -> Self {
        #[cfg(feature = "redis")]
        return CacheBuilder { redis: None, ..self };
        #[cfg(not(feature = "redis"))]
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
    #[cfg(feature = "redis")]
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
    #[cfg(feature = "redis")]
    pub fn l1(mut self, enabled: bool) -> Self {
        self.l1 = enabled;
        self
    }

    /// Upper bound on the number of entries in the L1 (default 10,000).
    #[cfg(feature = "redis")]
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.l1_max_entries = max;
        self
    }

    /// Upper bound on the bytes held by the L1 (default [`DEFAULT_L1_MAX_BYTES`], 64 MiB,
    /// beside `l1_max_entries`). An entry weighs its key, its size in Redis and a fixed
    /// overhead per entry.
    #[cfg(feature = "redis")]
    pub fn l1_max_bytes(mut self, max: u64) -> Self {
        self.l1_max_bytes = Some(max);
        self
    }

    /// Longest time an entry stays in the L1, whatever its own ttl (default 30 s): a bound on
    /// staleness should an invalidation message be lost without the channel noticing.
    #[cfg(feature = "redis")]
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
    #[cfg(feature = "redis")]
    pub fn l1_staleness_bound(mut self, bound: Duration) -> Self {
        self.l1_staleness_bound = bound;
        self
    }

    /// How long an invalidation waits for every replica to acknowledge it has dropped the
    /// entry from its L1 (default 100 ms).
    #[cfg(feature = "redis")]
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

    /// The name cached handlers give this cache in `Cache-Status` (RFC 9211; default: the
    /// prefix). Printable ASCII; written as a token when it is one, else as a quoted string.
    ///
    /// ```
    /// let cache = cache_runtime::Cache::builder().cache_status_name("api-edge").build().unwrap();
    /// # drop(cache);
    /// ```
    pub fn cache_status_name(mut self, name: impl Into<String>) -> Self {
        self.cache_status_name = Some(name.into());
        self
    }

    /// Sends every applied invalidation to `purger` too (a CDN in front of the cached
    /// handlers): a tag as its CDN tag, a namespace as `ns:<namespace>` (both as `cdn_tags`
    /// handlers send them), a key as its URL with [`purge_urls`](Self::purge_urls). See
    /// [`cdn`](crate::cdn) for the retries and the ready `Fastly` and `Cloudflare`
    /// purgers (feature `cdn`).
    ///
    /// ```
    /// use cache_runtime::cdn::{Purge, PurgeFuture, Purger};
    ///
    /// struct Mine;
    /// impl Purger for Mine {
    ///     fn purge<'a>(&'a self, _purge: &'a Purge) -> PurgeFuture<'a> {
    ///         Box::pin(async { Ok(()) })
    ///     }
    /// }
    /// let cache = cache_runtime::Cache::builder().purger(Mine).build().unwrap();
    /// # drop(cache);
    /// ```
    pub fn purger(mut self, purger: impl Purger) -> Self {
        self.purge.purger = Some(Arc::new(purger));
        self
    }

    /// How long an invalidation waits for its CDN purge before it returns (default 1 s; zero:
    /// it does not wait). A purge not done by then goes on in the background.
    ///
    /// ```
    /// let builder = cache_runtime::Cache::builder().purge_wait(std::time::Duration::from_millis(300));
    /// # drop(builder);
    /// ```
    pub fn purge_wait(mut self, wait: Duration) -> Self {
        self.purge.wait = wait;
        self
    }

    /// How long a failing CDN purge is retried (with backoff, 100 ms doubling to 10 s) before
    /// it is given up on, counted in [`Stats::purges_dropped`](crate::Stats::purges_dropped)
    /// and logged as an error (default 5 minutes). One the CDN refuses (a `4xx` other than `408`
    /// and `429`) is given up at once, without holding back the others (see
    /// [`cdn`](crate::cdn)).
    ///
    /// ```
    /// let builder = cache_runtime::Cache::builder().purge_retry_for(std::time::Duration::from_secs(60));
    /// # drop(builder);
    /// ```
    pub fn purge_retry_for(mut self, retry_for: Duration) -> Self {
        self.purge.retry_for = retry_for;
        self
    }

    /// The URL the CDN caches an invalidated key under: `url_of(namespace, key)` (the key as
    /// its template rendered it, placeholders escaped; `None`: no URL). Without it, key
    /// invalidations purge nothing at the CDN (tags and namespaces do).
    ///
    /// ```
    /// let builder = cache_runtime::Cache::builder().purge_urls(|namespace, key| {
    ///     let id = key.strip_prefix("user:")?;
    ///     (namespace == "default").then(|| format!("https://api.example.com/users/{id}"))
    /// });
    /// # drop(builder);
    /// ```
    pub fn purge_urls(mut self, url_of: impl Fn(&str, &str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.purge.url_of = Some(Arc::new(url_of));
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
        let status_name = self.cache_status_name.as_deref().unwrap_or(&self.prefix);
        if status_name.is_empty() || !status_name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(CacheError::Config(format!(
                "cache_status_name {status_name:?} must be non-empty printable ASCII"
            )));
        }
        let status_name = sf_item(status_name).into_boxed_str();
        if self.default_ttl.is_zero() {
            return Err(CacheError::Config("default_ttl must be greater than zero".to_owned()));
        }
        #[cfg(feature = "redis")]
        if self.command_timeout.is_zero() {
            return Err(CacheError::Config("command_timeout must be greater than zero".to_owned()));
        }
        #[cfg(feature = "redis")]
        if self.l1_staleness_bound < Duration::from_millis(40) {
            return Err(CacheError::Config("l1_staleness_bound must be at least 40 ms".to_owned()));
        }
        let flights = Arc::new(Flights::default());
        #[cfg(not(feature = "redis"))]
        let store = Store::Memory(MemoryStore::new(self.max_entries, self.max_bytes));
        #[cfg(feature = "redis")]
        let store = match &self.redis {
            None => Store::Memory(MemoryStore::new(self.max_entries, self.max_bytes)),
            Some(target) => {
                let redis = RedisStore::new(target, &self.prefix, self.command_timeout)?;
                let channel = Arc::new(Coherence::new(
                    &self.prefix,
                    &redis,
                    self.l1.then_some((self.l1_max_entries, self.l1_max_bytes)),
                    self.l1_ttl,
                    (self.coherence_timeout, self.l1_staleness_bound),
                    Arc::clone(&flights),
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
                flights,
                refreshing: moka::sync::Cache::builder().time_to_live(Duration::from_secs(30)).build(),
                last_error_log_ms: AtomicU64::new(0),
                redact_keys: self.redact_keys,
                disabled: false,
                format: self.format,
                max_value_bytes: self.max_value_bytes,
                oversized_logged: std::sync::atomic::AtomicBool::new(false),
                status_name,
                purge: PurgeQueue::new(self.purge),
                rng: Rng::new(self.random_seed),
            }),
        })
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
    #[cfg(feature = "redis")]
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
}

/// `name` as an RFC 8941 item: a token when it is one, else a string (`"` and `\\` escaped).
fn sf_item(name: &str) -> String {
    let token = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    if token {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
