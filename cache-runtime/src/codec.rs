//! How values become the payload of a Redis entry. Process memory keeps typed values and
//! never encodes.

use crate::error::CacheError;
use crate::Cacheable;

/// The payload format of values stored in Redis, chosen per cache with
/// [`CacheBuilder::format`](crate::CacheBuilder::format). Each entry says which format it was
/// written in, so caches with different formats can share a Redis.
///
/// ```
/// let cache = cache_runtime::Cache::builder().format(cache_runtime::Format::Json).build().unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// serde_json (the default): readable in `redis-cli`.
    #[default]
    Json,
    /// MessagePack with field names (rmp-serde; feature `msgpack`): smaller and faster.
    #[cfg(feature = "msgpack")]
    MessagePack,
}

/// What any store can hold: process memory keeps the value itself.
pub(crate) trait Stored: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Stored for T {}

/// Encodes and decodes one kind of value.
pub(crate) trait Codec<V> {
    /// Appends the encoded value to `out` (after the envelope's head: one buffer per entry).
    fn encode_into(value: &V, format: Format, out: &mut Vec<u8>) -> Result<(), CacheError>;

    fn encode(value: &V, format: Format) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::new();
        Self::encode_into(value, format, &mut out)?;
        Ok(out)
    }
    /// A failure is described for the log and read as a miss.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn decode(bytes: &[u8], format: Format) -> Result<V, String>;

    /// The `ETag` a stored value answers with (a handler's response), kept in its metadata for
    /// `Cache::inspect`.
    fn etag(_value: &V) -> Option<Box<str>> {
        None
    }

    /// What a value whose encoded form is `encoded_len` bytes costs in process memory, beyond
    /// its key and the fixed per-entry overhead (its weight against `max_bytes`).
    fn memory_size(encoded_len: usize) -> usize {
        encoded_len
    }
}

/// serde: the codec of every `Cacheable` value, in the cache's format.
pub(crate) struct Json;

impl<V: Cacheable> Codec<V> for Json {
    fn encode_into(value: &V, format: Format, out: &mut Vec<u8>) -> Result<(), CacheError> {
        match format {
            Format::Json => serde_json::to_writer(out, value).map_err(CacheError::Encode),
            #[cfg(feature = "msgpack")]
            Format::MessagePack => {
                rmp_serde::encode::write_named(out, value).map_err(|e| CacheError::Config(e.to_string()))
            }
        }
    }

    fn decode(bytes: &[u8], format: Format) -> Result<V, String> {
        match format {
            Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            #[cfg(feature = "msgpack")]
            Format::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}
