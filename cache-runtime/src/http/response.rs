//! A stored response: what a handler's response keeps ([`StoredResponse`], `to_stored`), its
//! binary encoding ([`ResponseCodec`]), and the answer rebuilt from it (`respond`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use headers::{CacheControl, ETag, HeaderMapExt as _, LastModified};
use sha2::{Digest as _, Sha256};

use crate::codec::{Codec, Format};
use crate::error::CacheError;
use crate::time::now_ms;

use super::*;

/// Bodies larger than this are served but not stored.
pub(super) const MAX_STORED_BODY: u64 = 8 * 1024 * 1024;

/// A stored 2xx response.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(super) status: StatusCode,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: Bytes,
    /// Quoted strong ETag.
    pub(super) etag: ETag,
    pub(super) etag_text: Box<str>,
    pub(super) last_modified_ms: u64,
    /// Header values rendered once, when the response is stored or decoded, not per hit.
    pub(super) rendered: Rendered,
}

/// What a memoized answer's headers were made for (see `Label::memo_key`).
pub(super) type MemoKey = (&'static str, Option<(usize, usize, Status)>);

#[derive(Debug)]
pub(super) struct Rendered {
    pub(super) etag: HeaderValue,
    pub(super) last_modified: HeaderValue,
    /// The last complete header map of a 200 answer, for one (max-age, options, X-Cache):
    /// hits within the same second clone it and insert nothing.
    pub(super) answer: std::sync::Mutex<Option<(u64, HttpOpts, MemoKey, HeaderMap)>>,
}

impl StoredResponse {
    pub(super) fn new(
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
pub(super) fn httpdate_of(ms: u64) -> headers::HeaderValue {
    let mut values = Vec::with_capacity(1);
    headers::Header::encode(&LastModified::from(to_system_time(ms)), &mut values);
    values.pop().unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// Binary payload of a stored response:
/// `status u16 | last_modified_ms u64 | etag_len u8 | etag | n_headers u16 | (name_len u16 | name | value_len u32 | value)* | body_len u64 | body`.
/// The body length is checked, so a truncated entry is a miss, never a truncated response.
pub(crate) struct ResponseCodec;

pub(super) fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err("truncated stored response".to_owned());
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

pub(super) fn take_uint(bytes: &mut &[u8], width: usize) -> Result<u64, String> {
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

    fn etag(value: &Arc<StoredResponse>) -> Option<Box<str>> {
        Some(value.etag_text.clone())
    }

    fn encode_into(value: &Arc<StoredResponse>, _: Format, out: &mut Vec<u8>) -> Result<(), CacheError> {
        out.reserve(64 + value.body.len());
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
        Ok(())
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

/// Labels an answer the cache does not store (`X-Cache`), and gives it `Cache-Control: no-store`
/// unless its handler set a `Cache-Control` of its own: without one, a CDN or browser in front
/// would keep it by its own default (Fastly keeps a `404` for an hour), and still answer it once
/// the handler answers otherwise.
pub(super) fn label_unstored(response: &mut Response, x_cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Headers of a handler's response that are never stored or replayed.
pub(super) fn is_unstored_header(name: &HeaderName) -> bool {
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
pub(super) const LAST_HTTP_DATE_MS: u64 = 253_402_300_799_000;

/// An instant for an HTTP-date, clamped to the years it can name (a `last_modified` field far in
/// the future, or a corrupt stored instant, renders as the last such date, never a panic).
pub(super) fn to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ms.min(LAST_HTTP_DATE_MS) / 1000)
}

/// `Last-Modified` from a field of the JSON body: RFC 3339 text or Unix seconds.
pub(super) fn last_modified_from_body(body: &[u8], field: &str) -> Option<u64> {
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

/// `max_age`: the entry's remaining freshness in whole seconds (the full ttl on a miss).
pub(super) fn respond(
    stored: &StoredResponse,
    max_age: u64,
    request: &RequestParts,
    opts: &HttpOpts,
    label: Label<'_>,
) -> Response {
    if not_modified(request, stored) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        opts.add_headers(response.headers_mut(), stored, max_age, label);
        return response;
    }
    let body = if request.method == Method::HEAD { Body::empty() } else { Body::from(stored.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    *response.headers_mut() = opts.answer_headers(stored, max_age, label);
    response
}

/// Turns a handler's response into what is stored and how long it is fresh (`ttl`, unless
/// `expire_with` says otherwise), or gives it back when it must not be stored (not 2xx, sets a
/// cookie, `no-store`, `unless`, a zero `expire_with`, too large, or its body failed).
pub(super) async fn to_stored(
    response: Response,
    http: &HttpOpts,
    ttl: Duration,
) -> Result<(Arc<StoredResponse>, Duration), Response> {
    let never_store = response.headers().contains_key(header::SET_COOKIE)
        || response.headers().typed_get::<CacheControl>().is_some_and(|cc| cc.no_store());
    let small_enough = response.body().size_hint().upper().is_some_and(|n| n <= MAX_STORED_BODY);
    if !response.status().is_success() || never_store || !small_enough {
        return Err(response);
    }
    let Some(ttl) = http.policy.ttl_for(&response, ttl) else { return Err(response) };
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
        Ok(stored) => Ok((Arc::new(stored), ttl)),
        Err(_) => unreachable!("a quoted hex string is a valid ETag"),
    }
}
