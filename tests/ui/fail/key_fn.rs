// `key_fn` renders a `key` template from parameters declared as `name: Type`.
use axum::extract::Path;
use cache_runtime::cached;

// No template to render.
#[cached(expire = 60, key_fn = user_key)]
async fn user(id: u64) -> String {
    id.to_string()
}

// `<id>` is bound by a pattern.
#[cached(expire = 60, key = "user:<id>", key_fn = page_key)]
async fn page(Path(id): Path<u64>) -> String {
    id.to_string()
}

// Not a name.
#[cached(expire = 60, key = "user:<id>", key_fn = "user_key")]
async fn named(id: u64) -> String {
    id.to_string()
}

fn main() {}
