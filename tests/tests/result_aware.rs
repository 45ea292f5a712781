//! Result-aware caching: `unless` (a value that is returned but not stored) and `expire_with`
//! (an entry's lifetime computed from its value), on service fns, handlers and the plain API,
//! on every backend.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, Cache, Policy};
use serde::{Deserialize, Serialize};
use support::{Backend, Calls};

#[cached(expire = 60, key = "shelf:<genre>", unless = |books: &Vec<String>| books.is_empty(), cache = cache, skip = [cache, calls])]
async fn shelf(cache: &Cache, calls: &Calls, genre: &str) -> Vec<String> {
    let _ = calls.hit();
    if genre == "poetry" {
        // A slow query: concurrent callers arrive while it runs.
        tokio::time::sleep(Duration::from_millis(50)).await;
        vec![]
    } else {
        vec![format!("a {genre} book")]
    }
}

/// `unless` over the `Ok` of a `Result`, unannotated: the macro gives the closure its type.
#[cached(expire = 60, key = "count:<n>", unless = |v| *v == 0, cache = cache, skip = [cache, calls])]
async fn count(cache: &Cache, calls: &Calls, n: u32) -> Result<u32, String> {
    let _ = calls.hit();
    Ok(n)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Token {
    secret: String,
    expires_in_secs: u64,
}

fn token_lifetime(t: &Token) -> Duration {
    Duration::from_secs(t.expires_in_secs)
}

/// `expire_with` (a fn path) with `expire` as its upper bound.
#[cached(expire = 120, key = "token:<user>", expire_with = token_lifetime, cache = cache, skip = [cache, calls])]
async fn token(cache: &Cache, calls: &Calls, user: u32, expires_in_secs: u64) -> Option<Token> {
    let _ = calls.hit();
    Some(Token { secret: format!("s{user}"), expires_in_secs })
}

/// `expire_with` without `expire`, with a `stale` window counted from the computed expiry.
#[cached(key = "lease:<id>", expire_with = |secs: &u64| Duration::from_secs(*secs), stale = 30, cache = cache, skip = [cache, calls])]
async fn lease(cache: &Cache, calls: &Calls, id: u32, secs: u64) -> u64 {
    let _ = (calls.hit(), id);
    secs
}

/// `unless`: the value is returned, not stored; other values are; concurrent callers of a value
/// that is not stored still share one body run.
#[tokio::test]
async fn unless_returns_the_value_without_storing_it() {
    for b in Backend::all() {
        let calls = Calls::default();
        for _ in 0..3 {
            assert!(shelf(&b.cache, &calls, "poetry").await.is_empty());
        }
        assert_eq!(calls.get(), 3, "{}: an empty shelf is never stored", b.name);
        assert!(b.cache.inspect("shelf:poetry").await.is_none(), "{}", b.name);
        for _ in 0..3 {
            assert_eq!(shelf(&b.cache, &calls, "crime").await, ["a crime book"]);
        }
        assert_eq!(calls.get(), 4, "{}: other values are stored", b.name);

        let together = Calls::default();
        let answers = futures::future::join_all((0..20).map(|_| shelf(&b.cache, &together, "poetry"))).await;
        assert!(answers.iter().all(Vec::is_empty));
        assert_eq!(together.get(), 1, "{}: 20 concurrent callers, one body run (shared, not stored)", b.name);

        let calls = Calls::default();
        assert_eq!(count(&b.cache, &calls, 0).await, Ok(0));
        assert_eq!(count(&b.cache, &calls, 0).await, Ok(0));
        assert_eq!(count(&b.cache, &calls, 5).await, Ok(5));
        assert_eq!(count(&b.cache, &calls, 5).await, Ok(5));
        assert_eq!(calls.get(), 3, "{}: Ok(0) not stored, Ok(5) stored", b.name);
    }
}

/// `expire_with`: the entry is fresh for what the value says, capped by `expire`; a zero
/// lifetime is not stored; `stale` windows start at the computed expiry.
#[tokio::test]
async fn expire_with_sets_each_entry_lifetime() {
    for b in Backend::all() {
        let calls = Calls::default();
        token(&b.cache, &calls, 1, 90).await;
        token(&b.cache, &calls, 2, 600).await;
        let fresh_for = |info: Option<cache_runtime::EntryInfo>| info.expect("stored").fresh_for;
        let t1 = fresh_for(b.cache.inspect("token:1").await);
        assert!(t1 > Duration::from_secs(85) && t1 <= Duration::from_secs(90), "{}: {t1:?}", b.name);
        let t2 = fresh_for(b.cache.inspect("token:2").await);
        assert!(
            t2 > Duration::from_secs(115) && t2 <= Duration::from_secs(120),
            "{}: capped by expire: {t2:?}",
            b.name
        );
        token(&b.cache, &calls, 3, 0).await;
        token(&b.cache, &calls, 3, 0).await;
        assert!(b.cache.inspect("token:3").await.is_none(), "{}: a zero lifetime is not stored", b.name);
        assert_eq!(calls.get(), 4, "{}", b.name);

        lease(&b.cache, &calls, 1, 1000).await;
        let info = b.cache.inspect("lease:1").await.expect("stored");
        assert!(info.fresh_for > Duration::from_secs(995), "{}: no expire, no cap: {info:?}", b.name);
        assert!(
            info.stale_for > Duration::from_secs(29) && info.stale_for <= Duration::from_secs(30),
            "{}: {info:?}",
            b.name
        );
    }
}

/// A refresh (here `stale`, run in the background: every parameter is owned) stores under the
/// lifetime its own value gives.
#[cached(key = "quote:<id>", expire_with = |q: &(u32, u64)| Duration::from_millis(q.1), stale = 30, cache = cache)]
async fn quote(cache: Cache, id: u32, runs: Arc<Calls>, next_ms: Arc<std::sync::atomic::AtomicU64>) -> (u32, u64) {
    let _ = (&cache, runs.hit());
    (id, next_ms.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test]
async fn a_refresh_stores_for_the_lifetime_of_its_own_value() {
    for b in Backend::all() {
        let runs = Arc::new(Calls::default());
        let next = Arc::new(std::sync::atomic::AtomicU64::new(300));
        assert_eq!(quote(b.cache.clone(), 1, runs.clone(), next.clone()).await, (1, 300));
        next.store(50_000, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Stale: served at once, refreshed in the background.
        assert_eq!(quote(b.cache.clone(), 1, runs.clone(), next.clone()).await, (1, 300), "{}", b.name);
        let cache = b.cache.clone();
        support::eventually("the refresh is stored", async || {
            cache.inspect("quote:1").await.is_some_and(|i| i.fresh_for > Duration::from_secs(45))
        })
        .await;
        assert_eq!(runs.get(), 2, "{}", b.name);
    }
}

#[cached(expire = 60, key = "page:<id>", unless = |r: &Response| r.headers().contains_key("x-partial"), cache = app.0)]
async fn page(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> Response {
    let run = app.1.hit();
    if id == 0 {
        ([("x-partial", "1")], format!("partial {run}")).into_response()
    } else {
        format!("page {id} run {run}").into_response()
    }
}

#[cached(
    expire = 600,
    key = "offer:<id>",
    expire_with = |r: &Response| Duration::from_secs(
        r.headers().get("x-valid-for").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
    ),
    cache = app.0,
)]
async fn offer(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> impl IntoResponse {
    let _ = app.1.hit();
    ([("x-valid-for", (id * 10).to_string())], format!("offer {id}"))
}

/// On handlers the predicates see the response before its body is read: `unless` answers MISS
/// each time (nothing stored), `expire_with` sets the entry's lifetime and so `max-age`.
#[tokio::test]
async fn handlers_decide_from_the_response() {
    for b in [Backend::memory(), Backend::redis()] {
        let app = Arc::new((b.cache.clone(), Calls::default()));
        let router =
            Router::new().route("/page/{id}", get(page)).route("/offer/{id}", get(offer)).with_state(app.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = reqwest::Client::new();
        let get = |path: String| {
            let client = client.clone();
            async move { client.get(path).send().await.unwrap() }
        };
        for run in 1..=2 {
            let r = get(format!("{base}/page/0")).await;
            assert_eq!(r.headers()["x-cache"], "MISS", "{}", b.name);
            assert_eq!(r.text().await.unwrap(), format!("partial {run}"), "{}", b.name);
        }
        let first = get(format!("{base}/page/1")).await;
        let second = get(format!("{base}/page/1")).await;
        assert_eq!(
            (&first.headers()["x-cache"], &second.headers()["x-cache"]),
            (&"MISS".parse().unwrap(), &"HIT".parse().unwrap())
        );
        assert_eq!(app.1.get(), 3, "{}: the partial page ran twice, the full one once", b.name);

        let max_age = |r: &reqwest::Response| -> u64 {
            let cc = r.headers()["cache-control"].to_str().unwrap().to_owned();
            cc.split(", ").find_map(|d| d.strip_prefix("max-age=")?.parse().ok()).unwrap()
        };
        let miss = get(format!("{base}/offer/3")).await;
        assert_eq!(miss.headers()["x-cache"], "MISS");
        assert_eq!(max_age(&miss), 30, "{}: max-age follows expire_with", b.name);
        let hit = get(format!("{base}/offer/3")).await;
        assert_eq!(hit.headers()["x-cache"], "HIT");
        assert!((29..=30).contains(&max_age(&hit)), "{}: {}", b.name, max_age(&hit));
        let info = b.cache.inspect("offer:3").await.expect("stored");
        assert!(info.fresh_for <= Duration::from_secs(30), "{}: {info:?}", b.name);
        // `x-valid-for: 0`: a zero lifetime, not stored.
        for _ in 0..2 {
            assert_eq!(get(format!("{base}/offer/0")).await.headers()["x-cache"], "MISS", "{}", b.name);
        }
    }
}

/// The plain API: `get_or_fetch_with` / `try_get_or_fetch_with` and a `Policy`.
#[tokio::test]
async fn the_plain_api_takes_a_policy() {
    for b in Backend::all() {
        let calls = Calls::default();
        let skip_empty = Policy::new().unless(|rows: &Vec<u32>| rows.is_empty());
        for _ in 0..2 {
            let rows = b
                .cache
                .get_or_fetch_with("rows", Duration::from_secs(60), skip_empty, || async {
                    calls.hit();
                    Vec::new()
                })
                .await;
            assert!(rows.is_empty());
        }
        assert_eq!(calls.get(), 2, "{}: not stored", b.name);
        let lifetime = Policy::new().expire_with(|secs: &u64| Duration::from_secs(*secs));
        let got: Result<u64, String> =
            b.cache.try_get_or_fetch_with("valid", Duration::from_secs(60), lifetime, || async { Ok(3600) }).await;
        assert_eq!(got, Ok(3600));
        let info = b.cache.inspect("valid").await.expect("stored");
        assert!(
            info.fresh_for > Duration::from_secs(55) && info.fresh_for <= Duration::from_secs(60),
            "{}: the plain API's ttl is the upper bound: {info:?}",
            b.name
        );
    }
}
