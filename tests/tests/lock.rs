//! `lock`: one caller per key across replicas computes a missing value.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use support::{Backend, Calls};

#[cached(expire = 60, lock, key = "locked:<id>", cache = cache, skip = [cache, calls])]
async fn locked(cache: &Cache, calls: &Calls, id: u32) -> Result<String, String> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!("{id} from run {n}"))
}

#[cached(expire = 60, lock = 1, key = "short-lock:<id>", cache = cache, skip = [cache, calls])]
async fn short_lock(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    id
}

fn replica(b: &Backend) -> Cache {
    Cache::builder().redis(b.url()).prefix("t").build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_a_hundred_callers_run_the_body_once() {
    for b in [Backend::redis(), Backend::redis_without_l1(), Backend::redis_cluster()] {
        let other = replica(&b);
        let calls = Arc::new(Calls::default());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let cache = if i % 2 == 0 { b.cache.clone() } else { other.clone() };
                let calls = Arc::clone(&calls);
                tokio::spawn(async move { locked(&cache, &calls, 1).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "1 from run 1", "{}", b.name);
        }
        assert_eq!(calls.get(), 1, "{}: 2 replicas × 100 callers, one body run", b.name);
    }
}

async fn hold_lock(b: &Backend, key: &str, ms: u64) {
    let client = redis::Client::open(b.redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("t:{{default:{key}}}:l"))
        .arg("dead-holder")
        .arg("PX")
        .arg(ms)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lock_expires_and_another_caller_takes_over() {
    let b = Backend::redis();
    hold_lock(&b, "locked:2", 700).await; // a holder that died without releasing
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { locked(&cache, &calls, 2).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "2 from run 1");
    }
    assert_eq!(calls.get(), 1);
    assert!(started.elapsed() >= Duration::from_millis(700), "waited for the dead lock to expire");
    assert!(started.elapsed() < Duration::from_millis(2000), "and not much longer: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_times_out_runs_the_body_itself() {
    let b = Backend::redis();
    hold_lock(&b, "short-lock:3", 30_000).await;
    let calls = Calls::default();
    let started = Instant::now();
    assert_eq!(short_lock(&b.cache, &calls, 3).await, 3);
    assert_eq!(calls.get(), 1, "ran the body after waiting");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000) && waited < Duration::from_millis(2500), "waited {waited:?}");
    assert_eq!(short_lock(&b.cache, &calls, 3).await, 3);
    assert_eq!(calls.get(), 1, "and stored its result");
}

#[tokio::test]
async fn lock_in_memory_is_single_flight() {
    let b = Backend::memory();
    let calls = Arc::new(Calls::default());
    // 50 concurrent callers (the body takes 100 ms, so they overlap): one body run.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { locked(&cache, &calls, 4).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "4 from run 1");
    }
    assert_eq!(calls.get(), 1);
}
