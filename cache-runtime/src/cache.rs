//! The [`Cache`] handle: its state, the call context ([`Call`]), statistics and logging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cdn::PurgeQueue;
use crate::codec::Format;
#[cfg(feature = "redis")]
use crate::coherence::Coherence;
use crate::entry::Op;
use crate::envelope::{self};
use crate::error::CacheError;
use crate::flight::Flights;
use crate::functions::Function;
use crate::key::{self, KeyWriter};
#[cfg(feature = "redis")]
use crate::lock::Locks;
use crate::policy::{CallOpts, Rng};
use crate::store::MemoryStore;
#[cfg(feature = "redis")]
use crate::store::RedisStore;
use crate::time::now_ms;

/// The namespace used when none is given (by the plain API or by `#[cached]`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The default bound on the bytes the memory store holds ([`CacheBuilder::max_bytes`](crate::CacheBuilder::max_bytes)).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

#[cfg(feature = "redis")]
/// The default bound on the bytes the L1 holds ([`CacheBuilder::l1_max_bytes`](crate::CacheBuilder::l1_max_bytes)).
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
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) prefix: Box<str>,
    pub(crate) default_ttl: Duration,
    pub(crate) store: Store,
    pub(crate) stats: Counters,
    /// Invalidations that failed, retried before the next Redis read.
    pub(crate) pending: std::sync::Mutex<Vec<Op>>,
    pub(crate) has_pending: std::sync::atomic::AtomicBool,
    /// A task is retrying the queued invalidations.
    pub(crate) retrying: std::sync::atomic::AtomicBool,
    /// Misses being computed in this process (single-flight).
    pub(crate) flights: Arc<Flights>,
    /// Keys being refreshed by this process (stale-while-revalidate, early refresh).
    pub(crate) refreshing: moka::sync::Cache<String, ()>,
    pub(crate) rng: Rng,
    pub(crate) last_error_log_ms: AtomicU64,
    pub(crate) redact_keys: bool,
    pub(crate) format: Format,
    pub(crate) max_value_bytes: usize,
    pub(crate) oversized_logged: std::sync::atomic::AtomicBool,
    /// [`Cache::disabled`]: nothing is read or stored.
    pub(crate) disabled: bool,
    /// The cache's name in `Cache-Status` (RFC 9211), rendered as a structured-field item
    /// (cached handlers: feature `axum`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) status_name: Box<str>,
    /// The CDN purger's queue (`CacheBuilder::purger`).
    pub(crate) purge: Option<Arc<PurgeQueue>>,
}

#[derive(Debug)]
// One per cache, never moved: boxing the larger variant would only add a pointer chase to hits.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Store {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
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
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) dropped_fills: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) oversized: AtomicU64,
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
    /// CDN purges the purger accepted (several invalidations queued together are one).
    pub purges: u64,
    /// CDN purge attempts that failed (retried unless the CDN refused them, see
    /// [`cdn`](crate::cdn)).
    pub purge_failures: u64,
    /// Invalidations whose CDN purge was given up on (failing for `purge_retry_for` since it was
    /// queued, refused by the CDN, or queued outside a tokio runtime).
    pub purges_dropped: u64,
}

/// One cached call: the cache, the rendered key, and how the entry is stored (its namespace,
/// tags and options). What the generated code hands the runtime, and what travels through the
/// read path. A handler's key (`K = KeyWriter`) is finished by the runtime, after the `vary`
/// headers are added to it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Call<'a, K = String> {
    pub cache: &'a Cache,
    pub key: K,
    pub namespace: &'a str,
    pub tags: &'a [String],
    pub opts: &'a CallOpts,
    /// The call site's counters (`None`: the plain API).
    pub site: Option<&'static Function>,
}

impl<K> Call<'_, K> {
    /// How long what this call stores stays fresh: `expire`, or the cache's default.
    pub(crate) fn ttl(&self) -> Duration {
        self.opts.ttl(self.cache.default_ttl())
    }
}

impl AsRef<Cache> for Cache {
    fn as_ref(&self) -> &Cache {
        self
    }
}

impl Cache {
    /// Whether this is a [`Cache::disabled`] cache.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.inner.disabled
    }

    /// Whether entries are stored in Redis.
    pub fn is_redis(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis_store().is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Whether the process-memory tier in front of Redis is in use right now: configured, and
    /// its invalidation channel subscribed. (It starts with the first cached call, and is
    /// bypassed while the channel is down.)
    ///
    /// ```
    /// assert!(!cache_runtime::Cache::memory().l1_live());
    /// ```
    pub fn l1_live(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.live_l1().is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The ttl used when none is given.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        let (memory_entries, memory_bytes) = self.memory_size();

        Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            dropped_fills: c.dropped_fills.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            #[cfg(feature = "redis")]
            circuit_openings: self.redis_store().map_or(0, |redis| redis.breaker_openings()),
            #[cfg(not(feature = "redis"))]
            circuit_openings: 0,
            memory_entries,
            memory_bytes,
            purges: self.inner.purge.as_ref().map_or(0, |q| q.sent.load(Ordering::Relaxed)),
            purge_failures: self.inner.purge.as_ref().map_or(0, |q| q.failures.load(Ordering::Relaxed)),
            purges_dropped: self.inner.purge.as_ref().map_or(0, |q| q.dropped.load(Ordering::Relaxed)),
        }
    }

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

    /// A stored key's escaped namespace and key (`prefix:{namespace:key}`), the inverse of
    /// [`full_key`](Self::full_key) (a handler's key keeps its `vary` segments).
    pub(crate) fn split_key<'a>(&self, stored: &'a str) -> Option<(&'a str, &'a str)> {
        let inner = stored.strip_prefix(&*self.inner.prefix)?.strip_prefix(":{")?.strip_suffix('}')?;
        inner.split_once(':')
    }

    /// How a key appears in logs: as is, or as a short hash with `redact_keys`.
    pub(crate) fn log_key<'a>(&self, key: &'a str) -> LogKey<'a> {
        LogKey { key, redact: self.inner.redact_keys }
    }

    pub(crate) fn record_hit(&self, site: Option<&'static Function>, key: &str) {
        self.log_hit(key);
        self.count_hits(site, 1);
    }

    /// The log line of one hit (a batch counts its hits once: [`count_hits`](Self::count_hits)).
    pub(crate) fn log_hit(&self, key: &str) {
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "hit");
    }

    /// Counts `n` hits (each logged with [`log_hit`](Self::log_hit)).
    pub(crate) fn count_hits(&self, site: Option<&'static Function>, n: u64) {
        if n == 0 {
            return;
        }
        self.inner.stats.hits.fetch_add(n, Ordering::Relaxed);
        if let Some(site) = site {
            site.hits(n);
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_hits_total").increment(n);
    }

    pub(crate) fn record_miss(&self, site: Option<&'static Function>, key: &str) {
        self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(site) = site {
            site.miss();
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_misses_total").increment(1);
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "miss");
    }

    /// A body (or handler) ran for a miss or a refresh and took `took`.
    pub(crate) fn record_computed(&self, site: Option<&'static Function>, key: &str, took: Duration) {
        if let Some(site) = site {
            site.ran(took);
        }
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache_compute_seconds").record(took.as_secs_f64());
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), took_ms = took.as_secs_f64() * 1e3, "computed");
    }

    /// Counts a failed store operation and logs it, at most once a second (an outage must not
    /// flood the logs): the log line says how many failures it stands for.
    pub(crate) fn count_result<T>(&self, result: &Result<T, CacheError>, op: &'static str) {
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

    /// XFetch's random source.
    pub(crate) fn rng(&self) -> &Rng {
        &self.inner.rng
    }

    /// A found entry was served: fresh, or `stale`.
    pub(crate) fn record_served(&self, site: Option<&'static Function>, key: &str, stale: bool) {
        if stale {
            self.record_stale(site, key);
        } else {
            self.record_hit(site, key);
        }
    }

    /// Served with what another caller computed or found (single-flight, a `lock` holder).
    pub(crate) fn record_collapsed(&self, site: Option<&'static Function>, key: &str, stale: bool) {
        if let Some(site) = site {
            site.collapsed();
        }
        self.record_served(site, key, stale);
    }

    pub(crate) fn record_stale(&self, site: Option<&'static Function>, key: &str) {
        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
        if let Some(site) = site {
            site.stale();
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("cache_stale_total").increment(1);
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "stale");
    }
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
