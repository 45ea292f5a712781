//! Visibility delay across replicas: two caches with a process-memory tier (L1) on one Redis.
//! Replica B holds the entry in its L1; replica A invalidates it; we time A's invalidation
//! from its start until it returns (by then B's L1 has dropped the entry: A waits for every
//! subscriber's acknowledgement), and check that B's very next read is the new value.
//! Prints p50/p99/max over 1,000 writes. Run with `scripts/bench` or
//! `cargo bench -p cache-runtime --features test-util --bench coherence`.

use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;
use cache_runtime::Cache;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and we still run.
    let server = RedisServer::start().expect("redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let build = || Cache::builder().redis(server.url()).prefix("bench").build().unwrap();
        let (a, b) = (build(), build());
        let ttl = Duration::from_secs(60);
        // Start both L1s.
        for cache in [&a, &b] {
            cache.get_or_fetch("warm", ttl, || async { 0u64 }).await;
            while !cache.l1_live() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut delays = Vec::with_capacity(1000);
        let mut stale_reads = 0;
        for i in 1..=1000u64 {
            let old = b.get_or_fetch("row", ttl, || async move { i - 1 }).await;
            assert_eq!(old, i - 1);
            let started = Instant::now();
            a.invalidate("row").await.unwrap();
            delays.push(started.elapsed());
            let seen = b.get_or_fetch("row", ttl, || async move { i }).await;
            if seen != i {
                stale_reads += 1;
            }
        }
        delays.sort();
        println!(
            "visibility delay over {} writes (invalidate on A until B's L1 dropped the key): p50 {:?}, p99 {:?}, max {:?}; \
             stale reads on B right after: {stale_reads}",
            delays.len(),
            percentile(&delays, 0.50),
            percentile(&delays, 0.99),
            delays[delays.len() - 1],
        );
    });
}
