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
        let cell = self.counters.lock().unwrap().entry(labelled(key)).or_default().clone();
        metrics::Counter::from_arc(Arc::new(Count(cell)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        let cell = self.samples.lock().unwrap().entry(labelled(key)).or_default().clone();
        metrics::Histogram::from_arc(Arc::new(Count(cell)))
    }
}

/// `name` or `name{label=value,…}`.
fn labelled(key: &metrics::Key) -> String {
    let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

#[cache_runtime::cached(expire = 60, key = "triple:<n>")]
async fn triple(n: u64) -> u64 {
    n * 3
}

/// Per-function series: labelled by the fn's module path and name.
#[test]
fn each_function_has_its_own_series() {
    let recorded = Recorded::default();
    metrics::with_local_recorder(&recorded, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            cache_runtime::scope(Cache::memory(), async {
                for _ in 0..3 {
                    triple(2).await;
                }
            })
            .await;
        });
    });
    let counter = |name: &str| recorded.counters.lock().unwrap().get(name).map_or(0, |c| c.load(Ordering::Relaxed));
    assert_eq!(counter("cache_function_hits_total{function=observability::triple}"), 2);
    assert_eq!(counter("cache_function_misses_total{function=observability::triple}"), 1);
    assert!(counter("cache_function_stored_bytes_total{function=observability::triple}") > 0);
    let samples = recorded.samples.lock().unwrap();
    let runs =
        samples.get("cache_function_body_seconds{function=observability::triple}").map(|c| c.load(Ordering::Relaxed));
    assert_eq!(runs, Some(1));
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
