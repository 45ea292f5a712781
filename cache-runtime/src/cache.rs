//! The [`Cache`] handle, its builder, and the plain (macro-free) API.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{MemEntry, MemoryStore, RedisStore};
use crate::codec::{Codec, Json, Stored};
use crate::envelope::{self, Meta};
use crate::error::CacheError;
use crate::fetch::{self, CallOpts, Plain, ResultMode};
use crate::key::{self, KeyWriter};
use crate::time::now_ms;
use crate::Cacheable;

/// The namespace used when none is given (by the plain API or by `#[cached]`).
pub const DEFAULT_NAMESPACE: &str = "default";

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
}

#[derive(Debug)]
enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    stores: AtomicU64,
    invalidations: AtomicU64,
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
    /// Keys or namespaces invalidated.
    pub invalidations: u64,
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
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    redis_url: Option<String>,
    prefix: String,
    default_ttl: Duration,
    command_timeout: Duration,
    max_entries: u64,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            redis_url: None,
            prefix: "cache".to_owned(),
            default_ttl: Duration::from_secs(300),
            command_timeout: Duration::from_millis(250),
            max_entries: 100_000,
        }
    }
}

impl CacheBuilder {
    /// Store entries in Redis at `url` (`redis://host:port/db`). The connection is made on
    /// first use and re-made by itself after a failure; a Redis that is down makes reads miss,
    /// never fail.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Store entries in process memory (the default).
    pub fn memory(mut self) -> Self {
        self.redis_url = None;
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
        let store = match &self.redis_url {
            None => Store::Memory(MemoryStore::new(self.max_entries)),
            Some(url) => Store::Redis(RedisStore::new(url, self.command_timeout)?),
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                prefix: self.prefix.into_boxed_str(),
                default_ttl: self.default_ttl,
                store,
                stats: Counters::default(),
            }),
        })
    }
}

/// What a read found.
pub(crate) enum Found<V> {
    Value(V),
    Negative,
}

/// How long a found entry stays fresh (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    pub(crate) fresh_until_ms: u64,
}

impl Times {
    fn of(meta: &Meta) -> Times {
        Times { fresh_until_ms: meta.fresh_until_ms }
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

    /// Whether entries are stored in Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.store, Store::Redis(_))
    }

    /// The ttl used when none is given.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
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
        let result = match &self.inner.store {
            Store::Memory(mem) => Ok(mem.remove_prefix(&key::namespace_start(&self.inner.prefix, &ns))),
            Store::Redis(redis) => redis.del_matching(&key::namespace_pattern(&self.inner.prefix, &ns)).await,
        };
        self.count_result(&result, "clear_namespace");
        if result.is_ok() {
            self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        result
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

    pub(crate) fn record_hit(&self) {
        self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_miss(&self) {
        self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
    }

    fn count_result<T>(&self, result: &Result<T, CacheError>, op: &'static str) {
        if let Err(err) = result {
            self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "cache_runtime", op, error = %err, "cache store failed; continuing without it");
        }
    }

    /// Reads a fresh entry of type `V`. Anything else (absent, expired, wrong type,
    /// undecodable, store unreachable) is `None`: the caller runs the body and overwrites.
    pub(crate) async fn read<V: Stored, C: Codec<V>>(&self, key: &str) -> Option<(Found<V>, Times)> {
        match &self.inner.store {
            Store::Memory(mem) => {
                let entry = mem.get(key)?;
                if entry.meta.fresh_until_ms <= now_ms() {
                    return None;
                }
                let times = Times::of(&entry.meta);
                if entry.negative {
                    return Some((Found::Negative, times));
                }
                // A value stored for another type under the same key is a miss.
                entry.value.downcast_ref::<V>().map(|v| (Found::Value(v.clone()), times))
            }
            Store::Redis(redis) => {
                let result = redis.get(key).await;
                self.count_result(&result, "get");
                let bytes = result.ok()??;
                decode_entry::<V, C>(key, &bytes)
            }
        }
    }

    /// Stores `value` (or a negative entry when `None`) under `key` for `ttl`.
    pub(crate) async fn write<V: Stored, C: Codec<V>>(
        &self,
        key: String,
        value: Option<&V>,
        ttl: Duration,
        recompute: Duration,
    ) -> Result<(), CacheError> {
        let now = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let meta = Meta {
            fingerprint: envelope::fingerprint::<V>(),
            stored_at_ms: now,
            fresh_until_ms: now.saturating_add(ttl_ms),
            stale_until_ms: now.saturating_add(ttl_ms),
            recompute_ms: u32::try_from(recompute.as_millis()).unwrap_or(u32::MAX),
            etag: None,
        };
        let result = match &self.inner.store {
            Store::Memory(mem) => {
                let entry = match value {
                    Some(v) => MemEntry { meta, negative: false, value: Box::new(v.clone()) },
                    None => MemEntry { meta, negative: true, value: Box::new(()) },
                };
                mem.insert(key, entry);
                Ok(())
            }
            Store::Redis(redis) => {
                let payload = match value {
                    Some(v) => C::encode(v),
                    None => Ok(Vec::new()),
                };
                match payload {
                    Ok(payload) => redis.set(&key, &envelope::encode(&meta, value.is_none(), &payload), ttl).await,
                    Err(err) => Err(err),
                }
            }
        };
        self.count_result(&result, "set");
        if result.is_ok() {
            self.inner.stats.stores.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub(crate) async fn remove(&self, key: &str) -> Result<(), CacheError> {
        let result = match &self.inner.store {
            Store::Memory(mem) => {
                mem.remove(key);
                Ok(())
            }
            Store::Redis(redis) => redis.del(key).await,
        };
        self.count_result(&result, "invalidate");
        if result.is_ok() {
            self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

fn decode_entry<V: Stored, C: Codec<V>>(key: &str, bytes: &[u8]) -> Option<(Found<V>, Times)> {
    let decoded = match envelope::decode(bytes) {
        Ok(decoded) => decoded,
        Err(why) => {
            tracing::warn!(target: "cache_runtime", key, %why, "unreadable cache entry; treating it as a miss");
            return None;
        }
    };
    if decoded.meta.fingerprint != envelope::fingerprint::<V>() {
        tracing::warn!(
            target: "cache_runtime",
            key,
            expected = std::any::type_name::<V>(),
            "cache entry was written for another type; treating it as a miss"
        );
        return None;
    }
    if decoded.meta.fresh_until_ms <= now_ms() {
        return None;
    }
    let times = Times::of(&decoded.meta);
    if decoded.negative {
        return Some((Found::Negative, times));
    }
    match C::decode(decoded.payload) {
        Ok(value) => Some((Found::Value(value), times)),
        Err(err) => {
            tracing::warn!(target: "cache_runtime", key, error = %err, "cache entry does not decode; treating it as a miss");
            None
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
    /// Reads `key`; see [`Cache::get`].
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        match self.cache.read::<T, Json>(&self.cache.full_key(self.namespace, key)).await {
            Some((Found::Value(v), _)) => Some(v),
            Some((Found::Negative, _)) | None => None,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError> {
        self.cache.write::<T, Json>(self.cache.full_key(self.namespace, key), Some(value), ttl, Duration::ZERO).await
    }

    /// Removes `key`.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.cache.remove(&self.cache.full_key(self.namespace, key)).await
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
        let opts = CallOpts::new().expire(ttl);
        fetch::run::<Plain<T>, _>(self.cache, self.cache.full_key(self.namespace, key), &opts, fetch()).await
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
        let opts = CallOpts::new().expire(ttl);
        fetch::run::<ResultMode<T, E>, _>(self.cache, self.cache.full_key(self.namespace, key), &opts, fetch()).await
    }
}
