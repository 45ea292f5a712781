//! Small synchronisation helpers shared by the runtime's modules.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`; a poisoned lock (a panic while it was held) is used as is: every structure
/// guarded here stays consistent between operations.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the futures concurrently, in this task (no spawn: they may borrow); their outputs in
/// order.
pub(crate) async fn join_all<T, F: std::future::Future<Output = T>>(futs: impl IntoIterator<Item = F>) -> Vec<T> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *out = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}
