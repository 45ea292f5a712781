//! A fixed workload for `valgrind --tool=callgrind` (instruction counts are stable on a noisy
//! machine): `profile_hit <n>` runs `n` memory hits through `#[cached]`, `n` two-tier L1 hits,
//! `n` direct moka get + clone of the same value, and `n` HTTP hits of a cached axum handler
//! beside `n` requests to the same handler uncached (both through the same `Router`, in
//! process), each in its own non-inlined function, so `callgrind_annotate --inclusive=yes` gives
//! instructions per hit for each. `scripts/bench` prints them.

use std::hint::black_box;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use bench::{user, User};
use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};
use tower::ServiceExt as _;

#[cached(expire = 3600, key = "user:<id>", cache = cache, skip = [cache])]
async fn get_user(cache: &Cache, id: u64) -> User {
    user(id)
}

#[cached(expire = 3600, cache = cache)]
async fn user_page(State(cache): State<Cache>, Path(id): Path<u64>) -> axum::Json<User> {
    axum::Json(user(id))
}

async fn bare_page(State(_): State<Cache>, Path(id): Path<u64>) -> axum::Json<User> {
    axum::Json(user(id))
}

/// One GET through the router; the response's headers are read, its body is not.
async fn get_path(router: &Router, path: &'static str) -> usize {
    let request = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    response.headers().len()
}

#[inline(never)]
fn http_hits(rt: &tokio::runtime::Runtime, router: &Router, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            black_box(get_path(router, "/cached/42").await);
        }
    });
}

#[inline(never)]
fn bare_http_hits(rt: &tokio::runtime::Runtime, router: &Router, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            black_box(get_path(router, "/bare/42").await);
        }
    });
}

#[inline(never)]
fn macro_hits(rt: &tokio::runtime::Runtime, cache: &Cache, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            black_box(get_user(cache, black_box(42)).await);
        }
    });
}

#[inline(never)]
fn l1_hits(rt: &tokio::runtime::Runtime, cache: &Cache, n: u64) {
    rt.block_on(async {
        for _ in 0..n {
            black_box(get_user(cache, black_box(42)).await);
        }
    });
}

#[inline(never)]
fn moka_hits(direct: &moka::sync::Cache<String, User>, n: u64) {
    for _ in 0..n {
        let key = format!("user:{}", black_box(42u64));
        black_box(direct.get(&key));
    }
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let memory = Cache::memory();
    rt.block_on(get_user(&memory, 42));
    let direct: moka::sync::Cache<String, User> = moka::sync::Cache::new(100_000);
    direct.insert("user:42".to_owned(), user(42));
    let server = RedisServer::start().expect("redis-server");
    let two_tier = rt.block_on(async { Cache::builder().redis(server.url()).build().unwrap() });
    rt.block_on(async {
        get_user(&two_tier, 42).await;
        while !two_tier.l1_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        get_user(&two_tier, 42).await;
    });
    macro_hits(&rt, &memory, n);
    l1_hits(&rt, &two_tier, n);
    moka_hits(&direct, n);
    assert_eq!(memory.stats().hits, n);
    assert_eq!(two_tier.stats().hits, n + 1);
    let pages = Cache::memory();
    let router = Router::new()
        .route("/cached/{id}", get(user_page))
        .route("/bare/{id}", get(bare_page))
        .with_state(pages.clone());
    rt.block_on(get_path(&router, "/cached/42"));
    http_hits(&rt, &router, n);
    bare_http_hits(&rt, &router, n);
    assert_eq!(pages.stats().hits, n);
}
