//! The example application behind `cargo run --release --example axum_app`, as a library so
//! the integration tests can serve the same router on a loopback port.

pub mod app;
pub mod db;
