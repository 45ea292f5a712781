//! `#[cached]` on service functions, without a web framework:
//! `cargo run --example service_fn` (add `REDIS_URL=redis://…` to use Redis).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Weather {
    city: String,
    celsius: f32,
}

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

/// A slow lookup, cached for 30 s per city.
#[cached(expire = 30, key = "weather:<city>")]
async fn weather(city: &str) -> Result<Weather, String> {
    LOOKUPS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    if city.is_empty() {
        return Err("no city".to_owned());
    }
    Ok(Weather { city: city.to_owned(), celsius: 21.5 })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        cache_runtime::init(Cache::builder().redis(url).prefix("service-fn-example").build()?)?;
    }
    for attempt in 1..=3 {
        let started = Instant::now();
        let w = weather("Lisbon").await?;
        println!("attempt {attempt}: {} is {}°C ({:?})", w.city, w.celsius, started.elapsed());
    }
    println!("errors are not cached: {:?}", weather("").await);
    println!("lookups that reached the slow service: {}", LOOKUPS.load(Ordering::Relaxed));
    println!("cache stats: {:?}", cache_runtime::global().stats());
    Ok(())
}
