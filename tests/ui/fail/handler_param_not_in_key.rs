use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use cache_runtime::cached;

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

// Page 2 would be served page 1's entry.
#[cached(key = "posts")]
async fn list(Query(p): Query<Page>, State(()): State<()>) -> String {
    format!("page {}", p.page)
}

// Every user would be served the first user's entry.
#[cached(http, expire = 60)]
async fn me(user: User) -> String {
    user.id.to_string()
}

fn main() {}
