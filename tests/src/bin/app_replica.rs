//! The example app as a separate process, for the multi-replica tests (same code as
//! `cargo run --example axum_app`).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    examples::serve_from_env().await
}
