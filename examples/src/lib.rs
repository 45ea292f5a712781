//! The example application behind `cargo run --release --example axum_app`, as a library so
//! the integration tests can serve the same router on a loopback port, or run it as a process.

pub mod app;
pub mod db;

use app::{router, App, Config};

/// Runs the app as `axum_app` does: configuration from the environment, prints the URL it
/// listens on, stops cleanly on Ctrl-C and SIGTERM.
pub async fn serve_from_env() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = Config::from_env()?;
    let app = App::new(&config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    let cache = match (&config.redis_url, config.l1) {
        (None, _) => "in-memory",
        (Some(_), true) => "redis + process-memory tier",
        (Some(_), false) => "redis",
    };
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
