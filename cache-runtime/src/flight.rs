//! Single-flight: concurrent misses of one key in one process run the body once.
//!
//! The first caller of a cold key leads: it reads the store, runs the body and shares what it
//! got (a value, or a `None` for `Option` results) with every caller that arrived meanwhile.
//! Errors are not shared (an error type need not be `Clone`): when the leader fails, is
//! cancelled or panics, the next waiter leads. So there is never more than one body running
//! per key in a process.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::entry::{Found, Served};
use crate::sync::lock;

/// What a leader shares: `Some(value)` (an `Arc<(Found<V>, Served)>`: how the waiters serve
/// it), or `None` when it has nothing to share (its body failed).
type Outcome = Option<Arc<dyn Any + Send + Sync>>;

/// A flight in progress: its id (so a finished leader never removes its successor's flight)
/// and where its outcome will appear.
type Flight = (u64, watch::Receiver<Option<Outcome>>);

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Flight>>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

/// The caller that computes the value for everyone.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: watch::Sender<Option<Outcome>>,
}

pub(crate) enum Joined<'a, V> {
    Leader(Leader<'a>),
    /// What the leader computed or found, and how it is served.
    Shared(Found<V>, Served),
}

impl Flights {
    /// Becomes the leader for `key`, or waits for the current one and takes what it shares.
    pub(crate) async fn join<V: Clone + Send + Sync + 'static>(&self, key: &str) -> Joined<'_, V> {
        loop {
            let mut rx = {
                let mut map = lock(&self.map);
                match map.get(key) {
                    Some((_, rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        map.insert(key.to_owned(), (id, rx));
                        return Joined::Leader(Leader { flights: self, key: key.to_owned(), id, tx });
                    }
                }
            };
            // `Err`: the leader went away without an answer (cancelled or panicked).
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.as_ref().and_then(Clone::clone),
                Err(_) => None,
            };
            if let Some((found, served)) = shared.as_ref().and_then(|any| any.downcast_ref::<(Found<V>, Served)>()) {
                return Joined::Shared(found.clone(), *served);
            }
            // Nothing to share: wait for the flight to be gone, then try to lead.
            tokio::task::yield_now().await;
        }
    }
}

impl Leader<'_> {
    /// Hands `found` (or nothing, on failure) to the waiters, to be served as `served`, and
    /// ends the flight.
    /// `found` is copied only when some caller waits (most flights have no waiter).
    pub(crate) fn finish<V: Clone + Send + Sync + 'static>(self, found: Option<&Found<V>>, served: Served) {
        // Out of the map first: no caller can join after this, so the receivers counted below
        // are every waiter there will be.
        self.remove();
        if self.tx.receiver_count() == 0 {
            return;
        }
        let outcome: Outcome = found.map(|f| Arc::new((f.clone(), served)) as Arc<dyn Any + Send + Sync>);
        let _ = self.tx.send(Some(outcome));
    }

    fn remove(&self) {
        let mut map = lock(&self.flights.map);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Cancelled or panicked before `finish`: the waiters see the channel close.
        self.remove();
    }
}
