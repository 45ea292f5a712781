use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::put;
use axum::{Json, Router};
use cache_runtime::{cached, invalidates, Cache};

#[derive(Clone)]
struct App {
    cache: Cache,
}

#[cached(key = "user:<id>", tags = ["users", "user:<id>"])]
async fn user(id: u64) -> Option<String> {
    Some(id.to_string())
}

#[invalidates(key = "user:<id>", keys = ["profile:<id>"], tags = ["users"], in_namespace = "default", namespace = "feeds")]
async fn service(id: u64) -> Result<(), std::io::Error> {
    let _ = id;
    Ok(())
}

#[invalidates(tags = ["user:<id>"], before, cache = app.cache)]
async fn handler(Path(id): Path<u64>, State(app): State<App>, Json(name): Json<String>) -> impl IntoResponse {
    (StatusCode::OK, format!("{id} is now {name}"))
}

fn main() {
    let _router: Router = Router::new().route("/users/{id}", put(handler)).with_state(App { cache: Cache::memory() });
    let _ = (user(1), service(1));
}
