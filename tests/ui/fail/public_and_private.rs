use axum::extract::Path;
use cache_runtime::cached;

#[cached(public, private)]
async fn show(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn main() {}
