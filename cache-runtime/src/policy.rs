//! What a call's options mean: [`CallOpts`] (built by `#[cached]` in a `const`), how long an
//! entry is fresh and kept, and how a found entry may be used now ([`Freshness`], XFetch). A
//! leaf: no I/O, no store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::entry::{Found, Times};

/// Per-call options, built in a `const` by the code `#[cached]` generates.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallOpts {
    ttl: Option<Duration>,
    pub(crate) cache_none: bool,
    pub(crate) none_ttl: Option<Duration>,
    stale: Option<Duration>,
    stale_if_error: Option<Duration>,
    /// XFetch's β (`early` = 1.0).
    pub(crate) beta: Option<f64>,
    /// `lock`: how long the cross-replica lock is held at most (and waited for).
    pub(crate) lock: Option<Duration>,
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

    /// `stale` and `stale_if_error`, for the handler's `Cache-Control`.
    #[cfg(feature = "axum")]
    pub(crate) const fn stale_windows(&self) -> (Option<Duration>, Option<Duration>) {
        (self.stale, self.stale_if_error)
    }

    /// How long an entry outlives its freshness (the longer serve-stale window).
    pub(crate) fn keep(&self) -> Duration {
        self.stale.unwrap_or_default().max(self.stale_if_error.unwrap_or_default())
    }

    /// `expire`, when set: the cap of `expire_with`.
    pub const fn expire_bound(&self) -> Option<Duration> {
        self.ttl
    }

    /// `expire`, or the cache's default.
    pub(crate) fn ttl(&self, default: Duration) -> Duration {
        self.ttl.unwrap_or(default)
    }
}

/// Which computed values are stored, and for how long: `#[cached(unless = …, expire_with = …)]`,
/// and the plain API's [`get_or_fetch_with`](crate::Cache::get_or_fetch_with). `T` is the value
/// (the `Ok` of a `Result`, the `Some` of an `Option`; an axum `Response` on handlers, seen
/// before its body is read).
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::Policy;
///
/// #[derive(Clone)]
/// struct Token { secret: String, expires_in: Duration }
///
/// let policy = Policy::new()
///     .unless(|t: &Token| t.secret.is_empty())    // returned, not stored
///     .expire_with(|t: &Token| t.expires_in)      // stored for as long as it is valid
///     .at_most(Duration::from_secs(3600));        // and never longer than an hour
/// let token = Token { secret: "s".into(), expires_in: Duration::from_secs(90) };
/// assert_eq!(policy.ttl_for(&token, Duration::from_secs(60)), Some(Duration::from_secs(90)));
/// let empty = Token { secret: String::new(), expires_in: Duration::from_secs(90) };
/// assert_eq!(policy.ttl_for(&empty, Duration::from_secs(60)), None);
/// ```
pub struct Policy<T: ?Sized> {
    unless: Option<fn(&T) -> bool>,
    expire_with: Option<fn(&T) -> Duration>,
    at_most: Option<Duration>,
}

impl<T: ?Sized> Policy<T> {
    /// Every value is stored, for the call's ttl.
    pub const fn new() -> Self {
        Policy { unless: None, expire_with: None, at_most: None }
    }

    /// What `#[cached(unless = …, expire_with = …, expire = …)]` builds: one call whose
    /// arguments get their types from the value type (so `|v| v.is_empty()` needs no
    /// annotation).
    #[doc(hidden)]
    pub const fn of(
        unless: Option<fn(&T) -> bool>,
        expire_with: Option<fn(&T) -> Duration>,
        at_most: Option<Duration>,
    ) -> Self {
        Policy { unless, expire_with, at_most }
    }

    /// A value for which `predicate` says `true` is returned to its caller but not stored.
    pub const fn unless(mut self, predicate: fn(&T) -> bool) -> Self {
        self.unless = Some(predicate);
        self
    }

    /// A value is stored fresh for as long as `lifetime` says (then its `stale` windows); a zero
    /// lifetime means "do not store". Capped by [`at_most`](Self::at_most) when set.
    pub const fn expire_with(mut self, lifetime: fn(&T) -> Duration) -> Self {
        self.expire_with = Some(lifetime);
        self
    }

    /// The longest lifetime `expire_with` may give (`#[cached]`'s `expire`, when both are set).
    pub const fn at_most(mut self, max: Duration) -> Self {
        self.at_most = Some(max);
        self
    }

    /// How long `value` is stored fresh: `None` when it is not stored. `ttl`: the call's
    /// lifetime without `expire_with`.
    pub fn ttl_for(&self, value: &T, ttl: Duration) -> Option<Duration> {
        if self.unless.is_some_and(|unless| unless(value)) {
            return None;
        }
        let ttl = match self.expire_with {
            Some(lifetime) => self.at_most.map_or(lifetime(value), |max| lifetime(value).min(max)),
            None => ttl,
        };
        (!ttl.is_zero()).then_some(ttl)
    }

    /// How long what a body produced is stored: a value as [`ttl_for`](Self::ttl_for) says, a
    /// `None` (a negative entry) for `ttl` (`cache_none` decides whether it is kept at all).
    pub(crate) fn ttl_of(&self, found: &Found<T>, ttl: Duration) -> Option<Duration>
    where
        T: Sized,
    {
        match found {
            Found::Value(value) => self.ttl_for(value, ttl),
            Found::Negative => Some(ttl),
        }
    }

    /// This policy, with `at_most` set to `max` unless it has one.
    pub(crate) fn bounded_by(mut self, max: Duration) -> Self {
        self.at_most = self.at_most.or(Some(max));
        self
    }
}

impl<T: ?Sized> Clone for Policy<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Policy<T> {}

impl<T: ?Sized> PartialEq for Policy<T> {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: Option<fn(&T) -> bool>, b: Option<fn(&T) -> bool>| match (a, b) {
            (Some(a), Some(b)) => std::ptr::fn_addr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let same_lifetime = match (self.expire_with, other.expire_with) {
            (Some(a), Some(b)) => std::ptr::fn_addr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        same(self.unless, other.unless) && same_lifetime && self.at_most == other.at_most
    }
}

impl<T: ?Sized> Eq for Policy<T> {}

impl<T: ?Sized> Default for Policy<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ?Sized> std::fmt::Debug for Policy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("unless", &self.unless.is_some())
            .field("expire_with", &self.expire_with.is_some())
            .field("at_most", &self.at_most)
            .finish()
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
    pub(crate) fn freshness(&self, rng: &Rng, times: &Times, now: u64) -> Freshness {
        if now < times.fresh_until_ms {
            if let Some(beta) = self.beta {
                let delta = f64::from(times.recompute_ms);
                if now as f64 - delta * beta * rng.draw().ln() >= times.fresh_until_ms as f64 {
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

    /// The freshness of a found entry; a fresh one the fast path already drew for an early
    /// refresh is not drawn again (one draw per read, or a refresh would need two successes,
    /// as if β were halved). `now`: `now_ms()`, read once for many entries (a batch's).
    pub(crate) fn freshness_once(&self, rng: &Rng, times: &Times, drawn_early: bool, now: u64) -> Freshness {
        if drawn_early && now < times.fresh_until_ms {
            Freshness::RefreshEarly
        } else {
            self.freshness(rng, times, now)
        }
    }
}

/// The random source of XFetch: SplitMix64, seedable for tests (`random_seed`).
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new(seed: Option<u64>) -> Rng {
        Rng(AtomicU64::new(seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        })))
    }

    /// A uniform draw in (0, 1].
    pub(crate) fn draw(&self) -> f64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(fresh_until_ms: u64, recompute_ms: u32) -> Times {
        Times { fresh_until_ms, recompute_ms }
    }

    #[test]
    fn xfetch_refreshes_with_the_expected_probability() {
        let rng = Rng::new(Some(42));
        let opts = CallOpts::new().early(1.0);
        // Δ = 100 ms, β = 1, 100 ms before expiry: P(refresh) = P(−ln r ≥ 1) = e⁻¹.
        let now = 1_000_000;
        let draws = 20_000;
        let early =
            (0..draws).filter(|_| opts.freshness(&rng, &times(now + 100, 100), now) == Freshness::RefreshEarly).count();
        let p = early as f64 / f64::from(draws);
        assert!((p - (-1.0f64).exp()).abs() < 0.02, "p = {p}");
        // Far from expiry: (almost) never; past it: never "early" but stale or gone.
        let far =
            (0..draws).filter(|_| opts.freshness(&rng, &times(now + 5_000, 100), now) != Freshness::Fresh).count();
        assert!(far < 5, "{far}");
        assert_eq!(opts.freshness(&rng, &times(now - 1, 100), now), Freshness::Gone);
    }

    #[test]
    fn a_seeded_source_repeats_its_draws() {
        let draw = |seed| {
            let rng = Rng::new(Some(seed));
            (0..5).map(|_| rng.draw()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(9).iter().all(|r| *r > 0.0 && *r <= 1.0));
    }

    #[test]
    fn stale_windows_classify_expired_entries() {
        let rng = Rng::new(None);
        let opts = CallOpts::new().stale(Duration::from_secs(10)).stale_if_error(Duration::from_secs(60));
        let now = 1_000_000;
        assert_eq!(opts.freshness(&rng, &times(now + 1, 0), now), Freshness::Fresh);
        assert_eq!(opts.freshness(&rng, &times(now - 5_000, 0), now), Freshness::Stale);
        assert_eq!(opts.freshness(&rng, &times(now - 30_000, 0), now), Freshness::Fallback);
        assert_eq!(opts.freshness(&rng, &times(now - 90_000, 0), now), Freshness::Gone);
        assert_eq!(opts.keep(), Duration::from_secs(60));
    }
}
