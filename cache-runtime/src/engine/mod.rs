//! The engine: which store serves a call, and the reads and writes on it. A fresh hit in
//! process memory (`local_hit`), a lookup (memory, or the L1 then one Redis round trip; it
//! returns the lease a fill needs), a lease-checked fill (then the L1), an unconditional store
//! (the plain API's `set`). How a Redis read settles into a lookup is `settle.rs`.

#[cfg(feature = "redis")]
mod settle;

use crate::cache::{Cache, Call, Store};
use crate::codec::{Codec, Stored};
#[cfg(feature = "redis")]
use crate::coherence::{Coherence, Message};
use crate::entry::{Found, Lookup, Times};
#[cfg(feature = "redis")]
use crate::envelope;
use crate::envelope::Meta;
use crate::error::CacheError;
use crate::form::{mem_entry, memory_weight};
#[cfg(feature = "redis")]
use crate::policy::duration_ms;
#[cfg(feature = "redis")]
use crate::store::{self, namespace_tag, tag_key, RedisStore};
use crate::store::{Lease, MemEntry, MemoryStore};
use crate::time::now_ms;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(feature = "redis")]
use std::sync::Arc;

use crate::entry::{EntryInfo, Op, Tier};
use crate::key;
#[cfg(feature = "redis")]
use crate::lock::Locks;

impl Cache {
    /// Redis, when the cache is on Redis.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_store(&self) -> Option<&Arc<RedisStore>> {
        match &self.inner.store {
            Store::Redis { redis, .. } => Some(redis),
            Store::Memory(_) => None,
        }
    }

    /// Redis and the cross-replica locks of `lock`, when the cache is on Redis.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_locks(&self) -> Option<(&Arc<RedisStore>, &Arc<Locks>)> {
        match &self.inner.store {
            Store::Redis { redis, locks, .. } => Some((redis, locks)),
            Store::Memory(_) => None,
        }
    }

    /// The L1, when configured and its channel is live.
    #[cfg(feature = "redis")]
    pub(crate) fn live_l1(&self) -> Option<&Coherence> {
        match &self.inner.store {
            Store::Redis { l1: Some(c), .. } if c.live() => Some(c),
            _ => None,
        }
    }

    /// Entries and bytes held in process memory (the memory store, or the L1).
    pub(crate) fn memory_size(&self) -> (u64, u64) {
        match &self.inner.store {
            Store::Memory(mem) => mem.size(),
            #[cfg(feature = "redis")]
            Store::Redis { l1: Some(l1), .. } => l1.l1.size(),
            #[cfg(feature = "redis")]
            Store::Redis { l1: None, .. } => (0, 0),
        }
    }

    /// A fresh hit from process memory (the memory store, or a live L1): no I/O, no future. The
    /// read path tries this first.
    #[inline]
    pub(crate) fn local_hit<V: Stored>(&self, key: &str, tags: &[String]) -> Option<(Found<V>, Times)> {
        // Without `redis`, the memory store is the only one.
        #[cfg_attr(not(feature = "redis"), allow(clippy::infallible_destructuring_match))]
        let store = match &self.inner.store {
            Store::Memory(mem) => mem,
            #[cfg(feature = "redis")]
            Store::Redis { l1: Some(c), .. } if c.live() => &c.l1,
            #[cfg(feature = "redis")]
            Store::Redis { .. } => return None,
        };
        let entry = store.get(key)?;
        // The store already hides an entry past its stale-until instant (its expiry); the
        // clock is read only for an entry that has a stale window after its freshness.
        if entry.meta.fresh_until_ms != entry.meta.stale_until_ms && entry.meta.fresh_until_ms <= now_ms() {
            return None;
        }
        typed_entry(store, &entry, tags)
    }

    /// Reads `key`. A hit is a fresh entry of type `V` whose tags are all current; anything
    /// else (absent, expired, wrong type, undecodable, invalidated tag) is a miss that carries
    /// the lease its fill needs. `lease: None` means "do not store" (the store is failing, or
    /// invalidations that failed earlier could not be applied yet).
    ///
    /// `refresh`: skip the hit, only take the lease (a refresh that must recompute).
    pub(crate) async fn lookup<V: Stored, C: Codec<V>>(&self, call: &Call<'_>, refresh: bool) -> Lookup<V> {
        if self.inner.disabled {
            return Lookup::nothing();
        }
        match &self.inner.store {
            Store::Memory(mem) => memory_lookup(mem, call, refresh),
            #[cfg(feature = "redis")]
            Store::Redis { redis, .. } => {
                let l1_epoch = match self.l1_first::<V>(call, refresh) {
                    Ok(hit) => return hit,
                    Err(l1_epoch) => l1_epoch,
                };
                if !self.flush_pending().await {
                    return Lookup::nothing();
                }
                let tags = all_tags(call);
                let result = redis.read(&call.key, &self.inner.prefix, &tags).await;
                self.count_result(&result, "get");
                match result {
                    Ok(read) => self.settle_read::<V, C>(call, read, l1_epoch, refresh).await,
                    Err(_) => Lookup::nothing(),
                }
            }
        }
    }

    /// `lookup` of many keys (a batch): in memory each as `lookup`; on Redis the L1 first, then
    /// one `MGET` carrying every other entry, its generation and the tag versions.
    pub(crate) async fn lookup_many<V: Stored, C: Codec<V>>(&self, calls: &[Call<'_>]) -> Vec<Lookup<V>> {
        if self.inner.disabled {
            return calls.iter().map(|_| Lookup::nothing()).collect();
        }
        match &self.inner.store {
            Store::Memory(mem) => calls.iter().map(|call| memory_lookup(mem, call, false)).collect(),
            #[cfg(feature = "redis")]
            Store::Redis { redis, l1, channel, .. } => {
                // What Redis does not answer (it failed) stays `nothing`.
                let mut found: Vec<Lookup<V>> = Vec::with_capacity(calls.len());
                let mut to_read = Vec::with_capacity(calls.len());
                // Without a live L1 (checked once), every call is read from Redis.
                channel.ensure_started(redis);
                let l1_live = l1.as_ref().is_some_and(|c| c.live());
                for (i, call) in calls.iter().enumerate() {
                    match if l1_live { self.l1_first::<V>(call, false) } else { Err(None) } {
                        Ok(hit) => found.push(hit),
                        Err(l1_epoch) => {
                            found.push(Lookup::nothing());
                            to_read.push((i, l1_epoch));
                        }
                    }
                }
                if !to_read.is_empty() {
                    // The reads borrow their tag sets.
                    let mut sets: Vec<(&str, &[String], Vec<String>)> = Vec::new();
                    let reads = if self.flush_pending().await {
                        // A call's tag set is the one before it when they have the same
                        // namespace and tags (a batch's elements do, unless their tag templates
                        // have placeholders): built once, shared (`read_many` reads it once).
                        let set_of: Vec<usize> = to_read
                            .iter()
                            .map(|&(i, _)| {
                                let call = &calls[i];
                                match sets.last() {
                                    Some((ns, tags, _)) if *ns == call.namespace && *tags == call.tags => {}
                                    _ => sets.push((call.namespace, call.tags, all_tags(call))),
                                }
                                sets.len() - 1
                            })
                            .collect();
                        let keys: Vec<(&str, &[String])> = to_read
                            .iter()
                            .zip(&set_of)
                            .map(|(&(i, _), &set)| (calls[i].key.as_str(), &sets[set].2[..]))
                            .collect();
                        let result = redis.read_many(&self.inner.prefix, &keys).await;
                        self.count_result(&result, "get");
                        result.ok()
                    } else {
                        None
                    };
                    if let Some(reads) = reads {
                        // Settled in place when no I/O is needed (almost always); the others
                        // concurrently.
                        let mut later = Vec::new();
                        let against = settle::Against::now::<V>();
                        for (&(i, l1_epoch), read) in to_read.iter().zip(reads) {
                            match self.settle_now::<V, C>(&calls[i], read, l1_epoch, against) {
                                Ok(lookup) => found[i] = lookup,
                                Err(read) => later.push((i, l1_epoch, read)),
                            }
                        }
                        let settled = later.into_iter().map(|(i, l1_epoch, read)| async move {
                            (i, self.settle_read::<V, C>(&calls[i], read, l1_epoch, false).await)
                        });
                        for (i, lookup) in crate::sync::join_all(settled).await {
                            found[i] = lookup;
                        }
                    }
                }
                found
            }
        }
    }

    /// A fresh L1 copy (`Ok`), or the L1 epoch to read Redis under (`Err`; `None`: no L1).
    #[cfg(feature = "redis")]
    fn l1_first<V: Stored>(&self, call: &Call<'_>, refresh: bool) -> Result<Lookup<V>, Option<u64>> {
        let Store::Redis { redis, l1, channel, .. } = &self.inner.store else { return Err(None) };
        channel.ensure_started(redis);
        let Some(c) = l1.as_ref().filter(|c| c.live()) else { return Err(None) };
        // Only a fresh L1 copy: a stale one may already be refreshed in Redis.
        let fresh = |hit: &(Found<V>, Times)| !refresh && hit.1.fresh_until_ms > now_ms();
        match local_entry::<V>(&c.l1, &call.key, call.tags, now_ms()).filter(fresh) {
            Some((found, times)) => Ok(Lookup::hit(found, times)),
            None => Err(Some(c.epoch())),
        }
    }

    /// Puts a copy of what Redis holds into the L1, unless an invalidation arrived since
    /// `epoch` was read (before the Redis read) or the channel is down.
    /// `size`: what the value costs in memory (`Codec::memory_size`), for its weight.
    #[cfg(feature = "redis")]
    fn l1_insert<V: Stored>(&self, c: &Coherence, epoch: u64, key: String, meta: Meta, value: Option<&V>, size: usize) {
        if c.live() && c.epoch() == epoch {
            let weight = store::entry_weight(key.len(), size);
            let mut entry = mem_entry(meta, value, weight);
            // The L1 keeps it at most `l1_ttl`; its own times (what `max-age` reports) stay.
            entry.expires_ms = entry.expires_ms.min(now_ms().saturating_add(duration_ms(c.l1_ttl)));
            c.l1.insert(key, entry);
        }
    }

    /// Stores `value` (a negative entry when `None`) under `key`, fresh for `ttl`, unless something
    /// the lease depends on was invalidated since the read: then the store is dropped (a slow
    /// read of the old data never overwrites a newer invalidation). Returns whether it stored.
    /// A stored `None` is kept only with `cache_none` (for its own ttl when it has one).
    pub(crate) async fn fill<V: Stored, C: Codec<V>>(
        &self,
        call: &Call<'_>,
        lease: &Lease,
        l1_epoch: Option<u64>,
        found: &Found<V>,
        recompute: Duration,
        ttl: Duration,
    ) -> bool {
        let one = Fill { call, lease, l1_epoch, found, ttl };
        self.fill_many::<V, C>(std::slice::from_ref(&one), recompute).await.first().copied().unwrap_or(false)
    }

    /// [`fill`](Self::fill) of many entries (a batch's), each lease-checked as a single fill is,
    /// in one round trip to Redis (see `RedisStore::fill_many`). Whether each one stored.
    pub(crate) async fn fill_many<V: Stored, C: Codec<V>>(
        &self,
        fills: &[Fill<'_, '_, V>],
        recompute: Duration,
    ) -> Vec<bool> {
        // What each one stores: the value (`None`: a cached "not found"), its lifetime and
        // metadata; `None`: nothing (a "not found" without `cache_none`).
        let entries: Vec<Option<(Option<&V>, Duration, Meta)>> = fills
            .iter()
            .map(|fill| {
                let opts = fill.call.opts;
                let (value, ttl) = match fill.found {
                    Found::Value(value) => (Some(value), fill.ttl),
                    Found::Negative if opts.cache_none => (None, opts.none_ttl.unwrap_or(fill.ttl)),
                    Found::Negative => return None,
                };
                let mut meta = self.meta::<V>(ttl, opts.keep(), recompute, fill.lease.tags.clone());
                meta.etag = value.and_then(C::etag);
                Some((value, ttl, meta))
            })
            .collect();
        // Per fill: `None` when there was nothing to store, else whether it stored and its size.
        let results: Vec<Option<Result<(bool, usize), CacheError>>> = match &self.inner.store {
            Store::Memory(mem) => fills
                .iter()
                .zip(entries)
                .map(|(fill, entry)| {
                    let (value, _, meta) = entry?;
                    let key = &fill.call.key;
                    Some(self.checked_payload::<V, C>(value).map(|payload| {
                        let weight = memory_weight::<V, C>(key, &payload);
                        let stored =
                            mem.fill(key.clone(), fill.call.namespace, fill.lease, mem_entry(meta, value, weight));
                        (stored, payload.len())
                    }))
                })
                .collect(),
            #[cfg(feature = "redis")]
            Store::Redis { redis, l1, .. } => {
                let encoded: Vec<Option<Result<Vec<u8>, CacheError>>> = fills
                    .iter()
                    .zip(&entries)
                    .map(|(fill, entry)| {
                        let (value, _, meta) = entry.as_ref()?;
                        Some(self.encode_entry::<V, C>(&fill.call.key, meta, *value))
                    })
                    .collect();
                // What encoded, in one round trip.
                let batch: Vec<(&str, &Lease, &[u8], Duration)> = fills
                    .iter()
                    .zip(&entries)
                    .zip(&encoded)
                    .filter_map(|((fill, entry), bytes)| {
                        let (_, ttl, _) = entry.as_ref()?;
                        let bytes = bytes.as_ref()?.as_ref().ok()?;
                        Some((fill.call.key.as_str(), fill.lease, &bytes[..], *ttl + fill.call.opts.keep()))
                    })
                    .collect();
                let mut stored = redis.fill_many(&batch).await.into_iter();
                drop(batch);
                fills
                    .iter()
                    .zip(entries)
                    .zip(encoded)
                    .map(|((fill, entry), bytes)| {
                        let (value, _, meta) = entry?;
                        let bytes = match bytes? {
                            Ok(bytes) => bytes,
                            Err(err) => return Some(Err(err)),
                        };
                        let stored = stored.next()?;
                        if let (Ok(true), Some(c), Some(epoch)) = (&stored, l1, fill.l1_epoch) {
                            self.l1_insert(c, epoch, fill.call.key.clone(), meta, value, C::memory_size(bytes.len()));
                        }
                        Some(stored.map(|stored| (stored, bytes.len())))
                    })
                    .collect()
            }
        };
        fills
            .iter()
            .zip(results)
            .map(|(fill, result)| {
                let Some(result) = result else { return false };
                self.count_result(&result, "set");
                match result {
                    Ok((true, size)) => {
                        self.inner.stats.stores.fetch_add(1, Ordering::Relaxed);
                        if let Some(site) = fill.call.site {
                            site.stored(size);
                        }
                        true
                    }
                    Ok((false, _)) => {
                        self.inner.stats.dropped_fills.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(target: "cache_runtime", namespace = fill.call.namespace, "fill dropped: invalidated while it was computed");
                        false
                    }
                    Err(_) => false,
                }
            })
            .collect()
    }

    /// Stores unconditionally (the plain API's `set`).
    pub(crate) async fn put<V: Stored, C: Codec<V>>(
        &self,
        key: String,
        value: &V,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        if self.inner.disabled {
            return Ok(());
        }
        let meta = self.meta::<V>(ttl, Duration::ZERO, Duration::ZERO, Vec::new());
        let result = match &self.inner.store {
            Store::Memory(mem) => self.checked_payload::<V, C>(Some(value)).map(|payload| {
                let weight = memory_weight::<V, C>(&key, &payload);
                mem.set(key.clone(), mem_entry(meta, Some(value), weight));
                // A set is an invalidation of what reads that began before it found.
                self.inner.flights.forget(Some(&key));
            }),
            #[cfg(feature = "redis")]
            Store::Redis { redis, channel, .. } => match self.encode_entry::<V, C>(&key, &meta, Some(value)) {
                Ok(bytes) => {
                    // Another replica's L1 may hold the previous value: a set is an invalidation
                    // too, published whether this process has an L1 or not.
                    let mut stored = redis.set(&key, &bytes, ttl).await;
                    if stored.is_ok() {
                        // A set ends the key's other representations too (see `key.rs`).
                        stored = redis.end_representations(&self.inner.prefix, &key).await;
                    }
                    if stored.is_ok() {
                        channel.ensure_started(redis);
                        channel.apply_local(&Message::Key(key.clone()));
                        self.inner.flights.forget(Some(&key));
                        let _ = channel.publish(redis, &Message::Key(key)).await;
                    }
                    stored
                }
                Err(err) => Err(err),
            },
        };
        self.count_result(&result, "set");
        if result.is_ok() {
            self.inner.stats.stores.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Applies one invalidation to the stores: the writer's own L1 first (its next read cannot
    /// see what it invalidated), then the memory store or Redis, then (Redis) the message to
    /// every replica's L1, published whatever this process's own L1 setting.
    pub(crate) async fn invalidate_stored(&self, op: &Op) -> Result<u64, CacheError> {
        let prefix = &self.inner.prefix;
        match &self.inner.store {
            Store::Memory(mem) => {
                let removed = match op {
                    Op::Key(key) => {
                        mem.invalidate_key(key);
                        0
                    }
                    Op::Tag(tag) => {
                        mem.bump_tag(tag);
                        0
                    }
                    Op::Namespace(ns) => mem.clear_namespace(ns, &key::namespace_start(prefix, ns)),
                };
                // After the store forgot the entry: a flight that begins later reads what the
                // write left.
                self.forget_flights(op);
                Ok(removed)
            }
            #[cfg(feature = "redis")]
            Store::Redis { redis, l1, channel, .. } => {
                // Also without an L1: the channel must run to hear the acknowledgements (and the
                // other replicas' invalidations, which end this process's flights).
                channel.ensure_started(redis);
                // The writer's own L1 first: its next read cannot see what it invalidated.
                if let Some(c) = l1 {
                    match op {
                        Op::Key(key) => c.apply_local(&Message::Key(key.clone())),
                        Op::Tag(tag) => c.forget_tag(tag),
                        Op::Namespace(ns) => c.apply_local(&Message::Namespace(ns.clone())),
                    }
                }
                let (message, removed) = match op {
                    Op::Key(key) => {
                        redis.invalidate_key(key).await?;
                        redis.end_representations(prefix, key).await?;
                        (Message::Key(key.clone()), 0)
                    }
                    Op::Tag(tag) => {
                        let version = redis.bump(&tag_key(prefix, tag)).await?;
                        (Message::Tag { tag: tag.clone(), version }, 0)
                    }
                    Op::Namespace(ns) => {
                        redis.bump(&tag_key(prefix, &namespace_tag(ns))).await?;
                        // The version bump above is the invalidation; removing the entries only
                        // reclaims memory, so its failure must not stop the replicas' L1s
                        // from hearing of the clear.
                        let removed = match redis.del_matching(&key::namespace_pattern(prefix, ns)).await {
                            Ok(removed) => removed,
                            Err(err) => {
                                tracing::warn!(target: "cache_runtime", namespace = %ns, error = %err, "namespace cleared, but its entries could not all be removed (they read as misses until they expire)");
                                0
                            }
                        };
                        (Message::Namespace(ns.clone()), removed)
                    }
                };
                self.forget_flights(op);
                // Published whatever this process's own L1 setting: other replicas may have one.
                channel.publish(redis, &message).await?;
                Ok(removed)
            }
        }
    }

    /// One page of a namespace's keys (as the plain API takes them), after `cursor` (`""` for
    /// the first page); the next page's cursor, or `None` at the end. Redis: `SCAN` (each
    /// master of a cluster in turn), never `KEYS`; a page may hold fewer than `count` keys.
    pub(crate) async fn keys_page(
        &self,
        namespace: &str,
        cursor: &str,
        count: usize,
    ) -> Result<(Vec<String>, Option<String>), CacheError> {
        let start = key::namespace_start(&self.inner.prefix, namespace);
        // A key as the plain API takes it, from the stored key of any of its representations
        // (its value `…}`, a handler's response `…}:h[.<vary>…]`); `None` for bookkeeping
        // (`…}:g`, claims `…}:r`, `…}:l`, also after a representation's suffix).
        let user_key = |full: &str| {
            let (key, rest) = full.strip_prefix(start.as_str())?.split_once('}')?;
            let response = rest.strip_prefix(key::RESPONSE).filter(|r| r.is_empty() || r.starts_with('.'));
            (rest.is_empty() || response.is_some_and(|r| !r.contains(':'))).then(|| key.to_owned())
        };
        // A key is listed once, whatever representations it has.
        let unique = |mut keys: Vec<String>| {
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        match &self.inner.store {
            Store::Memory(mem) => {
                // `~` sorts after every representation's suffix of the cursor's key.
                let after = if cursor.is_empty() { String::new() } else { format!("{start}{cursor}}}~") };
                let full = mem.keys_page(&start, &after, count);
                let next = (full.len() == count).then(|| full.last().and_then(|k| user_key(k))).flatten();
                Ok((unique(full.iter().filter_map(|k| user_key(k)).collect()), next))
            }
            #[cfg(feature = "redis")]
            Store::Redis { redis, .. } => {
                let at = match cursor.split_once(':') {
                    Some((node, at)) => (node.parse().unwrap_or(0), at.parse().unwrap_or(0)),
                    None => (0, 0),
                };
                let pattern = key::namespace_pattern(&self.inner.prefix, namespace);
                let (full, next) = redis.scan_page(&pattern, at, count).await?;
                let keys = unique(full.iter().filter_map(|k| user_key(k)).collect());
                Ok((keys, next.map(|(node, at)| format!("{node}:{at}"))))
            }
        }
    }

    /// What is stored under a full key, without decoding it (`Cache::inspect`): its value, or
    /// else a handler's response on the key (without `vary`).
    pub(crate) async fn inspect_entry(&self, full: &str) -> Option<EntryInfo> {
        match self.inspect_stored(full).await {
            None if !key::is_representation(full) => self.inspect_stored(&format!("{full}{}", key::RESPONSE)).await,
            found => found,
        }
    }

    /// What is stored under exactly `full`.
    async fn inspect_stored(&self, full: &str) -> Option<EntryInfo> {
        match &self.inner.store {
            Store::Memory(mem) => {
                let entry = mem.get(full)?;
                Some(EntryInfo::of(Tier::Memory, &entry.meta, entry.negative, entry.weight as usize, None))
            }
            #[cfg(feature = "redis")]
            Store::Redis { redis, l1, .. } => {
                let bytes = redis.get_raw(full).await.ok()??;
                let decoded = envelope::decode(&bytes).ok().filter(|d| d.key_hash == envelope::key_hash(full))?;
                let (negative, format) = (decoded.negative, decoded.format);
                let mut info = EntryInfo::of(Tier::Redis, &decoded.into_meta(), negative, bytes.len(), format);
                info.in_l1 = l1.as_ref().is_some_and(|c| c.live() && c.l1.get(full).is_some());
                Some(info)
            }
        }
    }
}

/// A memory-store lookup: a current entry, or the lease its fill needs.
fn memory_lookup<V: Stored>(mem: &MemoryStore, call: &Call<'_>, refresh: bool) -> Lookup<V> {
    if let Some((found, times)) = local_entry::<V>(mem, &call.key, call.tags, now_ms()).filter(|_| !refresh) {
        return Lookup::hit(found, times);
    }
    let seen = mem.get(&call.key).is_some();
    let lease = mem.lease(&call.key, call.namespace, &own_tags(call));
    Lookup { hit: None, lease: Some(lease), l1_epoch: None, seen }
}

/// The tags an entry of `call` records beside its namespace: its own, then (a handler's
/// response, see `key.rs`) its key's implicit tag.
fn own_tags<'c>(call: &'c Call<'_>) -> Cow<'c, [String]> {
    if key::is_representation(&call.key) {
        let mut tags = Vec::with_capacity(call.tags.len() + 1);
        tags.extend_from_slice(call.tags);
        tags.push(key::key_tag(&call.key));
        Cow::Owned(tags)
    } else {
        Cow::Borrowed(call.tags)
    }
}

/// An entry's tags in Redis: its namespace (the first, implicit, tag), then [`own_tags`].
#[cfg(feature = "redis")]
fn all_tags(call: &Call<'_>) -> Vec<String> {
    let own = own_tags(call);
    let mut all = Vec::with_capacity(own.len() + 1);
    all.push(namespace_tag(call.namespace));
    all.extend_from_slice(&own);
    all
}

/// A current, typed entry in process memory (the memory store or the L1), fresh or inside its
/// serve-stale window, that carries the caller's `tags`. `until`: the entry must last past this
/// instant (ms).
#[inline]
fn local_entry<V: Stored>(store: &MemoryStore, key: &str, tags: &[String], until: u64) -> Option<(Found<V>, Times)> {
    let entry = store.get(key)?;
    if entry.meta.stale_until_ms <= until {
        return None;
    }
    typed_entry(store, &entry, tags)
}

/// The value of `entry` if it recorded every one of the caller's `tags` and every tag it
/// recorded is current. An entry without a tag the caller declares (one the plain API stored
/// under the same key) is a miss: an invalidation of that tag would not reach it.
fn typed_entry<V: Stored>(store: &MemoryStore, entry: &MemEntry, tags: &[String]) -> Option<(Found<V>, Times)> {
    if !tags.iter().all(|tag| entry.meta.tags.iter().any(|(recorded, _)| recorded == tag)) || !store.tags_current(entry)
    {
        return None;
    }
    let times = Times::of(&entry.meta);
    if entry.negative {
        return Some((Found::Negative, times));
    }
    entry.value.downcast_ref::<V>().map(|v| (Found::Value(v.clone()), times))
}

/// One fill of [`Cache::fill_many`]: the call, the lease its read took, the L1 epoch it read
/// under, what was computed, and for how long it stays fresh.
pub(crate) struct Fill<'f, 'a, V> {
    pub(crate) call: &'f Call<'a>,
    pub(crate) lease: &'f Lease,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the L1 is Redis's
    pub(crate) l1_epoch: Option<u64>,
    pub(crate) found: &'f Found<V>,
    pub(crate) ttl: Duration,
}
