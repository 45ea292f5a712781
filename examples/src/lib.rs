//! The example application behind `cargo run --release --example axum_app`, as a library so
//! the integration tests can serve the same router on a loopback port, or run it as a process.

pub mod app;
pub mod db;

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use app::{router, App, Config};
use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Runs the app as `axum_app` does: configuration from the environment, prints the URL it
/// listens on, closes connections that take longer than `HEADER_READ_TIMEOUT_MS` to send their
/// request headers, stops cleanly on Ctrl-C and SIGTERM.
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
    let mut routes = router(app.clone());
    if let Some(token) = &config.admin_token {
        // The cache's admin surface (statistics, entries, purges), behind the token.
        routes = routes.nest_service("/admin", cache_runtime::admin::router(app.cache.clone(), token.clone()));
    }
    serve(listener, routes, config.header_read_timeout, shutdown()).await;
    println!("shut down");
    Ok(())
}

/// `axum::serve(listener, router).with_graceful_shutdown(signal)` (HTTP/1.1, as axum serves it
/// without its `http2` feature), plus a bound on the time a client may take to send a request's
/// headers, from the moment the connection is ready for them (the accept, or the end of the
/// previous response). A client that does not finish in time, dripping or silent, is
/// disconnected; so is a keep-alive connection idle for that long. On `signal`, no new
/// connection is accepted, and the call returns once the open ones have finished their request.
/// (No route upgrades its connection, so connections are served without upgrades.)
async fn serve(
    mut listener: tokio::net::TcpListener,
    router: Router,
    header_read_timeout: Duration,
    signal: impl Future,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    let mut signal = pin!(signal);
    loop {
        // axum's `accept` retries (and waits out) failed accepts, as `axum::serve` does.
        let (io, remote) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            _ = &mut signal => break,
        };
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router.clone())));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %remote, "connection closed");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
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
