//! The circuit breaker in front of Redis: fail at once after repeated failures, then probe.

use crate::time::now_ms;

/// Consecutive connection-level failures that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker skips Redis before letting one probe through.
const BREAKER_COOLDOWN_MS: u64 = 1000;

/// A circuit breaker: after repeated failures, Redis commands fail at once (no timeout paid)
/// for a cooldown; then one probe goes through, and its success closes the breaker.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    /// 0 = closed; else ms since the epoch until which it is open.
    open_until_ms: std::sync::atomic::AtomicU64,
    probing: std::sync::atomic::AtomicBool,
    pub(super) openings: std::sync::atomic::AtomicU64,
}

impl Breaker {
    pub(super) fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        // Half-open: one probe at a time.
        !self.probing.swap(true, Ordering::AcqRel)
    }

    pub(super) fn success(&self) {
        use std::sync::atomic::Ordering;
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(target: "cache_runtime", "redis answers again; circuit breaker closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    pub(super) fn failure(&self) {
        use std::sync::atomic::Ordering;
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if failures >= BREAKER_THRESHOLD || probe_failed {
            let was = self.open_until_ms.swap(now_ms() + BREAKER_COOLDOWN_MS, Ordering::AcqRel);
            if was == 0 {
                self.openings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "cache_runtime",
                    failures,
                    "redis keeps failing; circuit breaker open: requests skip the cache for {BREAKER_COOLDOWN_MS} ms at a time"
                );
            }
        }
    }
}
