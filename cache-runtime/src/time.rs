//! Wall-clock time in milliseconds: entries are shared between processes, so their
//! timestamps must mean the same thing on every replica.

use std::time::{SystemTime, UNIX_EPOCH};

#[inline]
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
