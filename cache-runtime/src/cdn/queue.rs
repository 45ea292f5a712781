//! The purge queue: one worker task per cache sends what is queued, merged into one purge,
//! and retries a failed one with backoff until `retry_for` has passed since its oldest part
//! was queued.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Purge, Purger};
use crate::sync::lock;

/// Maps an invalidated key (its namespace, escaped, and the key as written) to the URL the
/// CDN caches it under.
pub(crate) type UrlOf = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// The purge settings of a [`CacheBuilder`](crate::CacheBuilder).
#[derive(Clone)]
pub(crate) struct PurgeSettings {
    pub(crate) purger: Option<Arc<dyn Purger>>,
    pub(crate) wait: Duration,
    pub(crate) retry_for: Duration,
    pub(crate) url_of: Option<UrlOf>,
}

impl Default for PurgeSettings {
    fn default() -> Self {
        PurgeSettings { purger: None, wait: Duration::from_secs(1), retry_for: Duration::from_secs(300), url_of: None }
    }
}

impl fmt::Debug for PurgeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeSettings")
            .field("purger", &self.purger.is_some())
            .field("wait", &self.wait)
            .field("retry_for", &self.retry_for)
            .field("purge_urls", &self.url_of.is_some())
            .finish_non_exhaustive()
    }
}

/// How long one purge call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queued {
    purge: Purge,
    /// The ticket of the last purge queued.
    last: u64,
    /// When the oldest purge still queued was queued.
    since: Option<Instant>,
    /// A worker task is running.
    working: bool,
}

/// A cache's purge queue.
pub(crate) struct PurgeQueue {
    purger: Arc<dyn Purger>,
    pub(crate) settings: PurgeSettings,
    queued: Mutex<Queued>,
    /// The last ticket settled (sent, or given up on).
    settled: watch::Sender<u64>,
    pub(crate) sent: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl fmt::Debug for PurgeQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeQueue").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl PurgeQueue {
    /// The queue of `settings`' purger (`None` without one).
    pub(crate) fn new(settings: PurgeSettings) -> Option<Arc<Self>> {
        Some(Arc::new(PurgeQueue {
            purger: Arc::clone(settings.purger.as_ref()?),
            settings,
            queued: Mutex::new(Queued::default()),
            settled: watch::Sender::new(0),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues `purge`; its ticket, for [`settled`](Self::settled). Outside a tokio runtime
    /// nothing can send it: it is dropped (counted and logged).
    pub(crate) fn push(self: &Arc<Self>, purge: Purge) -> Option<u64> {
        if purge.is_empty() {
            return None;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "cache_runtime", tags = ?purge.tags, urls = ?purge.urls, "CDN purge dropped: no tokio runtime to send it from");
            return None;
        };
        let mut queued = lock(&self.queued);
        queued.purge.merge(purge);
        queued.last += 1;
        queued.since.get_or_insert_with(Instant::now);
        let ticket = queued.last;
        if !queued.working {
            queued.working = true;
            runtime.spawn(Arc::clone(self).work());
        }
        Some(ticket)
    }

    /// Waits until `ticket` was sent (or given up on), at most the configured `wait`.
    pub(crate) async fn settled(&self, ticket: u64) {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(self.settings.wait, settled.wait_for(|&done| done >= ticket)).await;
    }

    /// Everything queued, with its last ticket and when its oldest part was queued; the worker
    /// stops (under the lock) when nothing is.
    fn take(&self) -> Option<(Purge, u64, Instant)> {
        let mut queued = lock(&self.queued);
        match queued.since.take() {
            Some(since) => Some((std::mem::take(&mut queued.purge), queued.last, since)),
            None => {
                queued.working = false;
                None
            }
        }
    }

    async fn work(self: Arc<Self>) {
        while let Some((mut purge, mut last, since)) = self.take() {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let result = match tokio::time::timeout(CALL_TIMEOUT, self.purger.purge(&purge)).await {
                    Ok(result) => result,
                    Err(_) => Err(super::PurgeError::new(format!("no answer within {CALL_TIMEOUT:?}"))),
                };
                match result {
                    Ok(()) => {
                        self.sent.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(target: "cache_runtime", tags = ?purge.tags, urls = ?purge.urls, "CDN purged");
                        break;
                    }
                    Err(err) if since.elapsed() >= self.settings.retry_for => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(target: "cache_runtime", %err, tags = ?purge.tags, urls = ?purge.urls, "CDN purge given up after {:?}", self.settings.retry_for);
                        break;
                    }
                    Err(err) => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "cache_runtime", %err, retry_in_ms = backoff.as_millis() as u64, "CDN purge failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        // What was queued meanwhile goes out with the retry.
                        let mut queued = lock(&self.queued);
                        if queued.since.take().is_some() {
                            purge.merge(std::mem::take(&mut queued.purge));
                            last = queued.last;
                        }
                    }
                }
            }
            self.settled.send_replace(last);
        }
    }
}
