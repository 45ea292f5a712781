use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{cached, Cache};

#[derive(Clone)]
struct App {
    cache: Cache,
}

#[derive(serde::Deserialize)]
struct Page {
    page: u32,
}

struct User {
    id: u64,
}

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = StatusCode;
    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(User { id: 1 })
    }
}

#[cached(expire = 60, key = "user:<id>", cache = app.cache, last_modified = "updated_at")]
async fn user(Path(id): Path<u64>, State(app): State<App>) -> Result<Json<serde_json::Value>, StatusCode> {
    Ok(Json(serde_json::json!({ "id": id, "updated_at": "2026-01-01T00:00:00Z" })))
}

#[cached(key = "list:<p.page>", public, s_maxage = 120, cdn_max_age = 600)]
async fn list(Query(p): Query<Page>) -> impl IntoResponse {
    (StatusCode::OK, format!("page {}", p.page))
}

const CDN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The HTTP seconds options take a `Duration` too.
#[cached(key = "list2:<p.page>", public, s_maxage = std::time::Duration::from_secs(2 * 60), cdn_max_age = CDN_AGE, stale = CDN_AGE)]
async fn list_durations(Query(p): Query<Page>) -> impl IntoResponse {
    (StatusCode::OK, format!("page {}", p.page))
}

/// Only a custom extractor: `http` marks it as a handler.
#[cached(http, key = "me:<user.id>", vary = ["Authorization", "Accept-Language"], honor_no_cache)]
async fn me(user: User) -> String {
    user.id.to_string()
}

fn main() {
    let _router: Router = Router::new()
        .route("/users/{id}", get(user))
        .route("/list", get(list))
        .route("/list2", get(list_durations))
        .route("/me", get(me))
        .with_state(App { cache: Cache::memory() });
}
