//! `Cache-Status` (RFC 9211) on every response of a cached handler, and the entry's tags for a
//! CDN (`Surrogate-Key`, `Cache-Tag`) with `cdn_tags`.

use axum::body::Bytes;
use axum::http::header::{HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;

use super::push_decimal;
use crate::cdn::{cdn_tag, namespace_tag};

/// The RFC 9211 header.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Fastly's (and others') purge tags: space-separated.
pub(super) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// Cloudflare's purge tags: comma-separated.
pub(super) const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// What `Cache-Status` says of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Answered from the cache; `ttl`: freshness left, in seconds.
    Hit { ttl: u64 },
    /// Answered from the cache past its freshness (`stale`, `stale_if_error`).
    Stale,
    /// Answered with what another request for the key just computed (single-flight).
    Collapsed { ttl: u64, origin: StatusCode },
    /// The handler ran: why (`uri-miss`, `miss`, `stale`, `request`, `method`, `bypass`), what
    /// it answered, and whether that was stored.
    Forward { why: &'static str, origin: StatusCode, stored: bool },
}

impl Status {
    /// `name; hit; ttl=N`, `name; fwd=uri-miss; fwd-status=200; stored`, …
    pub(super) fn render(self, name: &str) -> Option<HeaderValue> {
        let mut out = Vec::with_capacity(name.len() + 48);
        out.extend_from_slice(name.as_bytes());
        match self {
            Status::Hit { ttl } => {
                out.extend_from_slice(b"; hit; ttl=");
                push_decimal(&mut out, ttl);
            }
            Status::Stale => out.extend_from_slice(b"; hit; ttl=0; detail=stale"),
            Status::Collapsed { ttl, origin } => {
                out.extend_from_slice(b"; fwd=miss; fwd-status=");
                push_decimal(&mut out, u64::from(origin.as_u16()));
                out.extend_from_slice(b"; collapsed; ttl=");
                push_decimal(&mut out, ttl);
            }
            Status::Forward { why, origin, stored } => {
                out.extend_from_slice(b"; fwd=");
                out.extend_from_slice(why.as_bytes());
                out.extend_from_slice(b"; fwd-status=");
                push_decimal(&mut out, u64::from(origin.as_u16()));
                if stored {
                    out.extend_from_slice(b"; stored");
                }
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }
}

/// What a cached answer says of itself: `X-Cache`, and `Cache-Status` when known (a miss adds
/// it once its fill is done).
#[derive(Debug, Clone, Copy)]
pub(super) struct Label<'a> {
    pub(super) x_cache: &'static str,
    /// The cache's name and the status.
    pub(super) status: Option<(&'a str, Status)>,
}

impl<'a> Label<'a> {
    /// `X-Cache` only.
    pub(super) const fn x_cache(x_cache: &'static str) -> Self {
        Label { x_cache, status: None }
    }

    /// What a memoized header map was made for (the name by address: it is the cache's own).
    pub(super) fn memo_key(&self) -> (&'static str, Option<(usize, usize, Status)>) {
        (self.x_cache, self.status.map(|(name, status)| (name.as_ptr() as usize, name.len(), status)))
    }
}

/// `Surrogate-Key: a b ns:n` and `Cache-Tag: a,b,ns:n`: the entry's tags and its namespace's
/// tag, each escaped by [`cdn_tag`] (a tag can neither split into two nor end the header), as
/// a purge names them. `namespace` is a call's: already escaped as a key segment, as the one a
/// namespace purge starts from.
pub(super) fn add_cdn_tags(headers: &mut HeaderMap, tags: &[String], namespace: &str) {
    let all: Vec<String> = tags.iter().map(|t| cdn_tag(t)).chain(std::iter::once(namespace_tag(namespace))).collect();
    if let (Ok(spaced), Ok(commas)) = (
        HeaderValue::from_maybe_shared(Bytes::from(all.join(" "))),
        HeaderValue::from_maybe_shared(Bytes::from(all.join(","))),
    ) {
        headers.insert(SURROGATE_KEY, spaced);
        headers.insert(CACHE_TAG, commas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_cannot_split_or_end_the_header() {
        let mut headers = HeaderMap::new();
        let tags = ["posts".to_owned(), "a,b c\"d%\r\nx-evil: 1".to_owned()];
        add_cdn_tags(&mut headers, &tags, "a%20b");
        assert_eq!(headers[SURROGATE_KEY], "posts a%2Cb%20c%22d%25%0D%0Ax-evil:%201 ns:a%2520b");
        assert_eq!(headers[CACHE_TAG], "posts,a%2Cb%20c%22d%25%0D%0Ax-evil:%201,ns:a%2520b");
    }

    #[test]
    fn statuses_render_as_rfc_9211_items() {
        let text = |s: Status| s.render("api").unwrap().to_str().unwrap().to_owned();
        assert_eq!(text(Status::Hit { ttl: 42 }), "api; hit; ttl=42");
        assert_eq!(
            text(Status::Forward { why: "uri-miss", origin: StatusCode::OK, stored: true }),
            "api; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            text(Status::Collapsed { ttl: 9, origin: StatusCode::OK }),
            "api; fwd=miss; fwd-status=200; collapsed; ttl=9"
        );
    }
}
