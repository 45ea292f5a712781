//! Small synchronisation helpers shared by the runtime's modules.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`; a poisoned lock (a panic while it was held) is used as is: every structure
/// guarded here stays consistent between operations.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
