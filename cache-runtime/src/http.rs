//! HTTP caching for axum handlers (RFC 9110 §13 conditional requests, RFC 9111 caching).
//!
//! `#[cached]` on a handler adds a hidden [`HttpRequest`] extractor (method, URI, headers)
//! and hands the handler's future to [`cached_handler`]:
//!
//! - only `GET` and `HEAD` are cached; other methods run the handler untouched (`X-Cache: BYPASS`);
//! - only 2xx responses are stored (status, body, headers other than `Set-Cookie`,
//!   hop-by-hop and caching headers); a response with `Set-Cookie` or `Cache-Control: no-store`
//!   is never stored;
//! - every response carries a strong `ETag` (the first 128 bits of the SHA-256 of the body, 32
//!   hex digits, quoted: the same on every replica
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
use crate::fetch::{self, CallOpts, Freshness, Spawner};
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
/// extractor; it never rejects a request. With `ALL_HEADERS = false` (a handler without `vary`
/// or `honor_no_cache`) only the conditional headers are kept: a hit copies no header map;
/// with `URI = false` (a handler with a `key`) the URI is not kept either.
#[doc(hidden)]
#[derive(Debug)]
pub struct HttpRequest<const ALL_HEADERS: bool = true, const URI: bool = true>(RequestParts);

/// The parts of a request a cached response depends on.
#[derive(Debug)]
pub(crate) struct RequestParts {
    method: Method,
    /// For the default key only. A clone shares the request's bytes (no copy).
    uri: Option<axum::http::Uri>,
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Vec<HeaderValue>,
    /// Every header (for `vary` and `honor_no_cache`); empty unless asked for.
    headers: HeaderMap,
}

impl<S: Send + Sync, const ALL_HEADERS: bool, const URI: bool> FromRequestParts<S> for HttpRequest<ALL_HEADERS, URI> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let uri = URI.then_some(&parts.uri);
        Ok(HttpRequest(RequestParts::new(&parts.method, uri, &parts.headers, ALL_HEADERS)))
    }
}

impl<const ALL_HEADERS: bool> HttpRequest<ALL_HEADERS, true> {
    /// The default key of a handler without `key`: its request's path and query.
    pub fn key_uri(&self, key: &mut KeyWriter) {
        if let Some(uri) = &self.0.uri {
            key.text(uri.path_and_query().map_or_else(|| uri.path(), |pq| pq.as_str()));
        }
    }
}

impl RequestParts {
    fn new(method: &Method, uri: Option<&axum::http::Uri>, headers: &HeaderMap, all_headers: bool) -> Self {
        // One pass over the (few) request headers instead of one hashed lookup per name.
        let (mut if_none_match, mut if_modified_since) = (Vec::new(), Vec::new());
        for (name, value) in headers {
            if name == header::IF_NONE_MATCH {
                if_none_match.push(value.clone());
            } else if name == header::IF_MODIFIED_SINCE {
                if_modified_since.push(value.clone());
            }
        }
        RequestParts {
            method: method.clone(),
            uri: uri.cloned(),
            if_none_match,
            if_modified_since,
            headers: if all_headers { headers.clone() } else { HeaderMap::new() },
        }
    }
}

impl HttpRequest {
    /// What a cached response depends on, taken from a whole request (for `CacheLayer`).
    pub(crate) fn of<B>(request: &axum::http::Request<B>) -> Self {
        HttpRequest(RequestParts::new(request.method(), Some(request.uri()), request.headers(), true))
    }
}

/// Where `Last-Modified` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastModifiedFrom {
    StoredAt,
    /// A top-level field of the JSON body: RFC 3339 text or Unix seconds.
    Field(&'static str),
}

/// HTTP options of one handler, built in a `const` by the generated code.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOpts {
    public: bool,
    s_maxage: Option<u64>,
    cdn_max_age: Option<u64>,
    vary: &'static [&'static str],
    /// `vary` joined with `, ` (the `Vary` header), computed once.
    vary_header: &'static str,
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
            vary_header: "",
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
    /// `vary = [...]`, lower-case header names validated at compile time, and the same names
    /// joined with `, ` (the macro joins them, so a hit does not).
    pub const fn vary(mut self, names: &'static [&'static str], header: &'static str) -> Self {
        self.vary = names;
        self.vary_header = header;
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
    /// Header values rendered once, when the response is stored or decoded, not per hit.
    rendered: Rendered,
}

#[derive(Debug)]
struct Rendered {
    etag: HeaderValue,
    last_modified: HeaderValue,
    /// The last complete header map of a 200 answer, for one (max-age, options, X-Cache):
    /// hits within the same second clone it and insert nothing.
    answer: std::sync::Mutex<Option<(u64, HttpOpts, &'static str, HeaderMap)>>,
}

impl StoredResponse {
    fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        etag_text: &str,
        last_modified_ms: u64,
    ) -> Result<Self, String> {
        let etag: ETag = etag_text.parse().map_err(|_| "invalid stored ETag".to_owned())?;
        let etag_value = HeaderValue::from_str(etag_text).map_err(|e| e.to_string())?;
        let rendered = Rendered {
            etag: etag_value,
            last_modified: httpdate_of(last_modified_ms),
            answer: std::sync::Mutex::new(None),
        };
        Ok(StoredResponse { status, headers, body, etag, etag_text: etag_text.into(), last_modified_ms, rendered })
    }
}

/// The `HttpDate` of a time in ms since the epoch (whole seconds).
fn httpdate_of(ms: u64) -> headers::HeaderValue {
    let mut values = Vec::with_capacity(1);
    headers::Header::encode(&LastModified::from(to_system_time(ms)), &mut values);
    values.pop().unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
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
    /// The body and headers, plus the header map memoised for hits (at most about 2 KiB).
    fn memory_size(encoded_len: usize) -> usize {
        encoded_len + 2048
    }

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
        Ok(Arc::new(StoredResponse::new(status, headers, Bytes::copy_from_slice(bytes), etag_text, last_modified_ms)?))
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

/// The last instant an HTTP-date can name (9999-12-31T23:59:59Z), in ms since the epoch.
const LAST_HTTP_DATE_MS: u64 = 253_402_300_799_000;

/// An instant for an HTTP-date, clamped to the years it can name (a `last_modified` field far in
/// the future, or a corrupt stored instant, renders as the last such date, never a panic).
fn to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ms.min(LAST_HTTP_DATE_MS) / 1000)
}

/// Whether an `If-None-Match` value is a well-formed list (RFC 9110 §8.8.3): `*`, or entity-tags
/// (`W/`? `"` etagc* `"`, etagc = `!` / `#`–`~` / obs-text) separated by commas and optional
/// white space. Anything else makes the header malformed, hence ignored (and never reaches a
/// parser that asserts on it: `headers` debug-asserts on a space inside a tag).
fn well_formed_entity_tags(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|item| {
        let item = item.trim_ascii();
        let tag = item.strip_prefix(b"W/").unwrap_or(item);
        item.is_empty()
            || item == b"*"
            || (tag.len() >= 2
                && tag[0] == b'"'
                && tag[tag.len() - 1] == b'"'
                && tag[1..tag.len() - 1].iter().all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80))
    })
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
    /// `Cache-Control` for `remaining_secs` of freshness, written without `fmt` (it is on every
    /// hit).
    fn cache_control(&self, remaining_secs: u64) -> HeaderValue {
        let mut text = Vec::with_capacity(96);
        text.extend_from_slice(if self.public { b"public, max-age=" } else { b"private, max-age=" });
        push_decimal(&mut text, remaining_secs);
        if let (Some(s), true) = (self.s_maxage, self.public) {
            text.extend_from_slice(b", s-maxage=");
            push_decimal(&mut text, s);
        }
        if let Some(n) = self.stale_while_revalidate {
            text.extend_from_slice(b", stale-while-revalidate=");
            push_decimal(&mut text, n);
        }
        if let Some(n) = self.stale_if_error {
            text.extend_from_slice(b", stale-if-error=");
            push_decimal(&mut text, n);
        }
        HeaderValue::from_maybe_shared(Bytes::from(text)).unwrap_or_else(|_| HeaderValue::from_static("private"))
    }

    /// Every header of a 200 answer from `stored`.
    fn answer_headers(&self, stored: &StoredResponse, max_age: u64, x_cache: &'static str) -> HeaderMap {
        // `try_lock`: under contention, build rather than wait.
        let mut memo = stored.rendered.answer.try_lock().ok();
        if let Some(Some((age, opts, status, headers))) = memo.as_deref() {
            if *age == max_age && opts == self && *status == x_cache {
                return headers.clone();
            }
        }
        let mut headers = HeaderMap::with_capacity(stored.headers.len() + 8);
        for (name, value) in &stored.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        self.add_headers(&mut headers, stored, max_age, x_cache);
        if let Some(memo) = memo.as_deref_mut() {
            *memo = Some((max_age, *self, x_cache, headers.clone()));
        }
        headers
    }

    /// Adds the caching headers shared by 200 and 304 answers.
    fn add_headers(&self, headers: &mut HeaderMap, stored: &StoredResponse, max_age: u64, x_cache: &'static str) {
        headers.reserve(7);
        headers.insert(header::ETAG, stored.rendered.etag.clone());
        headers.insert(header::LAST_MODIFIED, stored.rendered.last_modified.clone());
        headers.insert(header::CACHE_CONTROL, self.cache_control(max_age));
        if !self.vary_header.is_empty() {
            headers.insert(header::VARY, HeaderValue::from_static(self.vary_header));
        }
        if let Some(secs) = self.cdn_max_age {
            let mut text = Vec::with_capacity(24);
            text.extend_from_slice(b"max-age=");
            push_decimal(&mut text, secs);
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(text)) {
                headers.insert(CDN_CACHE_CONTROL, v.clone());
                headers.insert(CLOUDFLARE_CDN_CACHE_CONTROL, v);
            }
        }
        headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::key::decimal(n, &mut [0u8; 20]));
}

/// RFC 9110 §13.2.2: `If-None-Match` first; `If-Modified-Since` only without it.
/// Malformed values are ignored (the request is answered in full).
fn not_modified(request: &RequestParts, stored: &StoredResponse) -> bool {
    use headers::Header as _;
    if !request.if_none_match.is_empty() {
        if !request.if_none_match.iter().all(|v| well_formed_entity_tags(v.as_bytes())) {
            return false;
        }
        return match IfNoneMatch::decode(&mut request.if_none_match.iter()) {
            Ok(inm) => !inm.precondition_passes(&stored.etag),
            Err(_) => false,
        };
    }
    if request.if_modified_since.is_empty() {
        return false;
    }
    match IfModifiedSince::decode(&mut request.if_modified_since.iter()) {
        Ok(ims) => !ims.is_modified(to_system_time(stored.last_modified_ms)),
        Err(_) => false,
    }
}

/// `max_age`: the entry's remaining freshness in whole seconds (the full ttl on a miss).
fn respond(
    stored: &StoredResponse,
    max_age: u64,
    request: &RequestParts,
    opts: &HttpOpts,
    x_cache: &'static str,
) -> Response {
    if not_modified(request, stored) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        opts.add_headers(response.headers_mut(), stored, max_age, x_cache);
        return response;
    }
    let body = if request.method == Method::HEAD { Body::empty() } else { Body::from(stored.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    *response.headers_mut() = opts.answer_headers(stored, max_age, x_cache);
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
    let now = now_ms();
    let last_modified_ms = match http.last_modified {
        LastModifiedFrom::StoredAt => now,
        LastModifiedFrom::Field(field) => last_modified_from_body(&bytes, field).unwrap_or(now),
    };
    let headers =
        parts.headers.iter().filter(|(n, _)| !is_unstored_header(n)).map(|(n, v)| (n.clone(), v.clone())).collect();
    match StoredResponse::new(parts.status, headers, bytes, &etag_text, last_modified_ms) {
        Ok(stored) => Ok(Arc::new(stored)),
        Err(_) => unreachable!("a quoted hex string is a valid ETag"),
    }
}

/// Longest a refresh may hold its claim.
const REFRESH_HOLD: Duration = Duration::from_secs(10);

fn remaining_secs(times: &Times) -> u64 {
    times.fresh_until_ms.saturating_sub(now_ms()) / 1000
}

/// The runtime side of `#[cached]` on an axum handler.
///
/// A fresh hit in process memory is answered synchronously, when the call is made; only the
/// rest (a miss, a Redis read, a conditional refresh) builds the full future, boxed, so a hit
/// does not pay for moving a large future around.
#[doc(hidden)]
pub fn cached_handler<'a, R, F, const ALL_HEADERS: bool, const URI: bool>(
    call: fetch::Call<'a, KeyWriter>,
    request: HttpRequest<ALL_HEADERS, URI>,
    http: &'a HttpOpts,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Response> + 'a
where
    R: IntoResponse + 'a,
    F: Future<Output = R> + 'a,
{
    let fetch::Call { cache, mut key, namespace, tags, opts } = call;
    let request = request.0;
    // A disabled cache answers like a bypass: the handler runs, nothing is stored.
    let fast = if cache.is_disabled() || (request.method != Method::GET && request.method != Method::HEAD) {
        Err(None)
    } else {
        let directive = if http.honor_no_cache { client_directive(&request.headers) } else { ClientDirective::None };
        add_vary(&mut key, &request.headers, http.vary);
        let key = key.finish();
        match directive {
            ClientDirective::None => local_response(cache, key, &request, opts, http)
                .map_err(|(key, drawn_early)| Some((key, ClientDirective::None, drawn_early))),
            // The client asks for a fresh response: no local hit, no single-flight.
            directive => Err(Some((key, directive, false))),
        }
    };
    async move {
        match fast {
            Ok(response) => response,
            Err(None) => {
                let mut response = body.await.into_response();
                set_x_cache(&mut response, "BYPASS");
                response
            }
            Err(Some((key, directive, drawn_early))) => {
                let call = (directive, drawn_early);
                Box::pin(read_through(cache, key, call, namespace, tags, request, opts, http, body, spawner)).await
            }
        }
    }
}

/// A fresh hit in process memory, answered; or the key back, with whether a local entry was
/// drawn for an early refresh (see `fetch::fresh_local_hit`).
fn local_response(
    cache: &Cache,
    key: String,
    request: &RequestParts,
    opts: &CallOpts,
    http: &HttpOpts,
) -> Result<Response, (String, bool)> {
    match fetch::fresh_local_hit::<Arc<StoredResponse>>(cache, &key, opts) {
        Ok((Found::Value(stored), times)) => {
            cache.record_hit(&key);
            crate::key::recycle(key);
            Ok(respond(&stored, remaining_secs(&times), request, http, "HIT"))
        }
        Ok((Found::Negative, _)) => Err((key, false)),
        Err(drawn_early) => Err((key, drawn_early)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_through<R, F>(
    cache: &Cache,
    key: String,
    (directive, drawn_early): (ClientDirective, bool),
    namespace: &str,
    tags: &[String],
    request: RequestParts,
    opts: &CallOpts,
    http: &HttpOpts,
    body: F,
    spawner: Spawner<F>,
) -> Response
where
    R: IntoResponse,
    F: Future<Output = R>,
{
    let forced = !matches!(directive, ClientDirective::None);
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
        let freshness = fetch::drawn(opts, cache, &times, drawn_early);
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
    if let Some(held) = lock_token {
        held.release().await;
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
    request: &RequestParts,
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
    request: &RequestParts,
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
    request: &RequestParts,
    opts: &CallOpts,
    http: &HttpOpts,
    body: impl Future<Output = R>,
    lease: Option<(crate::store::Lease, Option<u64>)>,
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
        StoredResponse::new(
            StatusCode::OK,
            vec![(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            Bytes::from_static(b"{}"),
            "\"abc\"",
            1_700_000_000_000,
        )
        .unwrap()
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
            let request = RequestParts::new(&Method::GET, None, &headers, false);
            let answered = not_modified(&request, &stored());
            // The documented outcome: a 304 only for a list naming the stored ETag (or `*`), or,
            // without If-None-Match, for a date (the shortest HTTP-date has 24 characters); a
            // malformed header is ignored, i.e. the answer is the unconditional one (a 200).
            let could_match = match headers.get(header::IF_NONE_MATCH) {
                Some(v) => String::from_utf8_lossy(v.as_bytes()).contains(['*']) || String::from_utf8_lossy(v.as_bytes()).contains("abc"),
                None => headers.get(header::IF_MODIFIED_SINCE).is_some_and(|v| v.len() >= 24),
            };
            prop_assert!(!answered || could_match, "304 for If-None-Match {inm:?} / If-Modified-Since {ims:?}");
        }

        /// Malformed validators beside a matching one are ignored, never a 304; a list that names
        /// the stored ETag among junk it can parse is a 304.
        #[test]
        fn malformed_validators_answer_in_full(junk in "[ -~]{0,20}") {
            let answer = |inm: &str| {
                let mut headers = HeaderMap::new();
                let Ok(v) = HeaderValue::from_str(inm) else { return None };
                headers.insert(header::IF_NONE_MATCH, v);
                Some(not_modified(&RequestParts::new(&Method::GET, None, &headers, false), &stored()))
            };
            let unquoted = junk.replace(['"', '*', ','], "");
            // Not an entity-tag (unquoted): ignored.
            if !unquoted.trim().is_empty() {
                prop_assert_eq!(answer(&format!("{unquoted}abc")), Some(false));
            }
            // A quoted tag that is not ours: no match.
            prop_assert_eq!(answer(&format!("\"x{unquoted}\"")), Some(false));
            // Ours in a list of well-formed tags: a match.
            let tag: String = unquoted.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            prop_assert_eq!(answer(&format!("\"x{tag}\", \"abc\"")), Some(true));
            prop_assert_eq!(answer(&format!("W/\"abc\", \"x{tag}\"")), Some(true));
            // Ours beside a malformed tag (white space inside its quotes): the field is
            // malformed, so ignored.
            prop_assert_eq!(answer(&format!("\"x {tag}\", \"abc\"")), Some(false));
        }

        /// Stored responses read back from arbitrary bytes decode or are rejected: never a panic.
        #[test]
        fn response_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json);
        }

        /// Any stored response reads back as itself; any prefix of it, or it with bytes appended,
        /// is rejected.
        #[test]
        fn stored_responses_round_trip_exactly(
            status in 200u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,30}"), 0..5),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            last_modified_ms in any::<u64>(),
            extra in 1usize..8,
        ) {
            let headers: Vec<(HeaderName, HeaderValue)> = headers
                .iter()
                .filter(|(n, _)| n != "etag" && n != "last-modified" && n != "content-length")
                .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap()))
                .collect();
            let status = StatusCode::from_u16(status).unwrap();
            let original = Arc::new(StoredResponse::new(status, headers.clone(), Bytes::from(body.clone()), "\"e\"", last_modified_ms).unwrap());
            let bytes = <ResponseCodec as Codec<Arc<StoredResponse>>>::encode(&original, Format::Json).unwrap();
            let back = <ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes, Format::Json).unwrap();
            prop_assert_eq!(back.status, status);
            prop_assert_eq!(&back.body[..], &body[..]);
            prop_assert_eq!(back.last_modified_ms, last_modified_ms);
            prop_assert_eq!(&*back.etag_text, "\"e\"");
            prop_assert_eq!(&back.headers, &original.headers);
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(<ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&longer, Format::Json).is_err());
            prop_assert!(<ResponseCodec as Codec<Arc<StoredResponse>>>::decode(&bytes[..bytes.len() - 1], Format::Json).is_err());
        }
    }

    #[test]
    fn answers_are_rendered_per_second_per_options_and_per_status() {
        let stored = stored();
        let private = HttpOpts::new().stale_while_revalidate(30);
        let public = HttpOpts::new().public().s_maxage(120);
        let cc =
            |opts: &HttpOpts, age, status| opts.answer_headers(&stored, age, status)[header::CACHE_CONTROL].clone();
        assert_eq!(cc(&private, 60, "HIT"), "private, max-age=60, stale-while-revalidate=30");
        assert_eq!(cc(&private, 60, "HIT"), "private, max-age=60, stale-while-revalidate=30");
        assert_eq!(cc(&private, 59, "HIT"), "private, max-age=59, stale-while-revalidate=30");
        assert_eq!(cc(&public, 59, "HIT"), "public, max-age=59, s-maxage=120");
        assert_eq!(private.answer_headers(&stored, 59, "STALE")[X_CACHE], "STALE");
        assert_eq!(private.answer_headers(&stored, 59, "HIT")[header::CONTENT_LENGTH], "2");
        assert_eq!(HttpOpts::new().cache_control(0), "private, max-age=0");
        assert_eq!(HttpOpts::new().cache_control(u64::MAX), "private, max-age=18446744073709551615");
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
