//! The example application: `cargo run --release --example axum_app`.
//!
//! Environment: `PORT` (3000), `REDIS_URL` (unset: in-memory cache), `DATABASE_PATH` (unset:
//! SQLite in memory), `DB_LATENCY_MS` (5). Stops cleanly on Ctrl-C and SIGTERM.

use examples::app::{router, App, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = Config::from_env()?;
    let app = App::new(&config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    let cache = if config.redis_url.is_some() { "redis" } else { "in-memory" };
    let db = config
        .database_path
        .as_ref()
        .map_or_else(|| "sqlite in memory".to_owned(), |p| format!("sqlite {}", p.display()));
    println!("listening on http://{} (cache: {cache}, database: {db})", listener.local_addr()?);
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown()).await?;
    println!("shut down");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
