//! The plain API, without macros: `get`, `set`, `invalidate`, `get_or_fetch`, `inspect`,
//! `invalidate_tag`, `clear_namespace`, and [`Namespace`] for the same in one namespace.

use crate::cache::{Cache, Call, DEFAULT_NAMESPACE};
use crate::codec::Json;
use crate::entry::Op;
use crate::entry::{EntryInfo, Found};
use crate::error::CacheError;
use crate::key::{self};
use crate::policy::{CallOpts, Policy};
use crate::read::{read, Spawner};
use crate::returns::{Fallible, Value};
use crate::time::now_ms;
use crate::Cacheable;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

/// The options of the plain API's reads (`get`): none.
const PLAIN: CallOpts = CallOpts::new();

impl Cache {
    /// The plain API scoped to one namespace (the one `#[cached(namespace = "…")]` uses).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let users = cache.namespace("users");
    /// users.set("1", &"ada".to_string(), std::time::Duration::from_secs(60)).await.unwrap();
    /// assert_eq!(users.get::<String>("1").await.as_deref(), Some("ada"));
    /// assert_eq!(cache.get::<String>("1").await, None); // another namespace
    /// # }
    /// ```
    pub fn namespace<'a>(&'a self, namespace: &'a str) -> Namespace<'a> {
        Namespace { cache: self, namespace }
    }

    /// Reads `key` (default namespace). A miss, an expired entry, an entry of another type, an
    /// undecodable entry and an unreachable Redis all read as `None`.
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        self.namespace(DEFAULT_NAMESPACE).get(key).await
    }

    /// What is stored under `key` (default namespace), without decoding the value: when it was
    /// stored, the freshness and staleness left, its tags with their versions, its size and
    /// format; `None` when nothing readable is stored (or Redis cannot be reached).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// cache.set("k", &"v".to_string(), std::time::Duration::from_secs(60)).await.unwrap();
    /// let info = cache.inspect("k").await.unwrap();
    /// assert!(info.fresh_for > std::time::Duration::from_secs(55));
    /// assert!(cache.inspect("other").await.is_none());
    /// # }
    /// ```
    pub async fn inspect(&self, key: &str) -> Option<EntryInfo> {
        self.namespace(DEFAULT_NAMESPACE).inspect(key).await
    }

    /// Stores `value` under `key` (default namespace) for `ttl`.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError> {
        self.namespace(DEFAULT_NAMESPACE).set(key, value, ttl).await
    }

    /// Removes `key` (default namespace).
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.namespace(DEFAULT_NAMESPACE).invalidate(key).await
    }

    /// Cache-aside on `key` (default namespace): the cached value, or `fetch`'s result, stored
    /// for `ttl`. See [`Namespace::get_or_fetch`].
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.namespace(DEFAULT_NAMESPACE).get_or_fetch(key, ttl, fetch).await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) with a [`Policy`] (`unless`, `expire_with`). See
    /// [`Namespace::get_or_fetch_with`].
    pub async fn get_or_fetch_with<T, F, Fut>(&self, key: &str, ttl: Duration, policy: Policy<T>, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.namespace(DEFAULT_NAMESPACE).get_or_fetch_with(key, ttl, policy, fetch).await
    }

    /// [`try_get_or_fetch`](Self::try_get_or_fetch) with a [`Policy`] over the `Ok` value. See
    /// [`Namespace::try_get_or_fetch_with`].
    pub async fn try_get_or_fetch_with<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        policy: Policy<T>,
        fetch: F,
    ) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.namespace(DEFAULT_NAMESPACE).try_get_or_fetch_with(key, ttl, policy, fetch).await
    }

    /// Cache-aside for fallible fetches: only `Ok` is stored, an `Err` is returned as is.
    /// See [`Namespace::try_get_or_fetch`].
    pub async fn try_get_or_fetch<T, E, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.namespace(DEFAULT_NAMESPACE).try_get_or_fetch(key, ttl, fetch).await
    }

    /// Removes every entry of namespace `namespace`; returns how many were removed. On Redis
    /// this walks the keyspace with `SCAN MATCH` and `UNLINK`s in batches (never `KEYS`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// cache.namespace("users").set("1", &1u8, ttl).await.unwrap();
    /// cache.set("1", &1u8, ttl).await.unwrap();
    /// assert_eq!(cache.clear_namespace("users").await.unwrap(), 1);
    /// assert_eq!(cache.get::<u8>("1").await, Some(1)); // other namespaces are untouched
    /// # }
    /// ```
    pub async fn clear_namespace(&self, namespace: &str) -> Result<u64, CacheError> {
        let mut ns = String::new();
        key::escape_into(&mut ns, namespace);
        self.apply(Op::Namespace(ns)).await
    }

    /// Removes every entry tagged `tag` (`#[cached(tags = [...])]`), on every replica. O(1):
    /// the tag's version is bumped and entries recorded under an older version stop matching,
    /// including entries being filled while this runs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use cache_runtime::{cached, Cache};
    /// # static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::memory);
    /// #[cached(key = "post:<id>", tags = ["posts"], cache = *CACHE)]
    /// async fn post(id: u32) -> String { format!("post {id}") }
    ///
    /// post(1).await;
    /// CACHE.invalidate_tag("posts").await.unwrap(); // post(1) is computed again next time
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.apply(Op::Tag(tag.to_owned())).await.map(drop)
    }
}

/// The plain API within one namespace, from [`Cache::namespace`].
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    cache: &'a Cache,
    namespace: &'a str,
}

impl Namespace<'_> {
    /// One page of this namespace's keys (at most about `count`, as the plain API takes them),
    /// from `cursor` (`""` for the first page; then the page's `next`). In memory, in key
    /// order; on Redis, `SCAN` (each master of a cluster in turn, never `KEYS`), so a page may
    /// hold fewer keys than asked and a key written meanwhile may or may not appear.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let users = cache.namespace("users");
    /// for id in 1..=3 {
    ///     users.set(&format!("user:{id}"), &id, std::time::Duration::from_secs(60)).await.unwrap();
    /// }
    /// let first = users.keys("", 2).await.unwrap();
    /// assert_eq!(first.keys, ["user:1", "user:2"]);
    /// let rest = users.keys(first.next.as_deref().unwrap(), 2).await.unwrap();
    /// assert_eq!((rest.keys, rest.next), (vec!["user:3".to_owned()], None));
    /// # }
    /// ```
    pub async fn keys(&self, cursor: &str, count: usize) -> Result<KeysPage, CacheError> {
        let (keys, next) = self.cache.keys_page(&self.escaped(), cursor, count.max(1)).await?;
        Ok(KeysPage { keys, next })
    }

    /// What is stored under `key` in this namespace (see [`Cache::inspect`]).
    pub async fn inspect(&self, key: &str) -> Option<EntryInfo> {
        self.cache.inspect_entry(&self.cache.full_key(self.namespace, key)).await
    }

    fn escaped(&self) -> String {
        let mut ns = String::new();
        key::escape_into(&mut ns, self.namespace);
        ns
    }

    /// Reads `key`; see [`Cache::get`].
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        let (key, namespace) = (self.cache.full_key(self.namespace, key), self.escaped());
        let call = Call { cache: self.cache, key, namespace: &namespace, tags: &[], opts: &PLAIN, site: None };
        match self.cache.lookup::<T, Json>(&call, false).await.hit {
            Some((Found::Value(v), times)) if times.fresh_until_ms > now_ms() => Some(v),
            Some(_) | None => None,
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError> {
        self.cache.put::<T, Json>(self.cache.full_key(self.namespace, key), value, ttl).await
    }

    /// Removes `key`.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.cache.apply(Op::Key(self.cache.full_key(self.namespace, key))).await.map(drop)
    }

    /// Removes every entry of this namespace; see [`Cache::clear_namespace`].
    pub async fn clear(&self) -> Result<u64, CacheError> {
        self.cache.clear_namespace(self.namespace).await
    }

    /// Cache-aside: returns the cached value of `key`, or runs `fetch`, stores its result for
    /// `ttl` and returns it. A store that is down makes this run `fetch` every time; it never
    /// fails because of the cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// let hot = cache.namespace("posts").get_or_fetch("hot", ttl, || async { vec![1, 2, 3] }).await;
    /// assert_eq!(hot, vec![1, 2, 3]);
    /// # }
    /// ```
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.get_or_fetch_with(key, ttl, Policy::new(), fetch).await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) with a [`Policy`]: which values are stored
    /// (`unless`) and for how long (`expire_with`, at most `ttl` unless the policy has its own
    /// `at_most`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_runtime::{Cache, Policy};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::memory();
    /// let feed = cache.namespace("feeds");
    /// let skip_empty = Policy::new().unless(|rows: &Vec<u32>| rows.is_empty());
    /// let rows = feed.get_or_fetch_with("new", Duration::from_secs(60), skip_empty, || async { vec![] }).await;
    /// assert!(rows.is_empty());
    /// assert_eq!(feed.get::<Vec<u32>>("new").await, None); // an empty list is not stored
    /// # }
    /// ```
    pub async fn get_or_fetch_with<T, F, Fut>(&self, key: &str, ttl: Duration, policy: Policy<T>, fetch: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let (opts, namespace) = (CallOpts::new().expire(ttl), self.escaped());
        let key = self.cache.full_key(self.namespace, key);
        let call = Call { cache: self.cache, key, namespace: &namespace, tags: &[], opts: &opts, site: None };
        read(call, Value::<T>(policy.bounded_by(ttl)), fetch(), Spawner::inline()).await
    }

    /// Cache-aside for fallible fetches: only `Ok` values are stored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_runtime::Cache::memory();
    /// let ttl = std::time::Duration::from_secs(60);
    /// let r: Result<u32, String> = cache.try_get_or_fetch("k", ttl, || async { Err("db down".to_string()) }).await;
    /// assert!(r.is_err());
    /// assert_eq!(cache.get::<u32>("k").await, None); // errors are never stored
    /// # }
    /// ```
    pub async fn try_get_or_fetch<T, E, F, Fut>(&self, key: &str, ttl: Duration, fetch: F) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.try_get_or_fetch_with(key, ttl, Policy::new(), fetch).await
    }

    /// [`try_get_or_fetch`](Self::try_get_or_fetch) with a [`Policy`] over the `Ok` value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_runtime::{Cache, Policy};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::memory();
    /// // A token is kept for as long as it is valid, never longer than the hour given.
    /// let lifetime = Policy::new().expire_with(|secs_left: &u64| Duration::from_secs(*secs_left));
    /// let token: Result<u64, String> =
    ///     cache.try_get_or_fetch_with("token", Duration::from_secs(3600), lifetime, || async { Ok(90) }).await;
    /// assert_eq!(token, Ok(90));
    /// let info = cache.inspect("token").await.unwrap();
    /// assert!(info.fresh_for <= Duration::from_secs(90));
    /// # }
    /// ```
    pub async fn try_get_or_fetch_with<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        policy: Policy<T>,
        fetch: F,
    ) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (opts, namespace) = (CallOpts::new().expire(ttl), self.escaped());
        let key = self.cache.full_key(self.namespace, key);
        let call = Call { cache: self.cache, key, namespace: &namespace, tags: &[], opts: &opts, site: None };
        read(call, Fallible::<T, E>(policy.bounded_by(ttl), PhantomData), fetch(), Spawner::inline()).await
    }
}

/// One page of a namespace's keys, from [`Namespace::keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeysPage {
    /// Keys as the plain API takes them (what a template rendered, values escaped).
    pub keys: Vec<String>,
    /// The cursor of the next page; `None` at the end.
    pub next: Option<String>,
}
