//! Cross-replica claims: the refresh claim of `stale` / `early` (one refresh per key) and the
//! `lock` of `#[cached(lock)]` (one computation per key), with the guard that releases a lock
//! whose holder was cancelled.

use std::time::Duration;

use crate::cache::{Cache, Call};
use crate::codec::{Codec, Stored};
use crate::entry::{Found, Lookup, Times};
#[cfg(feature = "redis")]
use crate::lock::Attempt;
#[cfg(feature = "redis")]
use crate::policy::duration_ms;
#[cfg(feature = "redis")]
use crate::time::now_ms;

impl Cache {
    /// Claims the right to refresh `key` (one refresh per key in this process and, on Redis,
    /// across replicas: `SET …}:r NX PX`). The claim lapses after `hold`.
    pub(crate) async fn claim_refresh(&self, key: &str, hold: Duration) -> bool {
        let local = self.inner.refreshing.entry(key.to_owned()).or_insert(()).is_fresh();
        if !local {
            return false;
        }
        tracing::debug!(target: "cache_runtime", key = %self.log_key(key), "refresh");
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis_store() {
            let claimed = redis.claim_token(&refresh_key(key), "1", hold).await;
            self.count_result(&claimed, "claim refresh");
            if !matches!(claimed, Ok(true)) {
                self.inner.refreshing.invalidate(key);
            }
            return matches!(claimed, Ok(true));
        }
        let _ = hold;
        true
    }

    /// `lock`: on Redis, hold the key's cross-replica lock to compute it, or wait for the
    /// holder's value (woken when it lands). In memory, single-flight already is the lock.
    pub(crate) async fn lock_or_wait<V: Stored, C: Codec<V>>(&self, call: &Call<'_>, hold: Duration) -> Locked<V> {
        #[cfg(feature = "redis")]
        if let Some((redis, locks)) = self.redis_locks() {
            return self.lock_on_redis::<V, C>(call, hold, redis, locks).await;
        }
        let _ = (call, hold);
        Locked::Compute { token: None, lookup: None }
    }

    #[cfg(feature = "redis")]
    async fn lock_on_redis<V: Stored, C: Codec<V>>(
        &self,
        call: &Call<'_>,
        hold: Duration,
        redis: &std::sync::Arc<crate::store::RedisStore>,
        locks: &std::sync::Arc<crate::lock::Locks>,
    ) -> Locked<V> {
        let key = call.key.as_str();
        let deadline = now_ms().saturating_add(duration_ms(hold));
        let mut waited = false;
        loop {
            match locks.attempt(redis, key, hold, deadline).await {
                Attempt::Held(token) if !waited => {
                    return Locked::Compute { token: Some(self.held(key, token)), lookup: None }
                }
                Attempt::Held(token) => {
                    // The previous holder may have stored the value meanwhile.
                    let lookup = self.lookup::<V, C>(call, false).await;
                    if let Some((found, times)) = lookup.hit.as_ref().filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        let ready = Locked::Ready(found.clone(), *times);
                        locks.release(redis, key, &token).await;
                        return ready;
                    }
                    return Locked::Compute { token: Some(self.held(key, token)), lookup: Some(lookup) };
                }
                Attempt::Retry => {
                    waited = true;
                    let lookup = self.lookup::<V, C>(call, false).await;
                    if let Some((found, times)) = lookup.hit.filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        return Locked::Ready(found, times);
                    }
                }
                Attempt::TimedOut => {
                    let lookup = self.lookup::<V, C>(call, false).await;
                    if let Some((found, times)) = lookup.hit.as_ref().filter(|(_, t)| t.fresh_until_ms > now_ms()) {
                        return Locked::Ready(found.clone(), *times);
                    }
                    return Locked::Compute { token: None, lookup: Some(lookup) };
                }
            }
        }
    }

    /// Releases a lock taken by `lock_or_wait` and wakes its waiters.
    async fn unlock(&self, key: &str, token: &str) {
        #[cfg(feature = "redis")]
        if let Some((redis, locks)) = self.redis_locks() {
            locks.release(redis, key, token).await;
        }
        let _ = (key, token);
    }

    #[cfg(feature = "redis")]
    fn held(&self, key: &str, token: String) -> HeldLock {
        HeldLock { cache: self.clone(), key: key.to_owned(), token: Some(token) }
    }

    pub(crate) async fn release_refresh(&self, key: &str) {
        self.inner.refreshing.invalidate(key);
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis_store() {
            let _ = redis.unlink(&refresh_key(key)).await;
        }
    }
}

/// A cross-replica lock this caller holds (`lock`): released by [`HeldLock::release`] once the
/// value is stored, or, should the caller be cancelled or panic first, by a task its drop spawns
/// (the waiters then go on at once instead of waiting out the hold).
pub(crate) struct HeldLock {
    cache: Cache,
    key: String,
    token: Option<String>,
}

impl HeldLock {
    /// Releases the lock and wakes its waiters.
    pub(crate) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            self.cache.unlock(&self.key, &token).await;
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { cache.unlock(&key, &token).await });
        }
    }
}

/// What `lock_or_wait` gave.
pub(crate) enum Locked<V> {
    /// Compute the value (holding the lock when `token` is set); `lookup`: a newer read to use
    /// instead of the caller's (its lease is the current one).
    Compute { token: Option<HeldLock>, lookup: Option<Lookup<V>> },
    /// The holder's value.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Ready(Found<V>, Times),
}

#[cfg(feature = "redis")]
fn refresh_key(key: &str) -> String {
    format!("{key}:r")
}
