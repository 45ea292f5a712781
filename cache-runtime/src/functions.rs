//! Per-function statistics: every `#[cached]` fn, cached handler and `CacheLayer` counts its
//! own hits, misses, stale answers, collapsed callers, failed bodies, body runs (with their
//! time) and bytes stored, beside the cache's totals ([`Cache::stats`](crate::Cache::stats)).
//!
//! A call site's counters are a `static` the macro emits (a layer's are made once per layer),
//! so counting is a few relaxed atomic adds: no lookup by name on the hot path. They are
//! process-wide: a fn that uses several caches counts all its calls in one row.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// Buckets of the body-time histogram: `[2^i, 2^(i+1))` µs, the last one open.
const BUCKETS: usize = 26;

/// One call site's counters (what `#[cached]` emits as a `static`).
#[doc(hidden)]
#[derive(Debug)]
pub struct Function {
    name: &'static str,
    registered: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    collapsed: AtomicU64,
    failed: AtomicU64,
    runs: AtomicU64,
    run_micros: [AtomicU64; BUCKETS],
    bytes_stored: AtomicU64,
}

/// Every call site that counted something, in the order they first did.
static REGISTRY: Mutex<Vec<&'static Function>> = Mutex::new(Vec::new());

impl Function {
    /// `name`: the fn's module path and name, or a layer's namespace.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const fn new(name: &'static str) -> Self {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Function {
            name,
            registered: AtomicBool::new(false),
            hits: ZERO,
            misses: ZERO,
            stale: ZERO,
            collapsed: ZERO,
            failed: ZERO,
            runs: ZERO,
            run_micros: [ZERO; BUCKETS],
            bytes_stored: ZERO,
        }
    }

    /// A layer's counters: made once per layer (kept for the life of the process, as a fn's).
    #[cfg(feature = "axum")]
    pub(crate) fn leaked(name: String) -> &'static Function {
        Box::leak(Box::new(Function::new(Box::leak(name.into_boxed_str()))))
    }

    /// Adds `n` to `counter`, and (feature `metrics`) to the series `metric{function=…}`.
    #[inline]
    fn add(&'static self, counter: &AtomicU64, n: u64, metric: &'static str) {
        counter.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(metric, "function" => self.name).increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = metric;
        if !self.registered.load(Ordering::Relaxed) {
            self.register();
        }
    }

    #[cold]
    fn register(&'static self) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            lock(&REGISTRY).push(self);
        }
    }

    #[inline]
    pub(crate) fn hits(&'static self, n: u64) {
        self.add(&self.hits, n, "cache_function_hits_total");
    }

    pub(crate) fn miss(&'static self) {
        self.add(&self.misses, 1, "cache_function_misses_total");
    }

    pub(crate) fn stale(&'static self) {
        self.add(&self.stale, 1, "cache_function_stale_total");
    }

    /// A caller answered with what another caller computed or found (single-flight, `lock`).
    pub(crate) fn collapsed(&'static self) {
        self.add(&self.collapsed, 1, "cache_function_collapsed_total");
    }

    /// A body that failed (`Err`, a 5xx).
    pub(crate) fn failed(&'static self) {
        self.add(&self.failed, 1, "cache_function_failed_total");
    }

    /// A body ran and took `took`.
    pub(crate) fn ran(&'static self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - micros.leading_zeros() as usize).min(BUCKETS - 1);
        self.run_micros[bucket].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache_function_body_seconds", "function" => self.name).record(took.as_secs_f64());
        self.add(&self.runs, 1, "cache_function_body_runs_total");
    }

    pub(crate) fn stored(&'static self, bytes: usize) {
        self.add(&self.bytes_stored, u64::try_from(bytes).unwrap_or(u64::MAX), "cache_function_stored_bytes_total");
    }

    fn snapshot(&self) -> FunctionStats {
        let buckets: Vec<u64> = self.run_micros.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let quantile = |q: f64| {
            let total: u64 = buckets.iter().sum();
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // The bucket's upper bound: at most twice the true value.
                    return Duration::from_micros(if i == 0 { 1 } else { 1u64 << i });
                }
            }
            Duration::from_micros(1u64 << (BUCKETS - 1))
        };
        FunctionStats {
            name: self.name,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            collapsed: self.collapsed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            body_runs: self.runs.load(Ordering::Relaxed),
            body_p50: quantile(0.5),
            body_p99: quantile(0.99),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
        }
    }
}

/// One row of [`function_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionStats {
    /// The fn's module path and name (`app::users::get_user`), or `layer:<namespace>`.
    pub name: &'static str,
    /// Calls answered from the cache (fresh).
    pub hits: u64,
    /// Calls that ran the body.
    pub misses: u64,
    /// Calls answered with a stale entry (`stale`, `stale_if_error`).
    pub stale: u64,
    /// Calls answered with what a concurrent caller computed or found (single-flight in this
    /// process, a `lock` holder on another replica).
    pub collapsed: u64,
    /// Bodies that failed (`Err`; a 5xx for handlers).
    pub failed: u64,
    /// Bodies run (misses and refreshes).
    pub body_runs: u64,
    /// Median body time (a power-of-two bucket's upper bound: at most twice the true value).
    pub body_p50: Duration,
    /// 99th-percentile body time (same resolution).
    pub body_p99: Duration,
    /// Bytes of the values stored (their encoded size).
    pub bytes_stored: u64,
}

/// The statistics of every cached fn, handler and layer that has been called in this process,
/// in the order they were first called. Each row counts the calls of one fn, whichever cache
/// they used (the totals per cache are [`Cache::stats`](crate::Cache::stats)).
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(expire = 60, key = "double:<n>")]
/// async fn double(n: u64) -> u64 { n * 2 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// double(1).await;
/// double(1).await;
/// let row = cache_runtime::function_stats().into_iter().find(|f| f.name.ends_with("::double")).unwrap();
/// assert_eq!((row.hits, row.misses, row.body_runs), (1, 1, 1));
/// # }
/// ```
pub fn function_stats() -> Vec<FunctionStats> {
    lock(&REGISTRY).iter().map(|f| f.snapshot()).collect()
}
