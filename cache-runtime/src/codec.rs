//! How values become the payload of a Redis entry. Process memory keeps typed values and
//! never encodes.

use crate::error::CacheError;
use crate::Cacheable;

/// What any store can hold: process memory keeps the value itself.
pub(crate) trait Stored: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Stored for T {}

/// Encodes and decodes one kind of value.
pub(crate) trait Codec<V> {
    fn encode(value: &V) -> Result<Vec<u8>, CacheError>;
    /// A failure is described for the log and read as a miss.
    fn decode(bytes: &[u8]) -> Result<V, String>;
}

/// serde_json: the default codec of every `Cacheable` value.
pub(crate) struct Json;

impl<V: Cacheable> Codec<V> for Json {
    fn encode(value: &V) -> Result<Vec<u8>, CacheError> {
        serde_json::to_vec(value).map_err(CacheError::Encode)
    }

    fn decode(bytes: &[u8]) -> Result<V, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
