//! Invalidation: the only way an invalidation leaves the process. Applied to the writer's L1,
//! then the store, then published to every replica; one that fails is queued and retried
//! (before this cache reads Redis again, and in the background) so it is never lost. Once
//! applied, it goes to the CDN purger, if there is one (`cdn.rs`).

use crate::cache::Cache;
use crate::cdn::{cdn_tag, namespace_tag, Purge};
use crate::entry::Op;
use crate::error::CacheError;
use crate::sync::lock;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Cache {
    /// Applies one invalidation; one that fails on Redis is queued and retried before this
    /// cache reads from Redis again (so it is never silently lost), and the error returned.
    /// Returns how many entries a namespace clear removed (0 for keys and tags). Waits for the
    /// CDN purge it causes at most `purge_wait`.
    pub(crate) async fn apply(&self, op: Op) -> Result<u64, CacheError> {
        let (result, purge) = self.apply_stored(op).await;
        self.purge_settled(purge).await;
        result
    }

    /// [`apply`](Self::apply) without waiting for the CDN: the result, and the ticket of the
    /// CDN purge it queued.
    async fn apply_stored(&self, op: Op) -> (Result<u64, CacheError>, Option<u64>) {
        let started = std::time::Instant::now();
        let mut result = self.invalidate_stored(&op).await;
        // A failure while Redis answers otherwise (a fail-over, a dropped connection: not a
        // timeout) is retried here a few times (50, 100, 200 ms) before the write returns:
        // queued, it would reach the other replicas' L1s only after the write returned. A
        // timeout or an open breaker (Redis unreachable: every replica's channel notices within
        // `l1_staleness_bound`) is queued at once.
        for backoff_ms in [50, 100, 200] {
            match &result {
                Err(CacheError::Timeout | CacheError::Unavailable) | Ok(_) => break,
                Err(_) if self.inner.has_pending.load(Ordering::Acquire) => break,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    result = self.invalidate_stored(&op).await;
                }
            }
        }
        self.count_result(&result, "invalidate");
        match result {
            Ok(removed) => {
                self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                metrics::counter!("cache_invalidations_total").increment(1);
                let (kind, what) = match &op {
                    Op::Key(key) => ("key", self.log_key(key).to_string()),
                    Op::Tag(tag) => ("tag", self.log_key(tag).to_string()),
                    Op::Namespace(ns) => ("namespace", ns.clone()),
                };
                tracing::debug!(target: "cache_runtime", kind, what, took_ms = started.elapsed().as_secs_f64() * 1e3, "invalidated");
                (Ok(removed), self.purge_cdn(&op))
            }
            Err(err) => {
                // The CDN is purged once the queued invalidation is applied: purged before, it
                // could fetch the old answer from a replica again.
                // Queued: this cache's next read applies it first (or reads nothing), so a
                // flight that begins now cannot serve what it invalidates; one that began
                // before could.
                self.forget_flights(&op);
                lock(&self.inner.pending).push(op);
                self.inner.has_pending.store(true, Ordering::Release);
                self.retry_in_background();
                (Err(err), None)
            }
        }
    }

    /// Ends the single-flight reads `op` touches for every caller arriving from now on (see
    /// `flight.rs`): a key's, or all of them for a tag or a namespace. Called once the store
    /// forgot what `op` invalidates (or `op` is queued: the next read applies it first).
    pub(crate) fn forget_flights(&self, op: &Op) {
        self.inner.flights.forget(match op {
            Op::Key(key) => Some(key),
            Op::Tag(_) | Op::Namespace(_) => None,
        });
    }

    /// Queues the CDN purge of an applied invalidation; its ticket.
    fn purge_cdn(&self, op: &Op) -> Option<u64> {
        let queue = self.inner.purge.as_ref()?;
        let purge = match op {
            Op::Tag(tag) => Purge::new([cdn_tag(tag)], None::<String>),
            Op::Namespace(ns) => Purge::new([namespace_tag(ns)], None::<String>),
            Op::Key(key) => {
                let url_of = queue.settings.url_of.as_ref()?;
                let (namespace, key) = self.split_key(key)?;
                Purge::new(None::<String>, url_of(namespace, key))
            }
        };
        queue.push(purge)
    }

    /// Waits for a CDN purge, at most `purge_wait`.
    async fn purge_settled(&self, ticket: Option<u64>) {
        if let (Some(queue), Some(ticket)) = (&self.inner.purge, ticket) {
            queue.settled(ticket).await;
        }
    }

    /// Keeps retrying queued invalidations until they are applied, so that other replicas
    /// (which read Redis, not this queue) stop seeing what they invalidate as soon as Redis
    /// answers, even if this replica reads nothing meanwhile.
    fn retry_in_background(&self) {
        if self.inner.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.retrying.store(false, Ordering::Release);
            return;
        };
        let cache = self.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if cache.flush_pending().await {
                    break;
                }
            }
            cache.inner.retrying.store(false, Ordering::Release);
            // An invalidation queued between the last flush and the flag reset.
            if cache.inner.has_pending.load(Ordering::Acquire) {
                cache.retry_in_background();
            }
        });
    }

    /// Retries queued invalidations; `true` when none is left.
    pub(crate) async fn flush_pending(&self) -> bool {
        if !self.inner.has_pending.load(Ordering::Acquire) {
            return true;
        }
        let ops = std::mem::take(&mut *lock(&self.inner.pending));
        let mut failed = Vec::new();
        for op in ops {
            if self.invalidate_stored(&op).await.is_err() {
                failed.push(op);
            } else {
                self.inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                self.purge_cdn(&op);
            }
        }
        let mut pending = lock(&self.inner.pending);
        failed.append(&mut pending);
        *pending = failed;
        let empty = pending.is_empty();
        self.inner.has_pending.store(!empty, Ordering::Release);
        empty
    }
}

/// What one `#[invalidates]` call invalidates, rendered before its body runs.
#[doc(hidden)]
#[derive(Debug)]
pub struct Invalidation<'a> {
    cache: &'a Cache,
    ops: Vec<Op>,
}

impl<'a> Invalidation<'a> {
    pub fn new(cache: &'a Cache) -> Self {
        Invalidation { cache, ops: Vec::new() }
    }

    /// A full stored key (built with the cache's key writer).
    pub fn key(mut self, key: String) -> Self {
        self.ops.push(Op::Key(key));
        self
    }

    pub fn tag(mut self, tag: String) -> Self {
        self.ops.push(Op::Tag(tag));
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.ops.push(Op::Namespace(namespace.to_owned()));
        self
    }

    /// Applies every invalidation; failures are logged, counted and queued for retry (they
    /// never fail the request that caused them). Then waits for their CDN purge (one, for all
    /// of them), at most `purge_wait`.
    pub async fn run(&self) {
        let mut last = None;
        for op in &self.ops {
            let (_, ticket) = self.cache.apply_stored(op.clone()).await;
            last = ticket.or(last);
        }
        self.cache.purge_settled(last).await;
    }
}
