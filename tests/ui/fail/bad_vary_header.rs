use axum::extract::Path;
use cache_runtime::cached;

#[cached(vary = ["authorization", "x user"])]
async fn show(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn main() {}
