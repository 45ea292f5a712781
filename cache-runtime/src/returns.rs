//! What a `#[cached]` or `#[invalidates]` fn's return type means, decided by the type itself
//! (type aliases resolved by the compiler), not by how it is spelled.
//!
//! A return type spelled `Result<…>` or `Option<…>` is dispatched by the macro directly. Any
//! other spelling (`CatalogResult<Book>`, `AppResult<T>`, an alias without parameters…) goes
//! through [`Returns`] (for `#[cached]`) or [`Outcome`] (for `#[invalidates]`) and method
//! resolution: the impls for `&Returns<Result<T, E>>` and `&Returns<Option<T>>` are found
//! before the one for `Returns<R>` (autoref-based specialization), so an `Err` is never stored
//! and a `None` is stored only with `cache_none`, however the type is named. A batch fn's
//! (`#[cached(batch)]`) return type spelled neither as a map nor as `Result<…>` goes through
//! [`Returns`] the same way: a `Result` stores the elements of an `Ok` map, any other type is
//! the map.

use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;

use std::time::Duration;

use crate::batch::{cached_batch, cached_batch_result, Batch, BatchMap};
use crate::cache::Call;
use crate::codec::Json;
use crate::entry::Found;
use crate::entry::Served;
use crate::policy::Policy;
use crate::read::{read, Detached, Reply, Settled, Spawner};
use crate::Cacheable;

/// The return type `R` of a `#[cached]` fn, as a value for method resolution to look at.
#[doc(hidden)]
pub struct Returns<R>(PhantomData<fn() -> R>);

impl<R> std::fmt::Debug for Returns<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<Self>())
    }
}

impl<R> Returns<R> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Returns(PhantomData)
    }
}

/// `R` is a `Result<T, E>`: only an `Ok` is stored.
#[doc(hidden)]
pub trait ViaResult<T, E> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<T>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Result<T, E>> + 'a
    where
        T: Cacheable,
        E: 'a,
        F: Future<Output = Result<T, E>> + 'a;
}

impl<T, E> ViaResult<T, E> for &Returns<Result<T, E>> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<T>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Result<T, E>> + 'a
    where
        T: Cacheable,
        E: 'a,
        F: Future<Output = Result<T, E>> + 'a,
    {
        cached_result::<T, E, F>(call, policy, body, spawner)
    }
}

/// `R` is an `Option<T>`: a `None` is stored only with `cache_none`.
#[doc(hidden)]
pub trait ViaOption<T> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<T>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Option<T>> + 'a
    where
        T: Cacheable,
        F: Future<Output = Option<T>> + 'a;
}

impl<T> ViaOption<T> for &Returns<Option<T>> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<T>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Option<T>> + 'a
    where
        T: Cacheable,
        F: Future<Output = Option<T>> + 'a,
    {
        cached_option::<T, F>(call, policy, body, spawner)
    }
}

/// Any other `R`: the value itself is stored.
#[doc(hidden)]
pub trait ViaValue<R> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<R>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = R> + 'a
    where
        R: Cacheable,
        F: Future<Output = R> + 'a;
}

impl<R> ViaValue<R> for Returns<R> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
        policy: Policy<R>,
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = R> + 'a
    where
        R: Cacheable,
        F: Future<Output = R> + 'a,
    {
        cached_value::<R, F>(call, policy, body, spawner)
    }
}

/// The return type `R` of a `#[cached(batch)]` fn spelled neither as a map nor as `Result<…>`
/// (`AppResult<HashMap<u64, Product>>`, an alias of the map): a `Result<M, E>` stores the
/// elements of an `Ok` map and nothing of an `Err`.
#[doc(hidden)]
pub trait ViaBatchResult<M, E> {
    fn cached_batch_by_type<K, V, F, Fut>(
        &self,
        batch: Batch<'_, K>,
        policy: Policy<V>,
        body: F,
    ) -> impl Future<Output = Result<M, E>>
    where
        K: Clone + Eq + Hash,
        V: Cacheable,
        M: BatchMap<K, V>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<M, E>>;
}

impl<M, E> ViaBatchResult<M, E> for &Returns<Result<M, E>> {
    fn cached_batch_by_type<K, V, F, Fut>(
        &self,
        batch: Batch<'_, K>,
        policy: Policy<V>,
        body: F,
    ) -> impl Future<Output = Result<M, E>>
    where
        K: Clone + Eq + Hash,
        V: Cacheable,
        M: BatchMap<K, V>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<M, E>>,
    {
        cached_batch_result::<K, V, M, E, F, Fut>(batch, policy, body)
    }
}

/// Any other `R` of a `#[cached(batch)]` fn: the map itself (see [`BatchMap`]).
#[doc(hidden)]
pub trait ViaBatchMap<M> {
    fn cached_batch_by_type<K, V, F, Fut>(
        &self,
        batch: Batch<'_, K>,
        policy: Policy<V>,
        body: F,
    ) -> impl Future<Output = M>
    where
        K: Clone + Eq + Hash,
        V: Cacheable,
        M: BatchMap<K, V>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = M>;
}

impl<M> ViaBatchMap<M> for Returns<M> {
    fn cached_batch_by_type<K, V, F, Fut>(
        &self,
        batch: Batch<'_, K>,
        policy: Policy<V>,
        body: F,
    ) -> impl Future<Output = M>
    where
        K: Clone + Eq + Hash,
        V: Cacheable,
        M: BatchMap<K, V>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = M>,
    {
        cached_batch::<K, V, M, F, Fut>(batch, policy, body)
    }
}

/// The outcome of an `#[invalidates]` fn, for method resolution to look at.
#[doc(hidden)]
pub struct Outcome<'a, R>(pub &'a R);

impl<R> std::fmt::Debug for Outcome<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<Self>())
    }
}

/// An `Ok` or a `Some` succeeded; anything else that returned did.
#[doc(hidden)]
pub trait SucceededResult {
    fn succeeded(&self) -> bool;
}

impl<T, E> SucceededResult for &Outcome<'_, Result<T, E>> {
    fn succeeded(&self) -> bool {
        self.0.is_ok()
    }
}

#[doc(hidden)]
pub trait SucceededOption {
    fn succeeded(&self) -> bool;
}

impl<T> SucceededOption for &Outcome<'_, Option<T>> {
    fn succeeded(&self) -> bool {
        self.0.is_some()
    }
}

#[doc(hidden)]
pub trait SucceededValue {
    fn succeeded(&self) -> bool;
}

impl<R> SucceededValue for Outcome<'_, R> {
    fn succeeded(&self) -> bool {
        true
    }
}

/// `#[cached]` on a fn returning `T`.
pub fn cached_value<'a, T: Cacheable, F: Future<Output = T> + 'a>(
    call: Call<'a>,
    policy: Policy<T>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = T> + 'a {
    read(call, Value::<T>(policy), body, spawner)
}

/// `#[cached]` on a fn returning `Option<T>`.
pub fn cached_option<'a, T: Cacheable, F: Future<Output = Option<T>> + 'a>(
    call: Call<'a>,
    policy: Policy<T>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Option<T>> + 'a {
    read(call, Optional::<T>(policy), body, spawner)
}

/// `#[cached]` on a fn returning `Result<T, E>`.
pub fn cached_result<'a, T: Cacheable, E: 'a, F: Future<Output = Result<T, E>> + 'a>(
    call: Call<'a>,
    policy: Policy<T>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Result<T, E>> + 'a {
    read(call, Fallible::<T, E>(policy, PhantomData), body, spawner)
}

/// A fn returning `T`: the value is stored (as its `Policy` says).
pub(crate) struct Value<T>(pub(crate) Policy<T>);

/// A fn returning `Option<T>`: a `None` is stored as a negative entry (kept with `cache_none`).
pub(crate) struct Optional<T>(Policy<T>);

/// A fn returning `Result<T, E>`: only an `Ok` is stored; an `Err` is a failure.
pub(crate) struct Fallible<T, E>(pub(crate) Policy<T>, pub(crate) PhantomData<fn() -> E>);

/// The replies of service fns: what an output stores, and whether it failed.
pub(crate) trait Returned {
    type Out;
    type Value: Cacheable;
    /// Which values are stored, and for how long.
    fn policy(&self) -> Policy<Self::Value>;
    fn stored(out: &Self::Out) -> Option<Found<Self::Value>>;
    fn failed(_: &Self::Out) -> bool {
        false
    }
    fn rebuilt(found: Found<Self::Value>) -> Option<Self::Out>;
}

impl<T: Cacheable> Returned for Value<T> {
    type Out = T;
    type Value = T;
    fn policy(&self) -> Policy<T> {
        self.0
    }
    fn stored(out: &T) -> Option<Found<T>> {
        Some(Found::Value(out.clone()))
    }
    fn rebuilt(found: Found<T>) -> Option<T> {
        match found {
            Found::Value(v) => Some(v),
            Found::Negative => None,
        }
    }
}

impl<T: Cacheable> Returned for Optional<T> {
    type Out = Option<T>;
    type Value = T;
    fn policy(&self) -> Policy<T> {
        self.0
    }
    fn stored(out: &Option<T>) -> Option<Found<T>> {
        Some(out.as_ref().map_or(Found::Negative, |v| Found::Value(v.clone())))
    }
    fn rebuilt(found: Found<T>) -> Option<Option<T>> {
        match found {
            Found::Value(v) => Some(Some(v)),
            Found::Negative => Some(None),
        }
    }
}

impl<T: Cacheable, E> Returned for Fallible<T, E> {
    type Out = Result<T, E>;
    type Value = T;
    fn policy(&self) -> Policy<T> {
        self.0
    }
    fn stored(out: &Result<T, E>) -> Option<Found<T>> {
        out.as_ref().ok().map(|v| Found::Value(v.clone()))
    }
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn rebuilt(found: Found<T>) -> Option<Result<T, E>> {
        match found {
            Found::Value(v) => Some(Ok(v)),
            Found::Negative => None,
        }
    }
}

impl<M: Returned> Reply for M {
    type Out = M::Out;
    type Answer = M::Out;
    type Value = M::Value;
    type Codec = Json;

    fn answer(&self, found: Found<M::Value>, _: Served) -> Option<M::Out> {
        M::rebuilt(found)
    }

    fn settle(&self, out: M::Out, ttl: Duration) -> impl Future<Output = Settled<M::Value, M::Out>> {
        let (shared, ttl) = settled::<M>(self.policy(), &out, ttl);
        std::future::ready(Settled { shared, ttl, failed: M::failed(&out), answer: out })
    }

    fn bypass(&self, out: M::Out) -> M::Out {
        out
    }

    type Detach = Policy<M::Value>;
    fn detach(&self) -> Policy<M::Value> {
        self.policy()
    }
    fn detached(policy: Policy<M::Value>, out: M::Out, ttl: Duration) -> Detached<M::Value> {
        let (shared, ttl) = settled::<M>(policy, &out, ttl);
        Box::pin(std::future::ready(shared.zip(ttl)))
    }
}

/// What a service fn's output shares and how long it is stored (`None`: not stored).
fn settled<M: Returned>(
    policy: Policy<M::Value>,
    out: &M::Out,
    ttl: Duration,
) -> (Option<Found<M::Value>>, Option<Duration>) {
    let shared = M::stored(out);
    let ttl = shared.as_ref().and_then(|found| policy.ttl_of(found, ttl));
    (shared, ttl)
}
