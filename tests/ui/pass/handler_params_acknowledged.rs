use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use cache_runtime::cached;

#[derive(serde::Deserialize)]
struct Tracking {
    utm: Option<String>,
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

/// A parameter that does not change the response is listed in `skip`.
#[cached(key = "home", skip = [t])]
async fn home(Query(t): Query<Tracking>) -> &'static str {
    let _ = t.utm;
    "home"
}

/// An extractor that reads request headers is covered by `vary`.
#[cached(http, expire = 60, vary = ["authorization"])]
async fn me(user: User) -> String {
    user.id.to_string()
}

fn main() {
    let _ = (home, me);
}
