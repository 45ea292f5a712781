use std::time::Duration;

use cache_runtime::cached;

const HALF_SECOND: Duration = Duration::from_millis(500);
const RATE: f64 = 60.0;

// Not whole seconds: the message says which `Duration` to write.
#[cached(expire = Duration::from_millis(1500))]
async fn millis(id: u64) -> u64 {
    id
}

// Under a second, through a constant.
#[cached(stale = HALF_SECOND)]
async fn half(id: u64) -> u64 {
    id
}

// Zero.
#[cached(lock = Duration::ZERO)]
async fn zero(id: u64) -> u64 {
    id
}

// Neither a `u64` nor a `Duration`.
#[cached(expire = RATE)]
async fn float(id: u64) -> u64 {
    id
}

// A handler: `stale_if_error` is also advertised in `Cache-Control`, and still one error.
#[cached(http, stale_if_error = Duration::from_millis(2500))]
async fn page() -> String {
    String::new()
}

fn main() {}
