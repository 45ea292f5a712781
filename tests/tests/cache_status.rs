//! `Cache-Status` (RFC 9211) on every answer of a cached handler, each branch over HTTP, and
//! `cdn_tags` (`Surrogate-Key`, `Cache-Tag`), escaped.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, Cache};
use support::Calls;

#[cached(expire = 60, key = "page:<id>", cache = app.0)]
async fn page(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> (StatusCode, String) {
    let run = app.1.hit();
    if id == 404 {
        return (StatusCode::NOT_FOUND, "no such page".to_owned());
    }
    if id == 7 {
        // Slow: concurrent requests arrive while it runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (StatusCode::OK, format!("page {id} (run {run})"))
}

#[cached(expire = 1, stale = 30, key = "swr:<id>", cache = app.0)]
async fn swr(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("swr {id} (run {})", app.1.hit())
}

#[cached(expire = 1, stale_if_error = 30, key = "sie:<id>", cache = app.0)]
async fn sie(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("sie {id} (run {})", app.1.hit())
}

#[cached(expire = 60, key = "fresh:<id>", honor_no_cache, cache = app.0)]
async fn fresh(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("fresh {id} (run {})", app.1.hit())
}

#[cached(expire = 60, key = "post:<name>", tags = ["posts", "post:<name>"], cdn_tags, cache = app.0)]
async fn post(Path(name): Path<String>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("post {name} (run {})", app.1.hit())
}

async fn serve(cache: Cache) -> (String, Arc<(Cache, Calls)>) {
    let app = Arc::new((cache, Calls::default()));
    let router = Router::new()
        .route("/page/{id}", get(page).post(page))
        .route("/swr/{id}", get(swr))
        .route("/sie/{id}", get(sie))
        .route("/fresh/{id}", get(fresh))
        .route("/post/{name}", get(post))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, app)
}

fn status(r: &reqwest::Response) -> String {
    r.headers().get("cache-status").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn every_answer_says_what_the_cache_did() {
    for b in [support::Backend::memory(), support::Backend::redis()] {
        let (base, _) = serve(b.cache.clone()).await;
        let c = reqwest::Client::new();
        let get = |path: &str| c.get(format!("{base}{path}")).send();

        // uri-miss, stored; then a hit with the freshness left.
        let r = get("/page/1").await.unwrap();
        assert_eq!(status(&r), "t; fwd=uri-miss; fwd-status=200; stored", "{}", b.name);
        assert_eq!(r.headers()["x-cache"], "MISS");
        let r = get("/page/1").await.unwrap();
        let s = status(&r);
        assert!(s == "t; hit; ttl=60" || s == "t; hit; ttl=59", "{}: {s}", b.name);
        // What is stored says which ETag it answers with.
        let info = b.cache.inspect("page:1").await.expect("stored");
        assert_eq!(info.etag.as_deref(), Some(r.headers()["etag"].to_str().unwrap()), "{}", b.name);

        // An entry whose tag was invalidated: there was something, it could not be used.
        get("/post/tagged").await.unwrap();
        b.cache.invalidate_tag("posts").await.unwrap();
        let r = get("/post/tagged").await.unwrap();
        assert_eq!(status(&r), "t; fwd=miss; fwd-status=200; stored", "{}", b.name);

        // Not 2xx: forwarded, with the handler's status, not stored.
        let r = get("/page/404").await.unwrap();
        assert_eq!(status(&r), "t; fwd=uri-miss; fwd-status=404", "{}", b.name);

        // Another method: the handler runs untouched.
        let r = c.post(format!("{base}/page/1")).send().await.unwrap();
        assert_eq!(status(&r), "t; fwd=method; fwd-status=200", "{}", b.name);

        // Concurrent requests for a cold key: one forwards, the others are collapsed into it.
        let many = futures::future::join_all((0..5).map(|_| get("/page/7"))).await;
        let statuses: Vec<String> = many.iter().map(|r| status(r.as_ref().unwrap())).collect();
        assert_eq!(statuses.iter().filter(|s| s.contains("fwd=uri-miss")).count(), 1, "{}: {statuses:?}", b.name);
        let collapsed =
            statuses.iter().filter(|s| s.starts_with("t; fwd=miss; fwd-status=200; collapsed; ttl=")).count();
        assert_eq!(collapsed, 4, "{}: {statuses:?}", b.name);

        // The client's no-cache / no-store (honoured): forwarded because of the request.
        let r = c.get(format!("{base}/fresh/1")).header("cache-control", "no-cache").send().await.unwrap();
        assert_eq!(status(&r), "t; fwd=request; fwd-status=200; stored", "{}", b.name);
        let r = c.get(format!("{base}/fresh/1")).header("cache-control", "no-store").send().await.unwrap();
        assert_eq!(status(&r), "t; fwd=request; fwd-status=200", "{}", b.name);

        // Past freshness: a stale answer while one refresh runs; past it, with only a
        // stale-if-error window left, an entry that could not be used: `miss`.
        get("/swr/1").await.unwrap();
        get("/sie/1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = get("/swr/1").await.unwrap();
        assert_eq!(status(&r), "t; hit; ttl=0; detail=stale", "{}", b.name);
        let r = get("/sie/1").await.unwrap();
        assert_eq!(status(&r), "t; fwd=miss; fwd-status=200; stored", "{}", b.name);
    }
}

#[tokio::test]
async fn a_disabled_cache_and_a_named_cache() {
    let (base, _) = serve(Cache::disabled()).await;
    let r = reqwest::get(format!("{base}/page/1")).await.unwrap();
    assert_eq!(status(&r), "cache; fwd=bypass; fwd-status=200");

    let named = Cache::builder().prefix("t").cache_status_name("edge-1").build().unwrap();
    let (base, _) = serve(named).await;
    reqwest::get(format!("{base}/page/1")).await.unwrap();
    let r = reqwest::get(format!("{base}/page/1")).await.unwrap();
    assert!(status(&r).starts_with("edge-1; hit; ttl="), "{}", status(&r));
    let quoted = Cache::builder().prefix("t").cache_status_name("edge 1").build().unwrap();
    let (base, _) = serve(quoted).await;
    let r = reqwest::get(format!("{base}/page/1")).await.unwrap();
    assert!(status(&r).starts_with("\"edge 1\"; fwd=uri-miss"), "{}", status(&r));
}

/// `cdn_tags`: the entry's tags, space- and comma-separated; a tag carrying user input can
/// neither add a tag nor a header.
#[tokio::test]
async fn cdn_tags_name_the_entry_tags_safely() {
    for b in [support::Backend::memory(), support::Backend::redis()] {
        let (base, _) = serve(b.cache.clone()).await;
        for _ in 0..2 {
            let r = reqwest::get(format!("{base}/post/hello")).await.unwrap();
            assert_eq!(r.headers()["surrogate-key"], "posts post:hello ns:default", "{}", b.name);
            assert_eq!(r.headers()["cache-tag"], "posts,post:hello,ns:default", "{}", b.name);
        }
        let r = reqwest::get(format!("{base}/post/a,b%20c%0D%0Ax-evil:1")).await.unwrap();
        assert_eq!(
            r.headers()["surrogate-key"],
            "posts post:a%2Cb%2520c%250D%250Ax-evil%253A1 ns:default",
            "{}",
            b.name
        );
        assert_eq!(r.headers()["cache-tag"], "posts,post:a%2Cb%2520c%250D%250Ax-evil%253A1,ns:default", "{}", b.name);
        assert!(r.headers().get("x-evil").is_none());
    }
}
