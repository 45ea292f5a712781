use std::time::Duration;

use axum::extract::Path;
use cache_runtime::cached;

// `unless` sees the value (`Vec<String>`): a predicate over another type is refused at the
// predicate.
#[cached(expire = 60, unless = |n: &u32| *n == 0)]
async fn titles(genre: String) -> Vec<String> {
    vec![genre]
}

// `expire_with` must give a `Duration`.
#[cached(expire = 60, expire_with = |v: &Option<u32>| 60)]
async fn count(id: u32) -> Result<u32, String> {
    Ok(id)
}

// A closure that captures a variable cannot be an attribute's fn.
#[cached(expire = 60, unless = |v: &u32| *v == limit)]
async fn capped(limit: u32) -> u32 {
    limit
}

// On a handler the predicate sees the response, not the handler's return type.
#[cached(expire = 60, expire_with = |s: &String| Duration::from_secs(s.len() as u64))]
async fn page(Path(id): Path<u32>) -> String {
    id.to_string()
}

fn main() {}
