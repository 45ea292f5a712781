//! The two stores: process memory (moka) and Redis (redis-rs `ConnectionManager`).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::envelope::Meta;
use crate::error::CacheError;
use crate::time::now_ms;

/// A value held in process memory: typed, so a hit is a downcast and a clone, no decoding.
pub(crate) struct MemEntry {
    pub(crate) meta: Meta,
    pub(crate) negative: bool,
    pub(crate) value: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for MemEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEntry").field("meta", &self.meta).field("negative", &self.negative).finish_non_exhaustive()
    }
}

/// Each entry lives until its stale-until instant (its own ttl), whatever the others do.
struct EntryExpiry;

impl EntryExpiry {
    fn remaining(entry: &MemEntry) -> Option<Duration> {
        Some(Duration::from_millis(entry.meta.stale_until_ms.saturating_sub(now_ms())))
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

#[derive(Clone)]
pub(crate) struct MemoryStore {
    entries: moka::sync::Cache<String, Arc<MemEntry>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("entries", &self.entries.entry_count()).finish()
    }
}

impl MemoryStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        let entries = moka::sync::Cache::builder().max_capacity(max_entries).expire_after(EntryExpiry).build();
        MemoryStore { entries }
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<MemEntry>> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&self, key: String, entry: MemEntry) {
        self.entries.insert(key, Arc::new(entry));
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Removes every entry whose key starts with `start`; returns how many.
    pub(crate) fn remove_prefix(&self, start: &str) -> u64 {
        let mut removed = 0;
        for (key, _) in self.entries.iter() {
            if key.starts_with(start) {
                self.entries.invalidate(key.as_str());
                removed += 1;
            }
        }
        removed
    }
}

/// Redis through a `ConnectionManager` (one multiplexed connection that reconnects by
/// itself), every command bounded by the command timeout.
#[derive(Clone)]
pub(crate) struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily: building never fails because Redis is down, the first command does
    /// (and is treated as a miss).
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::Config(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore { conn, timeout })
    }

    /// One command, bounded by the command timeout as a whole: while the connection manager
    /// reconnects (with retries and backoff) a command would otherwise wait for the reconnection.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, CacheError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if err.is_timeout() => Err(CacheError::Timeout),
            Ok(Err(err)) => Err(CacheError::Redis(err)),
            Err(_) => Err(CacheError::Timeout),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    pub(crate) async fn set(&self, key: &str, bytes: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(redis::cmd("SET").arg(key).arg(bytes).arg("PX").arg(ms)).await
    }

    pub(crate) async fn del(&self, key: &str) -> Result<(), CacheError> {
        self.run::<i64>(redis::cmd("UNLINK").arg(key)).await.map(drop)
    }

    /// Deletes every key matching `pattern` with `SCAN` + `UNLINK` in batches (never `KEYS`).
    pub(crate) async fn del_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) =
                self.run(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000)).await?;
            if !keys.is_empty() {
                removed += self.run::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}
