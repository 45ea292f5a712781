//! Lock waiters' wake-up delay: replica A holds the cross-replica lock of a cold key and
//! computes it (20 ms); replica B waits. We time from the end of A's body until B returns
//! with the value (A's store, lock release and publish, B's wake-up and read). p50/p99 over
//! 200 keys. Run with `scripts/bench` or `cargo bench -p cache-runtime --features test-util
//! --bench lock`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};

#[cached(expire = 600, lock, key = "bench-lock:<id>", cache = cache, skip = [cache, done])]
async fn compute(cache: &Cache, done: &Mutex<Option<Instant>>, id: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    *done.lock().unwrap() = Some(Instant::now());
    id
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let server = RedisServer::start().expect("redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let build = || Cache::builder().redis(server.url()).prefix("bench").l1(false).build().unwrap();
        let (a, b) = (build(), build());
        let none = Mutex::new(None);
        // Start both replicas' lock subscriptions.
        compute(&a, &none, u32::MAX).await;
        compute(&b, &none, u32::MAX).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut delays = Vec::new();
        for id in 0..200 {
            let done = std::sync::Arc::new(Mutex::new(None));
            let holder = {
                let (a, done) = (a.clone(), done.clone());
                tokio::spawn(async move { compute(&a, &done, id).await })
            };
            tokio::time::sleep(Duration::from_millis(5)).await; // A holds the lock now
            let waiter_done = Mutex::new(None);
            assert_eq!(compute(&b, &waiter_done, id).await, id);
            let returned = Instant::now();
            assert!(waiter_done.lock().unwrap().is_none(), "B must not compute");
            holder.await.unwrap();
            let body_end = done.lock().unwrap().expect("A computed");
            delays.push(returned.saturating_duration_since(body_end));
        }
        delays.sort();
        println!(
            "lock waiter wake-up over {} keys (end of the holder's body until the waiter returns): p50 {:?}, p99 {:?}, max {:?}",
            delays.len(),
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays[delays.len() - 1]
        );
    });
}
