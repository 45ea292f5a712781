//! Stampede protection: concurrent misses of one key run the body once (single-flight).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, Cache};
use support::{Backend, Calls};

#[cached(expire = 60, key = "slow:<id>", cache = cache, skip = [cache, calls])]
async fn slow(cache: &Cache, calls: &Calls, id: u32) -> Result<String, String> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!("value {id} from run {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_run_the_body_once() {
    for b in Backend::all() {
        let calls = Arc::new(Calls::default());
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
                tokio::spawn(async move { slow(&cache, &calls, 1).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().unwrap());
        }
        assert_eq!(calls.get(), 1, "{}: 1,000 concurrent callers, one body run", b.name);
        assert!(results.iter().all(|r| r == "value 1 from run 1"), "{}: everyone got its result", b.name);
    }
}

#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
    runs: AtomicUsize,
}

#[cached(expire = 60, key = "failing:<id>", cache = cache, skip = [cache, c])]
async fn failing(cache: &Cache, c: &Concurrency, id: u32) -> Result<u32, String> {
    let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
    c.max.fetch_max(now, Ordering::SeqCst);
    c.runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.now.fetch_sub(1, Ordering::SeqCst);
    Err(format!("{id} is unavailable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_bodies_never_run_concurrently_for_one_key() {
    for b in Backend::all() {
        let c = Arc::new(Concurrency::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, c) = (b.cache.clone(), Arc::clone(&c));
                tokio::spawn(async move { failing(&cache, &c, 1).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                Err("1 is unavailable".to_owned()),
                "{}: every caller gets an error",
                b.name
            );
        }
        // Errors are not shared (the error type need not be Clone): each waiter retries, one at a time.
        assert_eq!(c.max.load(Ordering::SeqCst), 1, "{}: never two bodies at once", b.name);
        assert_eq!(c.runs.load(Ordering::SeqCst), 20, "{}", b.name);
    }
}

#[derive(Clone)]
struct Slow {
    cache: Cache,
    calls: Arc<Calls>,
}

#[cached(http, expire = 60, cache = state.cache)]
async fn slow_page(State(state): State<Slow>) -> String {
    let n = state.calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("page from run {n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_cold_page_run_the_handler_once() {
    for b in Backend::all() {
        let state = Slow { cache: b.cache.clone(), calls: Arc::default() };
        let router = Router::new().route("/page", get(slow_page)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/page", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = reqwest::Client::new();
        let requests: Vec<_> = (0..200)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() })
            })
            .collect();
        for request in requests {
            assert_eq!(request.await.unwrap(), "page from run 1", "{}", b.name);
        }
        assert_eq!(state.calls.get(), 1, "{}: 200 concurrent requests, one handler run", b.name);
    }
}
