//! Single-flight: concurrent misses of one key in one process run the body once.
//!
//! The first caller of a cold key leads: it reads the store, runs the body and shares what it
//! got (a value, or a `None` for `Option` results) with every caller that arrived meanwhile.
//! Errors are not shared (an error type need not be `Clone`): when the leader fails, is
//! cancelled or panics, the next waiter leads. So there is never more than one body running
//! per key in a process, but for one exception: an invalidation applied in this process (its
//! own write, or one heard from another replica) ends the flights it touches for later
//! callers. A caller arriving after a write returned must not share a read that began before
//! it (whose query may have seen the old row), so it leads a new flight; the old leader
//! finishes alone (its fill is refused by its lease) and its waiters start over.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::entry::{Found, Served};
use crate::sync::lock;

/// What a leader shares: `Some(value)` (an `Arc<(Found<V>, Served)>`: how the waiters serve
/// it), or `None` when it has nothing to share (its body failed).
type Outcome = Option<Arc<dyn Any + Send + Sync>>;

/// Where a flight's outcome appears, for the callers waiting for it.
type Channel = (watch::Sender<Option<Outcome>>, watch::Receiver<Option<Outcome>>);

/// A flight in progress: its id (so a finished leader never removes its successor's flight)
/// and, once a caller waits for it, the channel its outcome will appear on (made by the first
/// waiter: most flights have none, and cost no channel).
struct Flight {
    id: u64,
    channel: Option<Channel>,
}

#[derive(Default)]
pub(crate) struct Flights {
    /// The key is shared with the flight's leader (one allocation per flight).
    map: Mutex<HashMap<Arc<str>, Flight>>,
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
    key: Arc<str>,
    id: u64,
    /// Out of the map already (`finish`): nothing to remove on drop.
    removed: bool,
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
                match map.get_mut(key) {
                    Some(flight) => flight.channel.get_or_insert_with(|| watch::channel(None)).1.clone(),
                    None => {
                        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let key: Arc<str> = Arc::from(key);
                        map.insert(Arc::clone(&key), Flight { id, channel: None });
                        return Joined::Leader(Leader { flights: self, key, id, removed: false });
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

impl Flights {
    /// Ends the flight of `key` (`None`: every flight; a tag, a namespace, a lost channel) for
    /// every caller that arrives from now on; see the module's documentation.
    pub(crate) fn forget(&self, key: Option<&str>) {
        let mut map = lock(&self.map);
        let gone: Vec<Flight> = match key {
            Some(key) => map.remove(key).into_iter().collect(),
            None => map.drain().map(|(_, flight)| flight).collect(),
        };
        // Dropped outside the lock: dropping a channel wakes its waiters.
        drop(map);
        drop(gone);
    }
}

impl Leader<'_> {
    /// Hands `found` (or nothing, on failure) to the waiters, to be served as `served`, and
    /// ends the flight. `found` is copied only when some caller waits.
    pub(crate) fn finish<V: Clone + Send + Sync + 'static>(mut self, found: Option<&Found<V>>, served: Served) {
        // Out of the map first: no caller can join after this, so the waiters are all there.
        let channel = self.remove();
        self.removed = true;
        if let Some((tx, _)) = channel {
            let outcome: Outcome = found.map(|f| Arc::new((f.clone(), served)) as Arc<dyn Any + Send + Sync>);
            let _ = tx.send(Some(outcome));
        }
    }

    /// Ends this leader's flight (not a successor's); its channel, if a caller waits.
    fn remove(&self) -> Option<Channel> {
        let mut map = lock(&self.flights.map);
        // One lookup: a successor's flight (this one ended already) goes back.
        let (key, flight) = map.remove_entry(&*self.key)?;
        if flight.id == self.id {
            return flight.channel;
        }
        map.insert(key, flight);
        None
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Cancelled or panicked before `finish`: the waiters see the channel close.
        if !self.removed {
            drop(self.remove());
        }
    }
}
