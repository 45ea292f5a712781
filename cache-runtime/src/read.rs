//! The read-through: the one path every cached call takes (`#[cached]` service fns, cached
//! axum handlers, `CacheLayer`, the plain API's `get_or_fetch`).
//!
//! A fresh hit in process memory → single-flight → one lookup → serve it (and refresh it, for
//! `stale` / `early`) → or wait for the cross-replica `lock` → or run the body and fill under
//! the lease the lookup took. What differs between a fn and a handler is a [`Reply`]: how a
//! body's output is settled into what is stored, whether it failed, and how a found entry is
//! answered.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::cache::{Cache, Call};
use crate::claims::Locked;
use crate::codec::{Codec, Stored};
use crate::entry::{Found, Served};
use crate::flight::{Joined, Leader};
use crate::policy::Freshness;
use crate::store::Lease;

/// Longest a refresh may hold its claim.
const REFRESH_HOLD: Duration = Duration::from_secs(10);

/// What a caller asks of the cache (a handler's client `Cache-Control`, when honoured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wants {
    /// The usual: a cached answer when there is one.
    Cached,
    /// `no-cache`: a fresh answer, stored for the next caller.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    Refreshed,
    /// `no-store`: a fresh answer, not stored.
    Uncached,
    /// Nothing from the cache at all (a request that is not cacheable: not `GET` or `HEAD`).
    Bypass,
}

/// Why a body ran instead of a stored answer (RFC 9211's `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Nothing was stored under the key.
    UriMiss,
    /// Something was, that could not be used (expired, an invalidated tag, another type).
    Miss,
    /// A stale entry, refreshed by this caller.
    Stale,
    /// The caller asked for a fresh answer (a client's `no-cache` / `no-store`).
    Request,
}

/// A body's output, settled.
pub(crate) struct Settled<V, A> {
    /// What is shared with the callers waiting on this one, and stored for `ttl`; `None`:
    /// nothing (a failure, a response that may not be stored).
    pub(crate) shared: Option<Found<V>>,
    /// How long `shared` is stored fresh; `None`: it is not stored (`unless`, a zero
    /// `expire_with`).
    pub(crate) ttl: Option<Duration>,
    /// A failure that `stale_if_error` covers.
    pub(crate) failed: bool,
    /// What the caller gets.
    pub(crate) answer: A,
}

/// What a background refresh's output stores and for how long, settled away from the caller
/// that started it.
pub(crate) type Detached<V> = Pin<Box<dyn Future<Output = Option<(Found<V>, Duration)>> + Send>>;

/// What differs between kinds of cached calls: a service fn's return type (`T`, `Option<T>`,
/// `Result<T, E>`; see `returns.rs`) or an HTTP handler (`http`).
pub(crate) trait Reply {
    /// What the body returns.
    type Out;
    /// What the caller gets.
    type Answer;
    /// What is stored.
    type Value: Stored;
    /// How it is stored in Redis.
    type Codec: Codec<Self::Value>;

    /// What the caller asks of the cache.
    fn wants(&self) -> Wants {
        Wants::Cached
    }

    /// The answer a found entry gives; `None` when this kind cannot use it (a stored `None`
    /// read by a fn that returns `T`): then the body runs.
    fn answer(&self, found: Found<Self::Value>, served: Served) -> Option<Self::Answer>;

    /// Settles a body's output; `ttl`: how long it is fresh if stored, unless the kind's
    /// `Policy` says otherwise.
    fn settle(&self, out: Self::Out, ttl: Duration) -> impl Future<Output = Settled<Self::Value, Self::Answer>>;

    /// The answer of a body that ran without the cache (a disabled cache, [`Wants::Bypass`], a
    /// shared entry this kind cannot use).
    fn bypass(&self, out: Self::Out) -> Self::Answer;

    /// Marks the answer of a body that ran: why it ran, and whether what it returned was
    /// stored (a handler's `Cache-Status`).
    fn forwarded(&self, _answer: &mut Self::Answer, _why: Forward, _stored: bool) {}

    /// What a refresh running in a task of its own needs to settle its output (owned).
    type Detach: Copy + Send;
    fn detach(&self) -> Self::Detach;
    /// The settlement of a refresh running in a task of its own: what its output stores, and
    /// for how long (`ttl` as in `settle`).
    fn detached(with: Self::Detach, out: Self::Out, ttl: Duration) -> Detached<Self::Value>;
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

/// Reads `call.key`; on a miss runs `body`, stores what `reply` settles, answers. With
/// `stale` / `early`, a stale or early-drawn entry is served while one refresh per key (across
/// replicas) replaces it; with `stale_if_error`, a failing body falls back to it.
///
/// A fresh hit in process memory is answered synchronously, when the call is made; only a miss
/// (or a Redis read) builds the rest of the read, boxed, so a hit does not pay for moving a
/// large future around.
pub(crate) fn read<'a, R, F>(
    call: Call<'a>,
    reply: R,
    body: F,
    spawner: Spawner<F>,
) -> impl Future<Output = R::Answer> + 'a
where
    R: Reply + 'a,
    R::Detach: 'static,
    F: Future<Output = R::Out> + 'a,
{
    let Call { cache, key, namespace, tags, opts, site } = call;
    // `key_of`: the key is what was asked for; the body never runs.
    let held = crate::capture::taken(cache, namespace, &key);
    let fast = if held || cache.is_disabled() || reply.wants() != Wants::Cached {
        Err((key, false))
    } else {
        answer_local_hit(cache, key, tags, opts, site, &reply)
    };
    async move {
        match fast {
            Ok(answer) => answer,
            Err(_) if held => std::future::pending().await,
            Err(_) if reply.wants() == Wants::Bypass => reply.bypass(body.await),
            Err((key, _)) if cache.is_disabled() => {
                // A disabled cache: every call runs its body (no single-flight either).
                cache.record_miss(site, &key);
                reply.bypass(body.await)
            }
            Err((key, drawn_early)) => {
                let call = Call { cache, key, namespace, tags, opts, site };
                Box::pin(read_through(call, drawn_early, reply, body, spawner)).await
            }
        }
    }
}

/// A fresh hit in process memory, answered; or the key back, with whether the entry was drawn
/// for an early refresh (`early`: the read-through then refreshes it without drawing again).
fn answer_local_hit<R: Reply>(
    cache: &Cache,
    key: String,
    tags: &[String],
    opts: &crate::policy::CallOpts,
    site: Option<&'static crate::functions::Function>,
    reply: &R,
) -> Result<R::Answer, (String, bool)> {
    let Some((found, times)) = cache.local_hit::<R::Value>(&key, tags) else { return Err((key, false)) };
    // The clock matters only for an early draw.
    if opts.beta.is_some() && opts.freshness(cache.rng(), &times, crate::time::now_ms()) != Freshness::Fresh {
        return Err((key, true));
    }
    match reply.answer(found, Served::Fresh(times)) {
        Some(answer) => {
            cache.record_hit(site, &key);
            crate::key::recycle(key);
            Ok(answer)
        }
        None => Err((key, false)),
    }
}

/// Everything after the fast path: single-flight, lookup, serve or refresh, `lock`, compute.
async fn read_through<R, F>(call: Call<'_>, drawn_early: bool, reply: R, body: F, spawner: Spawner<F>) -> R::Answer
where
    R: Reply,
    R::Detach: 'static,
    F: Future<Output = R::Out>,
{
    let (cache, key, opts) = (call.cache, call.key.as_str(), call.opts);
    let forced = reply.wants() != Wants::Cached;
    // Single-flight (not for a client's forced refresh): one caller per cold key in this process
    // reads the store and runs the body; the others take what it shares.
    let leader = if forced {
        None
    } else if cache.flights().led_here(key) {
        // Nested in the body of a call on the same stored key (a fn calling a fn with the same
        // key): joining would wait for itself. Runs without the cache.
        tracing::debug!(target: "cache_runtime", key = %cache.log_key(key), "a cached call nested in a call on its own key runs uncached");
        return reply.bypass(body.await);
    } else {
        match cache.flights().join::<R::Value>(key).await {
            Joined::Leader(leader) => Some(leader),
            Joined::Shared(found, served) => {
                if let Some(answer) = reply.answer(found, served) {
                    cache.record_collapsed(call.site, key, matches!(served, Served::Stale));
                    return answer;
                }
                // A leader shares what it stored; should this kind not use it, run the body
                // (without the cache: nothing is stored).
                return reply.bypass(body.await);
            }
        }
    };
    let mut lookup = cache.lookup::<R::Value, R::Codec>(&call, forced).await;
    let mut fallback = None;
    let found_any = lookup.hit.is_some() || lookup.seen;
    if let Some((found, times)) = lookup.hit.take() {
        let freshness = opts.freshness_once(cache.rng(), &times, drawn_early, crate::time::now_ms());
        let stale = freshness == Freshness::Stale;
        match freshness {
            Freshness::Fresh | Freshness::RefreshEarly | Freshness::Stale => {
                let served = if stale { Served::Stale } else { Served::Fresh(times) };
                if let Some(current) = reply.answer(found.clone(), served) {
                    if freshness != Freshness::Fresh && cache.claim_refresh(key, REFRESH_HOLD).await {
                        if spawner.0.is_none() {
                            // The body borrows its caller: this caller refreshes, the others are
                            // served the current value at once.
                            share(leader, &found, served);
                            let answer = refresh(&call, &reply, body, found).await;
                            cache.release_refresh(key).await;
                            return answer;
                        }
                        refresh_in_background(&call, &reply, body, spawner).await;
                    }
                    cache.record_served(call.site, key, stale);
                    share(leader, &found, served);
                    return current;
                }
            }
            Freshness::Fallback => fallback = Some(found),
            Freshness::Gone => {}
        }
        // A found entry that is not served leaves no lease (a hit needs none): take one, or
        // what the body computes could not be stored until the entry is gone.
        lookup = cache.lookup::<R::Value, R::Codec>(&call, true).await;
    }
    let mut held = None;
    if let (Some(hold), false) = (opts.lock, forced) {
        match cache.lock_or_wait::<R::Value, R::Codec>(&call, hold).await {
            Locked::Ready(found, times) => {
                if let Some(answer) = reply.answer(found.clone(), Served::Fresh(times)) {
                    cache.record_collapsed(call.site, key, false);
                    share(leader, &found, Served::Fresh(times));
                    return answer;
                }
            }
            Locked::Compute { token, lookup: newer } => {
                held = token;
                if let Some(newer) = newer {
                    lookup = newer;
                }
            }
        }
    }
    // A client's `no-store`: computed, not stored.
    let lease = lookup.fill_lease().filter(|_| reply.wants() != Wants::Uncached);
    let why = if forced {
        Forward::Request
    } else if fallback.is_some() || found_any {
        Forward::Miss
    } else {
        Forward::UriMiss
    };
    let answer = compute(&call, &reply, body, lease, fallback, leader, why).await;
    if let Some(held) = held {
        held.release().await;
    }
    answer
}

/// Hands what was found to the callers waiting on this one.
fn share<V: Stored>(leader: Option<Leader<'_>>, found: &Found<V>, served: Served) {
    if let Some(leader) = leader {
        leader.finish(Some(found), served);
    }
}

/// Recomputes the key in the caller's task: take a lease, run the body, store. A failing body
/// falls back to `current`, the value being refreshed.
async fn refresh<R: Reply>(
    call: &Call<'_>,
    reply: &R,
    body: impl Future<Output = R::Out>,
    current: Found<R::Value>,
) -> R::Answer {
    let lease = call.cache.lookup::<R::Value, R::Codec>(call, true).await.fill_lease();
    compute(call, reply, body, lease, Some(current), None, Forward::Stale).await
}

/// Starts the refresh in a task of its own, under a lease taken before the body starts (so a
/// write during the refresh wins). Without a lease (the store is failing, or invalidations
/// are queued) nothing could be stored: the claim is released and the caller is served the
/// current value, the body does not run.
async fn refresh_in_background<R, F>(call: &Call<'_>, reply: &R, body: F, spawner: Spawner<F>)
where
    R: Reply,
    R::Detach: 'static,
    F: Future<Output = R::Out>,
{
    let cache = call.cache;
    let (Some(spawn), Some(lease)) = (spawner.0, cache.lookup::<R::Value, R::Codec>(call, true).await.lease) else {
        cache.release_refresh(&call.key).await;
        return;
    };
    let with = reply.detach();
    let (cache, key, namespace, tags, opts, site) =
        (cache.clone(), call.key.clone(), call.namespace.to_owned(), call.tags.to_vec(), *call.opts, call.site);
    let (ttl, started) = (call.ttl(), Instant::now());
    spawn(
        body,
        Box::new(move |out| {
            let stored = R::detached(with, out, ttl);
            Box::pin(async move {
                let call = Call { cache: &cache, key, namespace: &namespace, tags: &tags, opts: &opts, site };
                cache.record_computed(site, &call.key, started.elapsed());
                if let Some((found, ttl)) = stored.await {
                    cache.fill::<R::Value, R::Codec>(&call, &lease, None, &found, started.elapsed(), ttl).await;
                }
                cache.release_refresh(&call.key).await;
            })
        }),
    );
}

/// Runs the body; stores what it settles to when a lease allows; shares it with the waiting
/// callers; when it failed inside a `stale_if_error` window, answers the `fallback` instead.
async fn compute<R: Reply>(
    call: &Call<'_>,
    reply: &R,
    body: impl Future<Output = R::Out>,
    lease: Option<(Lease, Option<u64>)>,
    fallback: Option<Found<R::Value>>,
    leader: Option<Leader<'_>>,
    why: Forward,
) -> R::Answer {
    let cache = call.cache;
    cache.record_miss(call.site, &call.key);
    let started = Instant::now();
    // A call nested in the body on this key must not join this flight (see `led_here`).
    let out = match &leader {
        Some(leader) => crate::flight::leading([leader], body).await,
        None => body.await,
    };
    cache.record_computed(call.site, &call.key, started.elapsed());
    let mut settled = reply.settle(out, call.ttl()).await;
    let mut stored = false;
    if let (Some(found), Some(ttl), Some((lease, l1_epoch))) = (&settled.shared, settled.ttl, &lease) {
        // A failed or dropped store is logged and counted; the caller still gets the answer.
        stored = cache.fill::<R::Value, R::Codec>(call, lease, *l1_epoch, found, started.elapsed(), ttl).await;
    }
    if let (true, Some(site)) = (settled.failed, call.site) {
        site.failed();
    }
    if let Some(leader) = leader {
        // Shared also when it is not stored: the waiters arrived while it was computed.
        leader.finish(settled.shared.as_ref(), Served::Joined(settled.ttl.unwrap_or_default()));
    }
    if settled.failed {
        if let Some(answer) = fallback.and_then(|stale| reply.answer(stale, Served::Stale)) {
            cache.record_served(call.site, &call.key, true);
            return answer;
        }
    }
    reply.forwarded(&mut settled.answer, why, stored);
    settled.answer
}
