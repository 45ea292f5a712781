use axum::extract::Path;
use cache_runtime::cached;

#[cached(cache_none)]
async fn show(Path(id): Path<u64>) -> Option<String> {
    Some(id.to_string())
}

fn main() {}
