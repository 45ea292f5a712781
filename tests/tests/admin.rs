//! `cache_runtime::admin`: the operator's JSON surface, over real HTTP: its token, its answers,
//! purges through the normal invalidation path; the example app serves it at `/admin` only
//! with `ADMIN_TOKEN`.

mod support;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use cache_runtime::{admin, cached, Cache};
use serde_json::Value;
use support::{Backend, Calls, Replica};

const TOKEN: &str = "s3cret-admin-token";

#[cached(expire = 60, key = "post:<id>", tags = ["posts"], namespace = "blog", cache = app.0)]
async fn admin_post(Path(id): Path<String>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("post {id} (run {})", app.1.hit())
}

/// The app with the admin router mounted as documented (`nest_service`).
async fn serve(cache: Cache) -> (String, Arc<(Cache, Calls)>) {
    serve_mounted(cache, |router, admin| router.nest_service("/admin", admin)).await
}

async fn serve_mounted(cache: Cache, mount: fn(Router, Router) -> Router) -> (String, Arc<(Cache, Calls)>) {
    let app = Arc::new((cache.clone(), Calls::default()));
    let router =
        mount(Router::new().route("/posts/{id}", get(admin_post)).with_state(app.clone()), admin::router(cache, TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, app)
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let (base, _) = serve(Cache::memory()).await;
    let c = reqwest::Client::new();
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret-admin-toke"), Some(TOKEN)] {
        let mut request = c.get(format!("{base}/admin/stats"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"cache admin\"");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    // A purge posted without the header (as a form from another site would be) is refused.
    let r = c.post(format!("{base}/admin/purge/tag?tag=posts")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{base}/admin/stats")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    // Purges are POST only.
    let r = c.get(format!("{base}/admin/purge/tag?tag=posts")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

/// Statistics, an entry, and purges by key, tag and namespace that the next request sees, on
/// memory and Redis.
#[tokio::test]
async fn stats_entries_and_purges() {
    for b in [Backend::memory(), Backend::redis()] {
        let (base, app) = serve(b.cache.clone()).await;
        let c = reqwest::Client::new();
        let get = |path: String| c.get(path).bearer_auth(TOKEN).send();
        let post = |path: String| c.post(path).bearer_auth(TOKEN).send();
        let page = |id: &'static str| reqwest::get(format!("{base}/posts/{id}"));
        for id in ["1", "1", "2", "%3Cscript%3Ealert(1)%3C%2Fscript%3E"] {
            page(id).await.unwrap().text().await.unwrap();
        }
        assert_eq!(app.1.get(), 3);

        let stats: Value = get(format!("{base}/admin/stats")).await.unwrap().json().await.unwrap();
        assert_eq!(stats["totals"]["hits"], 1, "{}: {stats}", b.name);
        let row = stats["functions"].as_array().unwrap().iter().find(|f| f["name"] == "admin::admin_post").cloned();
        let row = row.unwrap_or_else(|| panic!("{}: no row in {stats}", b.name));
        assert!(row["hits"].as_u64().unwrap() >= 1 && row["bytes_stored"].as_u64().unwrap() > 0, "{row}");

        // A key carrying markup comes back as a JSON string, never as a page a browser renders.
        let ttl = std::time::Duration::from_secs(60);
        b.cache.namespace("blog").set("<script>alert(1)</script>", &1u8, ttl).await.unwrap();
        let url = format!("{base}/admin/entry?namespace=blog&key=%3Cscript%3Ealert(1)%3C%2Fscript%3E");
        let r = get(url).await.unwrap();
        assert_eq!(r.status(), 200, "{}", b.name);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let entry: Value = r.json().await.unwrap();
        assert_eq!(entry["key"], "<script>alert(1)</script>");
        let entry: Value =
            get(format!("{base}/admin/entry?namespace=blog&key=post:1")).await.unwrap().json().await.unwrap();
        assert_eq!(entry["tags"][0]["tag"], "posts", "{}: {entry}", b.name);
        assert!(entry["fresh_for_ms"].as_u64().unwrap() > 55_000, "{entry}");
        assert_eq!(get(format!("{base}/admin/entry?key=nothing")).await.unwrap().status(), 404);

        let r = post(format!("{base}/admin/purge/key?namespace=blog&key=post:1")).await.unwrap();
        assert_eq!(r.status(), 200, "{}", b.name);
        assert_eq!(page("1").await.unwrap().headers()["x-cache"], "MISS", "{}: the key was purged", b.name);
        assert_eq!(page("2").await.unwrap().headers()["x-cache"], "HIT");
        post(format!("{base}/admin/purge/tag?tag=posts")).await.unwrap();
        assert_eq!(page("2").await.unwrap().headers()["x-cache"], "MISS", "{}: the tag was purged", b.name);
        let cleared: Value =
            post(format!("{base}/admin/purge/namespace?namespace=blog")).await.unwrap().json().await.unwrap();
        assert_eq!(cleared["purged"], "namespace");
        assert_eq!(page("2").await.unwrap().headers()["x-cache"], "MISS", "{}: the namespace was cleared", b.name);
    }
}

/// The example app: `/admin` exists only with `ADMIN_TOKEN`, and answers behind it.
#[tokio::test]
async fn the_example_mounts_admin_only_with_a_token() {
    let without = Replica::start_in_memory(&[]);
    let r =
        reqwest::Client::new().get(format!("{}/admin/stats", without.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let with = Replica::start_in_memory(&[("ADMIN_TOKEN", TOKEN)]);
    reqwest::get(format!("{}/users/1", with.base)).await.unwrap();
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{}/admin/stats", with.base)).send().await.unwrap().status(), 401);
    let stats: Value =
        c.get(format!("{}/admin/stats", with.base)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["totals"]["misses"], 1, "{stats}");
    assert!(stats["functions"].as_array().unwrap().iter().any(|f| f["name"] == "examples::app::get_user"), "{stats}");
}

/// `GET /keys`: a namespace's keys, page by page (cursors), on every backend (each master of
/// the cluster in turn); other namespaces' keys and the bookkeeping keys never appear.
#[tokio::test]
async fn keys_are_listed_page_by_page() {
    for b in Backend::all() {
        let (base, _) = serve(b.cache.clone()).await;
        let ttl = std::time::Duration::from_secs(60);
        let mut expected = Vec::new();
        for id in 0..57 {
            b.cache.namespace("listed").set(&format!("item:{id}"), &id, ttl).await.unwrap();
            expected.push(format!("item:{id}"));
        }
        b.cache.namespace("other").set("item:x", &1, ttl).await.unwrap();
        let c = reqwest::Client::new();
        let (mut seen, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let url = format!("{base}/admin/keys?namespace=listed&count=10&cursor={cursor}");
            let page: Value = c.get(url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
            seen.extend(page["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()));
            pages += 1;
            assert!(pages < 200, "{}: no end", b.name);
            match page["next"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
        seen.sort();
        seen.dedup();
        expected.sort();
        assert_eq!(seen, expected, "{}", b.name);
        assert!(pages > 1, "{}: paged", b.name);
    }
}

/// A browser's HTTP Basic (the token as password) opens the dashboard and reads the JSON; a
/// purge it makes must carry the dashboard's `X-Requested-With` (a form from another site
/// cannot) and not come from another site; a bearer token alone may purge. The pages run under
/// a CSP that allows only their own script and style.
#[tokio::test]
async fn browsers_authenticate_with_basic_and_cannot_be_made_to_purge_from_elsewhere() {
    let (base, _) = serve(Cache::memory()).await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = c.get(format!("{base}/admin/stats")).send().await.unwrap();
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(challenges, ["Bearer realm=\"cache admin\"", "Basic realm=\"cache admin\", charset=\"UTF-8\""]);
    for password in ["wrong", "", "s3cret-admin-toke"] {
        let r = c.get(format!("{base}/admin/stats")).basic_auth("ops", Some(password)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{password:?}");
    }
    let r = c.get(format!("{base}/admin/stats")).basic_auth("ops", Some(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The root sends a browser to the dashboard, wherever the router is mounted.
    let r = c.get(format!("{base}/admin")).basic_auth("ops", Some(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/dashboard");
    let page = c.get(format!("{base}/admin/dashboard")).basic_auth("ops", Some(TOKEN)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(page.text().await.unwrap().contains("<script src=\"dashboard.js\"></script>"));
    for (asset, kind) in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")] {
        let r = c.get(format!("{base}/admin/{asset}")).basic_auth("ops", Some(TOKEN)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
        let r = c.get(format!("{base}/admin/{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{asset} without the token");
    }

    let purge = || c.post(format!("{base}/admin/purge/tag?tag=posts"));
    // A form posted from another site: the browser adds Basic by itself, but not the header.
    let r = purge().basic_auth("ops", Some(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = purge()
        .basic_auth("ops", Some(TOKEN))
        .header("x-requested-with", "cache-admin")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = purge().bearer_auth(TOKEN).header("sec-fetch-site", "same-site").send().await.unwrap();
    assert_eq!(r.status(), 403);
    // The dashboard's own purge, and a script's.
    let r = purge()
        .basic_auth("ops", Some(TOKEN))
        .header("x-requested-with", "cache-admin")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = purge().bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// `GET /history`: hits and misses per 2 s interval, sampled from the first request on.
#[tokio::test]
async fn the_history_counts_hits_and_misses_per_interval() {
    let (base, _) = serve(Cache::memory()).await;
    let c = reqwest::Client::new();
    let history = async || -> Value {
        c.get(format!("{base}/admin/history")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap()
    };
    let first = history().await;
    assert_eq!(first["interval_ms"], 2000);
    assert_eq!(first["capacity"], 150);
    for _ in 0..3 {
        c.get(format!("{base}/posts/7")).send().await.unwrap();
    }
    let mut sampled = Value::Null;
    support::eventually("an interval holding the requests was sampled", async || {
        sampled = history().await;
        let points = sampled["points"].as_array().unwrap();
        let hits: u64 = points.iter().map(|p| p["hits"].as_u64().unwrap()).sum();
        let misses: u64 = points.iter().map(|p| p["misses"].as_u64().unwrap()).sum();
        hits == 2 && misses == 1
    })
    .await;
}

/// Every path under the admin root is behind the token: an unknown one (`/admin/nope`,
/// `/admin/purge`) is a `401` without it and a `404` with it, never a bare `404` that tells
/// anyone which routes exist; both say `no-store` and `nosniff`, as every admin answer. Mounted
/// with `nest_service` (as documented), `/admin/` is the router's root too: `401`, or with the
/// token the redirect to the dashboard. Mounted with `nest`, axum leaves `/admin/` to the outer
/// router; every path below it is guarded all the same.
#[tokio::test]
async fn unknown_admin_paths_need_the_token_and_carry_the_admin_headers() {
    let nest: fn(Router, Router) -> Router = |router, admin| router.nest("/admin", admin);
    let nest_service: fn(Router, Router) -> Router = |router, admin| router.nest_service("/admin", admin);
    let below = ["/admin/nope", "/admin/purge", "/admin/stats/x", "/admin/dashboard.js/", "/admin/purge/tag/x"];
    for (mounted, mount, root) in [("nest", nest, &[][..]), ("nest_service", nest_service, &["/admin/"][..])] {
        let (base, _) = serve_mounted(Cache::memory(), mount).await;
        let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let answers = below.iter().map(|path| (path, 404)).chain(root.iter().map(|path| (path, 303)));
        for (path, with_token) in answers {
            for (token, status) in [(None, 401), (Some(TOKEN), with_token)] {
                let mut request = c.get(format!("{base}{path}"));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let r = request.send().await.unwrap();
                let said = format!("{mounted}: {path} with the token: {}", token.is_some());
                assert_eq!(r.status(), status, "{said}");
                let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{said}");
                assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{said}");
                if token.is_none() {
                    assert_eq!(header("www-authenticate").as_deref(), Some("Bearer realm=\"cache admin\""), "{said}");
                }
                if status == 303 {
                    assert_eq!(header("location").as_deref(), Some("/admin/dashboard"), "{said}");
                }
            }
        }
        // The root sends a browser to the dashboard; paths outside the root are the app's.
        let r = c.get(format!("{base}/admin")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 303, "{mounted}");
        assert_eq!(r.headers()["location"], "/admin/dashboard", "{mounted}");
        assert_eq!(c.get(format!("{base}/administrator")).send().await.unwrap().status(), 404, "{mounted}");
    }
}
