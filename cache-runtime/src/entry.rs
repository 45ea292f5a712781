//! The vocabulary of reads and writes: what a lookup found ([`Found`], with its [`Times`]),
//! what a fill needs ([`Lookup`]), and one invalidation ([`Op`]). A leaf: no I/O.

use crate::envelope::Meta;
use crate::store::Lease;

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

/// What a lookup found, and what its fill needs.
pub(crate) struct Lookup<V> {
    pub(crate) hit: Option<(Found<V>, Times)>,
    /// `None`: do not store (the store is failing, or invalidations that failed earlier could
    /// not be applied yet).
    pub(crate) lease: Option<Lease>,
    /// The L1 epoch before the Redis read, when the L1 is in use.
    pub(crate) l1_epoch: Option<u64>,
}

impl<V> Lookup<V> {
    /// Nothing found, nothing may be stored.
    pub(crate) fn nothing() -> Self {
        Lookup { hit: None, lease: None, l1_epoch: None }
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
