//! `#[cached]` on axum handlers, over real TCP with a real HTTP client, in memory and Redis
//! modes: the example application's routes plus handlers written here for the edge cases.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::test_util::{RedisCluster, RedisServer};
use cache_runtime::{cached, invalidates, Cache};
use examples::app::{router, App, Config};
use reqwest::header::HeaderMap;
use support::Calls;

/// Serves `router` on a free loopback port; the server stops when the test's runtime ends.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The example app on a fresh in-memory database, with the in-memory cache or a Redis one.
struct TestApp {
    base: String,
    app: App,
    l1: bool,
    _redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

impl TestApp {
    async fn start(redis: bool) -> TestApp {
        Self::start_with(redis, true).await
    }

    async fn start_with(redis: bool, l1: bool) -> TestApp {
        let server = redis.then(|| RedisServer::start().unwrap());
        let config = Config { redis_url: server.as_ref().map(RedisServer::url), l1, ..Config::local() };
        let app = App::new(&config).unwrap();
        let base = serve(router(app.clone())).await;
        TestApp { base, app, l1, _redis: server, cluster: None }
    }

    /// The example app on a three-master Redis Cluster, with the process-memory tier.
    async fn start_on_cluster() -> TestApp {
        let cluster = RedisCluster::start().unwrap();
        let config = Config { redis_url: Some(cluster.url()), ..Config::local() };
        let app = App::new(&config).unwrap();
        let base = serve(router(app.clone())).await;
        TestApp { base, app, l1: true, _redis: None, cluster: Some(cluster) }
    }

    /// Memory, Redis, Redis with the process-memory tier, and a Redis Cluster with it.
    async fn both() -> Vec<TestApp> {
        vec![
            TestApp::start(false).await,
            TestApp::start_with(true, false).await,
            TestApp::start(true).await,
            TestApp::start_on_cluster().await,
        ]
    }

    fn mode(&self) -> &'static str {
        match (self.app.cache.is_redis(), self.cluster.is_some(), self.l1) {
            (false, _, _) => "memory",
            (true, true, _) => "cluster+l1",
            (true, false, false) => "redis",
            (true, false, true) => "redis+l1",
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_second_get_is_a_hit_and_does_not_reach_the_database() {
    for t in TestApp::both().await {
        let c = client();
        let first = c.get(t.url("/users/1")).send().await.unwrap();
        assert_eq!(first.status(), 200, "{}", t.mode());
        let headers = first.headers().clone();
        assert_eq!(h(&headers, "x-cache"), "MISS", "{}", t.mode());
        let etag = h(&headers, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34, "strong quoted ETag: {etag}");
        assert_eq!(h(&headers, "cache-control"), "private, max-age=60", "{}", t.mode());
        assert_eq!(h(&headers, "content-type"), "application/json");
        let body: serde_json::Value = first.json().await.unwrap();
        assert_eq!(body["id"], 1);
        // Last-Modified comes from the user's `updated_at`.
        let updated = humantime::parse_rfc3339(body["updated_at"].as_str().unwrap()).unwrap();
        assert_eq!(h(&headers, "last-modified"), httpdate(updated));

        let second = c.get(t.url("/users/1")).send().await.unwrap();
        assert_eq!(h(second.headers(), "x-cache"), "HIT", "{}", t.mode());
        assert_eq!(h(second.headers(), "etag"), etag);
        let max_age: u64 =
            h(second.headers(), "cache-control").trim_start_matches("private, max-age=").parse().unwrap();
        assert!(max_age <= 60, "max-age is the remaining freshness");
        assert_eq!(second.json::<serde_json::Value>().await.unwrap(), body);
        assert_eq!(t.app.db.reads(), 1, "{}: the second GET must not reach the database", t.mode());
    }
}

fn httpdate(t: std::time::SystemTime) -> String {
    let mut headers = axum::http::HeaderMap::new();
    headers::HeaderMapExt::typed_insert(&mut headers, headers::LastModified::from(t));
    headers[header::LAST_MODIFIED].to_str().unwrap().to_owned()
}

/// The ETag is the SHA-256 of the body (its first 128 bits, hex, quoted), computed here from the
/// body received: the same in two processes of the example app on one database (no per-process
/// salt, no stored-at time in it), and the same after a restart.
#[tokio::test]
async fn etags_are_the_sha256_of_the_body_on_every_replica() {
    use sha2::Digest as _;
    let dir = std::env::temp_dir().join(format!("cache-toolkit-etag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.sqlite");
    let db_path = db.to_str().unwrap().to_owned();
    let mut etags = Vec::new();
    for _ in 0..2 {
        // Two processes at once, then a third after they stopped (a restart).
        let replicas: Vec<support::Replica> =
            (0..2).map(|_| support::Replica::start_in_memory(&[("DATABASE_PATH", &db_path)])).collect();
        for replica in &replicas {
            let r = client().get(format!("{}/users/42", replica.base)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let etag = h(r.headers(), "etag").to_owned();
            let body = r.bytes().await.unwrap();
            let digest = sha2::Sha256::digest(&body);
            let expected: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(etag, format!("\"{expected}\""), "the SHA-256 of the body");
            etags.push(etag);
        }
    }
    assert!(etags.windows(2).all(|w| w[0] == w[1]), "{etags:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn if_none_match_answers_304_with_the_validators() {
    for t in TestApp::both().await {
        let c = client();
        let r = c.get(t.url("/users/2")).send().await.unwrap();
        let etag = h(r.headers(), "etag").to_owned();
        let last_modified = h(r.headers(), "last-modified").to_owned();
        let weak = format!("W/{etag}");
        let list = format!("\"nope\", {etag}");
        for inm in [etag.as_str(), "*", weak.as_str(), list.as_str()] {
            let r = c.get(t.url("/users/2")).header("if-none-match", inm).send().await.unwrap();
            assert_eq!(r.status(), 304, "{}: If-None-Match: {inm}", t.mode());
            let headers = r.headers().clone();
            assert_eq!(h(&headers, "etag"), etag);
            assert!(h(&headers, "cache-control").starts_with("private, max-age="));
            assert_eq!(h(&headers, "last-modified"), last_modified);
            assert_eq!(h(&headers, "x-cache"), "HIT");
            assert!(r.bytes().await.unwrap().is_empty(), "a 304 has no body");
        }
        for inm in ["\"other\"", "W/\"other\", \"again\"", "garbage without quotes", "\"unterminated"] {
            let r = c.get(t.url("/users/2")).header("if-none-match", inm).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}: If-None-Match: {inm}", t.mode());
            assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], 2);
        }
        // HEAD with a matching validator is a 304 too.
        let r = c.head(t.url("/users/2")).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(t.app.db.reads(), 1, "{}", t.mode());
    }
}

#[tokio::test]
async fn if_modified_since_is_used_only_without_if_none_match() {
    for t in TestApp::both().await {
        let c = client();
        let r = c.get(t.url("/users/3")).send().await.unwrap();
        let last_modified = h(r.headers(), "last-modified").to_owned();
        let r = c.get(t.url("/users/3")).header("if-modified-since", &last_modified).send().await.unwrap();
        assert_eq!(r.status(), 304, "{}", t.mode());
        assert_eq!(h(r.headers(), "last-modified"), last_modified);
        let later = httpdate(std::time::SystemTime::now() + Duration::from_secs(3600));
        let r = c.get(t.url("/users/3")).header("if-modified-since", &later).send().await.unwrap();
        assert_eq!(r.status(), 304, "{}: not modified since a later date", t.mode());
        let r =
            c.get(t.url("/users/3")).header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT").send().await.unwrap();
        assert_eq!(r.status(), 200, "{}: modified since 2000", t.mode());
        // If-None-Match present (and not matching): If-Modified-Since is ignored.
        let r = c
            .get(t.url("/users/3"))
            .header("if-none-match", "\"other\"")
            .header("if-modified-since", &later)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", t.mode());
        for bad in ["yesterday", "", "Sat, 99 Foo 2000 00:00:00 GMT"] {
            let r = c.get(t.url("/users/3")).header("if-modified-since", bad).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}: malformed If-Modified-Since {bad:?} is ignored", t.mode());
        }
    }
}

#[tokio::test]
async fn head_gets_the_get_headers_and_no_body() {
    for t in TestApp::both().await {
        let c = client();
        let get = c.get(t.url("/posts")).send().await.unwrap();
        let get_headers = get.headers().clone();
        let body = get.bytes().await.unwrap();
        let head = c.head(t.url("/posts")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let headers = head.headers().clone();
        assert_eq!(h(&headers, "x-cache"), "HIT", "{}: HEAD is served from GET's entry", t.mode());
        assert_eq!(h(&headers, "content-length"), body.len().to_string());
        for name in ["etag", "content-type", "last-modified", "cdn-cache-control"] {
            assert_eq!(h(&headers, name), h(&get_headers, name), "{}: {name}", t.mode());
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn public_and_cdn_headers() {
    for t in TestApp::both().await {
        let r = client().get(t.url("/posts")).send().await.unwrap();
        let headers = r.headers();
        assert_eq!(
            h(headers, "cache-control"),
            "public, max-age=60, s-maxage=120, stale-while-revalidate=60",
            "{}",
            t.mode()
        );
        assert_eq!(h(headers, "cdn-cache-control"), "max-age=600");
        assert_eq!(h(headers, "cloudflare-cdn-cache-control"), "max-age=600");
    }
}

#[tokio::test]
async fn writes_pass_through_and_the_next_read_sees_them() {
    for t in TestApp::both().await {
        let c = client();
        let before: serde_json::Value = c.get(t.url("/users/4")).send().await.unwrap().json().await.unwrap();
        assert_eq!(before["name"], "User 4");
        let r = c.put(t.url("/users/4")).json(&serde_json::json!({"name": "Ada"})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.get(t.url("/users/4")).send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "MISS", "{}: the write invalidated the entry", t.mode());
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["name"], "Ada");

        let posts: Vec<serde_json::Value> = c.get(t.url("/posts")).send().await.unwrap().json().await.unwrap();
        let r = c.post(t.url("/posts")).json(&serde_json::json!({"title": "New", "body": "b"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let after: Vec<serde_json::Value> = c.get(t.url("/posts")).send().await.unwrap().json().await.unwrap();
        assert_eq!(after.len(), posts.len() + 1, "{}", t.mode());
        assert_eq!(after[0]["title"], "New");
    }
}

#[tokio::test]
async fn errors_are_not_stored() {
    for t in TestApp::both().await {
        let c = client();
        for _ in 0..2 {
            let r = c.get(t.url("/users/5000")).send().await.unwrap();
            assert_eq!(r.status(), 404);
            assert_eq!(h(r.headers(), "x-cache"), "MISS");
        }
        assert_eq!(t.app.db.reads(), 2, "{}: a 404 is not cached", t.mode());
        let r = c.get(t.url("/users/abc")).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
}

#[tokio::test]
async fn vary_keeps_every_user_to_their_own_response() {
    for t in TestApp::both().await {
        let c = client();
        let feed = |who: &'static str| {
            let c = c.clone();
            let url = t.url("/feed?page=1");
            async move {
                let r = c.get(url).bearer_auth(who).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let x_cache = h(r.headers(), "x-cache").to_owned();
                assert_eq!(h(r.headers(), "vary"), "authorization");
                assert!(h(r.headers(), "cache-control").starts_with("private"));
                let body: serde_json::Value = r.json().await.unwrap();
                (x_cache, body["user"]["name"].as_str().unwrap().to_owned())
            }
        };
        assert_eq!(feed("alice").await, ("MISS".to_owned(), "alice".to_owned()), "{}", t.mode());
        assert_eq!(feed("bob").await, ("MISS".to_owned(), "bob".to_owned()), "{}", t.mode());
        assert_eq!(feed("alice").await, ("HIT".to_owned(), "alice".to_owned()), "{}", t.mode());
        assert_eq!(feed("bob").await, ("HIT".to_owned(), "bob".to_owned()), "{}", t.mode());
        assert_eq!(t.app.db.reads(), 2, "{}", t.mode());
        let r = c.get(t.url("/feed")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = c.get(t.url("/feed?page=2")).bearer_auth("alice").send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "MISS", "another page is another entry");
    }
}

#[tokio::test]
async fn a_client_cannot_force_misses_unless_the_handler_allows_it() {
    for t in TestApp::both().await {
        let c = client();
        c.get(t.url("/users/6")).send().await.unwrap();
        let r = c.get(t.url("/users/6")).header("cache-control", "no-cache").send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "HIT", "{}: no-cache from a client is ignored by default", t.mode());
    }
}

#[tokio::test]
async fn metrics_count_hits_misses_and_database_reads() {
    let t = TestApp::start(false).await;
    let c = client();
    for _ in 0..3 {
        c.get(t.url("/users/7")).send().await.unwrap();
    }
    let text = c.get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "cache_hits_total 2",
        "cache_misses_total 1",
        "cache_stale_total 0",
        "cache_errors_total 0",
        "db_queries_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    // Per handler: the counters are process-wide (other tests of this binary call it too).
    let per_handler = |series: &str| -> u64 {
        let prefix = format!("{series}{{function=\"examples::app::get_user\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        line.unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}")).parse().unwrap()
    };
    assert!(per_handler("cache_function_hits_total") >= 2);
    assert!(per_handler("cache_function_misses_total") >= 1);
    assert!(per_handler("cache_function_stored_bytes_total") > 0);
}

// ----- handlers written here, for what the example app does not exercise -----

#[derive(Clone)]
struct Counted {
    cache: Cache,
    calls: std::sync::Arc<Calls>,
}

#[cached(http, honor_no_cache, expire = 60, cache = state.cache)]
async fn honoring(State(state): State<Counted>) -> String {
    format!("call {}", state.calls.hit())
}

#[cached(expire = 60, cache = state.cache)]
async fn tuple_status(State(state): State<Counted>, Path(id): Path<u32>) -> impl IntoResponse {
    state.calls.hit();
    (StatusCode::CREATED, [("x-custom", "kept")], Json(serde_json::json!({ "id": id })))
}

#[cached(expire = 60, cache = state.cache)]
async fn with_cookie(State(state): State<Counted>) -> impl IntoResponse {
    state.calls.hit();
    ([(header::SET_COOKIE, "session=secret")], "personal")
}

#[cached(expire = 60, cache = state.cache)]
async fn marked_no_store(State(state): State<Counted>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], format!("private run {}", state.calls.hit()))
}

/// A body over the 8 MiB a stored response may have.
#[cached(expire = 60, cache = state.cache)]
async fn huge(State(state): State<Counted>) -> String {
    format!("{}{}", state.calls.hit(), " ".repeat(9 << 20))
}

#[cached(expire = 60, key = "item:<id>", cache = state.cache)]
async fn item(State(state): State<Counted>, Path(id): Path<u32>) -> String {
    format!("item {id} run {}", state.calls.hit())
}

/// A write handler: 400 for a body it refuses, 204 otherwise. Its body consumes `state`,
/// which the `cache` expression borrows from: the macro must not keep that borrow across it.
#[invalidates(key = "item:<id>", cache = state.cache)]
async fn put_item(State(state): State<Counted>, Path(id): Path<u32>, body: String) -> StatusCode {
    drop(state);
    let _ = id;
    if body == "bad" {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::NO_CONTENT
    }
}

/// `early` with a large β: the first hit after a fill is all but sure to draw a refresh.
#[cached(expire = 3, beta = 1000.0, cache = state.cache)]
async fn early_page(State(state): State<Counted>) -> String {
    let n = state.calls.hit();
    tokio::time::sleep(Duration::from_millis(20)).await;
    format!("early run {n}")
}

async fn edge_app(redis: Option<&RedisServer>) -> (String, Counted) {
    let cache = match redis {
        Some(server) => Cache::builder().redis(server.url()).build().unwrap(),
        None => Cache::memory(),
    };
    let state = Counted { cache, calls: std::sync::Arc::default() };
    let router = Router::new()
        .route("/honoring", get(honoring))
        .route("/tuple/{id}", get(tuple_status).post(tuple_status).put(tuple_status))
        .route("/cookie", get(with_cookie))
        .route("/no-store", get(marked_no_store))
        .route("/huge", get(huge))
        .route("/early", get(early_page))
        .route("/item/{id}", get(item).put(put_item))
        .with_state(state.clone());
    (serve(router).await, state)
}

#[tokio::test]
async fn handlers_of_every_shape() {
    let server = RedisServer::start().unwrap();
    for redis in [None, Some(&server)] {
        let (base, state) = edge_app(redis).await;
        let c = client();

        // Client no-cache honoured: the handler runs again (and refreshes the entry); no-store
        // runs it without storing.
        assert_eq!(c.get(format!("{base}/honoring")).send().await.unwrap().text().await.unwrap(), "call 1");
        assert_eq!(c.get(format!("{base}/honoring")).send().await.unwrap().text().await.unwrap(), "call 1");
        let r = c.get(format!("{base}/honoring")).header("cache-control", "no-cache").send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "BYPASS");
        assert_eq!(r.text().await.unwrap(), "call 2");
        assert_eq!(c.get(format!("{base}/honoring")).send().await.unwrap().text().await.unwrap(), "call 2");
        let r = c.get(format!("{base}/honoring")).header("cache-control", "no-store").send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "call 3");
        assert_eq!(c.get(format!("{base}/honoring")).send().await.unwrap().text().await.unwrap(), "call 2");

        // (StatusCode, headers, Json): status and the handler's own headers are stored.
        for expected in ["MISS", "HIT"] {
            let r = c.get(format!("{base}/tuple/9")).send().await.unwrap();
            assert_eq!(r.status(), 201);
            assert_eq!(h(r.headers(), "x-cache"), expected);
            assert_eq!(h(r.headers(), "x-custom"), "kept");
            assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], 9);
        }
        // The default key of a handler is its path and query.
        let r = c.get(format!("{base}/tuple/10")).send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "MISS");

        // A response that sets a cookie is never stored.
        for _ in 0..2 {
            let r = c.get(format!("{base}/cookie")).send().await.unwrap();
            assert_eq!(h(r.headers(), "x-cache"), "MISS");
            assert_eq!(h(r.headers(), "set-cookie"), "session=secret");
        }
        assert_eq!(state.calls.get(), 3 + 2 + 2);

        // A response marked `Cache-Control: no-store` by its handler is never stored.
        for run in [4, 5] {
            let r = c.get(format!("{base}/no-store")).send().await.unwrap();
            assert_eq!(h(r.headers(), "x-cache"), "MISS");
            assert_eq!(r.text().await.unwrap(), format!("private run {}", run + 4));
        }

        // A body over 8 MiB is served whole, never stored.
        for _ in 0..2 {
            let r = c.get(format!("{base}/huge")).send().await.unwrap();
            assert_eq!(h(r.headers(), "x-cache"), "MISS");
            assert!(r.bytes().await.unwrap().len() > 9 << 20);
        }
        assert_eq!(state.calls.get(), 7 + 2 + 2);

        // A method other than GET and HEAD bypasses the cache: it runs and is not stored.
        for method in [reqwest::Method::POST, reqwest::Method::PUT] {
            let r = c.request(method.clone(), format!("{base}/tuple/9")).send().await.unwrap();
            assert_eq!((r.status().as_u16(), h(r.headers(), "x-cache")), (201, "BYPASS"), "{method}");
        }
        assert_eq!(state.calls.get(), 11 + 2);
        let r = c.get(format!("{base}/tuple/9")).send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "HIT", "GET still has its entry");

        // A cold HEAD runs the handler once, answers the headers a GET would, and stores the
        // response for the GET that follows.
        let head = c.head(format!("{base}/tuple/12")).send().await.unwrap();
        assert_eq!((head.status().as_u16(), h(head.headers(), "x-cache")), (201, "MISS"));
        let head_etag = h(head.headers(), "etag").to_owned();
        assert!(head.bytes().await.unwrap().is_empty());
        let get = c.get(format!("{base}/tuple/12")).send().await.unwrap();
        assert_eq!((h(get.headers(), "x-cache"), h(get.headers(), "etag")), ("HIT", head_etag.as_str()));
        assert_eq!(get.json::<serde_json::Value>().await.unwrap()["id"], 12);
        assert_eq!(state.calls.get(), 14);
    }
}

/// `early` on a handler: a hit draws a refresh before the entry expires (β is large, so the
/// first hits all but surely draw it); the hit is answered at once, the refresh runs in the
/// background, and when the first entry expires the refreshed one answers: no request ever
/// waits for the handler or sees a miss. (An L1 keeps serving its still-fresh copy of the old
/// response until that copy expires: the refresh pre-computes, it does not invalidate.)
#[tokio::test]
async fn handlers_refresh_early_before_expiry() {
    let server = RedisServer::start().unwrap();
    for redis in [None, Some(&server)] {
        let (base, state) = edge_app(redis).await;
        let c = client();
        let first = c.get(format!("{base}/early")).send().await.unwrap();
        assert_eq!(h(first.headers(), "x-cache"), "MISS");
        let stored = std::time::Instant::now();
        let mut refreshed_at = None;
        // Requests all along, until past the first entry's expiry (3 s after it was stored).
        while stored.elapsed() < Duration::from_millis(3500) {
            let r = c.get(format!("{base}/early")).send().await.unwrap();
            assert_eq!(h(r.headers(), "x-cache"), "HIT", "redis {}: never a miss, never a wait", redis.is_some());
            if refreshed_at.is_none() && state.calls.get() >= 2 {
                refreshed_at = Some(stored.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refreshed_at = refreshed_at.expect("a refresh ran");
        assert!(refreshed_at < Duration::from_secs(3), "before expiry: {refreshed_at:?}");
        assert!(state.calls.get() >= 2);
    }
}

#[tokio::test]
async fn a_dead_redis_never_turns_into_a_5xx() {
    let mut t = TestApp::start(true).await;
    let c = client();
    assert_eq!(c.get(t.url("/users/8")).send().await.unwrap().status(), 200);
    t._redis.as_mut().unwrap().kill();
    for path in ["/users/8", "/posts", "/users/9"] {
        let r = c.get(t.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(h(r.headers(), "x-cache"), "MISS");
    }
    let r = c.put(t.url("/users/8")).json(&serde_json::json!({"email": "x@y"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "a write succeeds even when the invalidation cannot reach Redis");
}

#[tokio::test]
async fn corrupt_stored_responses_are_misses() {
    let t = TestApp::start_with(true, false).await;
    let c = client();
    assert_eq!(c.get(t.url("/users/10")).send().await.unwrap().status(), 200);
    let client = redis::Client::open(t._redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The handler's response, a representation of the key `user:10`.
    let key = "axum-app:{default:user:10}:h";
    let stored: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
    // Keep the envelope but truncate the stored response inside it; then pure garbage.
    for garbage in [stored[..stored.len() - 60].to_vec(), b"garbage".to_vec()] {
        let _: () = redis::cmd("SET").arg(key).arg(garbage).query_async(&mut conn).await.unwrap();
        let r = c.get(t.url("/users/10")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(h(r.headers(), "x-cache"), "MISS");
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["id"], 10);
        let r = c.get(t.url("/users/10")).send().await.unwrap();
        assert_eq!(h(r.headers(), "x-cache"), "HIT", "the corrupt entry was overwritten");
    }
}

/// A body whose `updated_at` is a fixed instant in the past, in either accepted form.
#[derive(serde::Serialize)]
struct Dated {
    id: u32,
    updated_at: serde_json::Value,
}

#[cached(expire = 60, last_modified = "updated_at", cache = state.cache)]
async fn dated_rfc3339(State(state): State<Counted>) -> Json<Dated> {
    state.calls.hit();
    Json(Dated { id: 1, updated_at: "2020-01-02T03:04:05Z".into() })
}

#[cached(expire = 60, last_modified = "updated_at", cache = state.cache)]
async fn dated_unix(State(state): State<Counted>) -> Json<Dated> {
    state.calls.hit();
    Json(Dated { id: 2, updated_at: 1_577_934_245.into() })
}

#[cached(expire = 60, last_modified = "updated_at", cache = state.cache)]
async fn dated_far(State(state): State<Counted>) -> Json<Dated> {
    state.calls.hit();
    Json(Dated { id: 3, updated_at: 1_000_000_000_000_000u64.into() })
}

/// Input that once panicked in a debug build: an `If-None-Match` with white space inside a
/// tag (the `headers` crate debug-asserts on it), and a `last_modified` field past the year
/// 9999 (no HTTP-date can name it). Both are answered in full, no panic, no dropped connection.
#[tokio::test]
async fn odd_validators_and_far_dates_are_answered_not_panicked() {
    let state = Counted { cache: Cache::memory(), calls: std::sync::Arc::default() };
    let router = Router::new().route("/far", get(dated_far)).with_state(state.clone());
    let base = serve(router).await;
    let c = client();
    for expected in ["MISS", "HIT"] {
        let r = c.get(format!("{base}/far")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), h(r.headers(), "x-cache")), (200, expected));
        assert_eq!(h(r.headers(), "last-modified"), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
    let etag = h(c.get(format!("{base}/far")).send().await.unwrap().headers(), "etag").to_owned();
    for inm in ["\"a b\"", "\"a\tb\"", &format!("\"x y\", {etag}")] {
        let r = c.get(format!("{base}/far")).header("if-none-match", inm).send().await.unwrap();
        assert_eq!(r.status(), 200, "If-None-Match {inm:?} is malformed: ignored");
    }
    let r = c.get(format!("{base}/far")).header("if-none-match", format!("\"x\", {etag}")).send().await.unwrap();
    assert_eq!(r.status(), 304, "a well-formed list naming the ETag");
}

/// `last_modified = "field"` takes `Last-Modified` from the body (not the time it was stored),
/// on a miss and on a hit; and `max-age` counts down as the entry ages.
#[tokio::test]
async fn last_modified_comes_from_the_body_and_max_age_counts_down() {
    let server = RedisServer::start().unwrap();
    for redis in [None, Some(&server)] {
        let cache = match redis {
            Some(server) => Cache::builder().redis(server.url()).build().unwrap(),
            None => Cache::memory(),
        };
        let state = Counted { cache, calls: std::sync::Arc::default() };
        let router = Router::new()
            .route("/rfc3339", get(dated_rfc3339))
            .route("/unix", get(dated_unix))
            .with_state(state.clone());
        let base = serve(router).await;
        let c = client();
        for path in ["/rfc3339", "/unix"] {
            for expected in ["MISS", "HIT"] {
                let r = c.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(h(r.headers(), "x-cache"), expected, "{path}");
                assert_eq!(h(r.headers(), "last-modified"), "Thu, 02 Jan 2020 03:04:05 GMT", "{path} {expected}");
            }
        }
        let max_age = |r: &reqwest::Response| -> u64 {
            h(r.headers(), "cache-control").trim_start_matches("private, max-age=").parse().unwrap()
        };
        let first = c.get(format!("{base}/rfc3339")).send().await.unwrap();
        assert!(max_age(&first) >= 59, "{}", h(first.headers(), "cache-control"));
        // The promise is the countdown itself: 1.1 s later, at least one second less.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let later = c.get(format!("{base}/rfc3339")).send().await.unwrap();
        assert_eq!(h(later.headers(), "x-cache"), "HIT");
        assert!(max_age(&later) < max_age(&first), "{} then {}", max_age(&first), max_age(&later));
        assert_eq!(state.calls.get(), 2);
    }
}

/// `#[invalidates]` on a handler invalidates only after a 2xx: a 4xx (a refused write) leaves
/// the entry, a 204 drops it.
#[tokio::test]
async fn a_handler_invalidates_only_after_a_2xx() {
    let server = RedisServer::start().unwrap();
    for redis in [None, Some(&server)] {
        let (base, state) = edge_app(redis).await;
        let c = client();
        let get = async || c.get(format!("{base}/item/3")).send().await.unwrap().text().await.unwrap();
        assert_eq!(get().await, "item 3 run 1");
        let refused = c.put(format!("{base}/item/3")).body("bad").send().await.unwrap();
        assert_eq!(refused.status(), 400);
        assert_eq!(get().await, "item 3 run 1", "redis {}: a 400 invalidates nothing", redis.is_some());
        let accepted = c.put(format!("{base}/item/3")).body("good").send().await.unwrap();
        assert_eq!(accepted.status(), 204);
        assert_eq!(get().await, "item 3 run 2", "redis {}: a 204 invalidated", redis.is_some());
        assert_eq!(state.calls.get(), 2);
    }
}

/// What `/answers/{case}` answers: each case is kept out of the cache for its own reason, but
/// `stored`, which is stored.
#[cached(
    expire = 60,
    unless = |r: &axum::response::Response| r.headers().contains_key("x-draft"),
    cache = state.cache
)]
async fn unstored(State(state): State<Counted>, Path(case): Path<String>) -> axum::response::Response {
    state.calls.hit();
    match case.as_str() {
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "missing-own" => (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "public, max-age=5")]).into_response(),
        "failing" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "cookie" => ([(header::SET_COOKIE, "session=1")], "personal").into_response(),
        "draft" => ([("x-draft", "1")], "draft").into_response(),
        _ => "stored".into_response(),
    }
}

/// An answer a cached handler does not store (a 404, a 5xx, a response that sets a cookie or
/// that `unless` keeps out, any method but `GET` / `HEAD`, a disabled cache) says
/// `Cache-Control: no-store`: a CDN in front does not keep it by its own default (an hour at
/// Fastly for a 404), so once the user is created the edge does not still say 404. A
/// `Cache-Control` the handler set itself is kept. The same through `CacheLayer`.
#[tokio::test]
async fn answers_that_are_not_stored_say_no_store() {
    let c = client();
    let cache_control = |r: &reqwest::Response| h(r.headers(), "cache-control").to_owned();
    // The example app: a user that does not exist (yet).
    let t = TestApp::start(false).await;
    let r = c.get(t.url("/users/5000")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_control(&r).as_str()), (404, "no-store"), "a missing user");

    for (name, cache) in [("memory", Cache::memory()), ("disabled", Cache::disabled())] {
        let state = Counted { cache, calls: std::sync::Arc::default() };
        let router = Router::new().route("/answers/{case}", get(unstored).post(unstored)).with_state(state);
        let base = serve(router).await;
        let stored = if name == "memory" { ("MISS", "private, max-age=60") } else { ("BYPASS", "no-store") };
        let cases = [
            (reqwest::Method::GET, "stored", 200, stored.0, stored.1),
            (reqwest::Method::GET, "missing", 404, "MISS", "no-store"),
            (reqwest::Method::GET, "missing-own", 404, "MISS", "public, max-age=5"),
            (reqwest::Method::GET, "failing", 503, "MISS", "no-store"),
            (reqwest::Method::GET, "cookie", 200, "MISS", "no-store"),
            (reqwest::Method::GET, "draft", 200, "MISS", "no-store"),
            (reqwest::Method::HEAD, "missing", 404, "MISS", "no-store"),
            (reqwest::Method::POST, "stored", 200, "BYPASS", "no-store"),
            (reqwest::Method::POST, "missing-own", 404, "BYPASS", "public, max-age=5"),
        ];
        for (method, case, status, x_cache, expected) in cases {
            let r = c.request(method.clone(), format!("{base}/answers/{case}")).send().await.unwrap();
            let x_cache = if name == "disabled" { "BYPASS" } else { x_cache };
            let said = format!("{name}: {method} {case}");
            assert_eq!((r.status().as_u16(), h(r.headers(), "x-cache")), (status, x_cache), "{said}");
            assert_eq!(cache_control(&r), expected, "{said}");
        }
    }

    // `CacheLayer` answers through the same code.
    let router = Router::new()
        .route("/page", get(|| async { "page" }).post(|| async { "posted" }))
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .layer(cache_runtime::CacheLayer::new(Cache::memory()).expire(60));
    let base = serve(router).await;
    let r = c.get(format!("{base}/page")).send().await.unwrap();
    assert_eq!(cache_control(&r), "private, max-age=60", "layer: a stored page");
    let r = c.get(format!("{base}/gone")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_control(&r).as_str()), (404, "no-store"), "layer: a 404");
    let r = c.post(format!("{base}/page")).send().await.unwrap();
    assert_eq!((h(r.headers(), "x-cache"), cache_control(&r).as_str()), ("BYPASS", "no-store"), "layer: a POST");
}
