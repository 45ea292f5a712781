//! `lock`: one caller per key across replicas computes a missing value.
//!
//! The holder takes `SET …}:l <token> NX PX <hold>`, computes, stores, then releases the lock
//! with a compare-and-delete (only its own token) and publishes the key on `<prefix>:filled`.
//! Waiters are woken by that message (one subscription per process, dispatching to in-process
//! waiters by key) and read the value; a lock whose holder died expires after `hold`, and a
//! waiter that reaches its deadline computes the value itself rather than fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{listen, Listener, Received, RedisStore};
use crate::sync::lock;
use crate::time::now_ms;

/// Longest a waiter sleeps before looking at the store again, should a wake-up be lost.
const RECHECK: Duration = Duration::from_millis(250);

/// Compare-and-delete: releases the lock only if it still holds this caller's token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub(crate) struct Locks {
    channel: String,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    started: AtomicBool,
    live: AtomicBool,
    next_token: AtomicU64,
    release: redis::Script,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks").field("channel", &self.channel).finish_non_exhaustive()
    }
}

pub(crate) fn lock_key(key: &str) -> String {
    format!("{key}:l")
}

/// What an attempt to lock a key gave.
pub(crate) enum Attempt {
    /// This caller holds the lock: compute, store, then `release`.
    Held(String),
    /// A holder published the key (or a wait ended): read the store again.
    Retry,
    /// The deadline passed: compute without the lock.
    TimedOut,
}

impl Locks {
    pub(crate) fn new(prefix: &str, redis: &RedisStore) -> Self {
        Locks {
            channel: redis.channel(prefix, "filled"),
            waiters: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            live: AtomicBool::new(false),
            next_token: AtomicU64::new(u64::from(std::process::id()) << 32 ^ now_ms()),
            release: redis::Script::new(RELEASE),
        }
    }

    fn ensure_started(self: &Arc<Self>, redis: &Arc<RedisStore>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(listen(Arc::downgrade(self), Arc::clone(redis)))),
            Err(_) => self.started.store(false, Ordering::Release),
        }
    }

    /// Tries to take the lock of `key`; if another caller holds it, waits for its value (until
    /// `deadline`, ms since the epoch).
    pub(crate) async fn attempt(
        self: &Arc<Self>,
        redis: &Arc<RedisStore>,
        key: &str,
        hold: Duration,
        deadline: u64,
    ) -> Attempt {
        self.ensure_started(redis);
        let notify = Arc::clone(lock(&self.waiters).entry(key.to_owned()).or_default());
        // Registered before the lock is tried: a publish right after a failed try still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let token = format!("{:x}", self.next_token.fetch_add(1, Ordering::Relaxed));
        match redis.claim_token(&lock_key(key), &token, hold).await {
            Ok(true) => return Attempt::Held(token),
            Ok(false) => {}
            // Redis failing: compute without the lock (fail open).
            Err(_) => return Attempt::TimedOut,
        }
        let now = now_ms();
        if now >= deadline {
            return Attempt::TimedOut;
        }
        let wait = Duration::from_millis(deadline - now).min(if self.live.load(Ordering::Acquire) {
            RECHECK
        } else {
            Duration::from_millis(20)
        });
        let _ = tokio::time::timeout(wait, notified).await;
        Attempt::Retry
    }

    /// Releases the lock (only if it is still this caller's) and wakes the waiters, here and on
    /// every replica.
    pub(crate) async fn release(&self, redis: &RedisStore, key: &str, token: &str) {
        let lock_key = lock_key(key);
        let mut cmd = crate::store::evalsha(&self.release, 1);
        cmd.arg(&lock_key).arg(token);
        let _ = redis.invoke::<i64>(&self.release, &cmd).await;
        let _ = redis.publish(&self.channel, key.as_bytes()).await;
    }

    fn wake(&self, key: &str) {
        if let Some(notify) = lock(&self.waiters).remove(key) {
            notify.notify_waiters();
        }
    }
}

/// One subscription per process to `<prefix>:filled` (run by `store::pubsub::listen`), waking
/// the waiters of each key.
impl Listener for Locks {
    fn channels(&self) -> Vec<String> {
        vec![self.channel.clone()]
    }

    fn subscribed(&self, _: &RedisStore) {
        self.live.store(true, Ordering::Release);
    }

    fn message(&self, _: &Arc<RedisStore>, message: Received) {
        if let Ok(key) = std::str::from_utf8(&message.payload) {
            self.wake(key);
        }
    }

    fn lost(&self) {
        self.live.store(false, Ordering::Release);
    }
}
