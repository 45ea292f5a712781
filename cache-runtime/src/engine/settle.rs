//! How a Redis read settles into a `Lookup`: the entry checked (its envelope, key, type,
//! expiry and recorded tag versions) and decoded, copied into the L1, or the lease a miss's
//! fill needs; in place when no I/O is needed (`settle_now`), else with the tag versions the
//! read did not carry fetched or initialised (`settle_read`).

use crate::cache::{Cache, Call, Store};
use crate::codec::{Codec, Stored};
use crate::entry::{Found, Lookup, Times};
use crate::envelope;
use crate::store::{Lease, RedisRead};
use crate::time::now_ms;

impl Cache {
    /// What a Redis read of `call.key` found: a hit (copied into the L1), or the lease its fill
    /// needs. Without I/O when it can ([`settle_now`](Self::settle_now)); an entry recording a
    /// tag the read did not carry, or a miss whose tags have no version yet, costs a round trip.
    pub(super) async fn settle_read<V: Stored, C: Codec<V>>(
        &self,
        call: &Call<'_>,
        read: RedisRead<'_>,
        l1_epoch: Option<u64>,
        refresh: bool,
    ) -> Lookup<V> {
        let Store::Redis { redis, l1, .. } = &self.inner.store else { return Lookup::nothing() };
        let mut fetched = Fetched::default();
        loop {
            match self.settle::<V, C>(call, &read, l1_epoch, refresh, &fetched, Against::now::<V>()) {
                Settled::Done(lookup) => return lookup,
                Settled::Versions(names) => {
                    // Fetched once: the next pass knows them (or, when Redis did not answer,
                    // treats the entry as invalidated).
                    let asked: Vec<&str> = names.iter().map(String::as_str).collect();
                    match redis.tag_versions(&self.inner.prefix, &asked).await {
                        Ok(current) => fetched.versions = names.into_iter().zip(current).collect(),
                        Err(err) => {
                            self.count_result::<()>(&Err(err), "get tag versions");
                            fetched.failed = true;
                        }
                    }
                    fetched.done = true;
                }
                Settled::InitTags(mut lease, missing) => {
                    let result = redis.init_tags(&self.inner.prefix, &mut lease, &missing, read.needs_counter).await;
                    self.count_result(&result, "init tag versions");
                    if result.is_err() {
                        return Lookup::nothing();
                    }
                    // Learned only if no invalidation arrived since the read began (as `l1_insert`
                    // checks): one that made the L1 forget a tag must not be undone by a version
                    // read before it.
                    if let Some(c) = l1.as_ref().filter(|c| l1_epoch == Some(c.epoch())) {
                        for &i in &missing {
                            let (tag, version) = &lease.tags[i];
                            c.l1.learn_tag(tag, *version);
                        }
                    }
                    return Lookup { hit: None, seen: read.bytes.is_some(), lease: Some(lease), l1_epoch };
                }
            }
        }
    }

    /// [`settle_read`](Self::settle_read) when it needs no I/O (a batch's elements, almost
    /// always): `Err` gives the read back for `settle_read`. `against`: read once for
    /// a read's many keys.
    pub(super) fn settle_now<'t, V: Stored, C: Codec<V>>(
        &self,
        call: &Call<'_>,
        read: RedisRead<'t>,
        l1_epoch: Option<u64>,
        against: Against,
    ) -> Result<Lookup<V>, RedisRead<'t>> {
        match self.settle::<V, C>(call, &read, l1_epoch, false, &Fetched::default(), against) {
            Settled::Done(lookup) => Ok(lookup),
            Settled::Versions(_) | Settled::InitTags(..) => Err(read),
        }
    }

    /// One pass of `settle_read`: what the read settles to with what is known, or the I/O it
    /// still needs.
    fn settle<V: Stored, C: Codec<V>>(
        &self,
        call: &Call<'_>,
        read: &RedisRead<'_>,
        l1_epoch: Option<u64>,
        refresh: bool,
        fetched: &Fetched,
        against: Against,
    ) -> Settled<V> {
        let Store::Redis { l1, channel, .. } = &self.inner.store else { return Settled::Done(Lookup::nothing()) };
        let key = call.key.as_str();
        // Learned only if no invalidation arrived since the read began: a version read before
        // a key or tag invalidation that made the L1 forget it would make its old entries current
        // again.
        if let Some(c) = l1.as_ref().filter(|c| l1_epoch == Some(c.epoch())) {
            for (tag, version) in read.known_versions() {
                c.l1.learn_tag(tag, version);
            }
        }
        if let Some(bytes) = read.bytes.as_ref().filter(|_| !refresh) {
            let hit = match self.decode_hit::<V, C>(key, bytes, read, fetched, against) {
                Ok(hit) => hit,
                Err(names) => return Settled::Versions(names),
            };
            // Right after an outage, what was stored before it may be invalidated by a
            // write whose invalidation is still queued in its writer: a miss.
            if let Some(((found, times), decoded)) =
                hit.filter(|(_, decoded)| channel.trusted(decoded.meta.stored_at_ms))
            {
                if let (Some(c), Some(epoch)) = (l1, l1_epoch) {
                    let value = match &found {
                        Found::Value(v) => Some(v),
                        Found::Negative => None,
                    };
                    let meta = decoded.into_meta();
                    self.l1_insert(c, epoch, key.to_owned(), meta, value, C::memory_size(bytes.len()));
                }
                return Settled::Done(Lookup::hit(found, times));
            }
        }
        // A miss: the lease its fill needs.
        let (lease, missing) = read.lease();
        if !missing.is_empty() || read.needs_counter {
            return Settled::InitTags(lease, missing);
        }
        Settled::Done(Lookup { hit: None, seen: read.bytes.is_some(), lease: Some(lease), l1_epoch })
    }

    /// The entry in `bytes`, when it is still valid; `Err`: the tags it recorded that neither
    /// the read nor `fetched` carries a version of (the caller fetches them and asks again).
    fn decode_hit<'b, V: Stored, C: Codec<V>>(
        &self,
        key: &str,
        bytes: &'b [u8],
        read: &RedisRead<'_>,
        fetched: &Fetched,
        against: Against,
    ) -> Result<Option<DecodedHit<'b, V>>, Vec<String>> {
        let decoded = match envelope::decode(bytes) {
            Ok(decoded) => decoded,
            Err(why) => {
                tracing::warn!(target: "cache_runtime", key, %why, "unreadable cache entry; treating it as a miss");
                return Ok(None);
            }
        };
        if decoded.key_hash != envelope::key_hash(key) {
            tracing::warn!(target: "cache_runtime", key, "cache entry was stored under another key; treating it as a miss");
            return Ok(None);
        }
        if decoded.meta.fingerprint != against.fingerprint {
            tracing::warn!(
                target: "cache_runtime",
                key,
                expected = std::any::type_name::<V>(),
                "cache entry was written for another type; treating it as a miss"
            );
            return Ok(None);
        }
        if decoded.meta.stale_until_ms <= against.now {
            return Ok(None);
        }
        if !recorded_tags_current(decoded.tags, read, fetched)? {
            return Ok(None);
        }
        let times = Times::of(&decoded.meta);
        if decoded.negative {
            return Ok(Some(((Found::Negative, times), decoded)));
        }
        let Some(format) = decoded.format else {
            tracing::warn!(target: "cache_runtime", key, "cache entry in a format this build cannot read; treating it as a miss");
            return Ok(None);
        };
        match C::decode(decoded.payload, format) {
            Ok(value) => Ok(Some(((Found::Value(value), times), decoded))),
            Err(err) => {
                tracing::warn!(target: "cache_runtime", key, error = %err, "cache entry does not decode; treating it as a miss");
                Ok(None)
            }
        }
    }
}

/// What reads are judged against: the clock and the fingerprint of the type they expect, each
/// taken once for a batch's many reads (hashing the type's name on every hit cost ~100
/// instructions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Against {
    pub(crate) now: u64,
    pub(crate) fingerprint: u64,
}

impl Against {
    pub(crate) fn now<V>() -> Self {
        Against { now: now_ms(), fingerprint: envelope::fingerprint::<V>() }
    }
}

/// A valid entry read from Redis: the value and its times, and its envelope (for the L1).
type DecodedHit<'b, V> = ((Found<V>, Times), envelope::Decoded<'b>);

/// What one pass of `settle` found: the lookup, or the I/O it needs first.
enum Settled<V> {
    Done(Lookup<V>),
    /// The current versions of these tags (an entry recorded tags the read did not carry: one
    /// read through the plain API, say).
    Versions(Vec<String>),
    /// A miss whose lease lacks the versions of these tags, or the generation counter
    /// (`RedisStore::init_tags`).
    InitTags(Lease, Vec<usize>),
}

/// Tag versions `settle_read` fetched beyond those its read carried.
#[derive(Default)]
struct Fetched {
    versions: Vec<(String, Option<u64>)>,
    /// They were asked for (a second pass never asks again).
    done: bool,
    /// Redis did not answer: the entry counts as invalidated.
    failed: bool,
}

/// Whether every tag an entry recorded still has the recorded version: the caller's tags came
/// with the read, others with `fetched`; `Err` names those neither knows (yet). An entry that did
/// not record one of the caller's own tags (`read.tags` after the namespace's: one the plain
/// API stored under the same key) is not current either: an invalidation of that tag would not
/// reach it.
fn recorded_tags_current(
    recorded: envelope::RecordedTags<'_>,
    read: &RedisRead<'_>,
    fetched: &Fetched,
) -> Result<bool, Vec<String>> {
    let mut unknown = Vec::new();
    // How many of the caller's own tags the entry recorded (a tag is recorded once).
    let mut carried = 0;
    for (tag, version) in recorded {
        if read.tags.iter().skip(1).any(|t| t.as_bytes() == tag) {
            carried += 1;
        }
        let current = match read.tags.iter().position(|t| t.as_bytes() == tag) {
            Some(i) => read.version(i),
            None if fetched.done => {
                if fetched.failed {
                    return Ok(false);
                }
                fetched.versions.iter().find(|(t, _)| t.as_bytes() == tag).and_then(|(_, v)| *v)
            }
            None => {
                // A name that is not UTF-8 is no tag of ours: a damaged entry, not served.
                let Ok(tag) = std::str::from_utf8(tag) else { return Ok(false) };
                unknown.push(tag.to_owned());
                continue;
            }
        };
        if current != Some(version) {
            return Ok(false);
        }
    }
    if carried < read.tags.len().saturating_sub(1) {
        return Ok(false);
    }
    if unknown.is_empty() {
        Ok(true)
    } else {
        Err(unknown)
    }
}
