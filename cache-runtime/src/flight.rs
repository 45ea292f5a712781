//! Single-flight: concurrent misses of one key in one process run the body once.
//!
//! The first caller of a cold key leads: it reads the store, runs the body and shares what it
//! got (a value, or a `None` for `Option` results) with every caller that arrived meanwhile.
//! Errors are not shared (an error type need not be `Clone`): when the leader fails, is
//! cancelled or panics, the next waiter leads. So there is never more than one body running
//! per key in a process, but for one exception: an invalidation applied in this process (its
//! own write, or one heard from another replica) ends the flights it touches for later
//! callers. A caller arriving after a write returned must not share a read that began before
//! it (whose query may have seen the old row), so it leads a new flight. The old leader still
//! answers the callers that joined it before the invalidation (they began before the write
//! returned: its answer is one they may get); its fill is refused by its lease (a key) or stored
//! as an entry that reads as a miss (a tag, a namespace).

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::future::Future;

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

pub(crate) struct Flights {
    state: Mutex<State>,
    next: AtomicU64,
    /// Flights ended so far (see [`Flights::mark`]).
    ended: AtomicU64,
    /// Per slot (a hash of the key), the count `ended` reached when a flight of a key in that
    /// slot last ended (or an invalidation of such a key was applied).
    ended_in: Box<[AtomicU64]>,
    /// The count `ended` reached when every key's flights last ended (`forget(None)`).
    ended_all: AtomicU64,
}

/// Slots of `Flights::ended_in`: two keys sharing one cost a needless read, never a wrong
/// answer.
const ENDED_SLOTS: usize = 1024;

impl Default for Flights {
    fn default() -> Self {
        Flights {
            state: Mutex::default(),
            next: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            ended_in: (0..ENDED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            ended_all: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct State {
    /// The flights later callers join. The key is shared with the flight's leader (one
    /// allocation per flight).
    open: HashMap<Arc<str>, Flight>,
    /// Flights forgotten while callers waited for them, by id: their leaders still answer
    /// those callers.
    detached: HashMap<u64, Channel>,
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
                let mut state = lock(&self.state);
                match state.open.get_mut(key) {
                    Some(flight) => flight.channel.get_or_insert_with(|| watch::channel(None)).1.clone(),
                    None => {
                        let id = self.next.fetch_add(1, Ordering::Relaxed);
                        let key: Arc<str> = Arc::from(key);
                        state.open.insert(Arc::clone(&key), Flight { id, channel: None });
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
    /// Where flights stand now: a caller that reads a key *before* joining its flight (a batch
    /// reads all its elements in one round trip first) takes a mark before the read; should it
    /// then lead, [`ended_since`](Self::ended_since) tells whether a flight of that key may
    /// have ended (its value stored) between the read and the join, so that it reads the key
    /// again rather than compute it a second time.
    pub(crate) fn mark(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// Whether a flight of `key` (or of a key sharing its slot) ended after `mark`, or an
    /// invalidation touching it was applied in this process.
    pub(crate) fn ended_since(&self, key: &str, mark: u64) -> bool {
        self.ended_all.load(Ordering::SeqCst) > mark || self.ended_in[slot(key)].load(Ordering::SeqCst) > mark
    }

    /// Records an end for `key` (`None`: every key: a tag, a namespace, a channel back).
    fn note_end(&self, key: Option<&str>) {
        let ended = self.ended.fetch_add(1, Ordering::SeqCst) + 1;
        match key {
            Some(key) => self.ended_in[slot(key)].fetch_max(ended, Ordering::SeqCst),
            None => self.ended_all.fetch_max(ended, Ordering::SeqCst),
        };
    }

    /// Ends the flight of `key` (`None`: every flight: a tag, a namespace, a channel back from
    /// an outage) for every caller that arrives from now on; the callers already waiting keep
    /// it. See the module's documentation.
    pub(crate) fn forget(&self, key: Option<&str>) {
        // A caller that read before this invalidation and joins after it reads again (what it
        // read may be what was invalidated).
        self.note_end(key);
        let mut state = lock(&self.state);
        let State { open, detached } = &mut *state;
        let mut keep = |flight: Flight| {
            if let Some(channel) = flight.channel {
                detached.insert(flight.id, channel);
            }
        };
        match key {
            Some(key) => open.remove(key).into_iter().for_each(&mut keep),
            None => open.drain().for_each(|(_, flight)| keep(flight)),
        }
    }
}

tokio::task_local! {
    /// The flights whose body the current task runs (each `Flights`' address and the key): a
    /// cached call nested in such a body, on one of those keys, must not join its flight (it
    /// would wait for itself).
    static LEADING: Vec<(usize, Arc<str>)>;
}

impl Flights {
    /// Whether the current task runs the body of this process's flight of `key`: a cached call
    /// nested in another on the same stored key (a fn calling a fn with the same `key`
    /// template). Such a call runs its body without the cache.
    pub(crate) fn led_here(&self, key: &str) -> bool {
        let me = std::ptr::from_ref(self) as usize;
        LEADING.try_with(|led| led.iter().any(|(flights, k)| *flights == me && **k == *key)).unwrap_or(false)
    }
}

/// Runs `body` as the body of the flights `leaders` lead (see [`Flights::led_here`]): a
/// cached call nested in it on one of their keys runs without joining.
pub(crate) async fn leading<'l, 'f: 'l, F: Future>(
    leaders: impl IntoIterator<Item = &'l Leader<'f>>,
    body: F,
) -> F::Output {
    let mut led = LEADING.try_with(Clone::clone).unwrap_or_default();
    led.extend(leaders.into_iter().map(|l| (std::ptr::from_ref(l.flights) as usize, Arc::clone(&l.key))));
    LEADING.scope(led, body).await
}

impl Leader<'_> {
    /// Hands `found` (or nothing, on failure) to the waiters, to be served as `served`, and
    /// ends the flight. `found` is copied only when some caller waits.
    pub(crate) fn finish<V: Clone + Send + Sync + 'static>(mut self, found: Option<&Found<V>>, served: Served) {
        // Counted as ended before it leaves the map (and after its fill: a leader finishes
        // after storing; a refresh's leader shares before its fill, which its refresh claim
        // covers), so a caller that read the key before and becomes the next leader (under the
        // lock `remove` takes) sees that it ended.
        self.flights.note_end(Some(&self.key));
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
        let mut state = lock(&self.flights.state);
        // One lookup: a successor's flight (this one was forgotten) goes back.
        if let Some((key, flight)) = state.open.remove_entry(&*self.key) {
            if flight.id == self.id {
                return flight.channel;
            }
            state.open.insert(key, flight);
        }
        // Forgotten while callers waited: its channel was kept for them.
        if state.detached.is_empty() {
            return None;
        }
        state.detached.remove(&self.id)
    }
}

/// `key`'s slot in `Flights::ended_in`.
fn slot(key: &str) -> usize {
    let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    (hash % ENDED_SLOTS as u64) as usize
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Cancelled or panicked before `finish`: the waiters see the channel close. It may
        // have stored its value already (cancelled after its fill): counted as ended.
        if !self.removed {
            self.flights.note_end(Some(&self.key));
            drop(self.remove());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether a caller waits on `key`'s open flight (the first waiter makes its channel).
    fn waited_on(flights: &Flights, key: &str) -> bool {
        lock(&flights.state).open.get(key).is_some_and(|f| f.channel.is_some())
    }

    #[tokio::test]
    async fn a_forgotten_flight_answers_its_waiters_and_no_later_caller() {
        let flights = Flights::default();
        let Joined::Leader(old) = flights.join::<u32>("k").await else { panic!("the first caller leads") };
        let waiter = async { flights.join::<u32>("k").await };
        tokio::pin!(waiter);
        // Polled once: it waits on the open flight.
        assert!(futures_poll(&mut waiter).await.is_none());
        assert!(waited_on(&flights, "k"));
        // A write: later callers lead a new flight; the waiter keeps the old one.
        flights.forget(Some("k"));
        let Joined::Leader(new) = flights.join::<u32>("k").await else { panic!("a later caller leads anew") };
        old.finish(Some(&Found::Value(1u32)), Served::Joined(Duration::from_secs(1)));
        match tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter is answered") {
            Joined::Shared(Found::Value(v), _) => assert_eq!(v, 1, "the old leader's answer"),
            _ => panic!("the waiter was not answered by the leader it joined"),
        }
        // The old leader did not end its successor's flight, and nothing stays detached.
        assert!(lock(&flights.state).open.contains_key("k"));
        assert!(lock(&flights.state).detached.is_empty());
        new.finish::<u32>(None, Served::Stale);
        assert!(lock(&flights.state).open.is_empty());
    }

    #[tokio::test]
    async fn a_forgotten_leader_that_goes_away_hands_its_waiters_over() {
        let flights = Flights::default();
        let Joined::Leader(old) = flights.join::<u32>("k").await else { panic!("the first caller leads") };
        let waiter = async { flights.join::<u32>("k").await };
        tokio::pin!(waiter);
        assert!(futures_poll(&mut waiter).await.is_none());
        flights.forget(None);
        drop(old); // cancelled
                   // The waiter tries again and leads (no flight is open).
        match tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter is not stuck") {
            Joined::Leader(_) => {}
            Joined::Shared(..) => panic!("nothing was computed to share"),
        }
        assert!(lock(&flights.state).detached.is_empty());
    }

    /// A caller that read a key before joining learns whether a flight of it ended since its
    /// read (and only then reads it again).
    #[tokio::test]
    async fn a_flight_that_ended_after_a_mark_is_seen() {
        let flights = Flights::default();
        let Joined::Leader(before) = flights.join::<u32>("a").await else { panic!("leads") };
        before.finish(Some(&Found::Value(1u32)), Served::Stale);
        let mark = flights.mark();
        assert!(!flights.ended_since("a", mark), "ended before the mark");
        let Joined::Leader(after) = flights.join::<u32>("a").await else { panic!("leads") };
        assert!(!flights.ended_since("a", mark), "still open");
        after.finish(Some(&Found::Value(2u32)), Served::Stale);
        assert!(flights.ended_since("a", mark), "ended after the mark");
        // A leader that goes away may have stored (cancelled after its fill): it counts.
        let mark = flights.mark();
        let Joined::Leader(gone) = flights.join::<u32>("b").await else { panic!("leads") };
        drop(gone);
        assert!(flights.ended_since("b", mark));
        // So does an invalidation: of the key, or of every key (a tag, a namespace).
        let mark = flights.mark();
        flights.forget(Some("c"));
        assert!(flights.ended_since("c", mark));
        let mark = flights.mark();
        assert!(!flights.ended_since("d", mark));
        flights.forget(None);
        assert!(flights.ended_since("d", mark));
    }

    /// A call nested in the body of a flight of its own key sees that it must not join; other
    /// keys, other tasks and other `Flights` do join.
    #[tokio::test]
    async fn a_call_nested_in_its_own_keys_flight_does_not_join_it() {
        let (flights, other) = (Flights::default(), Flights::default());
        let Joined::Leader(leader) = flights.join::<u32>("k").await else { panic!("leads") };
        assert!(!flights.led_here("k"), "outside the body");
        let nested = leading([&leader], async {
            let inner = leading(std::iter::empty(), async { flights.led_here("k") }).await;
            (flights.led_here("k"), inner, flights.led_here("j"), other.led_here("k"))
        })
        .await;
        assert_eq!(nested, (true, true, false, false));
        let spawned = leading([&leader], async { tokio::spawn(async { LEADING.try_with(|_| ()).is_ok() }).await })
            .await
            .expect("the task runs");
        assert!(!spawned, "a spawned task is not the body");
        leader.finish::<u32>(None, Served::Stale);
    }

    /// Polls `fut` once: its output if it is ready.
    async fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
