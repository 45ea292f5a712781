//! What a cached response depends on in a request: the hidden extractor ([`HttpRequest`]),
//! the `vary` segments of the key, the client's `Cache-Control`, conditional requests (304).

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::Method;
use headers::{CacheControl, HeaderMapExt as _, IfModifiedSince, IfNoneMatch};
use sha2::{Digest as _, Sha256};

use crate::key::{escape_into, KeyWriter};
use crate::read::Wants;

use super::*;

/// What a cached handler needs from the request. Added by `#[cached]` as a hidden first
/// extractor; it never rejects a request. With `ALL_HEADERS = false` (a handler without `vary`
/// or `honor_no_cache`) only the conditional headers are kept: a hit copies no header map;
/// with `URI = false` (a handler with a `key`) the URI is not kept either.
#[doc(hidden)]
#[derive(Debug)]
pub struct HttpRequest<const ALL_HEADERS: bool = true, const URI: bool = true>(pub(super) RequestParts);

/// The parts of a request a cached response depends on.
#[derive(Debug)]
pub(super) struct RequestParts {
    pub(super) method: Method,
    /// For the default key only. A clone shares the request's bytes (no copy).
    pub(super) uri: Option<axum::http::Uri>,
    pub(super) if_none_match: Vec<HeaderValue>,
    pub(super) if_modified_since: Vec<HeaderValue>,
    /// Every header (for `vary` and `honor_no_cache`); empty unless asked for.
    pub(super) headers: HeaderMap,
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
    pub(super) fn new(method: &Method, uri: Option<&axum::http::Uri>, headers: &HeaderMap, all_headers: bool) -> Self {
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

/// Appends one `.<name>=<sha256 of its values>` segment per `vary` header to a response's
/// stored key, so requests that differ in any of them never share an entry.
pub(super) fn add_vary(key: &mut String, headers: &HeaderMap, vary: &[&str]) {
    for name in vary {
        let mut hasher = Sha256::new();
        let mut count = 0u32;
        for value in headers.get_all(*name) {
            hasher.update(value.as_bytes());
            hasher.update([0u8]);
            count += 1;
        }
        hasher.update(count.to_le_bytes());
        key.push('.');
        escape_into(key, name);
        key.push('=');
        key.push_str(&hex(&hasher.finalize()[..16]));
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// Whether an `If-None-Match` value is a well-formed list (RFC 9110 §8.8.3): `*`, or entity-tags
/// (`W/`? `"` etagc* `"`, etagc = `!` / `#`–`~` / obs-text) separated by commas and optional
/// white space. Anything else makes the header malformed, hence ignored (and never reaches a
/// parser that asserts on it: `headers` debug-asserts on a space inside a tag).
pub(super) fn well_formed_entity_tags(value: &[u8]) -> bool {
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

/// RFC 9110 §13.2.2: `If-None-Match` first; `If-Modified-Since` only without it.
/// Malformed values are ignored (the request is answered in full).
pub(super) fn not_modified(request: &RequestParts, stored: &StoredResponse) -> bool {
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

/// What the client's own `Cache-Control` asks for, when the handler honours it.
pub(super) fn client_directive(headers: &HeaderMap) -> Wants {
    match headers.typed_try_get::<CacheControl>() {
        Ok(Some(cc)) if cc.no_store() => Wants::Uncached,
        Ok(Some(cc)) if cc.no_cache() => Wants::Refreshed,
        _ => Wants::Cached,
    }
}
