//! `CacheLayer`: the same HTTP caching as `#[cached]`, as tower middleware over a router.

mod support;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use cache_runtime::{Cache, CacheLayer};
use support::{Backend, Calls};

#[derive(serde::Deserialize)]
struct Page {
    page: Option<u32>,
}

async fn posts(State(calls): State<Arc<Calls>>, Query(p): Query<Page>) -> String {
    format!("page {} (run {})", p.page.unwrap_or(1), calls.hit())
}

async fn serve(cache: Cache) -> (String, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route("/posts", get(posts).post(posts))
        .with_state(calls.clone())
        .layer(CacheLayer::new(cache).namespace("pages").expire(60).public().s_maxage(120));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, calls)
}

#[tokio::test]
async fn a_layer_caches_a_router_like_the_attribute() {
    for b in Backend::all() {
        let (base, calls) = serve(b.cache.clone()).await;
        let c = reqwest::Client::new();
        let first = c.get(format!("{base}/posts?page=2")).send().await.unwrap();
        assert_eq!(first.headers()["x-cache"], "MISS", "{}", b.name);
        assert_eq!(first.headers()["cache-control"], "public, max-age=60, s-maxage=120");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(first.text().await.unwrap(), "page 2 (run 1)");

        let second = c.get(format!("{base}/posts?page=2")).send().await.unwrap();
        assert_eq!(second.headers()["x-cache"], "HIT", "{}", b.name);
        assert_eq!(second.text().await.unwrap(), "page 2 (run 1)");

        let not_modified = c.get(format!("{base}/posts?page=2")).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(not_modified.status(), 304);

        let other = c.get(format!("{base}/posts?page=3")).send().await.unwrap();
        assert_eq!(other.text().await.unwrap(), "page 3 (run 2)", "{}: another query, another entry", b.name);

        let post = c.post(format!("{base}/posts?page=2")).send().await.unwrap();
        assert_eq!(post.headers()["x-cache"], "BYPASS");
        assert_eq!(post.text().await.unwrap(), "page 2 (run 3)");
        assert_eq!(calls.get(), 3, "{}", b.name);

        // The layer's entries live in its namespace.
        b.cache.clear_namespace("pages").await.unwrap();
        let after = c.get(format!("{base}/posts?page=2")).send().await.unwrap();
        assert_eq!(after.headers()["x-cache"], "MISS", "{}", b.name);
    }
}
