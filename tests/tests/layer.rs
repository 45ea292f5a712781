//! `CacheLayer`: the same HTTP caching as `#[cached]`, as tower middleware over a router.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use cache_runtime::{Cache, CacheLayer};
use support::{eventually, Backend, Calls};

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

/// What the options of the layer's second router do: a slow, sometimes failing service.
#[derive(Clone)]
struct Service {
    calls: Arc<Calls>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Default for Service {
    fn default() -> Self {
        Service { calls: Arc::default(), failing: Arc::default(), gate: Arc::new(tokio::sync::Semaphore::new(0)) }
    }
}

async fn feed(State(s): State<Service>, headers: axum::http::HeaderMap) -> (axum::http::StatusCode, String) {
    if s.failing.load(std::sync::atomic::Ordering::SeqCst) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down".to_owned());
    }
    let n = s.calls.hit();
    if n > 1 {
        // Runs after the first wait for the test to open the gate.
        s.gate.acquire().await.unwrap().forget();
    }
    let lang = headers.get("accept-language").map_or("-", |v| v.to_str().unwrap()).to_owned();
    (axum::http::StatusCode::OK, format!("feed in {lang} (run {n})"))
}

async fn serve_with(layer: CacheLayer, service: Service) -> String {
    let router = Router::new().route("/feed", get(feed)).with_state(service).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// `cdn_max_age` and `vary` through the layer: CDN headers sent, one entry per header value.
#[tokio::test]
async fn a_layer_sends_cdn_headers_and_varies_by_header() {
    for b in Backend::all() {
        let service = Service::default();
        service.gate.add_permits(1000);
        let layer = CacheLayer::new(b.cache.clone()).expire(60).public().cdn_max_age(600).vary(&["accept-language"]);
        let base = serve_with(layer, service.clone()).await;
        let c = reqwest::Client::new();
        let get = |lang: &'static str| c.get(format!("{base}/feed")).header("accept-language", lang).send();
        let r = get("en").await.unwrap();
        assert_eq!(r.headers()["cdn-cache-control"], "max-age=600", "{}", b.name);
        assert_eq!(r.headers()["cloudflare-cdn-cache-control"], "max-age=600", "{}", b.name);
        assert_eq!(r.headers()["vary"], "accept-language", "{}", b.name);
        assert_eq!(r.text().await.unwrap(), "feed in en (run 1)");
        let r = get("fr").await.unwrap();
        assert_eq!(r.headers()["x-cache"], "MISS", "{}: another language, another entry", b.name);
        assert_eq!(r.text().await.unwrap(), "feed in fr (run 2)");
        for (lang, run) in [("en", 1), ("fr", 2)] {
            let r = get(lang).await.unwrap();
            assert_eq!(r.headers()["x-cache"], "HIT", "{}", b.name);
            assert_eq!(r.text().await.unwrap(), format!("feed in {lang} (run {run})"));
        }
        assert_eq!(service.calls.get(), 2, "{}", b.name);
    }
}

/// `stale` and `stale_if_error` through the layer: an expired response is answered STALE at once
/// while one refresh (held at a gate here) replaces it; a 5xx falls back to the stale response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_serves_stale_while_revalidating_and_on_errors() {
    for b in Backend::all() {
        let service = Service::default();
        let layer = CacheLayer::new(b.cache.clone()).namespace("feeds").expire(1).stale(30).stale_if_error(30);
        let base = serve_with(layer, service.clone()).await;
        let c = reqwest::Client::new();
        let url = format!("{base}/feed");
        let r = c.get(&url).send().await.unwrap();
        assert!(r.headers()["cache-control"].to_str().unwrap().contains("stale-while-revalidate=30"));
        assert_eq!(r.text().await.unwrap(), "feed in - (run 1)");
        tokio::time::sleep(Duration::from_millis(1100)).await; // expired, inside `stale`
                                                               // Answered while the refresh is held at the gate: nobody waits for it.
        for _ in 0..5 {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.headers()["x-cache"], "STALE", "{}", b.name);
            assert_eq!(r.text().await.unwrap(), "feed in - (run 1)");
        }
        eventually(&format!("{}: the refresh started", b.name), async || service.calls.get() >= 2).await;
        service.gate.add_permits(1000);
        eventually(&format!("{}: the refresh landed", b.name), async || b.cache.stats().stores >= 2).await;
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT", "{}", b.name);
        assert_eq!(r.text().await.unwrap(), "feed in - (run 2)", "{}: replaced by the refresh", b.name);
        assert_eq!(service.calls.get(), 2, "{}: one refresh", b.name);

        // The service fails after the refreshed entry expires: the stale response, not the 503.
        service.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.get(&url).send().await.unwrap();
            assert_ne!(r.status(), 503, "{}: a stale response instead of the error", b.name);
            if r.headers()["x-cache"] == "STALE" && r.text().await.unwrap() == "feed in - (run 2)" {
                break;
            }
            assert!(Instant::now() < deadline, "{}: stale on error", b.name);
        }
    }
}

/// `lock` through the layer: two processes' worth of caches (two layers on one Redis) and
/// concurrent requests on both compute a missing response once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_with_lock_computes_once_across_replicas() {
    for b in [Backend::redis(), Backend::redis_without_l1(), Backend::redis_cluster()] {
        let service = Service::default();
        let other = Cache::builder().redis(b.url()).prefix("t").build().unwrap();
        let bases = [
            serve_with(CacheLayer::new(b.cache.clone()).expire(60).lock(5), service.clone()).await,
            serve_with(CacheLayer::new(other).expire(60).lock(5), service.clone()).await,
        ];
        let c = reqwest::Client::new();
        // The first run is held at the gate while everyone asks.
        service.calls.hit();
        let requests: Vec<_> = (0..40)
            .map(|i| {
                let (c, url) = (c.clone(), format!("{}/feed", bases[i % 2]));
                tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() })
            })
            .collect();
        eventually(&format!("{}: the body started", b.name), async || service.calls.get() >= 2).await;
        service.gate.add_permits(1000);
        for r in requests {
            assert_eq!(r.await.unwrap(), "feed in - (run 2)", "{}", b.name);
        }
        assert_eq!(service.calls.get(), 2, "{}: 40 requests on 2 replicas, one body run", b.name);
    }
}

async fn draft(
    axum::extract::Path(id): axum::extract::Path<u32>,
    State(calls): State<Arc<Calls>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let run = calls.hit();
    let valid_for = (id * 10).to_string();
    if id == 0 {
        ([("x-draft", "1")], format!("draft (run {run})")).into_response()
    } else {
        ([("x-valid-for", valid_for)], format!("post {id} (run {run})")).into_response()
    }
}

/// `CacheLayer::policy`: a draft is answered but never stored; `expire_with` sets each entry's
/// lifetime (and `max-age`), capped by `expire`.
#[tokio::test]
async fn a_layer_takes_a_policy_over_the_response() {
    use axum::response::Response;
    for b in [Backend::memory(), Backend::redis()] {
        let calls = Arc::new(Calls::default());
        let policy = cache_runtime::Policy::new()
            .unless(|r: &Response| r.headers().contains_key("x-draft"))
            .expire_with(|r: &Response| {
                let secs = r.headers().get("x-valid-for").and_then(|v| v.to_str().ok()?.parse().ok());
                Duration::from_secs(secs.unwrap_or(0))
            });
        let router = Router::new()
            .route("/posts/{id}", get(draft))
            .with_state(calls.clone())
            .layer(CacheLayer::new(b.cache.clone()).expire(100).policy(policy));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let c = reqwest::Client::new();
        for run in 1..=2 {
            let r = c.get(format!("{base}/posts/0")).send().await.unwrap();
            assert_eq!(r.headers()["x-cache"], "MISS", "{}", b.name);
            assert_eq!(r.text().await.unwrap(), format!("draft (run {run})"), "{}: a draft is never stored", b.name);
        }
        let cc = |r: &reqwest::Response| r.headers()["cache-control"].to_str().unwrap().to_owned();
        let miss = c.get(format!("{base}/posts/3")).send().await.unwrap();
        assert_eq!(cc(&miss), "private, max-age=30", "{}: expire_with", b.name);
        let hit = c.get(format!("{base}/posts/3")).send().await.unwrap();
        assert_eq!(hit.headers()["x-cache"], "HIT", "{}", b.name);
        let capped = c.get(format!("{base}/posts/50")).send().await.unwrap();
        assert_eq!(cc(&capped), "private, max-age=100", "{}: capped by expire", b.name);
        assert_eq!(calls.get(), 4, "{}", b.name);
    }
}
