//! The process-memory store: typed entries in moka, per-key generations, tag/namespace versions.

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::Lease;
use crate::envelope::Meta;
use crate::sync::lock;
use crate::time::now_ms;

/// A value held in process memory: typed, so a hit is a downcast and a clone, no decoding.
pub(crate) struct MemEntry {
    pub(crate) meta: Meta,
    pub(crate) negative: bool,
    pub(crate) value: Box<dyn Any + Send + Sync>,
    /// Estimated bytes held (key, encoded payload size, bookkeeping): what `max_bytes` bounds.
    pub(crate) weight: u32,
    /// When the store drops it (ms since the epoch): its stale-until instant, or sooner in the
    /// L1 (`l1_ttl`). `meta` keeps the entry's own times, which answers report (`max-age`).
    pub(crate) expires_ms: u64,
}

/// Estimated bytes an entry costs beyond its key and payload (the entry, its `Arc`, moka's
/// node and expiry bookkeeping, the allocator's rounding): 871 bytes per entry measured for
/// a 200-byte value and a 29-byte key (`bench/src/bin/entry_size.rs`), minus those.
pub(crate) const ENTRY_OVERHEAD: usize = 640;

/// The weight of an entry whose key is `key_len` bytes and whose encoded payload is
/// `payload_len` bytes.
pub(crate) fn entry_weight(key_len: usize, payload_len: usize) -> u32 {
    u32::try_from(key_len + payload_len + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl std::fmt::Debug for MemEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEntry").field("meta", &self.meta).field("negative", &self.negative).finish_non_exhaustive()
    }
}

/// Each entry lives until its own expiry (see [`MemEntry::expires_ms`]), whatever the others do.
struct EntryExpiry;

impl EntryExpiry {
    fn remaining(entry: &MemEntry) -> Option<Duration> {
        Some(Duration::from_millis(entry.expires_ms.saturating_sub(now_ms())))
    }
}

impl moka::Expiry<String, Arc<MemEntry>> for EntryExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<MemEntry>, _at: Instant) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<MemEntry>,
        _at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value)
    }
}

const SHARDS: usize = 64;

/// How long a key's generation is remembered after its last invalidation: far longer than
/// any fill takes.
const GENERATION_TTL: Duration = Duration::from_secs(3600);

/// Tag versions a process keeps at most (each costs ~300 bytes): past it, half are forgotten.
/// A forgotten version is unknown, and an entry that recorded it is a miss (never a stale hit);
/// in process memory a tag's next version comes from a counter that never repeats one.
const MAX_TAG_VERSIONS: usize = 50_000;

/// Versions of tags and of namespaces, looked up by name without allocating.
#[derive(Debug, Default)]
struct Versions {
    tags: HashMap<String, u64>,
    namespaces: HashMap<String, u64>,
    /// The last tag version handed out in process memory (where this store is the source of
    /// truth): every new or bumped version is above every earlier one, forgotten ones included.
    last: u64,
}

impl Versions {
    fn tag(&self, tag: &str) -> Option<u64> {
        self.tags.get(tag).copied()
    }

    /// Sets `tag`'s version, keeping at most [`MAX_TAG_VERSIONS`].
    fn set_tag(&mut self, tag: &str, version: u64) {
        match self.tags.get_mut(tag) {
            Some(v) => *v = version,
            None => {
                if self.tags.len() >= MAX_TAG_VERSIONS {
                    // Every other one, in the map's (random) order: amortised O(1) per insert.
                    let mut keep = false;
                    self.tags.retain(|_, _| {
                        keep = !keep;
                        keep
                    });
                }
                self.tags.insert(tag.to_owned(), version);
            }
        }
    }

    /// A version no tag of this store ever had.
    fn fresh(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    fn namespace(&self, namespace: &str) -> u64 {
        self.namespaces.get(namespace).copied().unwrap_or(0)
    }
}

pub(crate) struct MemoryStore {
    entries: moka::sync::Cache<String, Arc<MemEntry>>,
    /// Bounded by bytes (entries carry a weight) as well as by count.
    weighed: bool,
    generations: moka::sync::Cache<String, u64>,
    versions: RwLock<Versions>,
    /// Serialises a fill's check-and-insert with invalidations of the same key.
    shards: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("entries", &self.entries.entry_count()).finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// At most `max_entries` entries and, with `max_bytes`, at most that many bytes by the
    /// entries' weights. Both bounds are one moka capacity: the capacity is `max_bytes` and no
    /// entry weighs less than `max_bytes / max_entries`, so neither bound can be exceeded.
    pub(crate) fn new(max_entries: u64, max_bytes: Option<u64>) -> Self {
        let entries = moka::sync::Cache::builder().expire_after(EntryExpiry);
        let entries = match max_bytes {
            None => entries.max_capacity(max_entries).build(),
            Some(max_bytes) => {
                let max_entries = max_entries.max(1);
                let floor = u32::try_from(max_bytes.div_ceil(max_entries)).unwrap_or(u32::MAX);
                entries
                    // Never more than `max_entries` entries of at least `floor` each.
                    .max_capacity(max_bytes.min(u64::from(floor).saturating_mul(max_entries)))
                    .weigher(move |_key: &String, entry: &Arc<MemEntry>| entry.weight.max(floor))
                    .build()
            }
        };
        MemoryStore {
            entries,
            weighed: max_bytes.is_some(),
            generations: moka::sync::Cache::builder().time_to_idle(GENERATION_TTL).build(),
            versions: RwLock::new(Versions::default()),
            shards: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<()> {
        &self.shards[usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0)]
    }

    /// Entries held and their total weight, 0 when not bounded by bytes (after applying
    /// pending evictions).
    pub(crate) fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), if self.weighed { self.entries.weighted_size() } else { 0 })
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<MemEntry>> {
        self.entries.get(key)
    }

    /// Whether every tag of `entry` still has the version it recorded (a tag whose version this
    /// store does not know, never made or forgotten, is not current).
    pub(crate) fn tags_current(&self, entry: &MemEntry) -> bool {
        if entry.meta.tags.is_empty() {
            return true;
        }
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        entry.meta.tags.iter().all(|(tag, v)| versions.tag(tag) == Some(*v))
    }

    /// The generation of `key` and the versions of its namespace and tags, as they are now (a
    /// tag without one is given a fresh version first).
    pub(crate) fn lease(&self, key: &str, namespace: &str, tags: &[String]) -> Lease {
        let lease = |versions: &Versions| Lease {
            generation: Some(self.generations.get(key).unwrap_or(0)),
            namespace_version: Some(versions.namespace(namespace)),
            // One forgotten under pressure while the others were made is absent: the fill is
            // refused.
            tags: tags.iter().map(|t| (t.clone(), versions.tag(t).unwrap_or(0))).collect(),
        };
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if tags.iter().all(|t| versions.tag(t).is_some()) {
            return lease(&versions);
        }
        drop(versions);
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for tag in tags {
            if versions.tag(tag).is_none() {
                let fresh = versions.fresh();
                versions.set_tag(tag, fresh);
            }
        }
        lease(&versions)
    }

    /// Inserts `entry` if nothing it depends on was invalidated since `lease` was taken.
    pub(crate) fn fill(&self, key: String, namespace: &str, lease: &Lease, entry: MemEntry) -> bool {
        let _key_guard = lock(self.shard(&key));
        let versions = self.versions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = Some(self.generations.get(&key).unwrap_or(0)) == lease.generation
            && Some(versions.namespace(namespace)) == lease.namespace_version
            && lease.tags.iter().all(|(t, v)| versions.tag(t) == Some(*v));
        if current {
            self.entries.insert(key, Arc::new(entry));
        }
        current
    }

    /// Stores without a lease (a mirror of what Redis holds: the L1).
    #[cfg(feature = "redis")]
    pub(crate) fn insert(&self, key: String, entry: MemEntry) {
        self.entries.insert(key, Arc::new(entry));
    }

    /// The plain API's `set`: stores and moves the key's generation (as `invalidate_key`
    /// does), so a fill leased before the set is refused.
    pub(crate) fn set(&self, key: String, entry: MemEntry) {
        let _key_guard = lock(self.shard(&key));
        self.bump_generation(&key);
        self.end_representations(&key);
        self.entries.insert(key, Arc::new(entry));
    }

    /// Drops `key`'s value and ends its other representations (see `key.rs`).
    pub(crate) fn invalidate_key(&self, key: &str) {
        let _key_guard = lock(self.shard(key));
        self.bump_generation(key);
        self.end_representations(key);
        self.entries.invalidate(key);
    }

    /// Ends every representation of `key` but its value (see `key.rs`): bumps its implicit tag.
    fn end_representations(&self, key: &str) {
        self.bump_tag(&crate::key::key_tag(key));
    }

    /// Moves `key`'s generation: every lease taken before is refused. Under the key's shard lock.
    fn bump_generation(&self, key: &str) {
        let next = self.generations.get(key).unwrap_or(0) + 1;
        self.generations.insert(key.to_owned(), next);
    }

    /// Bumps a tag's version (here the source of truth) to a fresh one. A tag without a version
    /// keeps none: no entry that recorded one of its versions is current.
    pub(crate) fn bump_tag(&self, tag: &str) {
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if versions.tag(tag).is_some() {
            let fresh = versions.fresh();
            versions.set_tag(tag, fresh);
        }
    }

    /// Records a tag version learned from Redis (versions only grow).
    #[cfg(feature = "redis")]
    pub(crate) fn learn_tag(&self, tag: &str, version: u64) {
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = versions.tag(tag).unwrap_or(0);
        versions.set_tag(tag, known.max(version));
    }

    /// Forgets what this process knew of a tag's version.
    #[cfg(feature = "redis")]
    pub(crate) fn forget_tag(&self, tag: &str) {
        self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner).tags.remove(tag);
    }

    /// Forgets `key` without bumping its generation (an L1 dropping its copy).
    #[cfg(feature = "redis")]
    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Bumps the namespace's version (so fills that started before cannot store), then removes
    /// every entry whose key starts with `start`; returns how many.
    pub(crate) fn clear_namespace(&self, namespace: &str, start: &str) -> u64 {
        {
            let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            *versions.namespaces.entry(namespace.to_owned()).or_insert(0) += 1;
        }
        let mut removed = 0;
        for (key, _) in &self.entries {
            if key.starts_with(start) {
                self.entries.invalidate(key.as_str());
                removed += 1;
            }
        }
        removed
    }

    /// Up to `count` stored keys starting with `start`, in order, after `after` (a page).
    pub(crate) fn keys_page(&self, start: &str, after: &str, count: usize) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(key, _)| key.starts_with(start) && key.as_str() > after)
            .map(|(key, _)| key.as_str().to_owned())
            .collect();
        keys.sort_unstable();
        keys.truncate(count);
        keys
    }

    /// Drops everything, versions included (an L1 that may have missed invalidations).
    #[cfg(feature = "redis")]
    pub(crate) fn flush(&self) {
        self.entries.invalidate_all();
        let mut versions = self.versions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *versions = Versions { last: versions.last, ..Versions::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `value` recording what `lease` saw of its tags, fresh for a minute.
    fn entry(lease: &Lease, value: u32) -> MemEntry {
        let now = now_ms();
        let meta = Meta {
            fingerprint: 0,
            stored_at_ms: now,
            fresh_until_ms: now + 60_000,
            stale_until_ms: now + 60_000,
            recompute_ms: 0,
            etag: None,
            tags: lease.tags.clone(),
        };
        crate::form::mem_entry(meta, Some(&value), 1)
    }

    fn current(store: &MemoryStore, key: &str) -> bool {
        store.get(key).is_some_and(|e| store.tags_current(&e))
    }

    /// Issue 27, finding 5: every tag ever bumped or read kept a version for good (+18 MiB after
    /// 60,000 tag invalidations). Now at most `MAX_TAG_VERSIONS`, and a version forgotten under
    /// pressure and made again never equals one an entry recorded: the entry is a miss.
    #[test]
    fn tag_versions_are_bounded_and_a_forgotten_one_never_revives_an_entry() {
        let store = MemoryStore::new(1000, None);
        let tags = vec!["posts".to_owned()];
        let lease = store.lease("k", "ns", &tags);
        assert!(store.fill("k".into(), "ns", &lease, entry(&lease, 1)));
        assert!(current(&store, "k"));
        // Many other tags: each read once (a lease) and bumped.
        for i in 0..3 * MAX_TAG_VERSIONS {
            let tag = vec![format!("user:{i}")];
            store.lease("other", "ns", &tag);
            store.bump_tag(&tag[0]);
        }
        let held = store.versions.read().unwrap().tags.len();
        assert!(held <= MAX_TAG_VERSIONS, "{held} tag versions held");
        // Whether `posts` was forgotten or not, the entry is current exactly while `posts` has
        // the version it recorded; once bumped (or forgotten and made again), never again.
        let kept = store.versions.read().unwrap().tag("posts") == Some(lease.tags[0].1);
        assert_eq!(current(&store, "k"), kept);
        store.bump_tag("posts");
        store.lease("again", "ns", &tags); // makes `posts` again if it was forgotten
        assert!(!current(&store, "k"), "an invalidated entry never comes back");
        assert_ne!(store.versions.read().unwrap().tag("posts"), Some(lease.tags[0].1));
    }

    /// A fill whose tag was forgotten (or bumped) since its lease is refused.
    #[test]
    fn a_fill_whose_tag_version_is_gone_is_refused() {
        let store = MemoryStore::new(1000, None);
        let tags = vec!["t".to_owned()];
        let lease = store.lease("k", "ns", &tags);
        store.versions.write().unwrap().tags.clear(); // forgotten under pressure
        assert!(!store.fill("k".into(), "ns", &lease, entry(&lease, 1)));
        let lease = store.lease("k", "ns", &tags);
        store.bump_tag("t");
        assert!(!store.fill("k".into(), "ns", &lease, entry(&lease, 1)));
        let lease = store.lease("k", "ns", &tags);
        assert!(store.fill("k".into(), "ns", &lease, entry(&lease, 1)));
    }

    /// Invalidating a key ends its value and every other representation (a handler's
    /// responses, each `vary` variant), and only its own.
    #[test]
    fn invalidating_a_key_ends_every_representation_of_it() {
        let store = MemoryStore::new(1000, None);
        let (value, response, variant, other) = ("p:{ns:k}", "p:{ns:k}:h", "p:{ns:k}:h.a=1", "p:{ns:j}:h");
        for key in [value, response, variant, other] {
            let tags: Vec<String> =
                crate::key::is_representation(key).then(|| crate::key::key_tag(key)).into_iter().collect();
            let lease = store.lease(key, "ns", &tags);
            assert!(store.fill(key.into(), "ns", &lease, entry(&lease, 1)));
            assert!(current(&store, key));
        }
        store.invalidate_key(value);
        assert!(store.get(value).is_none());
        assert!(!current(&store, response) && !current(&store, variant));
        assert!(current(&store, other));
    }
}
