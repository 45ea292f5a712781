//! [`key_of`]: the key a cached call renders, without running its body.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use crate::cache::Cache;
use crate::entry::EntryInfo;
use crate::key;
use crate::sync::lock;

/// How many [`key_of`] calls are running, in the whole process. The read path looks at the
/// task-local slot only while this is not zero: one relaxed load on every call otherwise.
static CAPTURING: AtomicUsize = AtomicUsize::new(0);

type Slot = Arc<Mutex<Option<CallKey>>>;

tokio::task_local! {
    static SLOT: Slot;
}

/// The key of one cached call, from [`key_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKey {
    namespace: String,
    stored: String,
    /// Where the key proper starts in `stored` (after `prefix:{namespace:`).
    start: usize,
}

impl CallKey {
    /// The call's namespace (`default` unless the fn has `namespace = …`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What the template (or the default key) rendered, with its values escaped as they are
    /// stored: `user:7`, `catalog::title:42`. The key the plain API (`Cache::invalidate`,
    /// `Cache::inspect`) and `#[invalidates]` name; for a handler too (its response and each
    /// `vary` variant are representations of this key, see [`stored`](Self::stored)).
    pub fn key(&self) -> &str {
        let base = key::base(&self.stored);
        base.get(self.start..base.len().saturating_sub(1)).unwrap_or_default()
    }

    /// The whole key in the store (`prefix:{namespace:key}`; a handler's response follows it
    /// with `:h` and its `vary` values): what Redis holds and what the logs show (unless
    /// `redact_keys`).
    pub fn stored(&self) -> &str {
        &self.stored
    }
}

impl std::fmt::Display for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stored)
    }
}

impl Cache {
    /// What is stored for a call whose key [`key_of`] rendered (see [`Cache::inspect`]).
    pub async fn inspect_call(&self, call: &CallKey) -> Option<EntryInfo> {
        self.inspect_entry(&call.stored).await
    }
}

/// The key the first cached call made by `fut` renders, without running that call's body:
/// `fut` is polled until a `#[cached]` fn, handler or [`CacheLayer`](crate::CacheLayer) call
/// inside it has rendered its key, then dropped. Every cached call it reaches meanwhile is held
/// (its body never runs); code before the first one runs as usual (a router's routing and
/// extractors, say). `None` when `fut` ended without reaching a cached call.
///
/// For tests and tools that look at what a call stores ([`Cache::inspect_call`]), and for
/// logs. The read is not counted in the cache's statistics.
///
/// ```
/// use cache_runtime::{cached, key_of, Cache};
///
/// #[cached(expire = 60, key = "user:<id>", namespace = "users")]
/// async fn user(id: u64) -> String { unreachable!("key_of never runs the body") }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let call = key_of(user(7)).await.unwrap();
/// assert_eq!((call.namespace(), call.key()), ("users", "user:7"));
/// assert_eq!(call.stored(), "cache:{users:user:7}");
/// assert!(Cache::memory().inspect_call(&call).await.is_none()); // nothing stored yet
/// # }
/// ```
pub async fn key_of<F: Future>(fut: F) -> Option<CallKey> {
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            CAPTURING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    CAPTURING.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted;
    let slot: Slot = Arc::default();
    let mut scoped = pin!(SLOT.scope(Arc::clone(&slot), fut));
    std::future::poll_fn(|cx| {
        let done = scoped.as_mut().poll(cx).is_ready();
        match lock(&slot).take() {
            Some(call) => Poll::Ready(Some(call)),
            None if done => Poll::Ready(None),
            None => Poll::Pending,
        }
    })
    .await
}

/// Called by the read path with each call's key: whether a [`key_of`] around this task takes
/// it (then the call is held, and its body never runs).
#[inline]
pub(crate) fn taken(cache: &Cache, namespace: &str, stored: &str) -> bool {
    CAPTURING.load(Ordering::Relaxed) != 0 && take(cache, namespace, stored)
}

#[cold]
fn take(cache: &Cache, namespace: &str, stored: &str) -> bool {
    SLOT.try_with(|slot| {
        let mut slot = lock(slot);
        if slot.is_none() {
            let start = key::namespace_start(&cache.inner.prefix, namespace).len();
            *slot = Some(CallKey { namespace: namespace.to_owned(), stored: stored.to_owned(), start });
        }
    })
    .is_ok()
}
