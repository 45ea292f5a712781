//! Invalidation that reaches the CDN: a [`Purger`] is told what every applied invalidation
//! touched (the CDN tags of its tag or namespace, and the URLs of its key), after the cache's
//! own stores have forgotten it (so what the CDN fetches next is the new answer).
//!
//! Purges go through a queue of their own, sent by one task per cache: what is queued while a
//! purge is in flight goes out together with the next (at most 256 tags and 30 URLs a call).
//! One that fails is retried with backoff (100 ms doubling to 10 s), each part for
//! [`CacheBuilder::purge_retry_for`] (5 min by default) from when it was queued, counted
//! ([`Stats::purges`], [`Stats::purge_failures`], [`Stats::purges_dropped`]) and logged; it never
//! fails the write that caused it, and the write waits for it at most
//! [`CacheBuilder::purge_wait`] (1 s by default) before it returns. A purger that panics loses
//! nothing: what it was sending goes back to the queue and a new task sends it.
//!
//! A purge the CDN refuses ([`PurgeError::refused`]: a `4xx` other than `408` and `429`, such as
//! a `400` for a tag it does not accept) would be refused again: it is not retried, and it holds
//! back nothing merged with it. A refused call of several invalidations is split, each sent
//! alone at once; one refused alone is given up (counted in [`Stats::purges_dropped`], logged as
//! an error), the others are purged (or, failing otherwise, retried as above). A redirect is
//! never followed (it would send the API token to another address): it is a failure, retried.
//!
//! [`Fastly`] and [`Cloudflare`] (feature `cdn`) speak those CDNs' documented purge APIs; any
//! other CDN is one `impl Purger` away:
//!
//! ```
//! use cache_runtime::cdn::{Purge, PurgeError, PurgeFuture, Purger};
//!
//! /// Logs what it would purge.
//! struct Log;
//!
//! impl Purger for Log {
//!     fn purge<'a>(&'a self, purge: &'a Purge) -> PurgeFuture<'a> {
//!         Box::pin(async move {
//!             println!("purge tags {:?}, urls {:?}", purge.tags, purge.urls);
//!             Ok::<(), PurgeError>(())
//!         })
//!     }
//! }
//!
//! let cache = cache_runtime::Cache::builder().purger(Log).build().unwrap();
//! # drop(cache);
//! ```
//!
//! [`CacheBuilder::purge_retry_for`]: crate::CacheBuilder::purge_retry_for
//! [`CacheBuilder::purge_wait`]: crate::CacheBuilder::purge_wait
//! [`Stats::purges`]: crate::Stats::purges
//! [`Stats::purge_failures`]: crate::Stats::purge_failures
//! [`Stats::purges_dropped`]: crate::Stats::purges_dropped

#[cfg(feature = "cdn")]
mod providers;
mod queue;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

#[cfg(feature = "cdn")]
pub use providers::{Cloudflare, Fastly};
pub(crate) use queue::{PurgeQueue, PurgeSettings};

/// What one purge asks the CDN to drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Purge {
    /// CDN tags (Fastly's surrogate keys, Cloudflare's cache tags), exactly as `cdn_tags`
    /// handlers send them: an invalidated tag `t` is `t`, a cleared namespace `ns` is `ns:ns`
    /// (both escaped by [`cdn_tag`]).
    pub tags: Vec<String>,
    /// Absolute URLs, from the invalidated keys through [`CacheBuilder::purge_urls`].
    ///
    /// [`CacheBuilder::purge_urls`]: crate::CacheBuilder::purge_urls
    pub urls: Vec<String>,
}

impl Purge {
    /// A purge of these tags and URLs.
    ///
    /// ```
    /// let purge = cache_runtime::cdn::Purge::new(["posts"], ["https://example.com/posts"]);
    /// assert_eq!(purge.tags, ["posts"]);
    /// ```
    pub fn new<T, U>(tags: impl IntoIterator<Item = T>, urls: impl IntoIterator<Item = U>) -> Self
    where
        T: Into<String>,
        U: Into<String>,
    {
        Purge { tags: tags.into_iter().map(Into::into).collect(), urls: urls.into_iter().map(Into::into).collect() }
    }

    /// Nothing to purge.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.urls.is_empty()
    }

    /// Adds `other`'s tags and URLs that this purge does not hold yet.
    pub(crate) fn merge(&mut self, other: Purge) {
        for tag in other.tags {
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        for url in other.urls {
            if !self.urls.contains(&url) {
                self.urls.push(url);
            }
        }
    }
}

/// What [`Purger::purge`] returns.
pub type PurgeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PurgeError>> + Send + 'a>>;

/// Tells a CDN to drop what an invalidation touched. Called from the cache's purge queue, one
/// call at a time; an `Err` is retried with backoff, unless it is [`PurgeError::refused`] (see
/// the [module](self)).
pub trait Purger: Send + Sync + 'static {
    /// Purges `purge`'s tags and URLs; `Ok` once the CDN accepted every one.
    fn purge<'a>(&'a self, purge: &'a Purge) -> PurgeFuture<'a>;
}

/// A purge the CDN did not accept: a failure, retried, or a refusal, which is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeError {
    why: String,
    refused: bool,
}

impl PurgeError {
    /// A failure saying `why` (the CDN down, unreachable, slow, rate-limiting, redirecting): the
    /// purge is retried.
    ///
    /// ```
    /// let err = cache_runtime::cdn::PurgeError::new("503 from the CDN");
    /// assert_eq!(err.to_string(), "CDN purge failed: 503 from the CDN");
    /// assert!(!err.is_refused());
    /// ```
    pub fn new(why: impl Into<String>) -> Self {
        PurgeError { why: why.into(), refused: false }
    }

    /// The CDN refused this purge, saying `why` (a `4xx` other than `408` and `429`: a tag or URL
    /// it does not accept, a token it does not know): sent again it would be refused again. The
    /// queue sends each invalidation of a refused call alone, and gives up one refused alone.
    ///
    /// ```
    /// let err = cache_runtime::cdn::PurgeError::refused("400 Bad Request: invalid tag");
    /// assert_eq!(err.to_string(), "CDN purge refused: 400 Bad Request: invalid tag");
    /// assert!(err.is_refused());
    /// ```
    pub fn refused(why: impl Into<String>) -> Self {
        PurgeError { why: why.into(), refused: true }
    }

    /// Made by [`refused`](Self::refused): retrying will not help.
    pub fn is_refused(&self) -> bool {
        self.refused
    }
}

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.refused { "refused" } else { "failed" };
        write!(f, "CDN purge {what}: {}", self.why)
    }
}

impl std::error::Error for PurgeError {}

/// A tag as it goes to the CDN (`Surrogate-Key`, `Cache-Tag`, and purges): bytes outside
/// visible ASCII, and the separators `,` and `"` (and `%`, the escape itself), percent-escaped,
/// so a tag can neither split into two nor end a header.
///
/// ```
/// assert_eq!(cache_runtime::cdn::cdn_tag("post:a b,c"), "post:a%20b%2Cc");
/// ```
pub fn cdn_tag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    for &b in tag.as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'%') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// The CDN tag of a namespace (already escaped as a key segment): `ns:<namespace>`.
pub(crate) fn namespace_tag(escaped_namespace: &str) -> String {
    cdn_tag(&format!("ns:{escaped_namespace}"))
}
