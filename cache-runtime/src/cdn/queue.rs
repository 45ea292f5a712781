//! The purge queue: one worker task per cache sends what is queued, merged into one purge,
//! and retries a failed one with backoff, each part until `retry_for` has passed since it was
//! queued.
//!
//! A call the CDN refuses ([`PurgeError::refused`](super::PurgeError::refused): a `4xx` other
//! than `408` and `429`) is not retried as it is: one part it does not accept (a tag it
//! rejects) would keep every part merged with it waiting for `retry_for`. Its parts are sent
//! again one by one, at once; a part refused alone is given up (counted in `dropped`, logged as
//! an error), a part that fails otherwise is retried with backoff. So a refused tag costs one
//! more call per part merged with it, and never holds the others back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Purge, PurgeError, Purger};
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

/// How long one purge call may take before it counts as failed (it sends at most
/// [`MAX_TAGS`] tags and [`MAX_URLS`] URLs).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// What one purge call carries at most; more waits for the next call.
const MAX_TAGS: usize = 256;
const MAX_URLS: usize = 30;

/// One queued purge: what it asks, its ticket, and when it was queued (each is retried for
/// `retry_for` from then, whatever it is sent with).
struct Part {
    purge: Purge,
    ticket: u64,
    queued: Instant,
}

#[derive(Default)]
struct Queued {
    parts: std::collections::VecDeque<Part>,
    /// The ticket of the last purge queued.
    last: u64,
    /// A worker task runs (cleared by the worker, under the lock, when it finds nothing left).
    working: bool,
    /// That task: one that ended without clearing `working` (its runtime shut down) is
    /// replaced by the next push.
    worker: Option<tokio::task::JoinHandle<()>>,
}

/// A cache's purge queue.
pub(crate) struct PurgeQueue {
    purger: Arc<dyn Purger>,
    pub(crate) settings: PurgeSettings,
    queued: Mutex<Queued>,
    /// The last ticket settled (sent, or given up on), and every one before it.
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
        if tokio::runtime::Handle::try_current().is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "cache_runtime", tags = ?purge.tags, urls = ?purge.urls, "CDN purge dropped: no tokio runtime to send it from");
            return None;
        }
        let mut queued = lock(&self.queued);
        queued.last += 1;
        let ticket = queued.last;
        queued.parts.push_back(Part { purge, ticket, queued: Instant::now() });
        self.start_worker(&mut queued);
        Some(ticket)
    }

    /// Starts the worker unless one runs (under the queue's lock).
    fn start_worker(self: &Arc<Self>, queued: &mut Queued) {
        let alive = queued.worker.as_ref().is_some_and(|worker| !worker.is_finished());
        if (queued.working && alive) || queued.parts.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            queued.working = true;
            queued.worker = Some(runtime.spawn(Arc::clone(self).work()));
        }
    }

    /// Waits until `ticket` was sent (or given up on), at most the configured `wait`.
    pub(crate) async fn settled(&self, ticket: u64) {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(self.settings.wait, settled.wait_for(|&done| done >= ticket)).await;
    }

    /// Takes from the front of the queue what fits in one call, into `batch`; the worker stops
    /// (under the lock) when nothing is queued and `batch` is empty.
    fn take_into(&self, batch: &mut Vec<Part>) -> bool {
        let mut queued = lock(&self.queued);
        let (mut tags, mut urls) =
            batch.iter().fold((0, 0), |(t, u), p| (t + p.purge.tags.len(), u + p.purge.urls.len()));
        while let Some(next) = queued.parts.front() {
            let fits = tags + next.purge.tags.len() <= MAX_TAGS && urls + next.purge.urls.len() <= MAX_URLS;
            if !batch.is_empty() && !fits {
                break;
            }
            tags += next.purge.tags.len();
            urls += next.purge.urls.len();
            batch.extend(queued.parts.pop_front());
        }
        if batch.is_empty() {
            queued.working = false;
        }
        !batch.is_empty()
    }

    async fn work(self: Arc<Self>) {
        // Should this task end early (a purger that panics, a runtime shutting down), what it
        // held goes back to the front of the queue and another worker takes over.
        let mut guard = Worker { queue: Arc::clone(&self), batch: Vec::new(), done: false };
        while self.take_into(&mut guard.batch) {
            let mut backoff = FIRST_BACKOFF;
            // The last ticket of a part this batch sent or gave up on.
            let mut last = 0;
            loop {
                let mut purge = Purge::default();
                for part in &guard.batch {
                    purge.merge(part.purge.clone());
                }
                let Err(mut err) = self.send(&purge).await else {
                    last = guard.batch.drain(..).map(|part| part.ticket).fold(last, u64::max);
                    break;
                };
                if err.is_refused() {
                    let (done, failed) = self.send_each(&mut guard.batch, &err).await;
                    last = last.max(done);
                    err = failed.unwrap_or(err);
                }
                // Each part is given up once it has been retried for `retry_for` since it was
                // queued; the others go on.
                let retry_for = self.settings.retry_for;
                let before = guard.batch.len();
                guard.batch.retain(|part| {
                    let keep = part.queued.elapsed() < retry_for;
                    if !keep {
                        last = last.max(part.ticket);
                        tracing::error!(target: "cache_runtime", %err, tags = ?part.purge.tags, urls = ?part.purge.urls, "CDN purge given up after {retry_for:?}");
                    }
                    keep
                });
                self.dropped.fetch_add((before - guard.batch.len()) as u64, Ordering::Relaxed);
                if guard.batch.is_empty() {
                    break;
                }
                tracing::warn!(target: "cache_runtime", %err, retry_in_ms = backoff.as_millis() as u64, "CDN purge failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // What was queued meanwhile goes out with the retry (as much as fits).
                self.take_into(&mut guard.batch);
            }
            self.settled.send_if_modified(|done| {
                let newer = last > *done;
                *done = (*done).max(last);
                newer
            });
        }
        guard.done = true;
    }

    /// One purge call, bounded by [`CALL_TIMEOUT`], counted (`sent` or `failures`).
    async fn send(&self, purge: &Purge) -> Result<(), PurgeError> {
        let result = match tokio::time::timeout(CALL_TIMEOUT, self.purger.purge(purge)).await {
            Ok(result) => result,
            Err(_) => Err(PurgeError::new(format!("no answer within {CALL_TIMEOUT:?}"))),
        };
        match &result {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "cache_runtime", tags = ?purge.tags, urls = ?purge.urls, "CDN purged");
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// After the CDN refused the merged call of `batch` (with `refused`): each part sent alone
    /// (a part alone in the batch already was), and taken out of `batch` once purged, or given
    /// up if refused alone. A part that fails otherwise (the CDN is down) stops this: it and
    /// the parts not sent yet stay, to be retried together. The last ticket of the parts taken
    /// out, and that failure.
    async fn send_each(&self, batch: &mut Vec<Part>, refused: &PurgeError) -> (u64, Option<PurgeError>) {
        let sent_alone = batch.len() == 1;
        let mut last = 0;
        while let Some(part) = batch.first() {
            let alone = if sent_alone { Err(refused.clone()) } else { self.send(&part.purge).await };
            if let Some(err) = alone.as_ref().err().filter(|err| !err.is_refused()) {
                return (last, Some(err.clone()));
            }
            let part = batch.remove(0);
            last = last.max(part.ticket);
            if let Err(err) = alone {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "cache_runtime", %err, tags = ?part.purge.tags, urls = ?part.purge.urls, "CDN purge given up: the CDN refused it (a 4xx is not retried)");
            }
        }
        (last, None)
    }
}

/// The worker's hold on the parts it is sending (see [`PurgeQueue::work`]).
struct Worker {
    queue: Arc<PurgeQueue>,
    batch: Vec<Part>,
    /// Ended normally: `take_into` found nothing and cleared `working`.
    done: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queued = lock(&self.queue.queued);
        for part in self.batch.drain(..).rev() {
            queued.parts.push_front(part);
        }
        queued.working = false;
        self.queue.start_worker(&mut queued);
    }
}
