//! An operator's surface over a [`Cache`]: a dashboard page and JSON for per-function
//! statistics, what is stored under a key, the keys of a namespace, and purges by key, tag or
//! namespace (the normal invalidation path: every replica's L1 hears of them, and the CDN
//! purger if there is one). Mount it where you like, behind its token, with `nest_service`: then
//! every path under the prefix reaches it, `/admin/` included (`nest` works too, but axum leaves
//! `/admin/` itself to the outer router):
//!
//! ```
//! use cache_runtime::{admin, Cache};
//!
//! let cache = Cache::memory();
//! let app: axum::Router = axum::Router::new().nest_service("/admin", admin::router(cache, "a long random token"));
//! # drop(app);
//! ```
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | a redirect to `dashboard` |
//! | `GET /dashboard` | the dashboard page: the per-function table with hit ratios, a chart of hits and misses per second over the last 5 minutes, a key lookup, the keys of a namespace, purge buttons (each asks for confirmation) |
//! | `GET /history` | `{"interval_ms": 2000, "capacity": 150, "points": [{"t_ms", "hits", "misses"}]}`: hits and misses per 2 s interval, the last 5 minutes (sampled from the first request on) |
//! | `GET /stats` | `{"totals": {hits, misses, …}, "functions": [{name, hits, misses, stale, collapsed, failed, body_runs, body_p50_ms, body_p99_ms, bytes_stored}]}` |
//! | `GET /entry?key=user:7&namespace=users` | what is stored under the key (`Cache::inspect`), or `404` |
//! | `GET /keys?namespace=users&cursor=…&count=100` | one page of a namespace's keys: `{"keys": […], "next": cursor or null}` (`SCAN`, never `KEYS`; at most 1,000 a page) |
//! | `POST /purge/key?key=user:7&namespace=users` | invalidates the key |
//! | `POST /purge/tag?tag=users` | invalidates the tag |
//! | `POST /purge/namespace?namespace=users` | clears the namespace: `{"removed": n}` |
//! | any other path | `404` |
//!
//! Every request needs the token, compared in constant time (`401` with `WWW-Authenticate`
//! otherwise; for an unknown path too, so `401` comes before `404` and the routes cannot be
//! enumerated): `Authorization: Bearer <token>` from scripts, or HTTP Basic with the token as
//! the password (any user name) from a browser, which asks for it when the dashboard is opened.
//! Purges are `POST` only, and one authenticated by Basic must also carry
//! `X-Requested-With: cache-admin` (the dashboard sends it) and must not say
//! `Sec-Fetch-Site: cross-site` or `same-site`: a form posted from another site cannot send the
//! header (and a cross-site script that tried would need a CORS preflight, which is refused),
//! so no other site can make an operator's browser purge. Every answer says
//! `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`; the dashboard runs under a
//! `Content-Security-Policy` that allows only its own script and style, and puts keys and tags
//! (which carry user input) into the page as text, never as HTML.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cache::{Cache, DEFAULT_NAMESPACE};
use crate::functions::function_stats;

struct Admin {
    cache: Cache,
    token: Box<[u8]>,
    history: Mutex<History>,
    /// The sampler task, started by the first authorized request.
    sampler: OnceLock<()>,
}

/// How often the chart's totals are sampled, and how many samples it keeps (5 minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES: usize = 150;

#[derive(Default)]
struct History {
    /// `(unix ms, hits, misses)` in each interval.
    points: VecDeque<(u64, u64, u64)>,
    /// The totals at the last sample.
    last: Option<(u64, u64)>,
}

/// The admin routes over `cache`, for requests carrying the token (see the [module](self)).
/// An empty token refuses every request.
pub fn router(cache: Cache, token: impl Into<String>) -> Router {
    let admin = Arc::new(Admin {
        cache,
        token: token.into().into_bytes().into_boxed_slice(),
        history: Mutex::new(History::default()),
        sampler: OnceLock::new(),
    });
    Router::new()
        .route("/", get(to_dashboard))
        .route("/dashboard", get(dashboard))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/history", get(history))
        .route("/stats", get(stats))
        .route("/entry", get(entry))
        .route("/keys", get(keys))
        .route("/purge/key", post(purge_key))
        .route("/purge/tag", post(purge_tag))
        .route("/purge/namespace", post(purge_namespace))
        // Set before the guard: a `Router`'s layer wraps its fallback only when it has one of
        // its own, and an unknown path must be refused without the token like any other.
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&admin), guard))
        .with_state(admin)
}

/// How a request proved it holds the token.
#[derive(PartialEq)]
enum Auth {
    Bearer,
    /// HTTP Basic: what a browser sends by itself, to any request of the origin.
    Basic,
}

fn authorized(admin: &Admin, headers: &HeaderMap) -> Option<Auth> {
    use headers::authorization::{Basic, Bearer};
    use headers::{Authorization, HeaderMapExt as _};
    if admin.token.is_empty() {
        return None;
    }
    if let Some(Authorization(bearer)) = headers.typed_get::<Authorization<Bearer>>() {
        return constant_time_eq(bearer.token().as_bytes(), &admin.token).then_some(Auth::Bearer);
    }
    let Authorization(basic) = headers.typed_get::<Authorization<Basic>>()?;
    constant_time_eq(basic.password().as_bytes(), &admin.token).then_some(Auth::Basic)
}

/// A `POST` a browser may have been made to send by another site: authenticated by Basic
/// without the dashboard's header, or said by the browser to come from another site.
fn cross_site(headers: &HeaderMap, auth: &Auth) -> bool {
    let from_elsewhere = headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site" || site.as_bytes() == b"same-site");
    let marked = headers.get("x-requested-with").is_some_and(|v| v.as_bytes() == b"cache-admin");
    from_elsewhere || (*auth == Auth::Basic && !marked)
}

/// The token check and `Cache-Control: no-store`, on every answer (a `404` or `405` too: the
/// router's fallback is inside this layer).
async fn guard(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let mut response = match authorized(&admin, request.headers()) {
        Some(auth) if request.method() == Method::POST && cross_site(request.headers(), &auth) => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "a purge must come from the dashboard (X-Requested-With: cache-admin) or carry a bearer token"})),
        )
            .into_response(),
        Some(_) => {
            start_sampler(&admin);
            next.run(request).await
        }
        None => {
            let mut refused =
                (StatusCode::UNAUTHORIZED, Json(json!({"error": "the admin token is required"}))).into_response();
            let headers = refused.headers_mut();
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cache admin\""));
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cache admin\", charset=\"UTF-8\""),
            );
            refused
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // JSON only: a key carrying user input (`<script>…`) is never sniffed into a page.
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Equal bytes, in a time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Samples the totals every [`SAMPLE_EVERY`] while the router lives.
fn start_sampler(admin: &Arc<Admin>) {
    admin.sampler.get_or_init(|| {
        // The first sample, the baseline of the first interval, is this request's.
        admin.sample();
        let weak: Weak<Admin> = Arc::downgrade(admin);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let start = tokio::time::Instant::now() + SAMPLE_EVERY;
                let mut every = tokio::time::interval_at(start, SAMPLE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(admin) = weak.upgrade() else { break };
                    admin.sample();
                }
            });
        }
    });
}

impl Admin {
    fn sample(&self) {
        let stats = self.cache.stats();
        let now_ms = crate::time::now_ms();
        let mut history = crate::sync::lock(&self.history);
        if let Some((hits, misses)) = history.last {
            if history.points.len() == SAMPLES {
                history.points.pop_front();
            }
            history.points.push_back((now_ms, stats.hits.saturating_sub(hits), stats.misses.saturating_sub(misses)));
        }
        history.last = Some((stats.hits, stats.misses));
    }
}

/// A path under the admin root that names no route (answered only with the token).
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such admin route"}))).into_response()
}

/// The router's root sends a browser to the dashboard, wherever the router is mounted.
async fn to_dashboard(OriginalUri(uri): OriginalUri) -> Response {
    let location = format!("{}/dashboard", uri.path().trim_end_matches('/'));
    match HeaderValue::try_from(location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The dashboard page: a sibling of the JSON routes, so its script, style and API calls are
/// relative URLs wherever the router is mounted.
async fn dashboard() -> Response {
    page(include_str!("admin/dashboard.html"), "text/html; charset=utf-8")
}

async fn script() -> Response {
    page(include_str!("admin/dashboard.js"), "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    page(include_str!("admin/dashboard.css"), "text/css; charset=utf-8")
}

/// A static asset of the dashboard: only its own script, style and API may be used from it,
/// and no other page may frame it.
fn page(body: &'static str, content_type: &'static str) -> Response {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn history(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let history = crate::sync::lock(&admin.history);
    let points: Vec<Value> = history
        .points
        .iter()
        .map(|&(t_ms, hits, misses)| json!({"t_ms": t_ms, "hits": hits, "misses": misses}))
        .collect();
    Json(json!({"interval_ms": SAMPLE_EVERY.as_millis() as u64, "capacity": SAMPLES, "points": points}))
}

async fn stats(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let s = admin.cache.stats();
    let functions: Vec<Value> = function_stats()
        .into_iter()
        .map(|f| {
            json!({
                "name": f.name,
                "hits": f.hits,
                "misses": f.misses,
                "stale": f.stale,
                "collapsed": f.collapsed,
                "failed": f.failed,
                "body_runs": f.body_runs,
                "body_p50_ms": f.body_p50.as_secs_f64() * 1e3,
                "body_p99_ms": f.body_p99.as_secs_f64() * 1e3,
                "bytes_stored": f.bytes_stored,
            })
        })
        .collect();
    Json(json!({
        "totals": {
            "hits": s.hits,
            "misses": s.misses,
            "stale": s.stale,
            "errors": s.errors,
            "stores": s.stores,
            "dropped_fills": s.dropped_fills,
            "invalidations": s.invalidations,
            "oversized": s.oversized,
            "circuit_openings": s.circuit_openings,
            "memory_entries": s.memory_entries,
            "memory_bytes": s.memory_bytes,
            "purges": s.purges,
            "purge_failures": s.purge_failures,
            "purges_dropped": s.purges_dropped,
        },
        "functions": functions,
    }))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
    namespace: Option<String>,
}

async fn entry(State(admin): State<Arc<Admin>>, Query(q): Query<KeyQuery>) -> Response {
    let namespace = q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let Some(info) = admin.cache.namespace(namespace).inspect(&q.key).await else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "nothing readable is stored under this key"})))
            .into_response();
    };
    let stored_at_ms =
        info.stored_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let tags: Vec<Value> = info.tags.iter().map(|(tag, version)| json!({"tag": tag, "version": version})).collect();
    Json(json!({
        "key": q.key,
        "namespace": namespace,
        "tier": format!("{:?}", info.tier),
        "in_l1": info.in_l1,
        "stored_at_ms": stored_at_ms,
        "fresh_for_ms": u64::try_from(info.fresh_for.as_millis()).unwrap_or(u64::MAX),
        "stale_for_ms": u64::try_from(info.stale_for.as_millis()).unwrap_or(u64::MAX),
        "negative": info.negative,
        "tags": tags,
        "bytes": info.bytes,
        "format": info.format.map(|f| format!("{f:?}")),
        "etag": info.etag,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct KeysQuery {
    namespace: Option<String>,
    cursor: Option<String>,
    count: Option<usize>,
}

/// The largest page `GET /keys` answers.
const MAX_PAGE: usize = 1000;

async fn keys(State(admin): State<Arc<Admin>>, Query(q): Query<KeysQuery>) -> Response {
    let namespace = q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let count = q.count.unwrap_or(100).clamp(1, MAX_PAGE);
    match admin.cache.namespace(namespace).keys(q.cursor.as_deref().unwrap_or(""), count).await {
        Ok(page) => Json(json!({"namespace": namespace, "keys": page.keys, "next": page.next})).into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": err.to_string()}))).into_response(),
    }
}

/// A purge's answer: `200` with what it did, or `503` when the store refused it (it is queued
/// and retried, as every failed invalidation is).
fn purged(result: Result<Value, crate::CacheError>) -> Response {
    match result {
        Ok(done) => Json(done).into_response(),
        Err(err) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": err.to_string(), "queued": true}))).into_response()
        }
    }
}

async fn purge_key(State(admin): State<Arc<Admin>>, Query(q): Query<KeyQuery>) -> Response {
    let namespace = q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    purged(admin.cache.namespace(namespace).invalidate(&q.key).await.map(|()| json!({"purged": "key", "key": q.key})))
}

#[derive(Deserialize)]
struct TagQuery {
    tag: String,
}

async fn purge_tag(State(admin): State<Arc<Admin>>, Query(q): Query<TagQuery>) -> Response {
    purged(admin.cache.invalidate_tag(&q.tag).await.map(|()| json!({"purged": "tag", "tag": q.tag})))
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: String,
}

async fn purge_namespace(State(admin): State<Arc<Admin>>, Query(q): Query<NamespaceQuery>) -> Response {
    let cleared = admin.cache.clear_namespace(&q.namespace).await;
    purged(cleared.map(|removed| json!({"purged": "namespace", "namespace": q.namespace, "removed": removed})))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_by_content_only() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"x"));
    }
}
