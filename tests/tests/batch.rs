//! `#[cached(batch)]`: a fn that loads many ids at once shares its entries with the single-key
//! fn of the same template, runs its body once with only the missing ids, and keeps every
//! per-key rule (single-flight, leases, tags, invalidation on every replica).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cache_runtime::{cached, invalidates, Cache};
use serde::{Deserialize, Serialize};
use support::{Backend, Calls};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// What the database saw: each call's ids.
#[derive(Default)]
struct Db {
    queries: Mutex<Vec<Vec<u64>>>,
    delay_ms: u64,
}

impl Db {
    async fn load(&self, ids: &[u64]) -> Result<HashMap<u64, User>, String> {
        self.queries.lock().unwrap().push(ids.to_vec());
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        if ids.contains(&666) {
            return Err("the database is down".to_owned());
        }
        // Ids above 1000 do not exist.
        Ok(ids.iter().filter(|id| **id <= 1000).map(|&id| (id, User { id, name: format!("user {id}") })).collect())
    }

    fn queries(&self) -> Vec<Vec<u64>> {
        let mut q = self.queries.lock().unwrap().clone();
        for ids in &mut q {
            ids.sort_unstable();
        }
        q
    }

    fn loaded(&self) -> usize {
        self.queries.lock().unwrap().iter().map(Vec::len).sum()
    }
}

#[cached(expire = 60, key = "user:<id>", tags = ["users"], cache = cache, skip = [cache, db])]
async fn user(cache: &Cache, db: &Db, id: u64) -> Result<User, String> {
    db.load(&[id]).await?.remove(&id).ok_or_else(|| "no such user".to_owned())
}

#[cached(expire = 60, key = "user:<ids>", tags = ["users"], batch, cache = cache, skip = [cache, db])]
async fn users(cache: &Cache, db: &Db, ids: Vec<u64>) -> Result<HashMap<u64, User>, String> {
    db.load(&ids).await
}

#[invalidates(key = "user:<id>", cache = cache)]
async fn rename(cache: &Cache, id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

/// A batch and the single-key fn share entries both ways; the body sees only missing ids,
/// each duplicate once; an absent id is not found (and not stored).
#[tokio::test]
async fn a_batch_shares_entries_with_the_single_key_fn() {
    for b in Backend::all() {
        let db = Db::default();
        assert_eq!(user(&b.cache, &db, 2).await.unwrap().name, "user 2");
        let got = users(&b.cache, &db, vec![1, 2, 3, 1, 2000]).await.unwrap();
        assert_eq!(got.len(), 3, "{}: 2000 does not exist", b.name);
        assert_eq!(got[&3].name, "user 3");
        assert_eq!(db.queries(), vec![vec![2], vec![1, 3, 2000]], "{}: only the missing ids, once each", b.name);
        // The single fn reads what the batch stored, and another batch reads everything stored.
        assert_eq!(user(&b.cache, &db, 3).await.unwrap().name, "user 3");
        let again = users(&b.cache, &db, vec![3, 2, 1]).await.unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(db.queries().len(), 2, "{}: no query for stored ids", b.name);
        // 2000 was not stored (no `cache_none`): asked again.
        users(&b.cache, &db, vec![2000]).await.unwrap();
        assert_eq!(db.queries().last().unwrap(), &vec![2000], "{}", b.name);
    }
}

/// A failing body stores nothing and the caller gets the error; the next call asks again.
#[tokio::test]
async fn a_failing_batch_stores_nothing() {
    for b in Backend::all() {
        let db = Db::default();
        assert_eq!(users(&b.cache, &db, vec![10, 666]).await.unwrap_err(), "the database is down");
        assert!(b.cache.inspect("user:10").await.is_none(), "{}", b.name);
        assert!(users(&b.cache, &db, vec![10]).await.unwrap().contains_key(&10));
        assert_eq!(db.queries(), vec![vec![10, 666], vec![10]], "{}", b.name);
    }
}

/// Overlapping batches (and single calls) running at the same time compute each id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_batches_compute_each_element_once() {
    for b in Backend::all() {
        let db = Db { delay_ms: 100, ..Db::default() };
        let (cache, db) = (&b.cache, &db);
        let runs = futures::future::join_all([
            Box::pin(async move { users(cache, db, (1..=10).collect()).await.unwrap().len() })
                as std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>,
            Box::pin(async move { users(cache, db, (5..=15).collect()).await.unwrap().len() }),
            Box::pin(async move { users(cache, db, (12..=20).rev().collect()).await.unwrap().len() }),
            Box::pin(async move { user(cache, db, 7).await.map(|_| 1).unwrap() }),
        ])
        .await;
        assert_eq!(runs, vec![10, 11, 9, 1], "{}", b.name);
        let mut loaded: Vec<u64> = db.queries().concat();
        loaded.sort_unstable();
        assert_eq!(loaded, (1..=20).collect::<Vec<_>>(), "{}: every id loaded exactly once", b.name);
    }
}

/// An invalidation by key or tag on one replica reaches the elements another replica's batch
/// read (from its L1 too): its next batch asks the database for exactly those.
#[tokio::test]
async fn invalidations_reach_batch_elements_on_another_replica() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        let other = Cache::builder().redis(b.url()).prefix("t").build().unwrap();
        let db = Db::default();
        users(&b.cache, &db, vec![1, 2, 3]).await.unwrap();
        users(&b.cache, &db, vec![1, 2, 3]).await.unwrap(); // from the L1
        assert_eq!(db.queries().len(), 1);
        // A write returns once every replica's L1 dropped what it invalidates.
        rename(&other, 2).await.unwrap();
        users(&b.cache, &db, vec![1, 2, 3]).await.unwrap();
        assert_eq!(db.queries().last().unwrap(), &vec![2], "{}: only the invalidated element", b.name);
        other.invalidate_tag("users").await.unwrap();
        users(&b.cache, &db, vec![1, 2, 3]).await.unwrap();
        assert_eq!(db.queries().last().unwrap(), &vec![1, 2, 3], "{}: the tag covered all", b.name);
    }
}

/// A fill racing an invalidation of its key is never stored (the element's lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_an_invalidation_is_not_stored() {
    for b in Backend::all() {
        let db = Db { delay_ms: 200, ..Db::default() };
        let (cache, db) = (&b.cache, &db);
        let read = users(cache, db, vec![41, 42]);
        let write = async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            rename(cache, 42).await.unwrap();
        };
        let (got, ()) = tokio::join!(read, write);
        assert_eq!(got.unwrap().len(), 2, "{}: the caller still gets its values", b.name);
        assert!(b.cache.inspect("user:41").await.is_some(), "{}: the other element is stored", b.name);
        assert!(b.cache.inspect("user:42").await.is_none(), "{}: the invalidated one is not", b.name);
    }
}

/// With every element in this process's L1, a batch costs no Redis command.
#[tokio::test]
async fn a_batch_answered_by_the_l1_costs_no_io() {
    let b = Backend::redis();
    let db = Db::default();
    let ids: Vec<u64> = (1..=50).collect();
    users(&b.cache, &db, ids.clone()).await.unwrap();
    users(&b.cache, &db, ids.clone()).await.unwrap();
    let before = b.command_calls().await;
    let got = users(&b.cache, &db, ids).await.unwrap();
    let after = b.command_calls().await;
    assert_eq!(got.len(), 50);
    let sent: u64 = after.iter().map(|(cmd, n)| n - before.get(cmd).copied().unwrap_or(0)).sum();
    // `INFO` itself is the only command between the two snapshots.
    assert_eq!(sent, 1, "{after:?} vs {before:?}");
    assert_eq!(db.loaded(), 50);
}

#[cached(expire = 60, key = "name:<ids>", batch, cache_none, cache = cache, skip = [cache, db])]
async fn names(cache: &Cache, db: &Db, ids: &[u64]) -> Vec<(u64, String)> {
    let found = db.load(ids).await.unwrap_or_default();
    ids.iter().filter_map(|id| found.get(id).map(|u| (*id, u.name.clone()))).collect()
}

#[cached(expire = 60, key = "score:<ids>", batch, unless = |s: &u32| *s == 0, cache = cache, skip = [cache, calls])]
async fn scores(cache: &Cache, calls: &Calls, ids: HashSet<u64>) -> BTreeMap<u64, u32> {
    let _ = calls.hit();
    ids.into_iter().map(|id| (id, (id % 3) as u32)).collect()
}

#[cached(expire = 60, key = "tagged:<ids>", batch, cache = cache, skip = [cache, calls])]
async fn tagged(cache: &Cache, calls: &Calls, ids: BTreeSet<String>) -> HashMap<String, usize> {
    let _ = calls.hit();
    ids.into_iter().map(|id| (id.clone(), id.len())).collect()
}

/// The other shapes: a slice parameter and a `Vec<(K, V)>` answer in the caller's order,
/// `cache_none` storing absent ids, sets, `BTreeMap`, `unless` per element, text ids escaped
/// like a single key's.
#[tokio::test]
async fn every_batch_shape_works() {
    for b in Backend::all() {
        let db = Db::default();
        let got = names(&b.cache, &db, &[3, 2000, 1]).await;
        assert_eq!(got, vec![(3, "user 3".to_owned()), (1, "user 1".to_owned())], "{}", b.name);
        names(&b.cache, &db, &[1, 2000, 3]).await;
        assert_eq!(db.queries().len(), 1, "{}: 2000 stored as not found (cache_none)", b.name);
        assert!(b.cache.inspect("name:2000").await.unwrap().negative);

        let calls = Calls::default();
        let s = scores(&b.cache, &calls, HashSet::from([3, 4, 5])).await;
        assert_eq!(s, BTreeMap::from([(3, 0), (4, 1), (5, 2)]));
        scores(&b.cache, &calls, HashSet::from([3, 4, 5])).await;
        assert_eq!(calls.get(), 2, "{}: 3 scores 0, so it is not stored", b.name);
        assert!(b.cache.inspect("score:4").await.is_some());

        let calls = Calls::default();
        let t = tagged(&b.cache, &calls, BTreeSet::from(["a b".to_owned(), "c".to_owned()])).await;
        assert_eq!(t["a b"], 3);
        assert!(b.cache.inspect("tagged:a b").await.is_some(), "{}: the plain API reaches it", b.name);
    }
}

/// An application's error, and its `Result` alias.
#[derive(Debug, PartialEq)]
struct AppError(String);

type AppResult<T> = Result<T, AppError>;

/// A map behind an alias without parameters.
type Labels = BTreeMap<u64, String>;

#[cached(expire = 60, key = "product:<ids>", batch, cache = cache, skip = [cache, db])]
async fn products(cache: &Cache, db: &Db, ids: Vec<u64>) -> AppResult<HashMap<u64, User>> {
    db.load(&ids).await.map_err(AppError)
}

#[cached(expire = 60, key = "label:<ids>", batch, cache = cache, skip = [cache, db])]
async fn labels(cache: &Cache, db: &Db, ids: Vec<u64>) -> Labels {
    let users = db.load(&ids).await.unwrap_or_default();
    users.into_values().map(|u| (u.id, u.name)).collect()
}

/// The type decides, not its spelling: a batch fn returning a `Result` alias stores the
/// elements of its `Ok` map (a second call does not reach the database) and never an `Err`; a
/// map behind an alias is a map.
#[tokio::test]
async fn a_batch_returning_an_alias_is_cached_by_its_type() {
    for b in Backend::all() {
        let db = Db::default();
        let got = products(&b.cache, &db, vec![1, 2, 2000]).await.unwrap();
        assert_eq!(got.len(), 2, "{}: 2000 does not exist", b.name);
        assert_eq!(products(&b.cache, &db, vec![2, 1]).await.unwrap()[&2].name, "user 2");
        assert_eq!(db.queries(), vec![vec![1, 2, 2000]], "{}: the second call did not reach the database", b.name);
        let err = products(&b.cache, &db, vec![3, 666]).await.unwrap_err();
        assert_eq!(err, AppError("the database is down".to_owned()), "{}", b.name);
        assert!(b.cache.inspect("product:3").await.is_none(), "{}: an `Err` stores nothing", b.name);

        let db = Db::default();
        assert_eq!(
            labels(&b.cache, &db, vec![5, 4]).await,
            Labels::from([(4, "user 4".to_owned()), (5, "user 5".to_owned())])
        );
        assert_eq!(labels(&b.cache, &db, vec![4, 5]).await.len(), 2);
        assert_eq!(db.queries(), vec![vec![4, 5]], "{}: the second call did not reach the database", b.name);
    }
}

#[cached(expire = 60, key = "locked:<ids>", batch, lock = 5, cache = cache, skip = [cache, db])]
async fn locked(cache: &Cache, db: &Db, ids: Vec<u64>) -> Result<HashMap<u64, User>, String> {
    db.load(&ids).await
}

/// `lock`: overlapping batches on two replicas (and a third process's batch) compute each
/// element once across all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_lock_each_element_is_computed_once_across_replicas() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        let replicas = [b.cache.clone(), Cache::builder().redis(b.url()).prefix("t").build().unwrap()];
        let db = Db { delay_ms: 150, ..Db::default() };
        let (a, c, db) = (&replicas[0], &replicas[1], &db);
        let sizes = tokio::join!(
            async move { locked(a, db, (1..=8).collect()).await.unwrap().len() },
            async move { locked(c, db, (4..=12).collect()).await.unwrap().len() },
            async move { locked(c, db, (10..=16).rev().collect()).await.unwrap().len() },
        );
        assert_eq!(sizes, (8, 9, 7), "{}", b.name);
        let mut loaded: Vec<u64> = db.queries().concat();
        loaded.sort_unstable();
        assert_eq!(loaded, (1..=16).collect::<Vec<_>>(), "{}: every id loaded once across the replicas", b.name);
    }
}

/// A batch's fills go to Redis as one call of the fill script, which Redis does not run when it
/// is missing (a restart, `SCRIPT FLUSH`, a fail-over to a replica that never saw it): the
/// script is loaded and the call sent again, so every element is stored.
#[tokio::test]
async fn a_batch_fills_after_the_scripts_were_flushed() {
    let b = Backend::redis_without_l1();
    let db = Db::default();
    users(&b.cache, &db, vec![1, 2]).await.unwrap();
    let _: () = b.query(redis::cmd("SCRIPT").arg("FLUSH")).await;
    let got = users(&b.cache, &db, vec![3, 4, 5]).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(b.cache.stats().errors, 0, "{:?}", b.cache.stats());
    let got = users(&b.cache, &db, vec![1, 2, 3, 4, 5]).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(db.queries(), vec![vec![1, 2], vec![3, 4, 5]], "the flushed-script fills were stored");
}

/// On one Redis, a batch's fills are one call of the fill script (one round trip, one script
/// run, each element still lease-checked inside it): 10 missing ids cost one `MGET`, one
/// `EVALSHA` and 10 `SET`s. On a cluster, where a script's keys share a slot, each element has
/// its own call, all sent at once.
#[tokio::test]
async fn a_batchs_fills_are_one_script_call_on_one_redis() {
    for b in [Backend::redis_without_l1(), Backend::redis_cluster()] {
        let db = Db::default();
        users(&b.cache, &db, (1..=5).collect()).await.unwrap();
        let before = b.command_calls().await;
        let got = users(&b.cache, &db, (1..=15).collect()).await.unwrap();
        let after = b.command_calls().await;
        assert_eq!(got.len(), 15, "{}", b.name);
        let sent = |cmd: &str| after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
        let calls = if b.name.contains("cluster") { 10 } else { 1 };
        assert_eq!(sent("evalsha"), calls, "{}: fill script calls ({after:?} vs {before:?})", b.name);
        assert_eq!(sent("set"), 10, "{}: every missing element stored", b.name);
        users(&b.cache, &db, (1..=15).collect()).await.unwrap();
        assert_eq!(db.queries(), vec![(1..=5).collect::<Vec<_>>(), (6..=15).collect()], "{}", b.name);
    }
}

/// A batch whose every element is "not found" (and not stored: no `cache_none`) has nothing to
/// fill: no fill call reaches Redis.
#[tokio::test]
async fn a_batch_with_nothing_to_store_sends_no_fill() {
    for b in [Backend::redis_without_l1(), Backend::redis_cluster()] {
        let db = Db::default();
        // The first call gives the tags their versions (a script each).
        users(&b.cache, &db, vec![1]).await.unwrap();
        let before = b.command_calls().await;
        assert!(users(&b.cache, &db, vec![2001, 2002]).await.unwrap().is_empty());
        let after = b.command_calls().await;
        let sent = |cmd: &str| after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
        assert_eq!(sent("evalsha") + sent("eval"), 0, "{}: ({after:?} vs {before:?})", b.name);
        assert_eq!(db.queries(), vec![vec![1], vec![2001, 2002]], "{}", b.name);
    }
}

#[cached(expire = 2, key = "brief:<id>", cache = cache, skip = [cache, db])]
async fn brief(cache: &Cache, db: &Db, id: u64) -> Result<User, String> {
    db.load(&[id]).await?.remove(&id).ok_or_else(|| "no such user".to_owned())
}

#[cached(expire = 2, key = "brief:<ids>", batch, cache = cache, skip = [cache, db])]
async fn briefs(cache: &Cache, db: &Db, ids: Vec<u64>) -> Result<HashMap<u64, User>, String> {
    db.load(&ids).await
}

/// A batch that waits for another caller's flight of one element judges the next ones'
/// freshness after the wait: an entry that expired meanwhile is loaded again, not served from
/// the read before the wait. Here the other caller is cancelled, so the batch takes the lead of
/// its element after the wait (nothing was shared). Redis without the L1: process memory would
/// answer the fresh element before any wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_element_that_expires_while_the_batch_waits_is_loaded_again() {
    let b = Backend::redis_without_l1();
    let cache = b.cache.clone();
    // `brief:7`, fresh for 2 s from now.
    assert!(briefs(&cache, &Db::default(), vec![7]).await.unwrap().contains_key(&7));
    let started = std::time::Instant::now();
    // Another caller computes `brief:5` (slowly: it is cancelled before it ends).
    let other = tokio::spawn({
        let cache = cache.clone();
        async move { brief(&cache, &Db { delay_ms: 10_000, ..Db::default() }, 5).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The batch reads 5 (a miss: it joins the other caller's flight and waits) and 7 (fresh,
    // 1.8 s left), then goes on in key order: 5 first.
    let db = std::sync::Arc::new(Db::default());
    let batch = tokio::spawn({
        let (cache, db) = (cache.clone(), db.clone());
        async move { briefs(&cache, &db, vec![5, 7]).await.map(|users| users.len()) }
    });
    // `brief:7` expires at 2 s; the other caller goes away at 2.6 s.
    tokio::time::sleep(Duration::from_millis(2_600).saturating_sub(started.elapsed())).await;
    other.abort();
    assert_eq!(batch.await.unwrap(), Ok(2));
    assert_eq!(db.queries(), vec![vec![5, 7]], "7 expired while the batch waited: it is loaded, not served");
}
