//! The example application: `cargo run --release --example axum_app`.
//!
//! Environment: `PORT` (3000), `REDIS_URL` (unset: in-memory cache), `DATABASE_PATH` (unset:
//! SQLite in memory), `DB_LATENCY_MS` (5), `CACHE_L1` (with Redis: `0` turns the
//! process-memory tier off), `HEADER_READ_TIMEOUT_MS` (10000: a connection that has not sent a
//! request's headers that long after it opened, or after its previous response, is closed).
//! `ADMIN_TOKEN` (set: the cache's admin surface at `/admin`, behind `Authorization: Bearer`).
//! Stops cleanly on Ctrl-C and SIGTERM.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    examples::serve_from_env().await
}
