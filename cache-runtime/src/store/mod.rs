//! The two stores and what they share: the invalidation rules, the lease, the key layout.
//!
//! Process memory (moka, `memory.rs`) and Redis (redis-rs `ConnectionManager`, or a cluster
//! connection, `redis.rs`; its Lua scripts in `scripts.rs`, its pub/sub in `pubsub.rs`, its
//! circuit breaker in `breaker.rs`).
//!
//! Both keep the same invalidation rules:
//! - a per-key **generation**, moved on by every invalidation of the key; a fill stores only
//!   if no invalidation moved it since its read (memcache-style leases: a slow read of the old
//!   row can never overwrite a newer invalidation). In process memory the read sees the
//!   generation; on one Redis server it sees the prefix's generation counter, which every
//!   invalidation moves on and records as the key's generation (so a batch reads one key, not
//!   one per entry); on a cluster each generation is its own counter;
//! - a **version** per tag, bumped by every invalidation of the tag; an entry records the
//!   versions its tags had before its value was computed and is valid only while they still
//!   have them (O(1) tag invalidation that also catches entries filled while it runs);
//! - a version per namespace, bumped by `clear_namespace` before it removes the entries, so a
//!   fill that started before the clear cannot store afterwards.

#[cfg(feature = "redis")]
use std::hash::BuildHasher as _;

#[cfg(feature = "redis")]
use crate::time::now_ms;

#[cfg(feature = "redis")]
mod breaker;
#[cfg(feature = "redis")]
mod cluster;
mod memory;
#[cfg(feature = "redis")]
mod pubsub;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod scripts;

pub(crate) use self::memory::{entry_weight, MemEntry, MemoryStore};
#[cfg(feature = "redis")]
pub(crate) use self::pubsub::{listen, Listener, Received};
#[cfg(feature = "redis")]
pub(crate) use self::redis::{RedisRead, RedisStore, RedisTarget};
#[cfg(feature = "redis")]
pub(crate) use self::scripts::evalsha;

/// What a read saw, that its fill must still see to be allowed to store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lease {
    pub(crate) generation: Option<u64>,
    pub(crate) namespace_version: Option<u64>,
    /// `(tag, version)` in the caller's order.
    pub(crate) tags: Vec<(String, u64)>,
}

/// The keys of one entry's bookkeeping in Redis. The generation shares the entry's hash slot.
#[cfg(feature = "redis")]
pub(crate) fn generation_key(entry_key: &str) -> String {
    let mut key = String::with_capacity(entry_key.len() + 2);
    push_generation_key(&mut key, entry_key);
    key
}

/// The generation counter of `prefix`'s entries on one server (see `RedisStore`): moved on by
/// every invalidation of a key, whose generation records it. `:generations` follows no `{`: no
/// entry, tag or generation key is named so.
#[cfg(feature = "redis")]
pub(crate) fn generation_counter_key(prefix: &str) -> String {
    format!("{prefix}:generations")
}

/// Writes [`generation_key`] into `out` (a batch reuses one buffer).
#[cfg(feature = "redis")]
pub(crate) fn push_generation_key(out: &mut String, entry_key: &str) {
    out.push_str(entry_key);
    out.push_str(":g");
}

#[cfg(feature = "redis")]
pub(crate) fn tag_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:t:{{{tag}}}")
}

/// In Redis, a namespace is an implicit tag of every entry in it: its version is recorded in the
/// entry and checked on read, like a tag's. `%%` can start no rendered tag (a template's text
/// has no `%`, an escaped value has `%` followed by hex digits), so this never meets a user tag.
#[cfg(feature = "redis")]
pub(crate) fn namespace_tag(namespace: &str) -> String {
    let mut tag = String::with_capacity(namespace.len() + 5);
    tag.push_str("%%ns:");
    tag.push_str(namespace);
    tag
}

/// A version for a key that has none, or whose value is not one: the clock in ms × 1024 plus a
/// random part. No entry can have recorded it (every earlier version was handed out earlier, at
/// most 1,024 bumps a millisecond later), it grows with time (so an L1, which keeps the highest
/// version it learned of a tag, accepts a repaired or re-created version), and it stays below
/// 2^53 (exact in Redis's Lua numbers) until the year 2248.
#[cfg(feature = "redis")]
fn fresh_version() -> u64 {
    let random = std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id());
    now_ms().saturating_mul(1024) + (random & 1023)
}
