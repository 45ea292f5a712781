//! Invalidation: `#[invalidates]`, tags, namespaces, no stale sets, no lost invalidations,
//! and two caches (two replicas) on one Redis.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::{cached, invalidates, Cache};
use support::{Backend, Calls};
use tokio::sync::Barrier;

/// A one-row "database".
#[derive(Default, Debug)]
struct Db {
    row: AtomicU64,
    reads: Calls,
}

/// Makes a read stop between reading the row and returning it.
struct Gate {
    read_done: Barrier,
    release: Barrier,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate { read_done: Barrier::new(2), release: Barrier::new(2) })
    }
}

#[cached(expire = 60, key = "row:<id>", tags = ["rows", "row:<id>"], cache = cache, skip = [cache, db, gate])]
async fn read_row(cache: &Cache, db: &Db, gate: Option<&Gate>, id: u32) -> u64 {
    let _ = id;
    db.reads.hit();
    let value = db.row.load(Ordering::SeqCst);
    if let Some(gate) = gate {
        gate.read_done.wait().await;
        gate.release.wait().await;
    }
    value
}

#[invalidates(key = "row:<id>", cache = cache)]
async fn write_row(cache: &Cache, db: &Db, id: u32, value: u64) -> Result<(), String> {
    let _ = id;
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

#[invalidates(tags = ["rows"], cache = cache)]
async fn write_all_rows(cache: &Cache, db: &Db, value: u64) -> Option<()> {
    db.row.store(value, Ordering::SeqCst);
    Some(())
}

/// The race memcache leases solve: a read misses and reads the old row; a write lands and
/// invalidates; then the read tries to store the old row. The old row must never be served:
/// after a key invalidation the store is dropped; after a tag or namespace invalidation it is
/// dropped in memory, and on Redis stored with the old tag version, so it reads as a miss.
async fn late_fill_is_dropped(b: &Backend, must_drop: bool, invalidate: impl AsyncFnOnce(&Cache, &Db)) {
    let db = Arc::new(Db::default());
    db.row.store(1, Ordering::SeqCst);
    let gate = Gate::new();
    let reader = {
        let (cache, db, gate) = (b.cache.clone(), db.clone(), gate.clone());
        tokio::spawn(async move { read_row(&cache, &db, Some(&gate), 7).await })
    };
    gate.read_done.wait().await; // the reader holds the old row
    invalidate(&b.cache, &db).await; // the write and its invalidation complete
    gate.release.wait().await; // now the reader tries to store the old row
    assert_eq!(reader.await.unwrap(), 1, "{}: the reader returns what it read", b.name);
    if must_drop || !b.cache.is_redis() {
        assert_eq!(b.cache.stats().dropped_fills, 1, "{}: its store was dropped", b.name);
    }
    assert_eq!(read_row(&b.cache, &db, None, 7).await, 2, "{}: the next read sees the write", b.name);
    assert_eq!(read_row(&b.cache, &db, None, 7).await, 2, "{}", b.name);
    assert_eq!(db.reads.get(), 2, "{}: and caches it", b.name);
}

#[tokio::test]
async fn a_fill_that_raced_a_key_invalidation_is_dropped() {
    for b in Backend::all() {
        late_fill_is_dropped(&b, true, async |cache, db| write_row(cache, db, 7, 2).await.unwrap()).await;
    }
}

#[tokio::test]
async fn a_fill_that_raced_a_tag_invalidation_is_dropped() {
    for b in Backend::all() {
        late_fill_is_dropped(&b, false, async |cache, db| write_all_rows(cache, db, 2).await.unwrap()).await;
    }
}

#[tokio::test]
async fn a_fill_that_raced_a_namespace_clear_is_dropped() {
    for b in Backend::all() {
        late_fill_is_dropped(&b, false, async |cache, db| {
            db.row.store(2, Ordering::SeqCst);
            cache.clear_namespace(cache_runtime::DEFAULT_NAMESPACE).await.unwrap();
        })
        .await;
    }
}

#[tokio::test]
async fn tags_invalidate_every_entry_that_carries_them() {
    for b in Backend::all() {
        let db = Db::default();
        for id in 0..20 {
            read_row(&b.cache, &db, None, id).await;
        }
        assert_eq!(db.reads.get(), 20);
        b.cache.invalidate_tag("row:3").await.unwrap();
        for id in 0..20 {
            read_row(&b.cache, &db, None, id).await;
        }
        assert_eq!(db.reads.get(), 21, "{}: one tagged entry recomputed", b.name);
        b.cache.invalidate_tag("rows").await.unwrap();
        for id in 0..20 {
            read_row(&b.cache, &db, None, id).await;
        }
        assert_eq!(db.reads.get(), 41, "{}: every entry tagged `rows` recomputed", b.name);
        // The plain API sees the tags too.
        assert_eq!(b.cache.get::<u64>("row:5").await, Some(0), "{}", b.name);
        b.cache.invalidate_tag("row:5").await.unwrap();
        assert_eq!(b.cache.get::<u64>("row:5").await, None, "{}", b.name);
    }
}

#[invalidates(key = "row:<id>", cache = cache)]
async fn failing_write(cache: &Cache, id: u32) -> Result<(), String> {
    let _ = id;
    Err("constraint violated".to_owned())
}

#[invalidates(key = "row:<id>", before, cache = cache)]
async fn write_before(cache: &Cache, db: &Db, id: u32, value: u64) -> u64 {
    let _ = id;
    // The entry is already gone when the body runs.
    assert_eq!(cache.get::<u64>(&format!("row:{id}")).await, None);
    db.row.store(value, Ordering::SeqCst);
    value
}

#[tokio::test]
async fn invalidates_runs_after_success_only_or_before_when_asked() {
    for b in Backend::all() {
        let db = Db::default();
        read_row(&b.cache, &db, None, 1).await;
        failing_write(&b.cache, 1).await.unwrap_err();
        read_row(&b.cache, &db, None, 1).await;
        assert_eq!(db.reads.get(), 1, "{}: a failed write invalidates nothing", b.name);
        write_before(&b.cache, &db, 1, 5).await;
        assert_eq!(read_row(&b.cache, &db, None, 1).await, 5, "{}", b.name);
        assert_eq!(db.reads.get(), 2, "{}", b.name);
    }
}

#[tokio::test]
async fn two_caches_on_one_redis_see_each_others_writes() {
    let a = Backend::redis();
    let b = Cache::builder().redis(a.redis.as_ref().unwrap().url()).prefix("t").build().unwrap();
    let db = Db::default();
    db.row.store(1, Ordering::SeqCst);
    assert_eq!(read_row(&a.cache, &db, None, 1).await, 1);
    assert_eq!(read_row(&b, &db, None, 1).await, 1);
    assert_eq!(db.reads.get(), 1, "b is served a's entry");
    for value in 2..50 {
        write_row(&a.cache, &db, 1, value).await.unwrap();
        assert_eq!(read_row(&b, &db, None, 1).await, value, "after a write on a returns, b serves the new row");
        write_all_rows(&b, &db, value * 100).await.unwrap();
        assert_eq!(read_row(&a.cache, &db, None, 1).await, value * 100);
    }
}

#[tokio::test]
async fn an_invalidation_that_cannot_reach_redis_is_applied_before_the_next_read() {
    let b = Backend::redis_without_l1();
    let db = Db::default();
    db.row.store(1, Ordering::SeqCst);
    assert_eq!(read_row(&b.cache, &db, None, 1).await, 1);
    let server = b.redis.as_ref().unwrap();
    server.signal("STOP").unwrap();
    // The write succeeds; its invalidation times out and is queued.
    write_row(&b.cache, &db, 1, 2).await.unwrap();
    assert!(b.cache.stats().errors > 0);
    // While Redis does not answer, reads run the body and store nothing.
    assert_eq!(read_row(&b.cache, &db, None, 1).await, 2);
    server.signal("CONT").unwrap();
    // The queued invalidation is applied before Redis serves this cache again: the old row
    // (still stored in Redis) is never served.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(read_row(&b.cache, &db, None, 1).await, 2);
    assert_eq!(read_row(&b.cache, &db, None, 1).await, 2);
    assert_eq!(b.cache.stats().invalidations, 1);
}

#[tokio::test]
async fn a_queued_invalidation_reaches_other_replicas_once_redis_answers() {
    let a = Backend::redis_without_l1();
    let b = Cache::builder().redis(a.redis.as_ref().unwrap().url()).prefix("t").l1(false).build().unwrap();
    let db = Db::default();
    db.row.store(1, Ordering::SeqCst);
    assert_eq!(read_row(&b, &db, None, 1).await, 1);
    let server = a.redis.as_ref().unwrap();
    server.signal("STOP").unwrap();
    write_row(&a.cache, &db, 1, 2).await.unwrap(); // its invalidation is queued on a
    server.signal("CONT").unwrap();
    // a reads nothing; its background retry applies the invalidation all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while read_row(&b, &db, None, 1).await != 2 {
        assert!(std::time::Instant::now() < deadline, "b still serves the old row 3 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.cache.stats().invalidations, 1);
}
