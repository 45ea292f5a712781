//! What each feature set must do, through the macro: memory always; Redis with `redis`; a
//! handler over HTTP with `axum`. Run by scripts/test as `cargo test -p feature-matrix` with no
//! features, `--features redis` and `--features axum`.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_runtime::{cached, invalidates, Cache};

#[cached(expire = 60, key = "square:<n>", tags = ["squares"])]
async fn square(runs: &AtomicUsize, n: u64) -> u64 {
    runs.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[invalidates(tags = ["squares"])]
async fn renumber() -> Result<(), String> {
    Ok(())
}

/// The same calls on any cache: a repeat is served, a tag invalidation makes the next call run.
async fn exercise(cache: Cache) {
    let runs = AtomicUsize::new(0);
    cache_runtime::scope(cache.clone(), async {
        assert_eq!(square(&runs, 7).await, 49);
        assert_eq!(square(&runs, 7).await, 49);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the repeat is served from the cache");
        renumber().await.unwrap();
        assert_eq!(square(&runs, 7).await, 49);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the invalidated entry is computed again");
    })
    .await;
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (1, 2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_service_fns_are_cached_and_invalidated() {
    let cache = Cache::memory();
    assert!(!cache.is_redis());
    exercise(cache).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn redis_service_fns_are_cached_and_invalidated() {
    let server = cache_runtime::test_util::RedisServer::start().expect("redis-server");
    let cache = Cache::builder().redis(server.url()).prefix("features").build().unwrap();
    assert!(cache.is_redis());
    exercise(cache.clone()).await;
    // The entry is in Redis, not only in this process's L1.
    let info = cache.inspect("square:7").await;
    assert!(info.is_some(), "square:7 is stored in Redis");
}

#[cfg(feature = "axum")]
mod handler {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::Path;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    static PAGES: AtomicUsize = AtomicUsize::new(0);

    #[cache_runtime::cached(expire = 60)]
    async fn page(Path(id): Path<u32>) -> String {
        PAGES.fetch_add(1, Ordering::SeqCst);
        format!("page {id}")
    }

    /// One HTTP/1.1 GET over TCP; the whole response as text.
    async fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cached_handler_answers_miss_then_hit_over_http() {
        let router = Router::new().route("/pages/{id}", get(page));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let first = get_raw(addr, "/pages/3").await;
        let second = get_raw(addr, "/pages/3").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.to_ascii_lowercase().contains("x-cache: miss"), "{first}");
        assert!(second.to_ascii_lowercase().contains("x-cache: hit"), "{second}");
        assert!(second.ends_with("page 3"), "{second}");
        assert_eq!(PAGES.load(Ordering::SeqCst), 1, "the handler ran once");
    }
}
