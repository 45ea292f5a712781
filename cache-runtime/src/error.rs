//! Errors reported by the plain API and the builder.

use std::fmt;

/// What went wrong talking to a cache backend or building a [`Cache`](crate::Cache).
///
/// The cached paths (the `#[cached]` macro and [`Cache::get_or_fetch`](crate::Cache::get_or_fetch))
/// never return this: a cache failure there is a miss, logged and counted. The plain
/// API returns it where the caller may want to act on it (a failed invalidation, a failed store).
///
/// ```
/// let err = cache_runtime::Cache::builder().prefix("not a prefix!").build().unwrap_err();
/// assert!(matches!(err, cache_runtime::CacheError::Config(_)));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// The builder was given an invalid setting.
    Config(String),
    /// Redis answered with an error or the connection failed.
    #[cfg(feature = "redis")]
    Redis(redis::RedisError),
    /// Redis did not answer within the command timeout.
    Timeout,
    /// The value could not be serialized.
    Encode(serde_json::Error),
    /// Redis failed repeatedly: the circuit breaker is open and the command was not sent.
    Unavailable,
    /// The encoded value (this many bytes) is larger than `max_value_bytes`; it was not stored.
    TooLarge(usize),
}

impl CacheError {
    /// The same failure again, for each of several operations it failed at once (a pipeline):
    /// the errors a store operation returns are all repeatable.
    #[cfg(feature = "redis")]
    pub(crate) fn again(&self) -> CacheError {
        match self {
            CacheError::Redis(err) => CacheError::Redis(err.clone()),
            CacheError::Timeout => CacheError::Timeout,
            CacheError::Config(msg) => CacheError::Config(msg.clone()),
            CacheError::TooLarge(n) => CacheError::TooLarge(*n),
            CacheError::Encode(_) | CacheError::Unavailable => CacheError::Unavailable,
        }
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Config(msg) => write!(f, "invalid cache configuration: {msg}"),
            #[cfg(feature = "redis")]
            CacheError::Redis(err) => write!(f, "redis error: {err}"),
            CacheError::Timeout => f.write_str("redis did not answer within the command timeout"),
            CacheError::Encode(err) => write!(f, "could not encode the value: {err}"),
            CacheError::Unavailable => f.write_str("redis is failing; the circuit breaker is open"),
            CacheError::TooLarge(n) => write!(f, "the value is {n} bytes, over max_value_bytes; not stored"),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "redis")]
            CacheError::Redis(err) => Some(err),
            CacheError::Encode(err) => Some(err),
            CacheError::Config(_) | CacheError::Timeout | CacheError::Unavailable | CacheError::TooLarge(_) => None,
        }
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for CacheError {
    fn from(err: redis::RedisError) -> Self {
        CacheError::Redis(err)
    }
}

/// Returned by [`init`](crate::init) when the global cache was already set (explicitly, or
/// implicitly by a cached call that ran before `init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyInitialized;

impl fmt::Display for AlreadyInitialized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the global cache is already initialized; call cache_runtime::init once, before the first cached call",
        )
    }
}

impl std::error::Error for AlreadyInitialized {}
