//! The vocabulary of reads and writes: what a lookup found ([`Found`], with its [`Times`]),
//! what a fill needs ([`Lookup`]), and one invalidation ([`Op`]). A leaf: no I/O.

use std::time::Duration;

use crate::codec::Format;
use crate::envelope::Meta;
use crate::store::Lease;
use crate::time::now_ms;

/// What a read found.
#[derive(Clone)]
pub(crate) enum Found<V> {
    Value(V),
    /// A stored `None` (`cache_none`).
    Negative,
}

/// How long a found entry stays fresh (ms since the Unix epoch), and what XFetch needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    pub(crate) fresh_until_ms: u64,
    /// How long the value took to compute (XFetch's Δ).
    pub(crate) recompute_ms: u32,
}

impl Times {
    pub(crate) fn of(meta: &Meta) -> Times {
        Times { fresh_until_ms: meta.fresh_until_ms, recompute_ms: meta.recompute_ms }
    }
}

/// How a found entry is being served.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Served {
    /// Fresh, with its times (a handler's `max-age` is what is left of them).
    Fresh(#[cfg_attr(not(feature = "axum"), allow(dead_code))] Times),
    /// Shared by the single-flight leader that just computed it: fresh for this long.
    Joined(#[cfg_attr(not(feature = "axum"), allow(dead_code))] Duration),
    /// Past its freshness, inside a serve-stale window.
    Stale,
}

/// What a lookup found, and what its fill needs.
pub(crate) struct Lookup<V> {
    pub(crate) hit: Option<(Found<V>, Times)>,
    /// `None`: do not store (the store is failing, or invalidations that failed earlier could
    /// not be applied yet).
    pub(crate) lease: Option<Lease>,
    /// The L1 epoch before the Redis read, when the L1 is in use.
    pub(crate) l1_epoch: Option<u64>,
    /// On a miss: something was stored under the key that could not be used (an invalidated
    /// tag, another type, an unreadable entry), as opposed to nothing at all.
    pub(crate) seen: bool,
}

impl<V> Lookup<V> {
    /// Nothing found, nothing may be stored.
    pub(crate) fn nothing() -> Self {
        Lookup { hit: None, lease: None, l1_epoch: None, seen: false }
    }

    /// A hit: what was found and its times (a hit takes no lease: a caller that does not serve
    /// it looks the key up again for one).
    pub(crate) fn hit(found: Found<V>, times: Times) -> Self {
        Lookup { hit: Some((found, times)), lease: None, l1_epoch: None, seen: true }
    }

    /// What a fill under this lookup needs: its lease and the L1 epoch read before it.
    pub(crate) fn fill_lease(self) -> Option<(Lease, Option<u64>)> {
        self.lease.map(|lease| (lease, self.l1_epoch))
    }
}

/// One invalidation, kept to be retried when it fails.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A full stored key.
    Key(String),
    Tag(String),
    /// An escaped namespace.
    Namespace(String),
}

/// Where an inspected entry was found (see [`Cache::inspect`](crate::Cache::inspect)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// The in-memory store (a cache built without Redis).
    Memory,
    /// Redis (one server or a cluster).
    Redis,
}

/// What is stored under a key, without decoding its value: for tests and for operators
/// ([`Cache::inspect`](crate::Cache::inspect)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The store it was read from.
    pub tier: Tier,
    /// Whether this process's L1 also holds a copy (Redis with the L1 only).
    pub in_l1: bool,
    /// When the value was stored.
    pub stored_at: std::time::SystemTime,
    /// Freshness left (zero once it expired).
    pub fresh_for: Duration,
    /// How long it may still be served stale (`stale`, `stale_if_error`; zero without a window).
    pub stale_for: Duration,
    /// A stored `None` (`cache_none`).
    pub negative: bool,
    /// The tags the entry carries, with the versions it recorded (the namespace not included).
    pub tags: Vec<(String, u64)>,
    /// Bytes it takes: the stored envelope in Redis, the estimated weight in memory.
    pub bytes: usize,
    /// The payload format in Redis (`None` in memory, which holds typed values).
    pub format: Option<Format>,
    /// The `ETag` of a stored response.
    pub etag: Option<String>,
}

impl EntryInfo {
    pub(crate) fn of(tier: Tier, meta: &Meta, negative: bool, bytes: usize, format: Option<Format>) -> EntryInfo {
        let now = now_ms();
        let ms = |until: u64| Duration::from_millis(until.saturating_sub(now));
        EntryInfo {
            tier,
            in_l1: false,
            stored_at: std::time::UNIX_EPOCH + Duration::from_millis(meta.stored_at_ms),
            fresh_for: ms(meta.fresh_until_ms),
            stale_for: ms(meta.stale_until_ms).saturating_sub(ms(meta.fresh_until_ms)),
            negative,
            tags: meta.tags.iter().filter(|(t, _)| !t.starts_with("%%ns:")).cloned().collect(),
            bytes,
            format,
            etag: meta.etag.as_deref().map(str::to_owned),
        }
    }
}
