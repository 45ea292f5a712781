use axum::extract::Path;
use cache_runtime::cached;

#[cached(public = "yes", last_modified = 3)]
async fn show(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn main() {}
