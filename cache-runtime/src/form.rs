//! A value's stored form: its metadata, its payload (bounded by `max_value_bytes`, in process
//! memory as in Redis), its envelope for Redis, its entry in process memory. No I/O; the
//! engine (`engine/`) stores what these make.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cache::Cache;
use crate::codec::{Codec, Stored};
use crate::envelope::{self, Meta};
use crate::error::CacheError;
use crate::policy::duration_ms;
use crate::store::{self, MemEntry};
use crate::time::now_ms;

impl Cache {
    /// `keep`: how long the entry outlives its freshness (the serve-stale windows).
    pub(crate) fn meta<V>(&self, ttl: Duration, keep: Duration, recompute: Duration, tags: Vec<(String, u64)>) -> Meta {
        let now = now_ms();
        let fresh_until_ms = now.saturating_add(duration_ms(ttl));
        Meta {
            fingerprint: envelope::fingerprint::<V>(),
            stored_at_ms: now,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(duration_ms(keep)),
            recompute_ms: u32::try_from(recompute.as_millis()).unwrap_or(u32::MAX),
            etag: None,
            tags,
        }
    }

    /// The stored form of a value (its envelope and payload, in one buffer), unless it is
    /// larger than `max_value_bytes` (then it is not stored: counted in `stats().oversized`,
    /// logged once).
    #[cfg(feature = "redis")]
    pub(crate) fn encode_entry<V: Stored, C: Codec<V>>(
        &self,
        key: &str,
        meta: &Meta,
        value: Option<&V>,
    ) -> Result<Vec<u8>, CacheError> {
        let mut out = match envelope::head(key, meta, value.is_none(), self.inner.format, PAYLOAD_HINT) {
            Ok(out) => out,
            Err(why) => {
                // The payload's own failure (it does not encode, it is too large) comes first.
                self.checked_payload::<V, C>(value)?;
                return Err(CacheError::Config(why.to_owned()));
            }
        };
        let start = out.len();
        if let Some(v) = value {
            C::encode_into(v, self.inner.format, &mut out)?;
        }
        self.check_size(out.len() - start)?;
        Ok(out)
    }

    /// The encoded value, unless it is larger than `max_value_bytes`, in process memory as in
    /// Redis (a test on the memory store sees what production on Redis does).
    pub(crate) fn checked_payload<V: Stored, C: Codec<V>>(&self, value: Option<&V>) -> Result<Vec<u8>, CacheError> {
        let payload = match value {
            Some(v) => C::encode(v, self.inner.format)?,
            None => Vec::new(),
        };
        self.check_size(payload.len())?;
        Ok(payload)
    }

    /// `Err` for a payload of `len` bytes above `max_value_bytes` (counted, logged once).
    fn check_size(&self, len: usize) -> Result<(), CacheError> {
        if len > self.inner.max_value_bytes {
            self.inner.stats.oversized.fetch_add(1, Ordering::Relaxed);
            if !self.inner.oversized_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "cache_runtime",
                    bytes = len,
                    max = self.inner.max_value_bytes,
                    "a value larger than max_value_bytes is not stored (logged once; see stats().oversized)"
                );
            }
            return Err(CacheError::TooLarge(len));
        }
        Ok(())
    }
}

/// Room made for a payload after the envelope's head (a JSON row; a larger one grows the
/// buffer as it is written).
#[cfg(feature = "redis")]
const PAYLOAD_HINT: usize = 256;

/// `weight`: see [`store::entry_weight`].
pub(crate) fn mem_entry<V: Stored>(meta: Meta, value: Option<&V>, weight: u32) -> MemEntry {
    match value {
        Some(v) => {
            MemEntry { expires_ms: meta.stale_until_ms, meta, negative: false, value: Box::new(v.clone()), weight }
        }
        None => MemEntry { expires_ms: meta.stale_until_ms, meta, negative: true, value: Box::new(()), weight },
    }
}

/// The weight of a memory-store entry whose value encodes to `payload`.
pub(crate) fn memory_weight<V: Stored, C: Codec<V>>(key: &str, payload: &[u8]) -> u32 {
    store::entry_weight(key.len(), C::memory_size(payload.len()))
}
