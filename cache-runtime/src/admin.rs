//! An operator's JSON surface over a [`Cache`]: per-function statistics, what is stored under
//! a key, and purges by key, tag or namespace (the normal invalidation path: every replica's
//! L1 hears of them). Mount it where you like, behind its bearer token:
//!
//! ```
//! use cache_runtime::{admin, Cache};
//!
//! let cache = Cache::memory();
//! let app: axum::Router = axum::Router::new().nest("/admin", admin::router(cache, "a long random token"));
//! # drop(app);
//! ```
//!
//! | request | answer |
//! |---|---|
//! | `GET /stats` | `{"totals": {hits, misses, …}, "functions": [{name, hits, misses, stale, collapsed, failed, body_runs, body_p50_ms, body_p99_ms, bytes_stored}]}` |
//! | `GET /entry?key=user:7&namespace=users` | what is stored under the key (`Cache::inspect`), or `404` |
//! | `GET /keys?namespace=users&cursor=…&count=100` | one page of a namespace's keys: `{"keys": […], "next": cursor or null}` (`SCAN`, never `KEYS`; at most 1,000 a page) |
//! | `POST /purge/key?key=user:7&namespace=users` | invalidates the key |
//! | `POST /purge/tag?tag=users` | invalidates the tag |
//! | `POST /purge/namespace?namespace=users` | clears the namespace: `{"removed": n}` |
//!
//! Every request needs `Authorization: Bearer <token>` (compared in constant time; `401` with
//! `WWW-Authenticate` otherwise), so a form posted from another site can never purge (it cannot
//! send the header). Every answer says `Cache-Control: no-store` and
//! `X-Content-Type-Options: nosniff` (keys carry user input; they go out as JSON strings only).
//! Purges are `POST` only.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
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
}

/// The admin routes over `cache`, for requests carrying `Authorization: Bearer <token>`.
/// An empty token refuses every request.
pub fn router(cache: Cache, token: impl Into<String>) -> Router {
    let admin = Arc::new(Admin { cache, token: token.into().into_bytes().into_boxed_slice() });
    Router::new()
        .route("/stats", get(stats))
        .route("/entry", get(entry))
        .route("/keys", get(keys))
        .route("/purge/key", post(purge_key))
        .route("/purge/tag", post(purge_tag))
        .route("/purge/namespace", post(purge_namespace))
        .layer(middleware::from_fn_with_state(Arc::clone(&admin), guard))
        .with_state(admin)
}

/// The token check and `Cache-Control: no-store`, on every answer (a `404` or `405` too).
async fn guard(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let mut response = if !admin.token.is_empty() && constant_time_eq(given, &admin.token) {
        next.run(request).await
    } else {
        let mut refused =
            (StatusCode::UNAUTHORIZED, Json(json!({"error": "a bearer token is required"}))).into_response();
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cache admin\""));
        refused
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
