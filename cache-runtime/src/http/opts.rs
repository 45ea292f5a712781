//! The options of a cached handler ([`HttpOpts`]) and the caching headers they render:
//! `Cache-Control`, `ETag`, `Last-Modified`, `Vary`, `CDN-Cache-Control`, `X-Cache`.

use axum::body::Bytes;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::policy::Policy;

/// Where `Last-Modified` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastModifiedFrom {
    StoredAt,
    /// A top-level field of the JSON body: RFC 3339 text or Unix seconds.
    Field(&'static str),
}

/// HTTP options of one handler, built in a `const` by the generated code.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOpts {
    pub(super) public: bool,
    pub(super) s_maxage: Option<u64>,
    pub(super) cdn_max_age: Option<u64>,
    pub(super) vary: &'static [&'static str],
    /// `vary` joined with `, ` (the `Vary` header), computed once.
    pub(super) vary_header: &'static str,
    pub(super) last_modified: LastModifiedFrom,
    pub(super) honor_no_cache: bool,
    /// Advertised in `Cache-Control` (RFC 5861).
    pub(super) stale_while_revalidate: Option<u64>,
    pub(super) stale_if_error: Option<u64>,
    /// `unless` / `expire_with`, over the handler's response before its body is read.
    pub(super) policy: Policy<Response>,
    /// `cdn_tags`: the entry's tags go out as `Surrogate-Key` and `Cache-Tag`.
    pub(super) cdn_tags: bool,
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
            policy: Policy::new(),
            cdn_tags: false,
        }
    }
    /// `cdn_tags`.
    pub const fn cdn_tags(mut self) -> Self {
        self.cdn_tags = true;
        self
    }
    /// These options with `expire_with` capped by `max` (when the policy has no cap).
    pub(crate) fn capped_by(mut self, max: Option<Duration>) -> Self {
        if let Some(max) = max {
            self.policy = self.policy.bounded_by(max);
        }
        self
    }

    /// `unless = …` / `expire_with = …` (over the response, before its body is read).
    pub const fn policy(mut self, policy: Policy<Response>) -> Self {
        self.policy = policy;
        self
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
    /// `stale` and `stale_if_error` as the call's options hold them: the macro evaluates each
    /// seconds option once, in the `CallOpts` (a bad value is then one error, not two).
    pub const fn stale_windows_of(mut self, opts: &crate::policy::CallOpts) -> Self {
        let (stale, stale_if_error) = opts.stale_windows();
        if let Some(window) = stale {
            self.stale_while_revalidate = Some(window.as_secs());
        }
        if let Some(window) = stale_if_error {
            self.stale_if_error = Some(window.as_secs());
        }
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

impl HttpOpts {
    /// `Cache-Control` for `remaining_secs` of freshness, written without `fmt` (it is on every
    /// hit).
    pub(super) fn cache_control(&self, remaining_secs: u64) -> HeaderValue {
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
    pub(super) fn answer_headers(&self, stored: &StoredResponse, max_age: u64, label: Label<'_>) -> HeaderMap {
        // `try_lock`: under contention, build rather than wait.
        let mut memo = stored.rendered.answer.try_lock().ok();
        if let Some(Some((age, opts, made_for, headers))) = memo.as_deref() {
            if *age == max_age && opts == self && *made_for == label.memo_key() {
                return headers.clone();
            }
        }
        let mut headers = HeaderMap::with_capacity(stored.headers.len() + 8);
        for (name, value) in &stored.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        self.add_headers(&mut headers, stored, max_age, label);
        if let Some(memo) = memo.as_deref_mut() {
            *memo = Some((max_age, *self, label.memo_key(), headers.clone()));
        }
        headers
    }

    /// Adds the caching headers shared by 200 and 304 answers.
    pub(super) fn add_headers(&self, headers: &mut HeaderMap, stored: &StoredResponse, max_age: u64, label: Label<'_>) {
        headers.reserve(8);
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
        headers.insert(X_CACHE, HeaderValue::from_static(label.x_cache));
        if let Some(value) = label.status.and_then(|(name, status)| status.render(name)) {
            headers.insert(CACHE_STATUS, value);
        }
    }
}

/// Appends `n` in decimal.
pub(super) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::key::decimal(n, &mut [0u8; 20]));
}

pub(super) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
pub(super) const CLOUDFLARE_CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cloudflare-cdn-cache-control");
