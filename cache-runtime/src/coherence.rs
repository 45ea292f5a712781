//! The process-memory tier (L1) in front of Redis, kept coherent across replicas.
//!
//! - Every invalidation is applied to the writer's own L1 first, then in Redis, then published
//!   on `<prefix>:inv`. Every subscribed replica (the writer included) applies it to its L1 and
//!   acknowledges on `<prefix>:ack`; the writer waits for as many acknowledgements as `PUBLISH`
//!   reported receivers (bounded by the coherence timeout). So when a write's invalidation
//!   returns, no connected replica's L1 still holds what it invalidated.
//! - Tags: a message carries the tag's new version; an L1 entry is used only while every tag it
//!   recorded has the version this process last learned.
//! - The L1 fill race (a replica reads an old value from Redis, the invalidation arrives before
//!   the value is in its L1, then the old value lands in L1): every message bumps an epoch, and
//!   a value enters L1 only if the epoch did not move since before its Redis read.
//! - Pub/sub is at-most-once: when the subscription drops or stops answering pings, the L1 is
//!   flushed and not used until the channel is subscribed again.
//! - The L1 answers only while its channel was confirmed alive recently: the subscription's
//!   connection is pinged every quarter of the staleness bound (`l1_staleness_bound`, 1 s by
//!   default), and the L1 is flushed and bypassed once the bound passes since the last ping
//!   that was answered. A pong on the subscription's connection also means every message
//!   published before that ping was received, so a replica cut off from Redis (paused, or a
//!   network partition that leaves TCP open) serves what a write invalidated for at most the
//!   bound after the write.
//! - While the channel is down (lost, or not subscribable), every entry read from Redis is a
//!   miss, and after it is back, entries stored before are misses for [`RECOVERY_GRACE_MS`]: a
//!   write made meanwhile by another process may have its invalidation still queued there
//!   (applied as soon as that process reaches Redis again). Redis may answer reads before the
//!   subscription is back (a paused Redis that resumes answers the reads waiting on it first).
//! - A process without an L1 (`l1(false)`) still publishes every invalidation it makes, so the
//!   L1s of the other replicas hear of its writes; and it listens (and acknowledges) too: every
//!   message ends the single-flight reads it touches (`flight.rs`), so that a read starting
//!   after a write returned never shares the answer of a read that began before it, on any
//!   replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::flight::Flights;
use crate::key;
use crate::store::{listen, Listener, MemoryStore, Received, RedisStore};
use crate::sync::lock;

/// One invalidation as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Key(String),
    Tag { tag: String, version: u64 },
    Namespace(String),
}

impl Message {
    fn encode(&self, id: u64) -> String {
        match self {
            Message::Key(key) => format!("k {id} {key}"),
            Message::Tag { tag, version } => format!("t {id} {version} {tag}"),
            Message::Namespace(ns) => format!("n {id} {ns}"),
        }
    }

    fn decode(text: &str) -> Option<(u64, Message)> {
        let (kind, rest) = text.split_once(' ')?;
        let (id, rest) = rest.split_once(' ')?;
        let id = id.parse().ok()?;
        let message = match kind {
            "k" => Message::Key(rest.to_owned()),
            "t" => {
                let (version, tag) = rest.split_once(' ')?;
                Message::Tag { tag: tag.to_owned(), version: version.parse().ok()? }
            }
            "n" => Message::Namespace(rest.to_owned()),
            _ => return None,
        };
        Some((id, message))
    }
}

struct AckWait {
    needed: AtomicUsize,
    got: AtomicUsize,
    done: Notify,
}

/// The L1 of one `Cache` and its invalidation channel.
pub(crate) struct Coherence {
    /// Empty and unused in a process without an L1 (`l1(false)`).
    pub(crate) l1: MemoryStore,
    /// The cache's single-flight reads, which every message applied here ends for later callers.
    flights: Arc<Flights>,
    /// The L1 answers only while a ping on its channel was answered this recently.
    staleness_bound: Duration,
    /// Entries stay in L1 at most this long.
    pub(crate) l1_ttl: Duration,
    prefix: String,
    channel: String,
    ack_channel: String,
    /// Subscribed and answering: only then is the L1 used.
    live: AtomicBool,
    /// Bumped by every message applied and every channel loss.
    epoch: AtomicU64,
    started: AtomicBool,
    ack_timeout: Duration,
    waits: Mutex<HashMap<u64, Arc<AckWait>>>,
    next_id: AtomicU64,
    /// The channel was lost (or could not be subscribed) since it was last subscribed.
    outage: AtomicBool,
    /// When the channel was subscribed again after an outage (ms since the epoch; 0 = never).
    recovered_at_ms: AtomicU64,
}

/// After an outage, how long entries stored in Redis before the channel came back are not
/// trusted: a write made during the outage may have its invalidation queued in its writer's
/// process, applied once that process reaches Redis again (at once when its own channel is
/// back, within the breaker's 1 s cooldown and a 100 ms retry otherwise).
pub(crate) const RECOVERY_GRACE_MS: u64 = 2_000;

impl std::fmt::Debug for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherence").field("channel", &self.channel).field("live", &self.live).finish_non_exhaustive()
    }
}

impl Coherence {
    /// `l1`: the L1's bounds (entries, bytes), or `None` for a process without an L1 (it
    /// publishes, and listens only to end its flights).
    pub(crate) fn new(
        prefix: &str,
        redis: &RedisStore,
        l1: Option<(u64, Option<u64>)>,
        l1_ttl: Duration,
        (ack_timeout, staleness_bound): (Duration, Duration),
        flights: Arc<Flights>,
    ) -> Self {
        let (l1_max_entries, l1_max_bytes) = l1.unwrap_or((0, None));
        Coherence {
            l1: MemoryStore::new(l1_max_entries, l1_max_bytes),
            flights,
            staleness_bound,
            l1_ttl,
            prefix: prefix.to_owned(),
            channel: redis.channel(prefix, "inv"),
            ack_channel: redis.channel(prefix, "ack"),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            started: AtomicBool::new(false),
            ack_timeout,
            waits: Mutex::new(HashMap::new()),
            // Ids only need to be unique among in-flight invalidations of all replicas.
            next_id: AtomicU64::new(u64::from(std::process::id()) << 40 | (crate::time::now_ms() & 0xFF_FFFF_FFFF)),
            outage: AtomicBool::new(false),
            recovered_at_ms: AtomicU64::new(0),
        }
    }

    /// Whether an entry stored at `stored_at_ms` may be served from Redis: not while the
    /// channel is down (lost, and not subscribed again yet: Redis may answer this process's
    /// reads before its subscription is back, as when a paused Redis resumes), and not if it
    /// was stored before the channel came back from an outage less than [`RECOVERY_GRACE_MS`]
    /// ago. Either way an invalidation of it may still be queued in another process, which
    /// could not reach Redis meanwhile.
    #[inline]
    pub(crate) fn trusted(&self, stored_at_ms: u64) -> bool {
        if self.outage.load(Ordering::Acquire) {
            return false;
        }
        let recovered = self.recovered_at_ms.load(Ordering::Acquire);
        recovered == 0
            || stored_at_ms >= recovered
            || crate::time::now_ms() >= recovered.saturating_add(RECOVERY_GRACE_MS)
    }

    /// Whether the L1 may be used (the channel is subscribed and healthy).
    #[inline]
    pub(crate) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts the subscriber on first use (it needs a Tokio runtime, which `build` may lack).
    pub(crate) fn ensure_started(self: &Arc<Self>, redis: &Arc<RedisStore>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        handle.spawn(listen(Arc::downgrade(self), Arc::clone(redis)));
    }

    /// Applies a message to this process's L1.
    pub(crate) fn apply_local(&self, message: &Message) {
        match message {
            Message::Key(key) => {
                // The key's value, and every other representation of it (see `key.rs`).
                self.l1.remove(key);
                self.l1.forget_tag(&key::key_tag(key));
            }
            Message::Tag { tag, version } => self.l1.learn_tag(tag, *version),
            Message::Namespace(ns) => {
                self.l1.clear_namespace(ns, &key::namespace_start(&self.prefix, ns));
            }
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes every L1 entry tagged `tag` unusable until the tag's new version is learned.
    pub(crate) fn forget_tag(&self, tag: &str) {
        self.l1.forget_tag(tag);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Publishes `message` and waits until every replica that received it has applied it (or
    /// the coherence timeout passes). Returns the number of receivers.
    pub(crate) async fn publish(&self, redis: &RedisStore, message: &Message) -> Result<usize, crate::CacheError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wait =
            Arc::new(AckWait { needed: AtomicUsize::new(usize::MAX), got: AtomicUsize::new(0), done: Notify::new() });
        lock(&self.waits).insert(id, Arc::clone(&wait));
        let published = redis.publish(&self.channel, message.encode(id).as_bytes()).await;
        if let Ok(receivers) = published {
            wait.needed.store(receivers, Ordering::Release);
            if wait.got.load(Ordering::Acquire) < receivers {
                let notified = wait.done.notified();
                if wait.got.load(Ordering::Acquire) < receivers
                    && tokio::time::timeout(self.ack_timeout, notified).await.is_err()
                {
                    tracing::debug!(target: "cache_runtime", receivers, acked = wait.got.load(Ordering::Acquire), "not every replica acknowledged an invalidation in time");
                }
            }
        }
        lock(&self.waits).remove(&id);
        published
    }

    fn acked(&self, id: u64) {
        let wait = lock(&self.waits).get(&id).cloned();
        if let Some(wait) = wait {
            let got = wait.got.fetch_add(1, Ordering::AcqRel) + 1;
            if got >= wait.needed.load(Ordering::Acquire) {
                wait.done.notify_one();
            }
        }
    }
}

/// The channel's subscription (run by `store::pubsub::listen`): applies messages to the L1 and
/// acknowledges them; on any failure the L1 is flushed until the channel is back.
impl Listener for Coherence {
    fn channels(&self) -> Vec<String> {
        // Also without an L1: the messages end single-flight reads (see the module's docs).
        vec![self.channel.clone(), self.ack_channel.clone()]
    }

    fn staleness_bound(&self) -> Option<Duration> {
        Some(self.staleness_bound)
    }

    fn unreachable(&self) {
        self.outage.store(true, Ordering::Release);
    }

    fn subscribed(&self, redis: &RedisStore) {
        // Only this subscription's task changes `outage`: the recovery instant is in place
        // before the outage ends, so that `trusted` never sees the end without it.
        if self.outage.load(Ordering::Acquire) {
            self.recovered_at_ms.store(crate::time::now_ms(), Ordering::Release);
            self.outage.store(false, Ordering::Release);
            // Reads that began during the outage may have missed messages too.
            self.flights.forget(None);
            // Redis answers: queued invalidations need not wait for the breaker's cooldown.
            redis.reachable();
        }
        // Anything cached before this point may have missed messages.
        self.l1.flush();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.live.store(true, Ordering::Release);
    }

    fn message(&self, redis: &Arc<RedisStore>, message: Received) {
        let Ok(payload) = std::str::from_utf8(&message.payload) else { return };
        if message.channel == self.ack_channel {
            if let Some(id) = payload.strip_prefix("a ").and_then(|id| id.parse().ok()) {
                self.acked(id);
            }
        } else if let Some((id, message)) = Message::decode(payload) {
            self.apply_local(&message);
            self.flights.forget(match &message {
                Message::Key(key) => Some(key),
                Message::Tag { .. } | Message::Namespace(_) => None,
            });
            let redis = Arc::clone(redis);
            let ack_channel = self.ack_channel.clone();
            tokio::spawn(async move {
                let _ = redis.publish(&ack_channel, format!("a {id}").as_bytes()).await;
            });
        }
    }

    fn lost(&self) {
        tracing::warn!(target: "cache_runtime", "invalidation channel lost or silent; process-memory tier flushed until it is back");
        self.outage.store(true, Ordering::Release);
        self.live.store(false, Ordering::Release);
        self.l1.flush();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Key("app:{default:user:1}".into()),
            Message::Tag { tag: "user:1".into(), version: 42 },
            Message::Namespace("feed".into()),
        ] {
            assert_eq!(Message::decode(&m.encode(7)), Some((7, m)));
        }
        assert_eq!(Message::decode("garbage"), None);
        assert_eq!(Message::decode("t 1 notanumber tag"), None);
    }
}
