//! The servers `scripts/bench` measures the example app against, each serving `GET /users/{id}`
//! with the same JSON user as `examples/axum_app`, on the same Tokio runtime (`#[tokio::main]`):
//!
//! - `peer_http ceiling`: an axum handler that returns the user as JSON from a value built once
//!   at start-up; no database and no cache (the framework's ceiling: routing, one `Path`
//!   extraction, serialisation).
//! - `peer_http cached-memory`: the `cached` crate's in-memory `#[cached]` around the load.
//! - `peer_http cached-redis`: the `cached` crate's `#[concurrent_cached]` with `AsyncRedisCache`
//!   on `REDIS_URL` (its documented set-up).
//!
//! `PORT` (0: any free port); prints `listening on http://<addr>` first.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bench::{user as load, User};
use cached::macros::{cached, concurrent_cached};
use cached::AsyncRedisCache;

static USER_1: std::sync::LazyLock<User> = std::sync::LazyLock::new(|| load(1));

async fn ceiling(Path(id): Path<u64>) -> Json<User> {
    Json(if id == 1 { USER_1.clone() } else { load(id) })
}

#[cached(ttl_secs = 3600)]
fn memory_user(id: u64) -> User {
    load(id)
}

async fn cached_memory(Path(id): Path<u64>) -> Json<User> {
    Json(memory_user(id))
}

#[concurrent_cached(
    map_error = r##"|e| format!("{e:?}")"##,
    ty = "cached::AsyncRedisCache<u64, User>",
    create = r##" {
        AsyncRedisCache::builder("peer-users")
            .ttl(cached::time::Duration::from_secs(3600))
            .connection_string(&std::env::var("REDIS_URL").expect("REDIS_URL"))
            .build()
            .await
            .expect("AsyncRedisCache")
    } "##
)]
async fn redis_user(id: u64) -> Result<User, String> {
    Ok(load(id))
}

async fn cached_redis(Path(id): Path<u64>) -> Result<Json<User>, StatusCode> {
    redis_user(id).await.map(Json).map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
}

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let router = match mode.as_str() {
        "ceiling" => Router::new().route("/users/{id}", get(ceiling)),
        "cached-memory" => Router::new().route("/users/{id}", get(cached_memory)),
        "cached-redis" => Router::new().route("/users/{id}", get(cached_redis)),
        _ => panic!("usage: peer_http ceiling|cached-memory|cached-redis"),
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, router).await.unwrap();
}
