//! Batch reads: `#[cached(batch)]` on a fn that loads many ids at once. Each element has the
//! key (and tags) the single-key fn with the same template renders, so the two share entries
//! and every invalidation; the body runs once, with only the elements nothing could answer.
//!
//! Per element, as a single call would: a fresh hit in process memory, one lookup, its lease,
//! single-flight, `stale` / `early` (the refresh joins this batch's body run), `cache_none`,
//! `unless` / `expire_with`, a lease-checked fill. Every element process memory did not answer
//! is read first, in one round trip; only those that are not fresh hits join a flight (a hit
//! costs none). An element that joins a flight is read again when another caller's flight of
//! it ended between that read and the join, an invalidation touching it was applied in this
//! process, or the batch waited for another caller's flight meanwhile: it is neither computed
//! twice nor served (or shared) from the older read. Flights are joined in key
//! order: a batch that leads some keys while it waits for another batch's never waits on one
//! that waits for it, so overlapping batches compute each element once and never deadlock.
//! With `lock`, each element's cross-replica lock is taken in the same order, after the
//! lookup (and what it holds is read again if the batch waited meanwhile): across replicas
//! too, each element is computed once.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::Hash;
use std::time::Instant;

use crate::cache::{Cache, Call};
use crate::claims::{HeldLock, Locked};
use crate::codec::Json;
use crate::engine::Fill;
use crate::entry::{Found, Served};
use crate::flight::{Joined, Leader};
use crate::policy::{CallOpts, Freshness, Policy};
use crate::store::Lease;
use crate::Cacheable;

/// One element of a batch: its id, and the key and tags rendered from the templates with the
/// element in place of the batch parameter.
#[doc(hidden)]
#[derive(Debug)]
pub struct Element<K> {
    pub id: K,
    pub key: String,
    pub tags: Vec<String>,
}

/// A batch call: what `#[cached(batch)]` hands the runtime.
#[doc(hidden)]
#[derive(Debug)]
pub struct Batch<'a, K> {
    pub cache: &'a Cache,
    pub namespace: &'a str,
    pub opts: &'a CallOpts,
    /// The fn's counters.
    pub site: Option<&'static crate::functions::Function>,
    /// In the caller's order; duplicates are looked up once.
    pub elements: Vec<Element<K>>,
}

/// What a batch fn returns (inside a `Result`, when it is one): a map from each element to its
/// value. An element missing from it is "not found" (stored only with `cache_none`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a map of a batch's elements to their values",
    label = "a `#[cached(batch)]` fn returns this",
    note = "a batch fn returns `HashMap<K, V>`, `BTreeMap<K, V>` or `Vec<(K, V)>` (or a `Result` of one), `K` being the batch parameter's element type"
)]
pub trait BatchMap<K, V>: Sized {
    /// The answers as they come: the map itself, or (a `Vec`) the pairs with their places in
    /// the caller's order, put in it at the end.
    type Answers;
    /// No answer yet, room for `capacity`.
    fn answers(capacity: usize) -> Self::Answers;
    /// The answer for the element at `at` in the caller's order (`usize::MAX`: an id the body
    /// returned beyond those asked for).
    fn answer(answers: &mut Self::Answers, at: usize, id: K, value: V);
    /// The map of the answers.
    fn from_answers(answers: Self::Answers) -> Self;
    /// The pairs, in any order.
    fn into_pairs(self) -> Vec<(K, V)>;
}

impl<K: Eq + Hash, V, S: std::hash::BuildHasher + Default> BatchMap<K, V> for std::collections::HashMap<K, V, S> {
    type Answers = Self;
    fn answers(capacity: usize) -> Self {
        Self::with_capacity_and_hasher(capacity, S::default())
    }
    fn answer(answers: &mut Self, _: usize, id: K, value: V) {
        answers.insert(id, value);
    }
    fn from_answers(answers: Self) -> Self {
        answers
    }
    fn into_pairs(self) -> Vec<(K, V)> {
        self.into_iter().collect()
    }
}

impl<K: Ord, V> BatchMap<K, V> for BTreeMap<K, V> {
    type Answers = Self;
    fn answers(_: usize) -> Self {
        BTreeMap::new()
    }
    fn answer(answers: &mut Self, _: usize, id: K, value: V) {
        answers.insert(id, value);
    }
    fn from_answers(answers: Self) -> Self {
        answers
    }
    fn into_pairs(self) -> Vec<(K, V)> {
        self.into_iter().collect()
    }
}

impl<K, V> BatchMap<K, V> for Vec<(K, V)> {
    type Answers = Vec<(usize, K, V)>;
    fn answers(capacity: usize) -> Self::Answers {
        Vec::with_capacity(capacity)
    }
    fn answer(answers: &mut Self::Answers, at: usize, id: K, value: V) {
        answers.push((at, id, value));
    }
    /// In the caller's order (answers come mostly in it: the sort is then a pass).
    fn from_answers(mut answers: Self::Answers) -> Self {
        answers.sort_unstable_by_key(|(at, _, _)| *at);
        answers.into_iter().map(|(_, id, v)| (id, v)).collect()
    }
    fn into_pairs(self) -> Vec<(K, V)> {
        self
    }
}

/// `#[cached(batch)]` on a fn returning a map (see [`BatchMap`]).
pub async fn cached_batch<K, V, M, F, Fut>(batch: Batch<'_, K>, policy: Policy<V>, body: F) -> M
where
    K: Clone + Eq + Hash,
    V: Cacheable,
    M: BatchMap<K, V>,
    F: FnOnce(Vec<K>) -> Fut,
    Fut: Future<Output = M>,
{
    let result = cached_batch_result::<K, V, M, std::convert::Infallible, _, _>(batch, policy, |ids| async move {
        Ok(body(ids).await)
    });
    match result.await {
        Ok(map) => map,
        Err(never) => match never {},
    }
}

/// An element this batch leads the flight of: what its read found (and how fresh that is),
/// before it is served, refreshed or computed.
struct Reading<'a, K, V> {
    at: usize,
    element: Element<K>,
    leader: Leader<'a>,
    lookup: crate::entry::Lookup<V>,
    freshness: Option<Freshness>,
}

/// An element this batch computes: the flight it leads, the lease its fill needs, what to
/// serve should the body fail (`stale_if_error`, or the value being refreshed), and whether
/// it holds the key's refresh claim.
struct Computing<'a, K, V> {
    at: usize,
    element: Element<K>,
    leader: Leader<'a>,
    lease: Option<(Lease, Option<u64>)>,
    fallback: Option<Found<V>>,
    refreshing: bool,
    /// The element's cross-replica lock (`lock`), released once its fill is done.
    held: Option<HeldLock>,
}

/// `#[cached(batch)]` on a fn returning `Result<map, E>` (an `Err` stores nothing): the batch
/// read-through.
pub async fn cached_batch_result<K, V, M, E, F, Fut>(batch: Batch<'_, K>, policy: Policy<V>, body: F) -> Result<M, E>
where
    K: Clone + Eq + Hash,
    V: Cacheable,
    M: BatchMap<K, V>,
    F: FnOnce(Vec<K>) -> Fut,
    Fut: Future<Output = Result<M, E>>,
{
    let Batch { cache, namespace, opts, site, elements } = batch;
    // `key_of`: the first element's key; the body never runs.
    if elements.first().is_some_and(|first| crate::capture::taken(cache, namespace, &first.key)) {
        return std::future::pending().await;
    }
    if cache.is_disabled() {
        for element in &elements {
            cache.record_miss(site, &element.key);
        }
        return body(elements.into_iter().map(|e| e.id).collect()).await;
    }
    // Duplicates are looked up once: of equal keys, the first in the caller's order stays.
    let first = first_of_each_key(&elements);
    let mut answered = M::answers(elements.len());
    let mut pending = Vec::with_capacity(elements.len());
    for ((at, element), _) in elements.into_iter().enumerate().zip(first).filter(|(_, first)| *first) {
        let Some((found, times)) = cache.local_hit::<V>(&element.key, &element.tags) else {
            pending.push((at, element, false));
            continue;
        };
        // The clock matters only for an early draw (as for a single call).
        if opts.beta.is_some() && opts.freshness(cache.rng(), &times, crate::time::now_ms()) != Freshness::Fresh {
            pending.push((at, element, true));
            continue;
        }
        cache.record_hit(site, &element.key);
        answer::<K, V, M>(&mut answered, at, element.id, found);
    }
    // Every element the L1 did not answer, read in one round trip before any flight is joined
    // (a fresh hit needs none); `mark` tells which flights ended meanwhile.
    let ctx = (cache, namespace, opts, site);
    let mark = cache.flights().mark();
    // The calls borrow the elements' keys (moved in and back: no copy per element).
    let keys: Vec<String> = pending.iter_mut().map(|(_, element, _)| std::mem::take(&mut element.key)).collect();
    let calls: Vec<Call<'_>> =
        pending.iter().zip(keys).map(|((_, element, _), key)| lent_call(ctx, element, key)).collect();
    let lookups = cache.lookup_many::<V, Json>(&calls).await;
    let keys: Vec<String> = calls.into_iter().map(|call| call.key).collect();
    for ((_, element, _), key) in pending.iter_mut().zip(keys) {
        element.key = key;
    }
    // Judged by the clock read once: the fresh hits are served, the rest joins each element's
    // flight in key order. A one-by-one pass in key order would judge a hit after the joins
    // before it, which may wait (for another caller's flight): so after a join that took time,
    // the hits after its key that expired meanwhile join their flights in their place.
    let now = crate::time::now_ms();
    let mut fresh = Vec::with_capacity(pending.len());
    let mut joining = Vec::new();
    for ((at, element, drawn_early), lookup) in pending.into_iter().zip(lookups) {
        let freshness = lookup.hit.as_ref().map(|(_, times)| opts.freshness_once(cache.rng(), times, drawn_early, now));
        match lookup.hit {
            // A fresh hit carries no lease: what it found and until when is all it is.
            Some((found, times)) if freshness == Some(Freshness::Fresh) => fresh.push((at, element, found, times)),
            hit => joining.push((at, element, crate::entry::Lookup { hit, ..lookup }, freshness)),
        }
    }
    // Popped from the end: in key order.
    joining.sort_unstable_by(|a, b| b.1.key.cmp(&a.1.key));
    let mut led: Vec<Reading<'_, K, V>> = Vec::new();
    let mut again = Vec::new();
    // Whether this batch waited for another caller's flight since its read.
    let mut waited_for_flight = false;
    let mut clock = now;
    while let Some((at, element, lookup, freshness)) = joining.pop() {
        let joined = cache.flights().join::<V>(&element.key).await;
        let now = crate::time::now_ms();
        if now != clock {
            clock = now;
            let expired = |(_, e, _, times): &(usize, Element<K>, Found<V>, crate::entry::Times)| {
                times.fresh_until_ms <= now && e.key > element.key
            };
            if fresh.iter().any(expired) {
                let (late, still): (Vec<_>, Vec<_>) = fresh.into_iter().partition(expired);
                fresh = still;
                for (at, e, found, times) in late {
                    let freshness = Some(opts.freshness_once(cache.rng(), &times, false, now));
                    let lookup = crate::entry::Lookup::hit(found, times);
                    joining.push((at, e, lookup, freshness));
                }
                joining.sort_unstable_by(|a, b| b.1.key.cmp(&a.1.key));
            }
        }
        match joined {
            Joined::Leader(leader) => {
                let ended = cache.flights().ended_since(&element.key, mark);
                let reading = Reading { at, element, leader, lookup, freshness };
                if ended {
                    again.push(reading);
                } else {
                    led.push(reading);
                }
            }
            Joined::Shared(found, served) => {
                waited_for_flight = true;
                cache.record_collapsed(site, &element.key, matches!(served, Served::Stale));
                answer::<K, V, M>(&mut answered, at, element.id, found);
            }
        }
    }
    // Counted once for the batch, logged each.
    cache.count_hits(site, fresh.len() as u64);
    for (at, element, found, _) in fresh {
        cache.log_hit(&element.key);
        answer::<K, V, M>(&mut answered, at, element.id, found);
    }
    // Another caller's flight of some of them ended, or an invalidation touching them was
    // applied, between the read and the join (their values may be stored now, or what was read
    // may be invalidated): those are read again (a second round trip, only then) rather than
    // computed twice or served. After a wait for another caller's flight (a body run), all of
    // them are: what the read found may no longer be fresh, or may have landed meanwhile.
    if waited_for_flight {
        again.append(&mut led);
    }
    if !again.is_empty() {
        let calls: Vec<Call<'_>> = again.iter().map(|r| element_call(ctx, &r.element)).collect();
        let lookups = cache.lookup_many::<V, Json>(&calls).await;
        drop(calls);
        let now = crate::time::now_ms();
        for (mut reading, lookup) in again.into_iter().zip(lookups) {
            // The same entry keeps its early-refresh draw (one draw per entry read, as a single
            // call makes); another (a refresh stored meanwhile) is drawn for anew.
            let before = reading.lookup.hit.as_ref().map(|(_, times)| times.fresh_until_ms);
            let same = before.is_some() && lookup.hit.as_ref().map(|(_, times)| times.fresh_until_ms) == before;
            let drawn_early = same && reading.freshness == Some(Freshness::RefreshEarly);
            reading.freshness =
                lookup.hit.as_ref().map(|(_, times)| opts.freshness_once(cache.rng(), times, drawn_early, now));
            reading.lookup = lookup;
            led.push(reading);
        }
        led.sort_unstable_by(|a, b| a.element.key.cmp(&b.element.key));
    }
    let mut computing = Vec::new();
    for Reading { at, element, leader, mut lookup, freshness } in led {
        let mut fallback = None;
        let mut refreshing = false;
        if let (Some((found, times)), Some(freshness)) = (lookup.hit.take(), freshness) {
            match freshness {
                Freshness::Fresh => {
                    cache.record_served(site, &element.key, false);
                    leader.finish(Some(&found), Served::Fresh(times));
                    answer::<K, V, M>(&mut answered, at, element.id, found);
                    continue;
                }
                freshness @ (Freshness::RefreshEarly | Freshness::Stale) => {
                    let stale = freshness == Freshness::Stale;
                    if !cache.claim_refresh(&element.key, REFRESH_HOLD).await {
                        // Another caller refreshes it: serve what there is.
                        cache.record_served(site, &element.key, stale);
                        let served = if stale { Served::Stale } else { Served::Fresh(times) };
                        leader.finish(Some(&found), served);
                        answer::<K, V, M>(&mut answered, at, element.id, found);
                        continue;
                    }
                    // This batch refreshes it, in its body run; should the body fail, the
                    // value being refreshed is served.
                    refreshing = true;
                    fallback = Some(found);
                    lookup = cache.lookup::<V, Json>(&element_call(ctx, &element), true).await;
                }
                Freshness::Fallback => fallback = Some(found),
                Freshness::Gone => {}
            }
            if !refreshing {
                // A found entry that is not served leaves no lease: take one.
                lookup = cache.lookup::<V, Json>(&element_call(ctx, &element), true).await;
            }
        }
        computing.push(Computing { at, element, leader, lease: lookup.fill_lease(), fallback, refreshing, held: None });
    }
    // `lock`: each element's cross-replica lock, taken in key order (as flights are joined: two
    // batches never hold what the other waits for); a holder's value is taken, not computed.
    if let Some(hold) = opts.lock {
        let mut still = Vec::with_capacity(computing.len());
        let mut waited = false;
        for mut c in computing {
            if c.refreshing {
                still.push(c);
                continue;
            }
            match cache.lock_or_wait::<V, Json>(&element_call((cache, namespace, opts, site), &c.element), hold).await {
                Locked::Ready(found, times) => {
                    waited = true;
                    cache.record_collapsed(site, &c.element.key, false);
                    c.leader.finish(Some(&found), Served::Fresh(times));
                    answer::<K, V, M>(&mut answered, c.at, c.element.id, found);
                }
                Locked::Compute { token, lookup } => {
                    c.held = token;
                    if let Some(newer) = lookup {
                        waited = true;
                        c.lease = newer.fill_lease();
                    }
                    still.push(c);
                }
            }
        }
        computing = still;
        // While this batch waited for one element's holder, the holders of the next ones may
        // have stored them and let go: what is held now is read again (one more lookup), and
        // what landed is taken instead of computed.
        if waited && !computing.is_empty() {
            let calls: Vec<Call<'_>> =
                computing.iter().map(|c| element_call((cache, namespace, opts, site), &c.element)).collect();
            let lookups = cache.lookup_many::<V, Json>(&calls).await;
            drop(calls);
            let mut still = Vec::with_capacity(computing.len());
            for (mut c, mut lookup) in computing.into_iter().zip(lookups) {
                match lookup.hit.take() {
                    Some((found, times)) if !c.refreshing && times.fresh_until_ms > crate::time::now_ms() => {
                        cache.record_served(site, &c.element.key, false);
                        c.leader.finish(Some(&found), Served::Fresh(times));
                        if let Some(held) = c.held {
                            held.release().await;
                        }
                        answer::<K, V, M>(&mut answered, c.at, c.element.id, found);
                    }
                    _ => {
                        if !c.refreshing {
                            c.lease = lookup.fill_lease();
                        }
                        still.push(c);
                    }
                }
            }
            computing = still;
        }
    }
    if !computing.is_empty() {
        let started = Instant::now();
        for c in &computing {
            cache.record_miss(site, &c.element.key);
        }
        // A call nested in the body on one of these keys must not join their flights.
        let out = crate::flight::leading(
            computing.iter().map(|c| &c.leader),
            body(computing.iter().map(|c| c.element.id.clone()).collect()),
        )
        .await;
        cache.record_computed(site, &computing[0].element.key, started.elapsed());
        match out {
            Ok(map) => {
                let recompute = started.elapsed();
                let mut got: std::collections::HashMap<K, V> = map.into_pairs().into_iter().collect();
                let done: Vec<(Computing<'_, K, V>, Found<V>)> = computing
                    .into_iter()
                    .map(|c| {
                        let found = got.remove(&c.element.id).map_or(Found::Negative, Found::Value);
                        (c, found)
                    })
                    .collect();
                let calls: Vec<Call<'_>> =
                    done.iter().map(|(c, _)| element_call((cache, namespace, opts, site), &c.element)).collect();
                let ttls: Vec<Option<std::time::Duration>> =
                    done.iter().zip(&calls).map(|((_, found), call)| policy.ttl_of(found, call.ttl())).collect();
                // Every fill in one round trip, each lease-checked.
                let fills: Vec<Fill<'_, '_, V>> = done
                    .iter()
                    .zip(&calls)
                    .zip(&ttls)
                    .filter_map(|(((c, found), call), ttl)| {
                        let (lease, l1_epoch) = c.lease.as_ref()?;
                        Some(Fill { call, lease, l1_epoch: *l1_epoch, found, ttl: (*ttl)? })
                    })
                    .collect();
                cache.fill_many::<V, Json>(&fills, recompute).await;
                drop(fills);
                drop(calls);
                // Each flight shares what it stored; then the refresh claims and `lock` locks
                // held (the rare ones) are let go, concurrently.
                let mut releases = Vec::new();
                for ((c, found), ttl) in done.into_iter().zip(ttls) {
                    c.leader.finish(Some(&found), Served::Joined(ttl.unwrap_or_default()));
                    if c.refreshing || c.held.is_some() {
                        releases.push((c.element.key, c.refreshing, c.held));
                    }
                    answer::<K, V, M>(&mut answered, c.at, c.element.id, found);
                }
                let released = releases.into_iter().map(|(key, refreshing, held)| async move {
                    if refreshing {
                        cache.release_refresh(&key).await;
                    }
                    if let Some(held) = held {
                        held.release().await;
                    }
                });
                crate::sync::join_all(released).await;
                // What the body returned beyond the elements asked for is answered, not stored.
                for (id, v) in got {
                    M::answer(&mut answered, usize::MAX, id, v);
                }
            }
            Err(err) => {
                if let Some(site) = site {
                    site.failed();
                }
                // Nothing is stored. With a fallback for every element (`stale_if_error`, a
                // refresh), the batch is answered from them; otherwise the caller gets the error.
                let covered =
                    computing.iter().all(|c| matches!(c.fallback, Some(Found::Value(_)) | Some(Found::Negative)));
                let mut served = Vec::new();
                for c in computing {
                    c.leader.finish::<V>(None, Served::Stale);
                    if c.refreshing {
                        cache.release_refresh(&c.element.key).await;
                    }
                    if let Some(held) = c.held {
                        held.release().await;
                    }
                    served.push((c.at, c.element, c.fallback));
                }
                if !covered {
                    return Err(err);
                }
                for (at, element, fallback) in served {
                    cache.record_served(site, &element.key, true);
                    if let Some(found) = fallback {
                        answer::<K, V, M>(&mut answered, at, element.id, found);
                    }
                }
            }
        }
    }
    Ok(M::from_answers(answered))
}

/// Whether each element is the first with its key. Keys strictly increasing in some order have
/// no duplicates: by their bytes (ids passed in order, strings) or by their length then bytes
/// (integer ids passed in numeric order: `user:9` before `user:10`). Otherwise by the keys'
/// 64-bit FNV-1a hashes, each repeated hash checked against the key (two keys with one hash,
/// of which no pair is known, fall back to comparing the keys themselves).
fn first_of_each_key<K>(elements: &[Element<K>]) -> Vec<bool> {
    use std::collections::hash_map::{Entry, HashMap};
    let increasing = |pair: &[Element<K>]| pair[0].key < pair[1].key;
    let numeric = |pair: &[Element<K>]| (pair[0].key.len(), &pair[0].key) < (pair[1].key.len(), &pair[1].key);
    if elements.windows(2).all(increasing) || elements.windows(2).all(numeric) {
        return vec![true; elements.len()];
    }
    let mut seen: HashMap<u64, usize, std::hash::BuildHasherDefault<KeyHash>> =
        HashMap::with_capacity_and_hasher(elements.len(), Default::default());
    let mut first = vec![true; elements.len()];
    for (i, element) in elements.iter().enumerate() {
        match seen.entry(crate::envelope::key_hash(&element.key)) {
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
            Entry::Occupied(slot) if elements[*slot.get()].key == element.key => first[i] = false,
            Entry::Occupied(_) => {
                let mut keys = std::collections::HashSet::with_capacity(elements.len());
                return elements.iter().map(|e| keys.insert(e.key.as_str())).collect();
            }
        }
    }
    first
}

/// A `Hasher` for keys that are hashes already (`first_of_each_key`): the value itself.
#[derive(Default)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::envelope::fnv1a(bytes) ^ self.0.rotate_left(5);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Adds an element's value to the batch's answer (a not-found element has none).
fn answer<K, V, M: BatchMap<K, V>>(answered: &mut M::Answers, at: usize, id: K, found: Found<V>) {
    if let Found::Value(v) = found {
        M::answer(answered, at, id, v);
    }
}

/// Longest a refresh may hold its claim (as a single call's).
const REFRESH_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

fn element_call<'a, K>(batch: (&'a Cache, &'a str, &'a CallOpts, Site), element: &'a Element<K>) -> Call<'a> {
    lent_call(batch, element, element.key.clone())
}

/// An element's call with its key given (`element.key` moved out for the call's lifetime).
fn lent_call<'a, K>(batch: (&'a Cache, &'a str, &'a CallOpts, Site), element: &'a Element<K>, key: String) -> Call<'a> {
    let (cache, namespace, opts, site) = batch;
    Call { cache, key, namespace, tags: &element.tags, opts, site }
}

/// A batch fn's row in `function_stats`.
type Site = Option<&'static crate::functions::Function>;

#[cfg(test)]
mod tests {
    use super::{first_of_each_key, Element};

    fn elements(keys: &[&str]) -> Vec<Element<usize>> {
        keys.iter().enumerate().map(|(id, key)| Element { id, key: (*key).to_owned(), tags: Vec::new() }).collect()
    }

    #[test]
    fn each_key_is_looked_up_once_in_any_order() {
        assert_eq!(first_of_each_key(&elements(&["u:1", "u:2", "u:3"])), [true, true, true]);
        assert_eq!(
            first_of_each_key(&elements(&["u:1", "u:10", "u:2", "u:1", "u:2", "u:3"])),
            [true, true, true, false, false, true]
        );
        assert_eq!(first_of_each_key(&elements(&["u:2", "u:2"])), [true, false]);
        // Integer ids in numeric order (not in the keys' byte order), then with a repeat.
        assert_eq!(first_of_each_key(&elements(&["u:9", "u:10", "u:11"])), [true, true, true]);
        assert_eq!(first_of_each_key(&elements(&["u:9", "u:10", "u:10"])), [true, true, false]);
        assert_eq!(first_of_each_key(&elements(&["u:10", "u:9", "u:10"])), [true, true, false]);
        assert_eq!(first_of_each_key(&elements(&[])), [] as [bool; 0]);
    }
}
