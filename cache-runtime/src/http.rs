//! HTTP caching for axum handlers (RFC 9110 §13 conditional requests, RFC 9111 caching).
//!
//! `#[cached]` on a handler adds a hidden [`HttpRequest`] extractor (method, URI, headers)
//! and hands the handler's future to [`cached_handler`]:
//!
//! - only `GET` and `HEAD` are cached; other methods run the handler untouched (`X-Cache: BYPASS`);
//! - only 2xx responses are stored (status, body, headers other than `Set-Cookie`,
//!   hop-by-hop and caching headers); a response with `Set-Cookie` or `Cache-Control: no-store`
//!   is never stored;
//! - every response carries a strong `ETag` (SHA-256 of the body: the same on every replica
//!   and after restarts), `Cache-Control`, `Last-Modified`, `Vary` (when configured) and
//!   `X-Cache: HIT | MISS | BYPASS`;
//! - `If-None-Match` (lists, `*`, weak comparison) answers `304 Not Modified`;
//!   `If-Modified-Since` is evaluated only when `If-None-Match` is absent; malformed
//!   conditional headers are ignored;
//! - headers named in `vary` are hashed (SHA-256) into the key, so a response is only ever
//!   served to requests with the same values.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use headers::{CacheControl, ETag, HeaderMapExt as _, IfModifiedSince, IfNoneMatch, LastModified};
use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, Found, Locked, Times};
use crate::codec::{Codec, Format};
use crate::error::CacheError;
use crate::fetch::{CallOpts, Freshness, Spawner};
use crate::flight::Joined;
use crate::key::{escape_into, KeyWriter};
use crate::time::now_ms;

/// The cache status header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
const CLOUDFLARE_CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cloudflare-cdn-cache-control");
/// Bodies larger than this are served but not stored.
const MAX_STORED_BODY: u64 = 8 * 1024 * 1024;

/// What a cached handler needs from the request. Added by `#[cached]` as a hidden first
/// extractor; it never rejects a request.
#[doc(hidden)]
#[derive(Debug)]
pub struct HttpRequest {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for HttpRequest {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(HttpRequest::new(&parts.method, &parts.uri, &parts.headers))
    }
}

impl HttpRequest {
    fn new(method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> Self {
        HttpRequest {
            method: method.clone(),
            path_and_query: uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: headers.clone(),
        }
    }

    /// What a cached response depends on, taken from a whole request (for `CacheLayer`).
    pub(crate) fn of<B>(request: &axum::http::Request<B>) -> Self {
        HttpRequest::new(request.method(), request.uri(), request.headers())
    }

    /// The default key of a handler without `key`: its request's path and query.
    pub fn key_uri(&self, key: &mut KeyWriter) {
        key.display(&self.path_and_query);
    }
}

/// Where `Last-Modified` comes from.
#[derive(Debug, Clone, Copy)]
enum LastModifiedFrom {
    StoredAt,
    /// A top-level field of the JSON body: RFC 3339 text or Unix seconds.
    Field(&'static str),
}

/// HTTP options of one handler, built in a `const` by the generated code.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct HttpOpts {
    public: bool,
    s_maxage: Option<u64>,
    cdn_max_age: Option<u64>,
    vary: &'static [&'static str],
    last_modified: LastModifiedFrom,
    honor_no_cache: bool,
    /// Advertised in `Cache-Control` (RFC 5861).
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl Default for HttpOpts {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpOpts {
    /// `private`, no `Vary`, `Last-Modified` = stored-at, client `no-cache` ignored.
    pub const fn new() -> Self {
        HttpOpts {
            public: false,
            s_maxage: None,
            cdn_max_age: None,
            vary: &[],
            last_modified: LastModifiedFrom::StoredAt,
            honor_no_cache: false,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }
    /// `stale = N`: `stale-while-revalidate=N`.
    pub const fn stale_while_revalidate(mut self, secs: u64) -> Self {
        self.stale_while_revalidate = Some(secs);
        self
    }
    /// `stale_if_error = N`: `stale-if-error=N`.
    pub const fn stale_if_error(mut self, secs: u64) -> Self {
        self.stale_if_error = Some(secs);
        self
    }
    /// `public`.
    pub const fn public(mut self) -> Self {
        self.public = true;
        self
    }
    /// `s_maxage = N`.
    pub const fn s_maxage(mut self, secs: u64) -> Self {
        self.s_maxage = Some(secs);
        self
    }
    /// `cdn_max_age = N`.
    pub const fn cdn_max_age(mut self, secs: u64) -> Self {
        self.cdn_max_age = Some(secs);
        self
    }
    /// `vary = [...]`, lower-case header names validated at compile time.
    pub const fn vary(mut self, names: &'static [&'static str]) -> Self {
        self.vary = names;
        self
    }
    /// `last_modified = "field"`.
    pub const fn last_modified_field(mut self, field: &'static str) -> Self {
        self.last_modified = LastModifiedFrom::Field(field);
        self
    }
    /// `honor_no_cache`.
    pub const fn honor_no_cache(mut self) -> Self {
        self.honor_no_cache = true;
        self
    }
}

/// A stored 2xx response.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// Quoted strong ETag.
    etag: ETag,
    etag_text: Box<str>,
    last_modified_ms: u64,
}

/// Binary payload of a stored response:
/// `status u16 | last_modified_ms u64 | etag_len u8 | etag | n_headers u16 | (name_len u16 | name | value_len u32 | value)* | body_len u64 | body`.
/// The body length is checked, so a truncated entry is a miss, never a truncated response.
pub(crate) struct ResponseCodec;

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err("truncated stored response".to_owned());
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

fn take_uint(bytes: &mut &[u8], width: usize) -> Result<u64, String> {
    let raw = take(bytes, width)?;
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(raw);
    Ok(u64::from_le_bytes(buf))
}

impl Codec<Arc<StoredResponse>> for ResponseCodec {
    fn encode(value: &Arc<StoredResponse>, _: Format) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::with_capacity(64 + value.body.len());
        out.extend_from_slice(&value.status.as_u16().to_le_bytes());
        out.extend_from_slice(&value.last_modified_ms.to_le_bytes());
        let etag = value.etag_text.as_bytes();
        out.push(u8::try_from(etag.len()).map_err(|_| CacheError::Config("ETag too long".to_owned()))?);
        out.extend_from_slice(etag);
        let n = u16::try_from(value.headers.len()).map_err(|_| CacheError::Config("too many headers".to_owned()))?;
        out.extend_from_slice(&n.to_le_bytes());
        for (name, v) in &value.headers {
            let name = name.as_str().as_bytes();
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&(value.body.len() as u64).to_le_bytes());
        out.extend_from_slice(&value.body);
        Ok(out)
    }

    fn decode(mut bytes: &[u8], _: Format) -> Result<Arc<StoredResponse>, String> {
        let b = &mut bytes;
        let status = u16::try_from(take_uint(b, 2)?).map_err(|e| e.to_string())?;
        let status = StatusCode::from_u16(status).map_err(|e| e.to_string())?;
        let last_modified_ms = take_uint(b, 8)?;
        let etag_len = usize::try_from(take_uint(b, 1)?).map_err(|e| e.to_string())?;
        let etag_text = std::str::from_utf8(take(b, etag_len)?).map_err(|e| e.to_string())?;
        let etag: ETag = etag_text.parse().map_err(|_| "invalid stored ETag".to_owned())?;
        let n = take_uint(b, 2)?;
        let mut headers = Vec::new();
        for _ in 0..n {
            let len = usize::try_from(take_uint(b, 2)?).map_err(|e| e.to_string())?;
            let name = HeaderName::from_bytes(take(b, len)?).map_err(|e| e.to_string())?;
            let len = usize::try_from(take_uint(b, 4)?).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_bytes(take(b, len)?).map_err(|e| e.to_string())?;
            headers.push((name, value));
        }
        let body_len = take_uint(b, 8)?;
        if u64::try_from(bytes.len()).ok() != Some(body_len) {
            return Err(format!("stored body is {} bytes, expected {body_len}", bytes.len()));
        }
        Ok(Arc::new(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(bytes),
            etag,
            etag_text: etag_text.into(),
            last_modified_ms,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// Appends one `:h.<name>=<sha256 of its values>` segment per `vary` header, so requests
/// that differ in any of them never share an entry.
fn add_vary(key: &mut KeyWriter, headers: &HeaderMap, vary: &[&str]) {
    for name in vary {
        let mut hasher = Sha256::new();
        let mut count = 0u32;
        for value in headers.get_all(*name) {
            hasher.update(value.as_bytes());
            hasher.update([0u8]);
            count += 1;
        }
        hasher.update(count.to_le_bytes());
        let mut segment = String::from(":h.");
        escape_into(&mut segment, name);
        segment.push('=');
        segment.push_str(&hex(&hasher.finalize()[..16]));
        key.lit(&segment);
    }
}

fn set_x_cache(response: &mut Response, status: &'static str) {
    response.headers_mut().insert(X_CACHE, HeaderValue::from_static(status));
}

/// Headers of a handler's response that are never stored or replayed.
fn is_unstored_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "content-length"
            | "date"
            | "set-cookie"
            | "cache-control"
            | "etag"
            | "last-modified"
            | "vary"
            | "x-cache"
            | "cdn-cache-control"
            | "cloudflare-cdn-cache-control"
            | "age"
            | "expires"
    )
}

fn to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ms / 1000)
}

/// `Last-Modified` from a field of the JSON body: RFC 3339 text or Unix seconds.
fn last_modified_from_body(body: &[u8], field: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get(field)? {
        serde_json::Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).ok()?;
            Some(u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?)
        }
        serde_json::Value::Number(n) => n.as_u64().map(|secs| secs.saturating_mul(1000)),
        _ => None,
    }
}

impl HttpOpts {
    fn cache_control(&self, remaining_secs: u64) -> HeaderValue {
        let visibility = if self.public { "public" } else { "private" };
        let mut text = match self.s_maxage {
            Some(s) if self.public => format!("{visibility}, max-age={remaining_secs}, s-maxage={s}"),
            _ => format!("{visibility}, max-age={remaining_secs}"),
        };
        if let Some(n) = self.stale_while_revalidate {
            text.push_str(&format!(", stale-while-revalidate={n}"));
        }
        if let Some(n) = self.stale_if_error {
            text.push_str(&format!(", stale-if-error={n}"));
        }
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("private"))
    }

    /// Adds the caching headers shared by 200 and 304 answers.
    fn add_headers(&self, headers: &mut HeaderMap, stored: &StoredResponse, max_age: u64, x_cache: &'static str) {
        headers.insert(header::CACHE_CONTROL, self.cache_control(max_age));
        headers.typed_insert(stored.etag.clone());
        headers.typed_insert(LastModified::from(to_system_time(stored.last_modified_ms)));
        if !self.vary.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.vary.join(", ")) {
                headers.insert(header::VARY, v);
            }
        }
        if let Some(secs) = self.cdn_max_age {
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={secs}")) {
                headers.insert(CDN_CACHE_CONTROL, v.clone());
                headers.insert(CLOUDFLARE_CDN_CACHE_CONTROL, v);
            }
        }
        headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    }
}

/// RFC 9110 §13.2.2: `If-None-Match` first; `If-Modified-Since` only without it.
/// Malformed values are ignored (the request is answered in full).
fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        return match request.typed_try_get::<IfNoneMatch>() {
            Ok(Some(inm)) => !inm.precondition_passes(&stored.etag),
            _ => false,
        };
    }
    match request.typed_try_get::<IfModifiedSince>() {
        Ok(Some(ims)) => !ims.is_modified(to_system_time(stored.last_modified_ms)),
        _ => false,
    }
}

/// `max_age`: the entry's remaining freshness in whole seconds (the full ttl on a miss).
fn respond(
    stored: &StoredResponse,
    max_age: u64,
    request: &HttpRequest,
    opts: &HttpOpts,
    x_cache: &'static str,
) -> Response {
    if not_modified(&request.headers, stored) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        opts.add_headers(response.headers_mut(), stored, max_age, x_cache);
        return response;
    }
    let body = if request.method == Method::HEAD { Body::empty() } else { Body::from(stored.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
    opts.add_headers(headers, stored, max_age, x_cache);
    response
}

/// What the client's own `Cache-Control` asks for, when the handler honours it.
enum ClientDirective {
    None,
    NoCache,
    NoStore,
}

fn client_directive(headers: &HeaderMap) -> ClientDirective {
    match headers.typed_try_get::<CacheControl>() {
        Ok(Some(cc)) if cc.no_store() => ClientDirective::NoStore,
        Ok(Some(cc)) if cc.no_cache() => ClientDirective::NoCache,
        _ => ClientDirective::None,
    }
}

/// Turns a handler's response into what is stored, or gives it back when it must not be
/// stored (not 2xx, sets a cookie, `no-store`, too large, or its body failed).
async fn to_stored(response: Response, http: &HttpOpts) -> Result<Arc<StoredResponse>, Response> {
    let never_store = response.headers().contains_key(header::SET_COOKIE)
        || response.headers().typed_get::<CacheControl>().is_some_and(|cc| cc.no_store());
    let small_enough = response.body().size_hint().upper().is_some_and(|n| n <= MAX_STORED_BODY);
    if !response.status().is_success() || never_store || !small_enough {
        return Err(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::try_from(MAX_STORED_BODY).unwrap_or(usize::MAX)).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(target: "cache_runtime", error = %err, "handler body failed while being read");
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "response body failed").into_response());
        }
    };
    let etag_text = format!("\"{}\"", hex(&Sha256::digest(&bytes)[..16]));
    let etag: ETag = match etag_text.parse() {
        Ok(etag) => etag,
        Err(_) => unreachable!("a quoted hex string is a valid ETag"),
    };
    let now = now_ms();
    let last_modified_ms = match http.last_modified {
        LastModifiedFrom::StoredAt => now,
        LastModifiedFrom::Field(field) => last_modified_from_body(&bytes, field).unwrap_or(now),
    };
    Ok(Arc::new(StoredResponse {
        status: parts.status,
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| !is_unstored_header(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        body: bytes,
        etag,
        etag_text: etag_text.into(),
        last_modified_ms,
    }))
}

/// Longest a refresh may hold its claim.
const REFRESH_HOLD: Duration = Duration::from_secs(10);

fn remaining_secs(times: &Times) -> u64 {
    times.fresh_until_ms.saturating_sub(now_ms()) / 1000
}

/// The runtime side of `#[cached]` on an axum handler.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub async fn cached_handler<R, F>(
    cache: &Cache,
    mut key: KeyWriter,
    namespace: &str,
    tags: &[String],
    request: HttpRequest,
    opts: &CallOpts,
    http: &HttpOpts,
    body: F,
    spawner: Spawner<F>,
) -> Response
where
    R: IntoResponse,
    F: Future<Output = R>,
{
    if request.method != Method::GET && request.method != Method::HEAD {
        let mut response = body.await.into_response();
        set_x_cache(&mut response, "BYPASS");
        return response;
    }
    let directive = if http.honor_no_cache { client_directive(&request.headers) } else { ClientDirective::None };
    add_vary(&mut key, &request.headers, http.vary);
    let key = key.finish();
    let forced = !matches!(directive, ClientDirective::None);
    if !forced {
        if let Some((Found::Value(stored), times)) = cache.local_hit::<Arc<StoredResponse>>(&key) {
            if opts.freshness(cache, &times, now_ms()) == Freshness::Fresh {
                cache.record_hit(&key);
                crate::key::recycle(key);
                return respond(&stored, remaining_secs(&times), &request, http, "HIT");
            }
        }
    }
    // Single-flight (not for a client's forced refresh): concurrent misses of one key run the
    // handler once; a 2xx response is shared, anything else lets the next waiter run it.
    let leader = if forced {
        None
    } else {
        match cache.flights().join::<Arc<StoredResponse>>(&key).await {
            Joined::Leader(leader) => Some(leader),
            Joined::Shared(Found::Value(stored), false) => {
                cache.record_hit(&key);
                return respond(&stored, opts.ttl(cache).as_secs(), &request, http, "HIT");
            }
            Joined::Shared(Found::Value(stored), true) => {
                cache.record_stale(&key);
                return respond(&stored, 0, &request, http, "STALE");
            }
            Joined::Shared(Found::Negative, _) => None,
        }
    };
    let mut lookup = cache.lookup::<Arc<StoredResponse>, ResponseCodec>(&key, namespace, tags, forced).await;
    let mut fallback = None;
    if let Some((Found::Value(stored), times)) = lookup.hit.take() {
        let freshness = opts.freshness(cache, &times, now_ms());
        if matches!(freshness, Freshness::Fresh | Freshness::RefreshEarly | Freshness::Stale) {
            let refresh = freshness != Freshness::Fresh && cache.claim_refresh(&key, REFRESH_HOLD).await;
            if refresh {
                if let Some(spawn) = spawner.0 {
                    // The lease is taken before the handler runs, so a write during it wins.
                    let lease =
                        cache.lookup::<Arc<StoredResponse>, ResponseCodec>(&key, namespace, tags, true).await.lease;
                    match lease {
                        Some(lease) => {
                            let (cache2, key2, namespace2, opts2, http2) =
                                (cache.clone(), key.clone(), namespace.to_owned(), *opts, *http);
                            let started = Instant::now();
                            spawn(
                                body,
                                Box::new(move |out: R| {
                                    let response = out.into_response();
                                    Box::pin(async move {
                                        if let Ok(stored) = to_stored(response, &http2).await {
                                            let ttl = (opts2.ttl(&cache2), opts2.keep());
                                            let (k, n) = (key2.clone(), namespace2.as_str());
                                            cache2
                                                .fill::<Arc<StoredResponse>, ResponseCodec>(
                                                    k,
                                                    n,
                                                    &lease,
                                                    None,
                                                    Some(&stored),
                                                    ttl,
                                                    started.elapsed(),
                                                )
                                                .await;
                                        }
                                        cache2.release_refresh(&key2).await;
                                    })
                                }),
                            );
                        }
                        None => cache.release_refresh(&key).await,
                    }
                    return respond_current(cache, &key, leader, &stored, &times, &request, http, freshness);
                }
                // The handler borrows: this request refreshes, the others get the current value.
                if let Some(leader) = leader {
                    if freshness == Freshness::Stale {
                        leader.finish_stale(Found::Value(Arc::clone(&stored)));
                    } else {
                        leader.finish(Some(Found::Value(Arc::clone(&stored))));
                    }
                }
                let response = compute(
                    cache,
                    key.clone(),
                    namespace,
                    tags,
                    &request,
                    opts,
                    http,
                    body,
                    None,
                    "MISS",
                    Some(stored),
                )
                .await;
                cache.release_refresh(&key).await;
                return response;
            }
            return respond_current(cache, &key, leader, &stored, &times, &request, http, freshness);
        }
        if freshness == Freshness::Fallback {
            fallback = Some(stored);
        }
    }
    let x_cache = if forced { "BYPASS" } else { "MISS" };
    let store = !matches!(directive, ClientDirective::NoStore);
    let mut lock_token = None;
    if let (Some(hold), false) = (opts.lock_hold(), forced) {
        match cache.lock_or_wait::<Arc<StoredResponse>, ResponseCodec>(&key, namespace, tags, hold).await {
            Locked::Ready(Found::Value(stored), times) => {
                cache.record_hit(&key);
                if let Some(leader) = leader {
                    leader.finish(Some(Found::Value(Arc::clone(&stored))));
                }
                return respond(&stored, remaining_secs(&times), &request, http, "HIT");
            }
            Locked::Ready(Found::Negative, _) => {}
            Locked::Compute { token, lookup: newer } => {
                lock_token = token;
                if let Some(newer) = newer {
                    lookup = newer;
                }
            }
        }
    }
    let lease = lookup.lease.filter(|_| store).map(|lease| (lease, lookup.l1_epoch));
    let response =
        compute_with(cache, key.clone(), namespace, &request, opts, http, body, lease, x_cache, fallback, leader).await;
    if let Some(token) = lock_token {
        cache.unlock(&key, &token).await;
    }
    response
}

/// Serves a fresh (HIT) or stale (STALE) entry without running the handler.
#[allow(clippy::too_many_arguments)]
fn respond_current(
    cache: &Cache,
    key: &str,
    leader: Option<crate::flight::Leader<'_>>,
    stored: &Arc<StoredResponse>,
    times: &Times,
    request: &HttpRequest,
    http: &HttpOpts,
    freshness: Freshness,
) -> Response {
    let label = if freshness == Freshness::Stale {
        cache.record_stale(key);
        "STALE"
    } else {
        cache.record_hit(key);
        "HIT"
    };
    if let Some(leader) = leader {
        if freshness == Freshness::Stale {
            leader.finish_stale(Found::Value(Arc::clone(stored)));
        } else {
            leader.finish(Some(Found::Value(Arc::clone(stored))));
        }
    }
    respond(stored, remaining_secs(times), request, http, label)
}

/// Runs the handler in this request (a refresh the others do not wait for): takes a lease,
/// stores a storable response.
#[allow(clippy::too_many_arguments)]
async fn compute<R: IntoResponse>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    request: &HttpRequest,
    opts: &CallOpts,
    http: &HttpOpts,
    body: impl Future<Output = R>,
    leader: Option<crate::flight::Leader<'_>>,
    x_cache: &'static str,
    current: Option<Arc<StoredResponse>>,
) -> Response {
    let lookup = cache.lookup::<Arc<StoredResponse>, ResponseCodec>(&key, namespace, tags, true).await;
    let lease = lookup.lease.map(|lease| (lease, lookup.l1_epoch));
    compute_with(cache, key, namespace, request, opts, http, body, lease, x_cache, current, leader).await
}

/// Runs the handler; stores its response when storable and a lease allows; on a 5xx with a
/// `fallback` (inside `stale_if_error`), answers the fallback instead.
#[allow(clippy::too_many_arguments)]
async fn compute_with<R: IntoResponse>(
    cache: &Cache,
    key: String,
    namespace: &str,
    request: &HttpRequest,
    opts: &CallOpts,
    http: &HttpOpts,
    body: impl Future<Output = R>,
    lease: Option<(crate::backend::Lease, Option<u64>)>,
    x_cache: &'static str,
    fallback: Option<Arc<StoredResponse>>,
    leader: Option<crate::flight::Leader<'_>>,
) -> Response {
    cache.record_miss(&key);
    let started = Instant::now();
    let response = body.await.into_response();
    cache.record_computed(&key, started.elapsed());
    let stored = match to_stored(response, http).await {
        Ok(stored) => stored,
        Err(mut response) => {
            if let Some(leader) = leader {
                leader.finish::<Arc<StoredResponse>>(None);
            }
            if let (Some(stale), true) = (&fallback, response.status().is_server_error()) {
                cache.record_stale(&key);
                return respond(stale, 0, request, http, "STALE");
            }
            set_x_cache(&mut response, x_cache);
            return response;
        }
    };
    let ttl = opts.ttl(cache);
    if let Some((lease, l1_epoch)) = &lease {
        // A failed or dropped store is logged and counted; the client still gets the response.
        cache
            .fill::<Arc<StoredResponse>, ResponseCodec>(
                key,
                namespace,
                lease,
                *l1_epoch,
                Some(&stored),
                (ttl, opts.keep()),
                started.elapsed(),
            )
            .await;
    }
    if let Some(leader) = leader {
        leader.finish(Some(Found::Value(Arc::clone(&stored))));
    }
    respond(&stored, ttl.as_secs(), request, http, x_cache)
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn stored() -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body: Bytes::from_static(b"{}"),
            etag: "\"abc\"".parse().unwrap(),
            etag_text: "\"abc\"".into(),
            last_modified_ms: 1_700_000_000_000,
        }
    }

    proptest! {
        /// Any bytes in If-None-Match / If-Modified-Since are evaluated or ignored: never a panic.
        #[test]
        fn conditional_headers_never_panic(inm in proptest::collection::vec(any::<u8>(), 0..64), ims in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&inm) {
                headers.insert(header::IF_NONE_MATCH, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&ims) {
                headers.insert(header::IF_MODIFIED_SINCE, v);
            }
            let _ = not_modified(&headers, &stored());
        }

        /// Stored responses read back from arbitrary bytes decode or are rejected: never a panic.
        #[test]
        fn response_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json);
        }
    }

    #[test]
    fn stored_responses_round_trip() {
        let original = Arc::new(stored());
        let bytes = <ResponseCodec as Codec<Arc<StoredResponse>>>::encode(&original, Format::Json).unwrap();
        let back = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json).unwrap();
        assert_eq!(
            (back.status, &back.body, &back.etag_text, back.last_modified_ms),
            (original.status, &original.body, &original.etag_text, original.last_modified_ms)
        );
        for cut in 0..bytes.len() {
            assert!(
                <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes[..cut], Format::Json).is_err(),
                "a truncated entry is rejected ({cut})"
            );
        }
    }
}
