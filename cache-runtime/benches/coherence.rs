//! Visibility delay across replicas: two caches with a process-memory tier (L1) on one Redis.
//! Replica B holds the entry in its L1; replica A invalidates it; we time A's invalidation
//! from its start until it returns (by then B's L1 has dropped the entry: A waits for every
//! subscriber's acknowledgement), and check that B's very next read is the new value.
//! Prints p50/p99/max over 1,000 writes.
//!
//! Then a tag carried by 100,000 entries is invalidated while another task keeps reading:
//! prints how long the invalidation took, the slowest concurrent read, and checks that every
//! entry is gone. Run with `scripts/bench` or
//! `cargo bench -p cache-runtime --features test-util --bench coherence`.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};

#[cached(expire = 3600, key = "tagged:<id>", tags = ["big"], cache = cache, skip = [cache])]
async fn tagged(cache: &Cache, id: u32) -> u32 {
    id
}

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

        // A tag on 100,000 entries (L1 off: every read goes to Redis).
        let cache = Cache::builder().redis(server.url()).prefix("bigtag").l1(false).build().unwrap();
        const ENTRIES: u32 = 100_000;
        let fillers: Vec<_> = (0..64u32)
            .map(|w| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let mut id = w;
                    while id < ENTRIES {
                        tagged(&cache, id).await;
                        id += 64;
                    }
                })
            })
            .collect();
        for f in fillers {
            f.await.unwrap();
        }
        assert_eq!(cache.stats().misses, u64::from(ENTRIES));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let _: Option<u32> = cache.get("unrelated").await;
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        cache.invalidate_tag("big").await.unwrap();
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        let slowest = reader.await.unwrap();
        let before = cache.stats().misses;
        for id in (0..ENTRIES).step_by(100) {
            tagged(&cache, id).await;
        }
        let recomputed = cache.stats().misses - before;
        println!(
            "invalidating a tag on {ENTRIES} entries took {took:?}; slowest concurrent read {slowest:?}; \
             {recomputed}/{} sampled entries recomputed afterwards",
            ENTRIES / 100
        );
    });
}
