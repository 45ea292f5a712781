//! The read-through path shared by `#[cached]` and the plain API's `get_or_fetch`.

use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::cache::{Cache, Found};
use crate::codec::Json;
use crate::flight::Joined;
use crate::Cacheable;

/// Per-call options, built in a `const` by the code `#[cached]` generates.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallOpts {
    ttl: Option<Duration>,
    cache_none: bool,
    none_ttl: Option<Duration>,
}

impl Default for CallOpts {
    fn default() -> Self {
        Self::new()
    }
}

impl CallOpts {
    /// Nothing set: the cache's default ttl, `None` not stored.
    pub const fn new() -> Self {
        CallOpts { ttl: None, cache_none: false, none_ttl: None }
    }

    /// `expire = …`.
    pub const fn expire(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// `cache_none = true` (ttl `None`: the entry's ttl) or `cache_none = <secs>`.
    pub const fn cache_none(mut self, ttl: Option<Duration>) -> Self {
        self.cache_none = true;
        self.none_ttl = ttl;
        self
    }

    pub(crate) fn ttl(&self, cache: &Cache) -> Duration {
        match self.ttl {
            Some(ttl) => ttl,
            None => cache.default_ttl(),
        }
    }
}

/// What to do with a body's result.
pub(crate) enum Decision<'a, V> {
    Store(&'a V),
    StoreNegative,
    Skip,
}

/// How a return type maps onto stored values: `T`, `Option<T>` or `Result<T, E>`.
pub(crate) trait Mode {
    type Out;
    type Value: Cacheable;
    fn decide(out: &Self::Out) -> Decision<'_, Self::Value>;
    /// The result a hit stands for, or `None` when this mode cannot use the entry.
    fn rebuild(found: Found<Self::Value>) -> Option<Self::Out>;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Plain<T>(PhantomData<T>);

#[doc(hidden)]
#[derive(Debug)]
pub struct OptionMode<T>(PhantomData<T>);

#[doc(hidden)]
#[derive(Debug)]
pub struct ResultMode<T, E>(PhantomData<(T, E)>);

impl<T: Cacheable> Mode for Plain<T> {
    type Out = T;
    type Value = T;
    fn decide(out: &T) -> Decision<'_, T> {
        Decision::Store(out)
    }
    fn rebuild(found: Found<T>) -> Option<T> {
        match found {
            Found::Value(v) => Some(v),
            Found::Negative => None,
        }
    }
}

impl<T: Cacheable> Mode for OptionMode<T> {
    type Out = Option<T>;
    type Value = T;
    fn decide(out: &Option<T>) -> Decision<'_, T> {
        match out {
            Some(v) => Decision::Store(v),
            None => Decision::StoreNegative,
        }
    }
    fn rebuild(found: Found<T>) -> Option<Option<T>> {
        match found {
            Found::Value(v) => Some(Some(v)),
            Found::Negative => Some(None),
        }
    }
}

impl<T: Cacheable, E> Mode for ResultMode<T, E> {
    type Out = Result<T, E>;
    type Value = T;
    fn decide(out: &Result<T, E>) -> Decision<'_, T> {
        match out {
            Ok(v) => Decision::Store(v),
            Err(_) => Decision::Skip,
        }
    }
    fn rebuild(found: Found<T>) -> Option<Result<T, E>> {
        match found {
            Found::Value(v) => Some(Ok(v)),
            Found::Negative => None,
        }
    }
}

/// Read `key`; on a miss run `body`, store what the mode says to store, return the result.
pub(crate) async fn run<M: Mode, F: Future<Output = M::Out>>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: F,
) -> M::Out {
    if let Some((found, _)) = cache.local_hit::<M::Value>(&key) {
        if let Some(out) = M::rebuild(found) {
            cache.record_hit();
            crate::key::recycle(key);
            return out;
        }
    }
    // Single-flight: one caller per cold key in this process reads the store and runs the body.
    let leader = match cache.flights().join::<M::Value>(&key).await {
        Joined::Leader(leader) => leader,
        Joined::Shared(found) => {
            if let Some(out) = M::rebuild(found) {
                cache.record_hit();
                return out;
            }
            // A leader shares only what this mode can use; should it not, run the body.
            return body.await;
        }
    };
    let lookup = cache.lookup::<M::Value, Json>(&key, namespace, tags, false).await;
    if let Some((found, _)) = lookup.hit {
        if let Some(out) = M::rebuild(found.clone()) {
            cache.record_hit();
            leader.finish(Some(found));
            return out;
        }
    }
    cache.record_miss();
    let started = Instant::now();
    let out = body.await;
    let ttl = opts.ttl(cache);
    let shared = match M::decide(&out) {
        Decision::Store(value) => {
            if let Some(lease) = &lookup.lease {
                let recompute = started.elapsed();
                cache.fill::<M::Value, Json>(key, namespace, lease, lookup.l1_epoch, Some(value), ttl, recompute).await;
            }
            Some(Found::Value(value.clone()))
        }
        Decision::StoreNegative => {
            if let (Some(lease), true) = (&lookup.lease, opts.cache_none) {
                let ttl = opts.none_ttl.unwrap_or(ttl);
                cache
                    .fill::<M::Value, Json>(key, namespace, lease, lookup.l1_epoch, None, ttl, started.elapsed())
                    .await;
            }
            Some(Found::Negative)
        }
        Decision::Skip => None,
    };
    leader.finish(shared);
    out
}

/// `#[cached]` on a fn returning `T`.
pub async fn cached_value<T: Cacheable, F: Future<Output = T>>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: F,
) -> T {
    run::<Plain<T>, F>(cache, key, namespace, tags, opts, body).await
}

/// `#[cached]` on a fn returning `Option<T>`.
pub async fn cached_option<T: Cacheable, F: Future<Output = Option<T>>>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: F,
) -> Option<T> {
    run::<OptionMode<T>, F>(cache, key, namespace, tags, opts, body).await
}

/// `#[cached]` on a fn returning `Result<T, E>`.
pub async fn cached_result<T: Cacheable, E, F: Future<Output = Result<T, E>>>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: F,
) -> Result<T, E> {
    run::<ResultMode<T, E>, F>(cache, key, namespace, tags, opts, body).await
}
