use axum::extract::Path;
use cache_runtime::cached;

#[cached(expire = 60, stale = 30)]
async fn show(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn main() {}
