//! Invalidation that reaches the CDN: `cdn_tags` handlers name their tags and namespace, and
//! every applied invalidation purges them through the `Purger` (Fastly's and Cloudflare's
//! purge APIs, served here by a mock CDN on loopback), with retries when the CDN is down, a
//! bound on how long a write waits for it, and never before the cache itself forgot.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use cache_runtime::cdn::{Cloudflare, Fastly};
use cache_runtime::{cached, invalidates, Cache, CacheBuilder};
use support::cdn_mock::MockCdn;
use support::{eventually, serve};

#[derive(Clone)]
struct App {
    cache: Cache,
    version: Arc<AtomicU64>,
}

#[cached(expire = 60, key = "post:<id>", tags = ["posts"], cdn_tags, cache = app.cache)]
async fn cdn_post(Path(id): Path<u32>, State(app): State<App>) -> String {
    format!("post {id} v{}", app.version.load(Ordering::SeqCst))
}

#[cached(expire = 60, key = "feed", namespace = "feed", cdn_tags, cache = app.cache)]
async fn cdn_feed(State(app): State<App>) -> String {
    format!("feed v{}", app.version.load(Ordering::SeqCst))
}

#[invalidates(tags = ["posts"], cache = app.cache)]
async fn cdn_new_post(State(app): State<App>) -> StatusCode {
    app.version.fetch_add(1, Ordering::SeqCst);
    StatusCode::CREATED
}

#[invalidates(namespace = "feed", cache = app.cache)]
async fn cdn_clear_feed(State(app): State<App>) -> StatusCode {
    app.version.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn serve_app(cache: Cache) -> (String, App) {
    let app = App { cache, version: Arc::new(AtomicU64::new(1)) };
    let router = Router::new()
        .route("/posts/{id}", get(cdn_post))
        .route("/posts", post(cdn_new_post))
        .route("/feed", get(cdn_feed))
        .route("/feed/clear", post(cdn_clear_feed))
        .with_state(app.clone());
    (serve(router).await, app)
}

/// A memory cache and a Redis one (with its L1), each purging through `purger`.
fn backends(
    configure: impl Fn(CacheBuilder) -> CacheBuilder,
) -> Vec<(&'static str, Cache, Option<cache_runtime::test_util::RedisServer>)> {
    let redis = cache_runtime::test_util::RedisServer::start().expect("redis-server (scripts/test installs it)");
    vec![
        ("memory", configure(Cache::builder().prefix("t")).build().unwrap(), None),
        (
            "redis+l1",
            configure(Cache::builder().prefix("t").redis(redis.url()).command_timeout(Duration::from_millis(300)))
                .build()
                .unwrap(),
            Some(redis),
        ),
    ]
}

/// Through the macros over HTTP: a handler's `Surrogate-Key` names its tags and namespace, and
/// a write's tag or namespace invalidation purges exactly those at Fastly before the write
/// answers; the next read (here and at the CDN's origin) is the new value.
#[tokio::test]
async fn a_write_purges_the_tags_its_handlers_sent_to_fastly() {
    let cdn = MockCdn::start().await;
    for (name, cache, _redis) in backends(|b| b.purger(Fastly::new("svc-1", "fastly-token").base_url(&cdn.base))) {
        let (base, _app) = serve_app(cache.clone()).await;
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();
        let first = get("/posts/1").await.unwrap();
        assert_eq!(first.headers()["surrogate-key"], "posts ns:default", "{name}");
        assert_eq!(first.headers()["cache-tag"], "posts,ns:default", "{name}");
        assert_eq!(first.text().await.unwrap(), "post 1 v1");
        let feed = get("/feed").await.unwrap();
        assert_eq!(feed.headers()["surrogate-key"], "ns:feed", "{name}");
        assert_eq!(get("/posts/1").await.unwrap().headers()["x-cache"], "HIT", "{name}");
        let before = cdn.calls().len();

        let r = http.post(format!("{base}/posts")).send().await.unwrap();
        assert_eq!(r.status(), 201);
        // The write waited for the purge (the CDN answered well within `purge_wait`).
        let calls = cdn.calls();
        assert_eq!(calls.len(), before + 1, "{name}: {calls:?}");
        let purge = &calls[before];
        assert_eq!(purge.path, "/service/svc-1/purge", "{name}");
        assert_eq!(purge.header("surrogate-key"), "posts", "{name}");
        assert_eq!(purge.header("fastly-key"), "fastly-token", "{name}");
        assert_eq!(purge.header("fastly-soft-purge"), "", "{name}");
        let next = get("/posts/1").await.unwrap();
        assert_eq!(next.headers()["x-cache"], "MISS", "{name}");
        assert_eq!(next.text().await.unwrap(), "post 1 v2", "{name}");

        // A namespace clear purges the namespace's tag, as `/feed` sent it.
        let r = http.post(format!("{base}/feed/clear")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let calls = cdn.calls();
        assert_eq!(calls.len(), before + 2, "{name}: {calls:?}");
        assert_eq!(calls[before + 1].header("surrogate-key"), "ns:feed", "{name}");
        assert_eq!(get("/feed").await.unwrap().text().await.unwrap(), "feed v3", "{name}");

        let stats = cache.stats();
        assert_eq!((stats.purges, stats.purge_failures, stats.purges_dropped), (2, 0, 0), "{name}");
    }
}

/// Cloudflare's API: tags and URLs in separate calls, with the API token as a bearer; a key
/// purges the URL `purge_urls` maps it to, and nothing when it maps to none. Fastly purges a
/// URL by its address without the scheme, softly when asked.
#[tokio::test]
async fn cloudflare_purges_tags_and_urls_and_fastly_purges_urls() {
    let urls = |namespace: &str, key: &str| {
        let id = key.strip_prefix("user:")?;
        (namespace == "default").then(|| format!("https://www.example.com/users/{id}"))
    };
    let cdn = MockCdn::start().await;
    let cache = Cache::builder()
        .purger(Cloudflare::new("zone-9", "cf-token").base_url(format!("{}/client/v4/", cdn.base)))
        .purge_urls(urls)
        .build()
        .unwrap();
    cache.invalidate_tag("posts").await.unwrap();
    cache.clear_namespace("feed").await.unwrap();
    cache.invalidate("user:7").await.unwrap();
    cache.invalidate("session:7").await.unwrap(); // no URL: nothing to purge
    cache.namespace("other").invalidate("user:8").await.unwrap(); // no URL either
    let calls = cdn.calls();
    let bodies: Vec<serde_json::Value> = calls.iter().map(|c| serde_json::from_str(&c.body).unwrap()).collect();
    assert_eq!(
        bodies,
        [
            serde_json::json!({"tags": ["posts"]}),
            serde_json::json!({"tags": ["ns:feed"]}),
            serde_json::json!({"files": ["https://www.example.com/users/7"]}),
        ]
    );
    for call in &calls {
        assert_eq!(call.path, "/client/v4/zones/zone-9/purge_cache");
        assert_eq!(call.header("authorization"), "Bearer cf-token");
        assert_eq!(call.header("content-type"), "application/json");
    }
    assert_eq!(cache.stats().purges, 3);

    let fastly = MockCdn::start().await;
    let cache = Cache::builder()
        .purger(Fastly::new("svc", "tok").base_url(&fastly.base).soft())
        .purge_urls(urls)
        .build()
        .unwrap();
    cache.invalidate("user:7").await.unwrap();
    let calls = fastly.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/purge/www.example.com/users/7");
    assert_eq!(calls[0].header("fastly-soft-purge"), "1");
}

/// A CDN answering `503`: the write is not failed, the purge is retried with backoff (what is
/// invalidated meanwhile joins it), and once the CDN is back it receives every tag, once.
#[tokio::test]
async fn a_cdn_that_is_down_receives_the_purge_once_it_is_back() {
    let cdn = MockCdn::start().await;
    cdn.set_down(true);
    let cache = Cache::builder()
        .purger(Fastly::new("svc", "tok").base_url(&cdn.base))
        .purge_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = Instant::now();
    cache.invalidate_tag("posts").await.expect("a CDN that is down never fails the invalidation");
    cache.invalidate_tag("users").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "each waited at most purge_wait: {:?}", started.elapsed());
    eventually("the purge was retried", async || cdn.refused() >= 3).await;
    assert!(cdn.calls().is_empty());
    assert!(cache.stats().purge_failures >= 3);
    cdn.set_down(false);
    eventually("the CDN received the purge", async || !cdn.calls().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = cdn.calls();
    let keys: Vec<&str> = calls.iter().map(|c| c.header("surrogate-key")).collect();
    assert_eq!(keys, ["posts users"], "one purge, every tag, once");
    let stats = cache.stats();
    assert_eq!((stats.purges, stats.purges_dropped), (1, 0));
}

/// A CDN that refuses connections (not listening yet) gets the purge once it listens again on
/// the same address.
#[tokio::test]
async fn a_cdn_that_refuses_connections_receives_the_purge_once_it_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let cache = Cache::builder()
        .purger(Fastly::new("svc", "tok").base_url(format!("http://{address}")))
        .purge_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    cache.invalidate_tag("posts").await.unwrap();
    eventually("a connection was refused", async || cache.stats().purge_failures >= 2).await;
    let cdn = MockCdn::on(tokio::net::TcpListener::bind(address).await.unwrap());
    // Counted once the CDN answered (the mock records the call before it answers).
    eventually("the CDN received the purge", async || cache.stats().purges >= 1).await;
    assert_eq!(cdn.calls()[0].header("surrogate-key"), "posts");
    assert_eq!(cache.stats().purges, 1);
}

/// A CDN that never answers holds a write no longer than `purge_wait`; the cache itself is
/// invalidated all the same.
#[tokio::test]
async fn a_hanging_cdn_holds_a_write_no_longer_than_purge_wait() {
    let cdn = MockCdn::start().await;
    cdn.shared.hang.store(true, Ordering::SeqCst);
    for (name, cache, _redis) in
        backends(|b| b.purger(Fastly::new("svc", "tok").base_url(&cdn.base)).purge_wait(Duration::from_millis(300)))
    {
        let (base, app) = serve_app(cache).await;
        let http = reqwest::Client::new();
        assert_eq!(http.get(format!("{base}/posts/1")).send().await.unwrap().text().await.unwrap(), "post 1 v1");
        let started = Instant::now();
        let r = http.post(format!("{base}/posts")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 201, "{name}");
        // The purge call itself would take 5 s (the client's timeout): the write did not wait.
        assert!(took < Duration::from_secs(3), "{name}: the write took {took:?}");
        assert_eq!(app.version.load(Ordering::SeqCst), 2);
        let next = http.get(format!("{base}/posts/1")).send().await.unwrap();
        assert_eq!(next.headers()["x-cache"], "MISS", "{name}");
    }
}

/// A purge that keeps failing is given up after `purge_retry_for`, counted and logged.
#[tokio::test]
async fn a_purge_failing_past_purge_retry_for_is_dropped_and_counted() {
    let cdn = MockCdn::start().await;
    cdn.set_down(true);
    let cache = Cache::builder()
        .purger(Cloudflare::new("zone", "tok").base_url(&cdn.base))
        .purge_wait(Duration::ZERO)
        .purge_retry_for(Duration::from_millis(400))
        .build()
        .unwrap();
    cache.invalidate_tag("posts").await.unwrap();
    eventually("the purge was given up", async || cache.stats().purges_dropped == 1).await;
    let stats = cache.stats();
    assert!(stats.purge_failures >= 2, "{stats:?}");
    assert_eq!(stats.purges, 0);
    // The queue goes on: the next purge is sent once the CDN is back.
    cdn.set_down(false);
    cache.invalidate_tag("users").await.unwrap();
    eventually("the next purge was sent", async || cache.stats().purges == 1).await;
    assert_eq!(cdn.calls().len(), 1);
}

/// An invalidation that could not reach Redis is queued; the CDN is purged only once it is
/// applied (purged before, the CDN could fetch the old answer from a replica again).
#[tokio::test]
async fn an_invalidation_queued_for_redis_purges_the_cdn_once_applied() {
    let cdn = MockCdn::start().await;
    let mut redis = cache_runtime::test_util::RedisServer::start().unwrap();
    let cache = Cache::builder()
        .redis(redis.url())
        .prefix("t")
        .command_timeout(Duration::from_millis(200))
        .purger(Fastly::new("svc", "tok").base_url(&cdn.base))
        .build()
        .unwrap();
    cache.set("posts", &"v1".to_owned(), Duration::from_secs(60)).await.unwrap();
    redis.kill();
    assert!(cache.invalidate_tag("posts").await.is_err(), "Redis is down: the invalidation is queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cdn.calls().is_empty(), "purged before the cache forgot: {:?}", cdn.calls());
    redis.restart().unwrap();
    eventually("the queued invalidation was applied and the CDN purged", async || !cdn.calls().is_empty()).await;
    assert_eq!(cdn.calls()[0].header("surrogate-key"), "posts");
}

/// The example app: `GET /posts` names its tag for the CDN, `POST /posts` purges it there.
#[tokio::test]
async fn the_example_app_purges_posts_at_the_cdn() {
    use examples::app::{router, App, Cdn, Config};
    let cdn = MockCdn::start().await;
    let config = Config {
        cdn: Some(Cdn::Fastly {
            service_id: "example".to_owned(),
            api_token: "tok".to_owned(),
            api_url: Some(cdn.base.clone()),
        }),
        ..Config::local()
    };
    let base = serve(router(App::new(&config).unwrap())).await;
    let http = reqwest::Client::new();
    let list = http.get(format!("{base}/posts")).send().await.unwrap();
    assert_eq!(list.headers()["surrogate-key"], "posts ns:default");
    assert_eq!(list.headers()["cdn-cache-control"], "max-age=600");
    let r = http
        .post(format!("{base}/posts"))
        .json(&serde_json::json!({"title": "CDN", "body": "purged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let calls = cdn.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/service/example/purge");
    assert_eq!(calls[0].header("surrogate-key"), "posts");
    let list = http.get(format!("{base}/posts")).send().await.unwrap();
    assert_eq!(list.headers()["x-cache"], "MISS");
    assert!(list.text().await.unwrap().contains("\"title\":\"CDN\""));
}

/// A `CacheLayer` whose namespace needs escaping names it for the CDN exactly as clearing that
/// namespace purges it (the two were escaped a different number of times once).
#[tokio::test]
async fn a_layer_namespace_is_purged_under_the_name_its_responses_sent() {
    let cdn = MockCdn::start().await;
    let cache = Cache::builder().purger(Fastly::new("svc", "tok").base_url(&cdn.base)).build().unwrap();
    let router = Router::new()
        .route("/page", get(|| async { "page" }))
        .layer(cache_runtime::CacheLayer::new(cache.clone()).namespace("pages:eu 1").expire(60).cdn_tags());
    let base = serve(router).await;
    let r = reqwest::get(format!("{base}/page")).await.unwrap();
    let sent = r.headers()["surrogate-key"].to_str().unwrap().to_owned();
    assert_eq!(sent, "ns:pages%253Aeu%25201");
    cache.clear_namespace("pages:eu 1").await.unwrap();
    let calls = cdn.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("surrogate-key"), sent);
    assert_eq!(reqwest::get(format!("{base}/page")).await.unwrap().headers()["x-cache"], "MISS");
}

/// Each purge is retried for `purge_retry_for` from when it was queued, whatever it is sent
/// with: one that joined a failing purge late is not given up with it.
#[tokio::test]
async fn a_purge_that_joined_a_failing_one_late_keeps_its_own_retry_window() {
    let cdn = MockCdn::start().await;
    cdn.set_down(true);
    let cache = Cache::builder()
        .purger(Fastly::new("svc", "tok").base_url(&cdn.base))
        .purge_wait(Duration::ZERO)
        .purge_retry_for(Duration::from_secs(2))
        .build()
        .unwrap();
    cache.invalidate_tag("posts").await.unwrap();
    // Attempts at about 0, 0.1, 0.3, 0.7, 1.5 s, then 3.1 s (when `posts` is past its 2 s).
    eventually("five attempts failed", async || cdn.refused() >= 5).await;
    cache.invalidate_tag("users").await.unwrap();
    eventually("the sixth attempt failed", async || cdn.refused() >= 6).await;
    cdn.set_down(false);
    eventually("the next attempt was sent", async || cache.stats().purges == 1).await;
    let keys: Vec<String> = cdn.calls().iter().map(|c| c.header("surrogate-key").to_owned()).collect();
    assert_eq!(keys, ["users"], "posts was given up, users was not");
    assert_eq!(cache.stats().purges_dropped, 1);
}

/// A purger that panics does not stop the queue: what it was sending is sent again by a new
/// worker.
#[tokio::test]
async fn a_purger_that_panics_does_not_lose_the_purge() {
    #[derive(Default, Clone)]
    struct Flaky(Arc<(std::sync::atomic::AtomicUsize, std::sync::Mutex<Vec<Vec<String>>>)>);
    impl cache_runtime::cdn::Purger for Flaky {
        fn purge<'a>(&'a self, purge: &'a cache_runtime::cdn::Purge) -> cache_runtime::cdn::PurgeFuture<'a> {
            Box::pin(async move {
                assert!(self.0 .0.fetch_add(1, Ordering::SeqCst) > 0, "the first call panics");
                self.0 .1.lock().unwrap().push(purge.tags.clone());
                Ok(())
            })
        }
    }
    let purger = Flaky::default();
    let cache = Cache::builder().purger(purger.clone()).purge_wait(Duration::ZERO).build().unwrap();
    cache.invalidate_tag("posts").await.unwrap();
    eventually("the purge was sent after the panic", async || !purger.0 .1.lock().unwrap().is_empty()).await;
    assert_eq!(*purger.0 .1.lock().unwrap(), [vec!["posts".to_owned()]]);
    cache.invalidate_tag("users").await.unwrap();
    eventually("the queue goes on", async || purger.0 .1.lock().unwrap().len() == 2).await;
}

/// A cache purging through `provider`'s API at `base`.
fn purging_at(provider: &str, base: &str) -> CacheBuilder {
    match provider {
        "fastly" => Cache::builder().purger(Fastly::new("svc", "fastly-token").base_url(base)),
        _ => Cache::builder().purger(Cloudflare::new("zone", "cf-token").base_url(base)),
    }
}

/// A tag the CDN refuses (a `400` for every call that names it) does not hold back the purges
/// merged with it: the refused call is split, each invalidation's part sent alone, the refused
/// part given up at once (counted, logged) and never sent again, and `/posts` is purged before
/// the write that invalidated it answers. Fastly and Cloudflare alike.
#[tokio::test]
async fn a_tag_the_cdn_refuses_does_not_hold_back_the_others() {
    for provider in ["fastly", "cloudflare"] {
        let cdn = MockCdn::start().await;
        cdn.refuse_tag("refused");
        let cache = purging_at(provider, &cdn.base).purge_wait(Duration::from_secs(3)).build().unwrap();
        let (base, _app) = serve_app(cache.clone()).await;
        // A slow first purge: what is invalidated while it is in flight goes out merged, next.
        cdn.shared.delay_ms.store(600, Ordering::SeqCst);
        let first = tokio::spawn({
            let cache = cache.clone();
            async move { cache.invalidate_tag("first").await }
        });
        eventually("the first purge reached the CDN", async || cdn.shared.arrived.load(Ordering::SeqCst) == 1).await;
        cdn.shared.delay_ms.store(0, Ordering::SeqCst);
        let refused = tokio::spawn({
            let cache = cache.clone();
            async move { cache.invalidate_tag("refused").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = reqwest::Client::new().post(format!("{base}/posts")).send().await.unwrap();
        assert_eq!(r.status(), 201, "{provider}");
        // The write waited for its purge (well within `purge_wait`, and long before
        // `purge_retry_for`): `/posts` is purged at the edge.
        let accepted: Vec<Vec<String>> = cdn.calls().iter().map(|call| call.tags()).collect();
        assert_eq!(accepted, [["first"], ["posts"]], "{provider}: accepted");
        first.await.unwrap().unwrap();
        refused.await.unwrap().expect("a refused purge never fails the invalidation");
        // The merged call, then the refused part alone; never again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rejected: Vec<Vec<String>> = cdn.rejected().iter().map(|call| call.tags()).collect();
        rejected[0].sort();
        assert_eq!(rejected, [vec!["posts", "refused"], vec!["refused"]], "{provider}: refused");
        let stats = cache.stats();
        assert_eq!((stats.purges, stats.purge_failures, stats.purges_dropped), (2, 2, 1), "{provider}");
    }
}

/// A CDN API that answers with a redirect has not purged anything: the redirect is not followed
/// (the API token never goes to the host it names, and nothing counts as purged); the purge
/// fails, is retried, and is given up after `purge_retry_for`. Fastly and Cloudflare alike.
#[tokio::test]
async fn a_redirect_from_the_cdn_api_is_a_failure_and_never_followed() {
    for provider in ["fastly", "cloudflare"] {
        let (cdn, elsewhere) = (MockCdn::start().await, MockCdn::start().await);
        cdn.redirect_to(&elsewhere.base);
        let cache = purging_at(provider, &cdn.base)
            .purge_wait(Duration::from_millis(300))
            .purge_retry_for(Duration::from_millis(600))
            .build()
            .unwrap();
        cache.invalidate_tag("posts").await.unwrap();
        let followed = elsewhere.calls();
        assert!(followed.is_empty(), "{provider}: the redirect was followed: {followed:?}");
        assert_eq!(cache.stats().purges, 0, "{provider}: a redirect is not a purge");
        eventually("the purge was given up", async || cache.stats().purges_dropped == 1).await;
        let stats = cache.stats();
        assert!(stats.purge_failures >= 2, "{provider}: retried: {stats:?}");
        assert_eq!(stats.purges, 0, "{provider}");
        assert!(elsewhere.calls().is_empty() && cdn.calls().is_empty(), "{provider}");
    }
}
