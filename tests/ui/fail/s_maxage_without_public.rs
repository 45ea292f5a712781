use axum::extract::Path;
use cache_runtime::cached;

#[cached(s_maxage = 120)]
async fn show(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn main() {}
