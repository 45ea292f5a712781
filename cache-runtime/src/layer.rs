//! [`CacheLayer`]: the HTTP caching of `#[cached]` handlers, as tower middleware for a whole
//! router or route. It runs the very same code path as the macro (`cached_handler`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;

use crate::cache::{Cache, Call, DEFAULT_NAMESPACE};
use crate::http::{cached_handler, HttpOpts, HttpRequest};
use crate::policy::CallOpts;
use crate::read::Spawner;

/// Caches the GET/HEAD responses of the services it wraps, keyed by path and query, with the
/// same HTTP semantics as `#[cached]` on a handler (ETag, 304, Cache-Control, Vary, X-Cache).
///
/// ```
/// use axum::{routing::get, Router};
/// use cache_runtime::{Cache, CacheLayer};
///
/// let app: Router = Router::new()
///     .route("/posts", get(|| async { "the posts" }))
///     .layer(CacheLayer::new(Cache::memory()).expire(60).public().s_maxage(120));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a layer does nothing until it is applied with `.layer(...)`"]
pub struct CacheLayer {
    cache: Cache,
    /// Escaped.
    namespace: String,
    opts: CallOpts,
    http: HttpOpts,
    /// As given (as `Cache::invalidate_tag` takes them).
    tags: std::sync::Arc<[String]>,
    /// Its row in `function_stats` (`layer:<namespace>`), made when it first wraps a service
    /// and shared by every route it wraps.
    site: std::sync::Arc<std::sync::OnceLock<&'static crate::functions::Function>>,
}

impl CacheLayer {
    /// Caches into `cache`, in the default namespace, for the cache's default ttl, `private`.
    pub fn new(cache: Cache) -> Self {
        CacheLayer {
            cache,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            opts: CallOpts::new(),
            http: HttpOpts::new(),
            tags: std::sync::Arc::new([]),
            site: std::sync::Arc::default(),
        }
    }

    /// Seconds a response stays fresh (`expire`).
    pub fn expire(mut self, secs: u64) -> Self {
        self.opts = self.opts.expire(Duration::from_secs(secs));
        self
    }

    /// The namespace of the entries (`Cache::clear_namespace` clears them).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace.clear();
        crate::key::escape_into(&mut self.namespace, namespace);
        self.site = std::sync::Arc::default();
        self
    }

    /// `Cache-Control: public`.
    pub fn public(mut self) -> Self {
        self.http = self.http.public();
        self
    }

    /// `s-maxage` (with `public`).
    pub fn s_maxage(mut self, secs: u64) -> Self {
        self.http = self.http.s_maxage(secs);
        self
    }

    /// `CDN-Cache-Control` and `Cloudflare-CDN-Cache-Control: max-age=…`.
    pub fn cdn_max_age(mut self, secs: u64) -> Self {
        self.http = self.http.cdn_max_age(secs);
        self
    }

    /// Request headers hashed into the key and listed in `Vary` (lower-case names).
    pub fn vary(mut self, headers: &'static [&'static str]) -> Self {
        // Joined once per layer (a layer is built at start-up), not per response.
        let joined: &'static str = Box::leak(headers.join(", ").into_boxed_str());
        self.http = self.http.vary(headers, joined);
        self
    }

    /// Serve a stale response for `secs` after expiry while one refresh replaces it.
    pub fn stale(mut self, secs: u64) -> Self {
        self.opts = self.opts.stale(Duration::from_secs(secs));
        self.http = self.http.stale_while_revalidate(secs);
        self
    }

    /// Serve a stale response for up to `secs` after expiry when the service answers 5xx.
    pub fn stale_if_error(mut self, secs: u64) -> Self {
        self.opts = self.opts.stale_if_error(Duration::from_secs(secs));
        self.http = self.http.stale_if_error(secs);
        self
    }

    /// Which responses are stored and for how long: a [`Policy`](crate::Policy) over the
    /// response, seen before its body is read (`unless`, `expire_with`; `expire` caps the
    /// lifetime `expire_with` gives).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::response::Response;
    /// use cache_runtime::{Cache, CacheLayer, Policy};
    ///
    /// let drafts_stay_out = Policy::new()
    ///     .unless(|r: &Response| r.headers().contains_key("x-draft"))
    ///     .expire_with(|r: &Response| {
    ///         let secs = r.headers().get("x-valid-for").and_then(|v| v.to_str().ok()?.parse().ok());
    ///         Duration::from_secs(secs.unwrap_or(60))
    ///     });
    /// let layer = CacheLayer::new(Cache::memory()).expire(600).policy(drafts_stay_out);
    /// # drop(layer);
    /// ```
    pub fn policy(mut self, policy: crate::Policy<Response>) -> Self {
        self.http = self.http.policy(policy);
        self
    }

    /// Tags of every entry this layer stores (`Cache::invalidate_tag` drops them; with
    /// [`cdn_tags`](Self::cdn_tags) they also go to the CDN).
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.tags = tags.into_iter().map(|t| t.as_ref().to_owned()).collect();
        self
    }

    /// The entries' tags go out as `Surrogate-Key` (space-separated) and `Cache-Tag`
    /// (comma-separated), for a CDN to purge by.
    ///
    /// ```
    /// let layer = cache_runtime::CacheLayer::new(cache_runtime::Cache::memory()).tags(["posts"]).cdn_tags();
    /// # drop(layer);
    /// ```
    pub fn cdn_tags(mut self) -> Self {
        self.http = self.http.cdn_tags();
        self
    }

    /// One request per key across replicas computes a missing response.
    pub fn lock(mut self, hold_secs: u64) -> Self {
        self.opts = self.opts.lock(Duration::from_secs(hold_secs));
        self
    }
}

impl<S> tower::Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    /// Settles what every request of the service shares, once: `expire` caps `expire_with`
    /// (whichever was set first), and the service's row in `function_stats`.
    fn layer(&self, inner: S) -> Self::Service {
        let mut layer = self.clone();
        layer.http = layer.http.capped_by(layer.opts.expire_bound());
        let site = *self.site.get_or_init(|| crate::functions::Function::leaked(format!("layer:{}", self.namespace)));
        CacheService { inner, layer, site }
    }
}

/// The service [`CacheLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    layer: CacheLayer,
    /// Its row in `function_stats` (`layer:<namespace>`).
    site: &'static crate::functions::Function,
}

impl<S> tower::Service<Request> for CacheService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let meta = HttpRequest::of(&request);
        // The service that was polled ready handles this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (layer, site) = (self.layer.clone(), self.site);
        Box::pin(async move {
            let mut key = layer.cache.key_writer(&layer.namespace, 64);
            key.lit("layer:");
            meta.key_uri(&mut key);
            let body = async move {
                match inner.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            };
            let call = Call {
                cache: &layer.cache,
                key,
                namespace: &layer.namespace,
                tags: &layer.tags,
                opts: &layer.opts,
                site: Some(site),
            };
            let response = cached_handler(call, meta, &layer.http, body, Spawner::background()).await;
            Ok(response)
        })
    }
}

/// Binds a cache to a router: every request the wrapped services serve runs in
/// [`scope`](crate::scope)`(cache, …)`, so each `#[cached]` and `#[invalidates]` fn without a
/// `cache` option that a handler calls uses `cache` instead of the global one. `scope` alone
/// covers the task it wraps; `axum::serve` runs each connection in a task of its own, which
/// this layer reaches. Two tests that each serve the app with their own cache do not see each
/// other's entries.
///
/// ```
/// use axum::{routing::get, Router};
/// use cache_runtime::{cached, Cache, ScopeLayer};
///
/// #[cached(expire = 60, key = "greeting")]
/// async fn greeting() -> String { "hello".to_owned() }
///
/// let cache = Cache::memory();
/// let app: Router = Router::new()
///     .route("/", get(|| async { greeting().await }))
///     .layer(ScopeLayer::new(cache.clone()));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a layer does nothing until it is applied with `.layer(...)`"]
pub struct ScopeLayer {
    cache: Cache,
}

impl ScopeLayer {
    /// The layer binding `cache`.
    pub fn new(cache: Cache) -> Self {
        ScopeLayer { cache }
    }
}

impl<S> tower::Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScopeService { inner, cache: self.cache.clone() }
    }
}

/// The service [`ScopeLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct ScopeService<S> {
    inner: S,
    cache: Cache,
}

impl<S, B> tower::Service<axum::http::Request<B>> for ScopeService<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        // The handler's future is made here, but it runs (and its cached calls read the scope)
        // only when polled inside the scope.
        Box::pin(crate::scope(self.cache.clone(), self.inner.call(request)))
    }
}
