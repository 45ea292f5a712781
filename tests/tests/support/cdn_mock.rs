//! A CDN's purge API on loopback (Fastly's and Cloudflare's routes) that records every call,
//! and can be down (`503`) or hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;

/// One purge request as the CDN received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Call {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

#[derive(Default)]
pub struct Shared {
    calls: Mutex<Vec<Call>>,
    /// Answer `503` (counted in `refused`).
    pub down: AtomicBool,
    /// Never answer.
    pub hang: AtomicBool,
    refused: Mutex<usize>,
}

pub struct MockCdn {
    pub base: String,
    pub shared: Arc<Shared>,
}

impl MockCdn {
    pub async fn start() -> MockCdn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener)
    }

    /// On a listener the test bound (a CDN that comes back on the same address).
    pub fn on(listener: tokio::net::TcpListener) -> MockCdn {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let router = Router::new().fallback(record).with_state(Arc::clone(&shared));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        MockCdn { base, shared }
    }

    /// The purges accepted so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Requests answered `503` while down.
    pub fn refused(&self) -> usize {
        *self.shared.refused.lock().unwrap()
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

async fn record(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if shared.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if shared.down.load(Ordering::SeqCst) {
        *shared.refused.lock().unwrap() += 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned());
    }
    let body = String::from_utf8(body.to_vec()).unwrap();
    shared.calls.lock().unwrap().push(Call { path: uri.path().to_owned(), headers, body });
    // Fastly answers `{"status": "ok", …}`, Cloudflare `{"success": true, …}`.
    (StatusCode::OK, r#"{"status":"ok","success":true,"errors":[],"result":{"id":"x"}}"#.to_owned())
}
