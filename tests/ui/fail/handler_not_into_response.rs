use axum::extract::Path;
use cache_runtime::cached;

struct Page;

#[cached(expire = 60)]
async fn show(Path(id): Path<u64>) -> Page {
    let _ = id;
    Page
}

fn main() {}
