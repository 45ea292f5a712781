//! HTTP caching for axum handlers (RFC 9110 §13 conditional requests, RFC 9111 caching).
//!
//! `#[cached]` on a handler adds a hidden [`HttpRequest`] extractor (method, URI, headers)
//! and hands the handler's future to [`cached_handler`]:
//!
//! - only `GET` and `HEAD` are cached; other methods run the handler (`X-Cache: BYPASS`,
//!   nothing stored);
//! - only 2xx responses are stored (status, body, headers other than `Set-Cookie`,
//!   hop-by-hop and caching headers); a response with `Set-Cookie` or `Cache-Control: no-store`
//!   is never stored;
//! - every stored response carries a strong `ETag` (the first 128 bits of the SHA-256 of the
//!   body, 32 hex digits, quoted: the same on every replica
//!   and after restarts), `Cache-Control`, `Last-Modified`, `Vary` (when configured) and
//!   `X-Cache: HIT | MISS | BYPASS`;
//! - an answer that is not stored (not 2xx, `Set-Cookie`, `unless`, too large, another method,
//!   a disabled cache) carries `X-Cache` and `Cache-Control: no-store`, unless the handler set a
//!   `Cache-Control` of its own, so a CDN in front does not keep it by its own default (Fastly
//!   keeps a `404` for an hour) and go on answering it once the handler answers otherwise;
//! - `If-None-Match` (lists, `*`, weak comparison) answers `304 Not Modified`;
//!   `If-Modified-Since` is evaluated only when `If-None-Match` is absent; malformed
//!   conditional headers are ignored;
//! - a response is stored as a representation of its key (`prefix:{namespace:key}:h`): a
//!   service fn cached on the same key keeps its own value, and invalidating the key ends both;
//! - headers named in `vary` are hashed (SHA-256) into the stored key, so a response is only
//!   ever served to requests with the same values; invalidating the key ends every variant.

mod opts;
mod request;
mod response;
mod status;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::HeaderName;
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use crate::cache::Call;
use crate::entry::{Found, Served, Times};
use crate::key::KeyWriter;
use crate::read::{read, Detached, Forward, Reply, Settled, Spawner, Wants};
use crate::time::now_ms;

pub use opts::HttpOpts;
pub(crate) use opts::*;
pub use request::HttpRequest;
pub(crate) use request::*;
pub(crate) use response::*;
pub use status::CACHE_STATUS;
use status::{add_cdn_tags, Label, Status};

/// The cache status header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What is left of an entry's freshness, in whole seconds (its `max-age`).
fn remaining_secs(times: &Times) -> u64 {
    times.fresh_until_ms.saturating_sub(now_ms()) / 1000
}

/// The runtime side of `#[cached]` on an axum handler, and of `CacheLayer`: a cacheable
/// request (`GET`, `HEAD`) goes through the read-through with an [`HttpReply`]; any other
/// request, or a disabled cache, runs the handler (`X-Cache: BYPASS`).
#[doc(hidden)]
pub fn cached_handler<'a, R, F, const ALL_HEADERS: bool, const URI: bool>(
    call: Call<'a, KeyWriter>,
    request: HttpRequest<ALL_HEADERS, URI>,
    http: &'a HttpOpts,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Response> + 'a
where
    R: IntoResponse + 'static,
    F: Future<Output = R> + 'a,
{
    let Call { cache, key, namespace, tags, opts, site } = call;
    let request = request.0;
    let cacheable = !cache.is_disabled() && (request.method == Method::GET || request.method == Method::HEAD);
    let wants = if !cacheable {
        Wants::Bypass
    } else if http.honor_no_cache {
        client_directive(&request.headers)
    } else {
        Wants::Cached
    };
    // The response is one representation of the key (see `key.rs`): never the fn's value
    // stored under the same key, nor its single-flight.
    let mut key = key.finish();
    key.push_str(crate::key::RESPONSE);
    if cacheable {
        add_vary(&mut key, &request.headers, http.vary);
    }
    let call = Call { cache, key, namespace, tags, opts, site };
    let into_response = R::into_response as fn(R) -> Response;
    let name = &cache.inner.status_name;
    read(call, HttpReply { request, http, wants, into_response, name, tags, namespace }, body, spawner)
}

/// How a handler's response is stored and answered (see `read.rs`).
///
/// `into_response` is the handler's `IntoResponse` as a fn pointer, not a bound of this impl:
/// the read path's future must be `Send` for every lifetime in `R` (a handler may return
/// `&'static str`), which rustc cannot prove through an impl that has bounds.
pub(crate) struct HttpReply<'a, R> {
    request: RequestParts,
    http: &'a HttpOpts,
    wants: Wants,
    into_response: fn(R) -> Response,
    /// The cache's name in `Cache-Status`.
    name: &'a str,
    /// The entry's tags and namespace (`cdn_tags` sends them to the CDN).
    tags: &'a [String],
    namespace: &'a str,
}

impl<R> Reply for HttpReply<'_, R> {
    type Out = R;
    type Answer = Response;
    type Value = Arc<StoredResponse>;
    type Codec = ResponseCodec;

    fn wants(&self) -> Wants {
        self.wants
    }

    fn answer(&self, found: Found<Arc<StoredResponse>>, served: Served) -> Option<Response> {
        let Found::Value(stored) = found else { return None };
        let (max_age, x_cache, status) = match served {
            Served::Fresh(times) => {
                let max_age = remaining_secs(&times);
                (max_age, "HIT", Status::Hit { ttl: max_age })
            }
            Served::Joined(ttl) => {
                (ttl.as_secs(), "HIT", Status::Collapsed { ttl: ttl.as_secs(), origin: stored.status })
            }
            Served::Stale => (0, "STALE", Status::Stale),
        };
        let label = Label { x_cache, status: Some((self.name, status)) };
        let mut response = respond(&stored, max_age, &self.request, self.http, label);
        self.add_tags(&mut response);
        Some(response)
    }

    async fn settle(&self, out: R, ttl: Duration) -> Settled<Arc<StoredResponse>, Response> {
        // A response the client asked to be fresh is labelled BYPASS.
        let x_cache = if self.wants == Wants::Cached { "MISS" } else { "BYPASS" };
        match to_stored((self.into_response)(out), self.http, ttl).await {
            Ok((stored, ttl)) => {
                let mut answer = respond(&stored, ttl.as_secs(), &self.request, self.http, Label::x_cache(x_cache));
                // The origin's status, also when the answer is a `304` to a conditional request.
                answer.extensions_mut().insert(OriginStatus(stored.status));
                Settled { shared: Some(Found::Value(stored)), ttl: Some(ttl), failed: false, answer }
            }
            Err(mut response) => {
                label_unstored(&mut response, x_cache);
                Settled { shared: None, ttl: None, failed: response.status().is_server_error(), answer: response }
            }
        }
    }

    fn bypass(&self, out: R) -> Response {
        let mut response = (self.into_response)(out);
        label_unstored(&mut response, "BYPASS");
        let cacheable = self.request.method == Method::GET || self.request.method == Method::HEAD;
        let origin = response.status();
        self.mark(
            &mut response,
            Status::Forward { why: if cacheable { "bypass" } else { "method" }, origin, stored: false },
        );
        response
    }

    fn forwarded(&self, answer: &mut Response, why: Forward, stored: bool) {
        let why = match why {
            Forward::UriMiss => "uri-miss",
            Forward::Miss => "miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
        };
        let origin = answer.extensions_mut().remove::<OriginStatus>().map_or(answer.status(), |s| s.0);
        self.mark(answer, Status::Forward { why, origin, stored });
    }

    type Detach = (HttpOpts, fn(R) -> Response);
    fn detach(&self) -> Self::Detach {
        (*self.http, self.into_response)
    }
    fn detached((http, into_response): Self::Detach, out: R, ttl: Duration) -> Detached<Arc<StoredResponse>> {
        let response = into_response(out);
        Box::pin(
            async move { to_stored(response, &http, ttl).await.ok().map(|(stored, ttl)| (Found::Value(stored), ttl)) },
        )
    }
}

/// The handler's own status, kept on an answer that may be a `304` (for `fwd-status`).
#[derive(Clone, Copy)]
struct OriginStatus(axum::http::StatusCode);

impl<R> HttpReply<'_, R> {
    /// Adds `Cache-Status` (RFC 9211) and, with `cdn_tags`, the entry's tags for the CDN.
    fn mark(&self, response: &mut Response, status: Status) {
        if let Some(value) = status.render(self.name) {
            response.headers_mut().insert(CACHE_STATUS, value);
        }
        self.add_tags(response);
    }

    /// With `cdn_tags`, the entry's tags and namespace for the CDN.
    fn add_tags(&self, response: &mut Response) {
        if self.http.cdn_tags && response.status().is_success() {
            add_cdn_tags(response.headers_mut(), self.tags, self.namespace);
        }
    }
}
