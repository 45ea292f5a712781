//! A CDN's purge API on loopback (Fastly's and Cloudflare's routes) that records every call,
//! and can be down (`503`), hang, be slow, refuse a tag (`400`) or redirect (`308`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
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

    /// The tags it purges: Fastly's `Surrogate-Key`, or Cloudflare's `{"tags": […]}`.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.header("surrogate-key").split_whitespace().map(str::to_owned).collect();
        if let Ok(body) = serde_json::from_str::<serde_json::Value>(&self.body) {
            let named = body["tags"].as_array().into_iter().flatten();
            tags.extend(named.filter_map(|tag| tag.as_str().map(str::to_owned)));
        }
        tags
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
    /// Wait this long before answering (read when a call arrives).
    pub delay_ms: AtomicU64,
    /// Calls that arrived (counted once `delay_ms` was read).
    pub arrived: AtomicU64,
    /// A tag refused with `400` (the whole call that names it, as Fastly and Cloudflare do).
    refuse_tag: Mutex<Option<String>>,
    /// The calls answered `400`.
    rejected: Mutex<Vec<Call>>,
    /// Answer every call `308 Permanent Redirect` to this base URL plus the call's path.
    redirect_to: Mutex<Option<String>>,
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

    /// Refuses (`400`) every call that names `tag`.
    pub fn refuse_tag(&self, tag: &str) {
        *self.shared.refuse_tag.lock().unwrap() = Some(tag.to_owned());
    }

    /// The calls refused with `400`.
    pub fn rejected(&self) -> Vec<Call> {
        self.shared.rejected.lock().unwrap().clone()
    }

    /// Redirects every call to the same path at `base`.
    pub fn redirect_to(&self, base: &str) {
        *self.shared.redirect_to.lock().unwrap() = Some(base.to_owned());
    }
}

async fn record(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if shared.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    shared.arrived.fetch_add(1, Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if shared.down.load(Ordering::SeqCst) {
        *shared.refused.lock().unwrap() += 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    if let Some(base) = shared.redirect_to.lock().unwrap().clone() {
        let location = format!("{base}{}", uri.path());
        return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response();
    }
    let body = String::from_utf8(body.to_vec()).unwrap();
    let call = Call { path: uri.path().to_owned(), headers, body };
    let refused = shared.refuse_tag.lock().unwrap().clone();
    if refused.is_some_and(|tag| call.tags().contains(&tag)) {
        shared.rejected.lock().unwrap().push(call);
        let error = r#"{"status":"error","success":false,"errors":[{"code":1012,"message":"invalid tag"}]}"#;
        return (StatusCode::BAD_REQUEST, error).into_response();
    }
    shared.calls.lock().unwrap().push(call);
    // Fastly answers `{"status": "ok", …}`, Cloudflare `{"success": true, …}`.
    (StatusCode::OK, r#"{"status":"ok","success":true,"errors":[],"result":{"id":"x"}}"#).into_response()
}
