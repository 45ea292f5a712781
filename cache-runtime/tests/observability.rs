//! Metrics through the `metrics` facade (feature `metrics`). (Tracing has its own test binary:
//! tracing caches per-callsite interest, which tests of other dispatchers in the same process
//! would disturb.)
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::Cache;

/// Records every counter increment and histogram sample by metric name.
#[derive(Default)]
struct Recorded {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    samples: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

struct Count(Arc<AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl metrics::HistogramFn for Count {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::Recorder for Recorded {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let cell = self.counters.lock().unwrap().entry(key.name().to_owned()).or_default().clone();
        metrics::Counter::from_arc(Arc::new(Count(cell)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        let cell = self.samples.lock().unwrap().entry(key.name().to_owned()).or_default().clone();
        metrics::Histogram::from_arc(Arc::new(Count(cell)))
    }
}

#[test]
fn hits_misses_and_invalidations_reach_the_metrics_facade() {
    let recorded = Recorded::default();
    metrics::with_local_recorder(&recorded, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let cache = Cache::memory();
            let ttl = Duration::from_secs(60);
            for _ in 0..3 {
                cache.get_or_fetch("k", ttl, || async { 1u8 }).await;
            }
            cache.invalidate("k").await.unwrap();
        });
    });
    let counter = |name: &str| recorded.counters.lock().unwrap().get(name).map_or(0, |c| c.load(Ordering::Relaxed));
    assert_eq!(counter("cache_misses_total"), 1);
    assert_eq!(counter("cache_hits_total"), 2);
    assert_eq!(counter("cache_invalidations_total"), 1);
    let samples =
        recorded.samples.lock().unwrap().get("cache_compute_seconds").map_or(0, |c| c.load(Ordering::Relaxed));
    assert_eq!(samples, 1, "one compute time recorded");
}
