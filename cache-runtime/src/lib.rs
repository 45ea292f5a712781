//! Caching for async Rust functions and axum handlers: one attribute, process memory or
//! Redis, correct invalidation.
//!
//! ```
//! use cache_runtime::cached;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { id: u64, name: String }
//!
//! #[cached(expire = 60, key = "user:<id>")]
//! async fn get_user(id: u64) -> Option<User> {
//!     Some(User { id, name: format!("user {id}") }) // a database call, in real code
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // No configuration: the global cache lives in process memory.
//! let first = get_user(7).await;   // runs the body
//! let second = get_user(7).await;  // served from the cache
//! assert_eq!(first.unwrap().name, second.unwrap().name);
//! # }
//! ```
//!
//! To use Redis, build a [`Cache`] and install it with [`init`] at start-up:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = cache_runtime::Cache::builder().redis("redis://127.0.0.1:6379").prefix("myapp").build()?;
//! cache_runtime::init(cache)?;
//! # Ok(()) }
//! # #[cfg(not(feature = "redis"))] fn main() {}
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | on | Redis and Redis Cluster ([`CacheBuilder::redis`], `redis_cluster`), the L1 in front of Redis, cross-replica `lock` |
//! | `axum` | on | `#[cached]` on axum handlers (ETag, 304, `Cache-Control`, `Vary`), [`CacheLayer`] |
//! | `metrics` | off | counters and histograms through the `metrics` facade |
//! | `msgpack` | off | MessagePack payloads in Redis |
//! | `cdn` | off | the ready CDN purgers `cdn::Fastly` and `cdn::Cloudflare` (the [`cdn::Purger`] interface needs no feature) |
//! | `test-util` | off | throw-away `redis-server` processes for tests (implies `redis`) |
//!
//! A service that caches its own functions in process memory needs neither `redis` nor `axum`:
//! `cache-runtime = { version = "0.1", default-features = false }` compiles neither (the README
//! gives the build times). Without `axum`, `#[cached]` on a handler is a compile error that
//! names the feature.
#![deny(missing_docs)]

#[cfg(feature = "axum")]
pub mod admin;
mod api;
mod batch;
mod builder;
mod cache;
mod capture;
pub mod cdn;
mod claims;
mod codec;
#[cfg(feature = "redis")]
mod coherence;
mod engine;
mod entry;
mod envelope;
mod error;
mod flight;
mod form;
mod functions;
#[cfg(feature = "axum")]
mod http;
mod invalidate;
pub mod key;
#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "redis")]
mod lock;
mod policy;
mod read;
mod returns;
mod secs;
mod store;
mod sync;
mod time;

#[cfg(feature = "test-util")]
pub mod test_util;

/// Every pattern of the FastAPI caching cheat sheet with this toolkit (docs/COOKBOOK.md; its
/// examples are doctests).
#[cfg(feature = "axum")]
#[doc = include_str!("../../docs/COOKBOOK.md")]
pub mod cookbook {}

use std::sync::OnceLock;

pub use api::{KeysPage, Namespace};
pub use builder::CacheBuilder;
#[cfg(feature = "redis")]
pub use cache::DEFAULT_L1_MAX_BYTES;
pub use cache::{Cache, Stats, DEFAULT_MAX_BYTES, DEFAULT_NAMESPACE};
pub use capture::{key_of, CallKey};
pub use codec::Format;
pub use entry::{EntryInfo, Tier};
pub use error::{AlreadyInitialized, CacheError};
pub use functions::{function_stats, FunctionStats};
#[cfg(feature = "axum")]
pub use http::{CACHE_STATUS, X_CACHE};
#[cfg(feature = "axum")]
pub use layer::{CacheLayer, CacheService, ScopeLayer, ScopeService};
pub use policy::Policy;

#[doc = include_str!("../../docs/CACHED.md")]
pub use cache_macros::cached;

#[doc = include_str!("../../docs/INVALIDATES.md")]
pub use cache_macros::invalidates;

/// A value that can be stored in the cache: serializable, deserializable, cloneable and
/// shareable between threads. Implemented for every type that is.
///
/// ```
/// fn assert_cacheable<T: cache_runtime::Cacheable>() {}
/// assert_cacheable::<Vec<String>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in the cache",
    label = "this type is cached by `#[cached]`",
    note = "a cached value must implement serde's `Serialize` and `DeserializeOwned`, and `Clone + Send + Sync + 'static`"
)]
pub trait Cacheable: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> Cacheable for T where T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {}

static GLOBAL: OnceLock<Cache> = OnceLock::new();

/// Installs `cache` as the global cache used by `#[cached]` functions that have no `cache`
/// option. Call it once at start-up, before the first cached call; without it the global cache
/// is an in-memory [`Cache::memory`].
///
/// ```
/// cache_runtime::init(cache_runtime::Cache::memory()).unwrap();
/// assert!(cache_runtime::init(cache_runtime::Cache::memory()).is_err()); // only once
/// ```
pub fn init(cache: Cache) -> Result<(), AlreadyInitialized> {
    GLOBAL.set(cache).map_err(|_| AlreadyInitialized)
}

/// The global cache: the one given to [`init`], or an in-memory cache if `init` was not called.
///
/// ```
/// let cache = cache_runtime::global();
/// assert!(!cache.is_redis());
/// ```
pub fn global() -> &'static Cache {
    GLOBAL.get_or_init(Cache::memory)
}

tokio::task_local! {
    static SCOPED: Cache;
}

/// Runs `fut` with `cache` as the cache of every `#[cached]` and `#[invalidates]` fn without a
/// `cache` option that it calls (and of [`current`]), instead of the process-wide [`global`]
/// cache: each test (or task) gets its own entries, and the global one, which cannot be reset,
/// is left alone. Tasks spawned inside do not inherit it (as with any Tokio task-local).
///
/// ```
/// use cache_runtime::{cached, Cache};
///
/// #[cached(key = "answer")]
/// async fn answer() -> u32 { 42 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mine = Cache::memory();
/// cache_runtime::scope(mine.clone(), async {
///     assert_eq!(answer().await, 42);
/// })
/// .await;
/// assert_eq!(mine.stats().misses, 1); // stored in `mine`, not in the global cache
/// assert_eq!(cache_runtime::global().stats().misses, 0);
/// # }
/// ```
pub async fn scope<F: std::future::Future>(cache: Cache, fut: F) -> F::Output {
    SCOPED.scope(cache, fut).await
}

/// The cache a `#[cached]` fn without a `cache` option uses here: the one of the enclosing
/// [`scope`], else the [`global`] one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(!cache_runtime::current().is_disabled());
/// cache_runtime::scope(cache_runtime::Cache::disabled(), async {
///     assert!(cache_runtime::current().is_disabled());
/// })
/// .await;
/// # }
/// ```
pub fn current() -> Current {
    SCOPED.try_with(|cache| Current::Scoped(cache.clone())).unwrap_or_else(|_| Current::Global(global()))
}

/// What [`current`] returns: the global cache (borrowed: no reference count touched on the hot
/// path) or a scoped one.
#[derive(Debug)]
pub enum Current {
    /// No [`scope`] encloses the caller.
    Global(&'static Cache),
    /// The cache of the enclosing [`scope`].
    Scoped(Cache),
}

impl std::ops::Deref for Current {
    type Target = Cache;

    #[inline]
    fn deref(&self) -> &Cache {
        match self {
            Current::Global(cache) => cache,
            Current::Scoped(cache) => cache,
        }
    }
}

/// Starts every cached handler's body: nothing with the `axum` feature, the compile error that
/// asks for it without.
#[doc(hidden)]
#[macro_export]
#[cfg(feature = "axum")]
macro_rules! __cache_runtime_handler_support {
    () => {};
}

/// Starts every cached handler's body: nothing with the `axum` feature, the compile error that
/// asks for it without.
#[doc(hidden)]
#[macro_export]
#[cfg(not(feature = "axum"))]
macro_rules! __cache_runtime_handler_support {
    () => {
        ::core::compile_error!(
            "`#[cached]` on an axum handler needs the `axum` feature of cache-runtime (on by default): \
             `cache-runtime = { version = \"0.1\", features = [\"axum\"] }`"
        );
    };
}

/// What the macros expand to. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::__cache_runtime_handler_support as handler_support;
    pub use crate::batch::{cached_batch, cached_batch_result, Batch, BatchMap, Element};
    pub use crate::cache::{Call, DEFAULT_NAMESPACE};
    pub use crate::functions::Function;
    pub use crate::invalidate::Invalidation;
    pub use crate::key::{KeyWriter, Part, PartDisplay, PartInt, PartText};
    pub use crate::policy::{CallOpts, Policy};
    pub use crate::read::Spawner;
    pub use crate::returns::{cached_option, cached_result, cached_value};
    pub use crate::returns::{
        Outcome, Returns, SucceededOption, SucceededResult, SucceededValue, ViaBatchMap, ViaBatchResult, ViaOption,
        ViaResult, ViaValue,
    };
    pub use crate::secs::{seconds, Seconds, SecondsOther, SecondsType};
    pub use crate::{current, global, Cache, Cacheable};
    pub use core::time::Duration;

    #[cfg(feature = "axum")]
    pub use crate::http::{cached_handler, HttpOpts, HttpRequest};
    #[cfg(feature = "axum")]
    pub use axum::response::{IntoResponse, Response};

    /// Resolves the `cache = …` option to a `&Cache`.
    #[inline]
    pub fn as_cache<C: AsRef<Cache> + ?Sized>(cache: &C) -> &Cache {
        cache.as_ref()
    }

    /// `T`'s name without the leading `module::` (a default key already starts with it).
    #[inline]
    pub fn type_in_module<T: ?Sized>(module: &str) -> &'static str {
        let name = core::any::type_name::<T>();
        name.strip_prefix(module).and_then(|rest| rest.strip_prefix("::")).unwrap_or(name)
    }

    /// Starts a key in `namespace` (validated at compile time).
    #[inline]
    pub fn key_writer(cache: &Cache, namespace: &str, capacity_hint: usize) -> KeyWriter {
        cache.key_writer(namespace, capacity_hint)
    }
}
