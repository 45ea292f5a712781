//! The read-through path shared by `#[cached]` and the plain API's `get_or_fetch`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::cache::{duration_ms, Cache, Found, Locked, Times};
use crate::codec::Json;
use crate::flight::Joined;
use crate::store::Lease;
use crate::time::now_ms;
use crate::Cacheable;

/// Per-call options, built in a `const` by the code `#[cached]` generates.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallOpts {
    ttl: Option<Duration>,
    cache_none: bool,
    none_ttl: Option<Duration>,
    stale: Option<Duration>,
    stale_if_error: Option<Duration>,
    /// XFetch's β (`early` = 1.0).
    beta: Option<f64>,
    /// `lock`: how long the cross-replica lock is held at most (and waited for).
    lock: Option<Duration>,
}

impl Default for CallOpts {
    fn default() -> Self {
        Self::new()
    }
}

impl CallOpts {
    /// Nothing set: the cache's default ttl, `None` not stored.
    pub const fn new() -> Self {
        CallOpts {
            ttl: None,
            cache_none: false,
            none_ttl: None,
            stale: None,
            stale_if_error: None,
            beta: None,
            lock: None,
        }
    }

    /// `stale = N`: serve the expired value for N more seconds while one refresh replaces it.
    pub const fn stale(mut self, window: Duration) -> Self {
        self.stale = Some(window);
        self
    }

    /// `stale_if_error = N`: when the body fails, serve the expired value for up to N seconds.
    pub const fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// `early` / `beta = f`: probabilistic early refresh (XFetch) with this β.
    pub const fn early(mut self, beta: f64) -> Self {
        self.beta = Some(beta);
        self
    }

    /// `lock` / `lock = N`: one caller per key across replicas computes a missing value.
    pub const fn lock(mut self, hold: Duration) -> Self {
        self.lock = Some(hold);
        self
    }

    pub(crate) fn lock_hold(&self) -> Option<Duration> {
        self.lock
    }

    /// How long an entry outlives its freshness (the longer serve-stale window).
    pub(crate) fn keep(&self) -> Duration {
        self.stale.unwrap_or_default().max(self.stale_if_error.unwrap_or_default())
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

/// How a found entry may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Fresh, but XFetch drew an early refresh for this caller.
    RefreshEarly,
    /// Expired, inside the `stale` window: serve it, refresh it.
    Stale,
    /// Expired, inside only the `stale_if_error` window: a fallback should the body fail.
    Fallback,
    Gone,
}

impl CallOpts {
    /// XFetch (Vattani et al., VLDB 2015): refresh when `now − Δ·β·ln(rand) ≥ expiry`, Δ the
    /// time the value took to compute.
    pub(crate) fn freshness(&self, cache: &Cache, times: &Times, now: u64) -> Freshness {
        if now < times.fresh_until_ms {
            if let Some(beta) = self.beta {
                let delta = f64::from(times.recompute_ms);
                if now as f64 - delta * beta * cache.random().ln() >= times.fresh_until_ms as f64 {
                    return Freshness::RefreshEarly;
                }
            }
            return Freshness::Fresh;
        }
        let past = now - times.fresh_until_ms;
        if self.stale.is_some_and(|w| past < duration_ms(w)) {
            Freshness::Stale
        } else if self.stale_if_error.is_some_and(|w| past < duration_ms(w)) {
            Freshness::Fallback
        } else {
            Freshness::Gone
        }
    }
}

/// A refresh job's last step: given the body's result, store it. Built by the runtime; run
/// after the body, in the background.
pub type Finish<O> = Box<dyn FnOnce(O) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Whether the runtime may run a refresh in the background: only for a body that owns
/// everything it uses (`'static + Send`). `#[cached]` passes `background()` when every
/// parameter is owned and `stale` or `early` is set, `inline()` otherwise (then the caller that
/// wins the refresh runs it, and the others get the stale value at once).
#[doc(hidden)]
pub struct Spawner<F: Future>(pub(crate) Option<SpawnFn<F>>);

/// Starts a body and its `Finish` in a task of their own.
type SpawnFn<F> = fn(F, Finish<<F as Future>::Output>);

impl<F: Future> std::fmt::Debug for Spawner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Spawner::background" } else { "Spawner::inline" })
    }
}

impl<F: Future> Spawner<F> {
    /// Refreshes run in the caller's task.
    pub const fn inline() -> Self {
        Spawner(None)
    }
}

impl<F> Spawner<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Refreshes run in a spawned task.
    pub fn background() -> Self {
        Spawner(Some(|body, finish| {
            tokio::spawn(async move {
                let out = body.await;
                finish(out).await;
            });
        }))
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
    /// A failure that `stale_if_error` may cover.
    fn failed(out: &Self::Out) -> bool;
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
    fn failed(_: &T) -> bool {
        false
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
    fn failed(_: &Option<T>) -> bool {
        false
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
    fn failed(out: &Result<T, E>) -> bool {
        out.is_err()
    }
    fn rebuild(found: Found<T>) -> Option<Result<T, E>> {
        match found {
            Found::Value(v) => Some(Ok(v)),
            Found::Negative => None,
        }
    }
}

/// What a body's result means for the store and for waiting callers.
fn outcome<M: Mode>(out: &M::Out) -> Option<Found<M::Value>> {
    match M::decide(out) {
        Decision::Store(value) => Some(Found::Value(value.clone())),
        Decision::StoreNegative => Some(Found::Negative),
        Decision::Skip => None,
    }
}

/// The freshness of a found entry; a fresh one the fast path already drew for an early refresh
/// is not drawn again.
pub(crate) fn drawn(opts: &CallOpts, cache: &Cache, times: &Times, drawn_early: bool) -> Freshness {
    let now = now_ms();
    if drawn_early && now < times.fresh_until_ms {
        Freshness::RefreshEarly
    } else {
        opts.freshness(cache, times, now)
    }
}

/// Stores a body's result under the lease its read took.
async fn store<V: Cacheable>(
    cache: &Cache,
    key: String,
    namespace: &str,
    (lease, l1_epoch): (&Lease, Option<u64>),
    found: &Found<V>,
    opts: &CallOpts,
    recompute: Duration,
) {
    let ttl = opts.ttl(cache);
    let keep = opts.keep();
    match found {
        Found::Value(value) => {
            cache.fill::<V, Json>(key, namespace, lease, l1_epoch, Some(value), (ttl, keep), recompute).await;
        }
        Found::Negative if opts.cache_none => {
            let ttl = opts.none_ttl.unwrap_or(ttl);
            cache.fill::<V, Json>(key, namespace, lease, l1_epoch, None, (ttl, keep), recompute).await;
        }
        Found::Negative => {}
    }
}

/// Longest a refresh may hold its claim.
const REFRESH_HOLD: Duration = Duration::from_secs(10);

/// Read `key`; on a miss run `body`, store what the mode says to store, return the result.
/// With `stale` / `early`, a stale or early-drawn entry is served while one refresh per key
/// (across replicas) replaces it; with `stale_if_error`, a failing body falls back to it.
///
/// A hit in process memory is answered synchronously, when the call is made; only a miss (or
/// a Redis read) builds the full read-through future, boxed, so a hit does not pay for moving
/// a large future around.
pub(crate) fn run<'a, M, F>(call: Call<'a>, body: F, spawner: Spawner<F>) -> impl Future<Output = M::Out> + 'a
where
    M: Mode + 'a,
    F: Future<Output = M::Out> + 'a,
{
    let Call { cache, key, namespace, tags, opts } = call;
    // A disabled cache: every call runs its body (no single-flight either).
    let fast = if cache.is_disabled() { Err((key, false)) } else { local_hit::<M>(cache, key, opts) };
    async move {
        match fast {
            Ok(out) => out,
            Err((key, _)) if cache.is_disabled() => {
                cache.record_miss(&key);
                body.await
            }
            Err(call) => Box::pin(read_through::<M, F>(cache, call, namespace, tags, opts, body, spawner)).await,
        }
    }
}

/// A fresh hit in process memory, or the key back.
/// A fresh hit in process memory, or the key back, with whether a fresh local entry was drawn
/// for an early refresh (the read-through then refreshes it without drawing again).
fn local_hit<M: Mode>(cache: &Cache, key: String, opts: &CallOpts) -> Result<M::Out, (String, bool)> {
    match fresh_local_hit::<M::Value>(cache, &key, opts) {
        Ok((found, _)) => match M::rebuild(found) {
            Some(out) => {
                cache.record_hit(&key);
                crate::key::recycle(key);
                Ok(out)
            }
            None => Err((key, false)),
        },
        Err(drawn_early) => Err((key, drawn_early)),
    }
}

/// A fresh entry in process memory that is not drawn for an early refresh (`early`): what
/// both fast paths (service fns and handlers) answer without building the read-through.
/// `Err(true)`: there is one, drawn for an early refresh (one draw per read: the read-through
/// must not draw again, or a refresh would need two successes, as if β were halved).
pub(crate) fn fresh_local_hit<V: crate::codec::Stored>(
    cache: &Cache,
    key: &str,
    opts: &CallOpts,
) -> Result<(Found<V>, Times), bool> {
    // `local_hit` returns fresh entries only; the clock matters only for an early draw.
    let hit = cache.local_hit::<V>(key).ok_or(false)?;
    if opts.beta.is_none() || opts.freshness(cache, &hit.1, now_ms()) == Freshness::Fresh {
        Ok(hit)
    } else {
        Err(true)
    }
}

/// `drawn_early`: the fast path found the entry fresh in process memory and drew it for an
/// early refresh.
async fn read_through<M: Mode, F: Future<Output = M::Out>>(
    cache: &Cache,
    (key, drawn_early): (String, bool),
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: F,
    spawner: Spawner<F>,
) -> M::Out {
    // Single-flight: one caller per cold key in this process reads the store and runs the body.
    let leader = match cache.flights().join::<M::Value>(&key).await {
        Joined::Leader(leader) => leader,
        Joined::Shared(found, stale) => {
            if let Some(out) = M::rebuild(found) {
                if stale {
                    cache.record_stale(&key);
                } else {
                    cache.record_hit(&key);
                }
                return out;
            }
            // A leader shares only what this mode can use; should it not, run the body.
            return body.await;
        }
    };
    let mut lookup = cache.lookup::<M::Value, Json>(&key, namespace, tags, false).await;
    let mut fallback = None;
    if let Some((found, times)) = lookup.hit.take() {
        let freshness = drawn(opts, cache, &times, drawn_early);
        match (freshness, M::rebuild(found.clone())) {
            (Freshness::Fresh | Freshness::RefreshEarly | Freshness::Stale, Some(current)) => {
                let refresh = freshness != Freshness::Fresh && cache.claim_refresh(&key, REFRESH_HOLD).await;
                // The lease is taken before the body starts, so a write during the refresh wins.
                let lease = match (refresh, spawner.0.is_some()) {
                    (true, true) => cache.lookup::<M::Value, Json>(&key, namespace, tags, true).await.lease,
                    _ => None,
                };
                if let (true, Some(spawn), Some(lease)) = (refresh, spawner.0, lease) {
                    // Serve what is stored now; a background task recomputes and stores.
                    let (cache2, key2, namespace2, opts2) = (cache.clone(), key.clone(), namespace.to_owned(), *opts);
                    let started = Instant::now();
                    spawn(
                        body,
                        Box::new(move |out: M::Out| {
                            let found = outcome::<M>(&out);
                            Box::pin(async move {
                                if let Some(found) = &found {
                                    let (k, n) = (key2.clone(), namespace2.as_str());
                                    store(&cache2, k, n, (&lease, None), found, &opts2, started.elapsed()).await;
                                }
                                cache2.release_refresh(&key2).await;
                            })
                        }),
                    );
                } else if refresh {
                    // The body borrows its caller: this caller refreshes, the others are
                    // served the current value at once.
                    if freshness == Freshness::Stale {
                        leader.finish_stale(found.clone());
                    } else {
                        leader.finish(Some(found.clone()));
                    }
                    let out = refresh_inline::<M>(cache, key.clone(), namespace, tags, opts, body, Some(found)).await;
                    cache.release_refresh(&key).await;
                    return out;
                }
                if freshness == Freshness::Stale {
                    cache.record_stale(&key);
                    leader.finish_stale(found);
                } else {
                    cache.record_hit(&key);
                    leader.finish(Some(found));
                }
                return current;
            }
            (Freshness::Fallback, Some(_)) => fallback = Some(found),
            _ => {}
        }
    }
    let mut lock_token = None;
    if let Some(hold) = opts.lock {
        match cache.lock_or_wait::<M::Value, Json>(&key, namespace, tags, hold).await {
            Locked::Ready(found, _) => {
                if let Some(out) = M::rebuild(found.clone()) {
                    cache.record_hit(&key);
                    leader.finish(Some(found));
                    return out;
                }
            }
            Locked::Compute { token, lookup: newer } => {
                lock_token = token;
                if let Some(newer) = newer {
                    lookup = newer;
                }
            }
        }
    }
    cache.record_miss(&key);
    let started = Instant::now();
    let out = body.await;
    cache.record_computed(&key, started.elapsed());
    let shared = outcome::<M>(&out);
    if let Some(found) = &shared {
        if let Some(lease) = &lookup.lease {
            store(cache, key.clone(), namespace, (lease, lookup.l1_epoch), found, opts, started.elapsed()).await;
        }
    }
    if let Some(held) = lock_token {
        held.release().await;
    }
    leader.finish(shared);
    match fallback {
        Some(stale) if M::failed(&out) => {
            cache.record_stale(&key);
            M::rebuild(stale).unwrap_or(out)
        }
        _ => out,
    }
}

/// Recomputes `key` in the caller's task: take a lease, run the body, store. A failing body
/// falls back to `current` (the value being refreshed).
async fn refresh_inline<M: Mode>(
    cache: &Cache,
    key: String,
    namespace: &str,
    tags: &[String],
    opts: &CallOpts,
    body: impl Future<Output = M::Out>,
    current: Option<Found<M::Value>>,
) -> M::Out {
    let lookup = cache.lookup::<M::Value, Json>(&key, namespace, tags, true).await;
    let started = Instant::now();
    let out = body.await;
    cache.record_computed(&key, started.elapsed());
    if let (Some(found), Some(lease)) = (outcome::<M>(&out), &lookup.lease) {
        store(cache, key, namespace, (lease, lookup.l1_epoch), &found, opts, started.elapsed()).await;
    }
    match current {
        Some(current) if M::failed(&out) => M::rebuild(current).unwrap_or(out),
        _ => out,
    }
}

/// One `#[cached]` call: the cache, the rendered key, and how the entry is stored (its
/// namespace, tags and options). What the generated code hands the runtime. A handler's key
/// (`K = KeyWriter`) is finished by the runtime, after the `vary` headers are added to it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Call<'a, K = String> {
    pub cache: &'a Cache,
    pub key: K,
    pub namespace: &'a str,
    pub tags: &'a [String],
    pub opts: &'a CallOpts,
}

/// `#[cached]` on a fn returning `T`.
pub fn cached_value<'a, T: Cacheable, F: Future<Output = T> + 'a>(
    call: Call<'a>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = T> + 'a {
    run::<Plain<T>, F>(call, body, spawner)
}

/// `#[cached]` on a fn returning `Option<T>`.
pub fn cached_option<'a, T: Cacheable, F: Future<Output = Option<T>> + 'a>(
    call: Call<'a>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Option<T>> + 'a {
    run::<OptionMode<T>, F>(call, body, spawner)
}

/// `#[cached]` on a fn returning `Result<T, E>`.
pub fn cached_result<'a, T: Cacheable, E: 'a, F: Future<Output = Result<T, E>> + 'a>(
    call: Call<'a>,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = Result<T, E>> + 'a {
    run::<ResultMode<T, E>, F>(call, body, spawner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(fresh_until_ms: u64, recompute_ms: u32) -> Times {
        Times { fresh_until_ms, recompute_ms }
    }

    #[test]
    fn xfetch_refreshes_with_the_expected_probability() {
        let cache = Cache::builder().random_seed(42).build().unwrap();
        let opts = CallOpts::new().early(1.0);
        // Δ = 100 ms, β = 1, 100 ms before expiry: P(refresh) = P(−ln r ≥ 1) = e⁻¹.
        let now = 1_000_000;
        let draws = 20_000;
        let early = (0..draws)
            .filter(|_| opts.freshness(&cache, &times(now + 100, 100), now) == Freshness::RefreshEarly)
            .count();
        let p = early as f64 / f64::from(draws);
        assert!((p - (-1.0f64).exp()).abs() < 0.02, "p = {p}");
        // Far from expiry: (almost) never; past it: never "early" but stale or gone.
        let far =
            (0..draws).filter(|_| opts.freshness(&cache, &times(now + 5_000, 100), now) != Freshness::Fresh).count();
        assert!(far < 5, "{far}");
        assert_eq!(opts.freshness(&cache, &times(now - 1, 100), now), Freshness::Gone);
    }

    #[test]
    fn a_seeded_source_repeats_its_draws() {
        let draw = |seed| {
            let cache = Cache::builder().random_seed(seed).build().unwrap();
            (0..5).map(|_| cache.random()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(9).iter().all(|r| *r > 0.0 && *r <= 1.0));
    }

    #[test]
    fn stale_windows_classify_expired_entries() {
        let cache = Cache::memory();
        let opts = CallOpts::new().stale(Duration::from_secs(10)).stale_if_error(Duration::from_secs(60));
        let now = 1_000_000;
        assert_eq!(opts.freshness(&cache, &times(now + 1, 0), now), Freshness::Fresh);
        assert_eq!(opts.freshness(&cache, &times(now - 5_000, 0), now), Freshness::Stale);
        assert_eq!(opts.freshness(&cache, &times(now - 30_000, 0), now), Freshness::Fallback);
        assert_eq!(opts.freshness(&cache, &times(now - 90_000, 0), now), Freshness::Gone);
        assert_eq!(opts.keep(), Duration::from_secs(60));
    }
}
