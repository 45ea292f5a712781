//! What a `#[cached]` or `#[invalidates]` fn's return type means, decided by the type itself
//! (type aliases resolved by the compiler), not by how it is spelled.
//!
//! A return type spelled `Result<…>` or `Option<…>` is dispatched by the macro directly. Any
//! other spelling (`CatalogResult<Book>`, `AppResult<T>`, an alias without parameters…) goes
//! through [`Returns`] (for `#[cached]`) or [`Outcome`] (for `#[invalidates]`) and method
//! resolution: the impls for `&Returns<Result<T, E>>` and `&Returns<Option<T>>` are found
//! before the one for `Returns<R>` (autoref-based specialization), so an `Err` is never stored
//! and a `None` is stored only with `cache_none`, however the type is named.

use std::future::Future;
use std::marker::PhantomData;

use crate::fetch::{cached_option, cached_result, cached_value, Call, Spawner};
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
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Result<T, E>> + 'a
    where
        T: Cacheable,
        E: 'a,
        F: Future<Output = Result<T, E>> + 'a,
    {
        cached_result::<T, E, F>(call, body, spawner)
    }
}

/// `R` is an `Option<T>`: a `None` is stored only with `cache_none`.
#[doc(hidden)]
pub trait ViaOption<T> {
    fn cached_by_type<'a, F>(
        &self,
        call: Call<'a>,
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
        body: F,
        spawner: Spawner<F>,
    ) -> impl Future<Output = Option<T>> + 'a
    where
        T: Cacheable,
        F: Future<Output = Option<T>> + 'a,
    {
        cached_option::<T, F>(call, body, spawner)
    }
}

/// Any other `R`: the value itself is stored.
#[doc(hidden)]
pub trait ViaValue<R> {
    fn cached_by_type<'a, F>(&self, call: Call<'a>, body: F, spawner: Spawner<F>) -> impl Future<Output = R> + 'a
    where
        R: Cacheable,
        F: Future<Output = R> + 'a;
}

impl<R> ViaValue<R> for Returns<R> {
    fn cached_by_type<'a, F>(&self, call: Call<'a>, body: F, spawner: Spawner<F>) -> impl Future<Output = R> + 'a
    where
        R: Cacheable,
        F: Future<Output = R> + 'a,
    {
        cached_value::<R, F>(call, body, spawner)
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
