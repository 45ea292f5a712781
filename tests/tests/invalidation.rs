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

/// The same race on one Redis server with the generation counter damaged (a foreign string,
/// another type, lost) between the read and the write: the write's invalidation starts the
/// counter again above what the read saw, so the late fill is still dropped.
#[tokio::test]
async fn a_fill_that_raced_a_key_invalidation_over_a_damaged_generation_counter_is_dropped() {
    for how in ["garbage", "list", "lost"] {
        let b = Backend::redis_without_l1();
        let mut conn = redis::Client::open(b.redis.as_ref().unwrap().url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // The key has a generation already (invalidated once), as in a running application.
        write_row(&b.cache, &Db::default(), 7, 0).await.unwrap();
        late_fill_is_dropped(&b, true, async |cache, db| {
            let _: () = redis::cmd("DEL").arg("t:generations").query_async(&mut conn).await.unwrap();
            let _: () = match how {
                "garbage" => {
                    redis::cmd("SET").arg("t:generations").arg("garbage").query_async(&mut conn).await.unwrap()
                }
                "list" => redis::cmd("RPUSH").arg("t:generations").arg("x").query_async(&mut conn).await.unwrap(),
                _ => (),
            };
            write_row(cache, db, 7, 2).await.unwrap();
        })
        .await;
    }
}

/// A generation counter holding a number beyond what the scripts count to (17 digits) before
/// the read is damage too: the read repairs it before its fill (had it taken the number as its
/// lease, the write's invalidation would start the counter again below it, and the late fill
/// would be stored).
#[tokio::test]
async fn a_fill_that_raced_a_key_invalidation_over_an_out_of_range_generation_counter_is_dropped() {
    let b = Backend::redis_without_l1();
    let mut conn =
        redis::Client::open(b.redis.as_ref().unwrap().url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("t:generations").arg("99999999999999999").query_async(&mut conn).await.unwrap();
    late_fill_is_dropped(&b, true, async |cache, db| write_row(cache, db, 7, 2).await.unwrap()).await;
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

/// Entries named `k:<id>` in three namespaces; each body run is noted by the entry's name.
#[derive(Default, Debug)]
struct Runs(std::sync::Mutex<Vec<String>>);

impl Runs {
    fn note(&self, name: String) {
        self.0.lock().unwrap().push(name);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[cached(expire = 600, key = "k:<id>", cache = cache, skip = [cache, runs])]
async fn in_default(cache: &Cache, runs: &Runs, id: u32) -> u32 {
    runs.note(format!("k:{id}"));
    id
}

#[cached(expire = 600, key = "k:<id>", namespace = "inv-ns", cache = cache, skip = [cache, runs])]
async fn in_ns(cache: &Cache, runs: &Runs, id: u32) -> u32 {
    runs.note(format!("inv-ns/k:{id}"));
    id
}

#[cached(expire = 600, key = "k:<id>", namespace = "inv-other", cache = cache, skip = [cache, runs])]
async fn in_other(cache: &Cache, runs: &Runs, id: u32) -> u32 {
    runs.note(format!("inv-other/k:{id}"));
    id
}

/// Reads every entry; returns those whose body ran (were not cached), in order.
async fn recomputed(cache: &Cache, runs: &Runs) -> Vec<String> {
    for id in 1..=4 {
        in_default(cache, runs, id).await;
    }
    for id in 1..=2 {
        in_ns(cache, runs, id).await;
        in_other(cache, runs, id).await;
    }
    runs.take()
}

#[invalidates(keys = ["k:<a>", "k:<b>"], cache = cache)]
async fn write_two_keys(cache: &Cache, a: u32, b: u32) -> Result<(), String> {
    let _ = (a, b);
    Ok(())
}

#[invalidates(namespace = "inv-ns", cache = cache)]
async fn write_namespace(cache: &Cache) -> Option<u8> {
    Some(1)
}

#[invalidates(keys = ["k:<id>"], in_namespace = "default", namespace = "inv-ns", cache = cache)]
async fn write_result(cache: &Cache, id: u32, ok: bool) -> Result<u32, String> {
    if ok {
        Ok(id)
    } else {
        Err("rejected".to_owned())
    }
}

#[invalidates(keys = ["k:<id>"], in_namespace = "default", namespace = "inv-ns", cache = cache)]
async fn write_option(cache: &Cache, id: u32, some: bool) -> Option<u32> {
    some.then_some(id)
}

#[invalidates(keys = ["k:<id>"], cache = cache)]
async fn write_value(cache: &Cache, id: u32) -> u32 {
    id
}

#[tokio::test]
async fn invalidates_keys_and_namespace_drop_exactly_what_they_name_after_success() {
    for b in Backend::all() {
        let (cache, runs) = (&b.cache, &Runs::default());
        assert_eq!(recomputed(cache, runs).await.len(), 8, "{}: first reads fill", b.name);
        assert_eq!(recomputed(cache, runs).await, Vec::<String>::new(), "{}: then every entry is cached", b.name);

        write_two_keys(cache, 2, 3).await.unwrap();
        assert_eq!(recomputed(cache, runs).await, ["k:2", "k:3"], "{}: `keys` drops its keys only", b.name);
        write_namespace(cache).await.unwrap();
        assert_eq!(recomputed(cache, runs).await, ["inv-ns/k:1", "inv-ns/k:2"], "{}: `namespace` only", b.name);

        // Success is `Ok`, `Some`, or any value of another type.
        write_result(cache, 1, false).await.unwrap_err();
        assert_eq!(recomputed(cache, runs).await, Vec::<String>::new(), "{}: nothing after an Err", b.name);
        write_result(cache, 1, true).await.unwrap();
        let both = ["k:1", "inv-ns/k:1", "inv-ns/k:2"];
        assert_eq!(recomputed(cache, runs).await, both, "{}: keys and namespace after an Ok", b.name);
        assert_eq!(write_option(cache, 1, false).await, None);
        assert_eq!(recomputed(cache, runs).await, Vec::<String>::new(), "{}: nothing after a None", b.name);
        assert_eq!(write_option(cache, 1, true).await, Some(1));
        assert_eq!(recomputed(cache, runs).await, both, "{}: keys and namespace after a Some", b.name);
        assert_eq!(write_value(cache, 4).await, 4);
        assert_eq!(recomputed(cache, runs).await, ["k:4"], "{}: after a plain value", b.name);
    }
}

/// A row read behind stale-while-revalidate. Its second run (the refresh) stops between reading
/// the row and returning it, at the gate.
#[cached(expire = 1, stale = 60, key = "swr-row:<id>", cache = cache, skip = [cache, db, gate])]
async fn swr_row(cache: Cache, db: Arc<Db>, gate: Arc<Gate>, id: u32) -> u64 {
    let _ = id;
    let n = db.reads.hit();
    let value = db.row.load(Ordering::SeqCst);
    if n == 2 {
        gate.read_done.wait().await;
        gate.release.wait().await;
    }
    value
}

/// The same with a borrowed parameter: the caller that wins the refresh runs it inline.
#[cached(expire = 1, stale = 60, key = "swr-row:<id>", cache = cache, skip = [cache, db, gate])]
async fn swr_row_inline(cache: &Cache, db: &Db, gate: &Gate, id: u32) -> u64 {
    let _ = id;
    let n = db.reads.hit();
    let value = db.row.load(Ordering::SeqCst);
    if n == 2 {
        gate.read_done.wait().await;
        gate.release.wait().await;
    }
    value
}

#[invalidates(key = "swr-row:<id>", cache = cache)]
async fn write_swr_row(cache: &Cache, db: &Db, id: u32, value: u64) -> Result<(), String> {
    let _ = id;
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

/// "A write during a refresh wins": a refresh reads the old row, a write lands and its
/// invalidation completes, then the refresh tries to store the old row: it must be dropped,
/// and the next read computes the new row. The gate orders the steps; only the 1 s expiry is
/// waited for (by polling until the refresh has started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_refresh_wins() {
    let backends = Backend::all();
    // The backends at once (each waits for a 1 s expiry twice), one refresh at a time on each.
    futures::future::join_all(backends.iter().map(async |b| {
        for inline in [false, true] {
            write_during_refresh(b, inline).await;
        }
    }))
    .await;
}

async fn write_during_refresh(b: &Backend, inline: bool) {
    let what = format!("{} ({} refresh)", b.name, if inline { "inline" } else { "background" });
    let (db, gate) = (Arc::new(Db::default()), Gate::new());
    db.row.store(1, Ordering::SeqCst);
    let id = u32::from(inline);
    let read = {
        let (cache, db, gate) = (b.cache.clone(), db.clone(), gate.clone());
        move || {
            let (cache, db, gate) = (cache.clone(), db.clone(), gate.clone());
            tokio::spawn(async move {
                if inline {
                    swr_row_inline(&cache, &db, &gate, id).await
                } else {
                    swr_row(cache, db, gate, id).await
                }
            })
        }
    };
    assert_eq!(read().await.unwrap(), 1, "{what}");
    let before = b.cache.stats();
    // Read (stale after 1 s) until a refresh starts; it stops at the gate after reading 1.
    let mut refreshing = None;
    support::eventually("a refresh started", async || {
        if db.reads.get() < 2 {
            let reader = read();
            tokio::time::sleep(Duration::from_millis(20)).await;
            refreshing = Some(reader);
        }
        db.reads.get() == 2
    })
    .await;
    gate.read_done.wait().await;
    write_swr_row(&b.cache, &db, id, 2).await.unwrap();
    gate.release.wait().await;
    // The refreshing caller returns what it computed (inline), or the stale value.
    assert_eq!(refreshing.unwrap().await.unwrap(), 1, "{what}");
    let fills = |s: cache_runtime::Stats| s.stores + s.dropped_fills;
    support::eventually("the refresh tried to store", async || fills(b.cache.stats()) == fills(before) + 1).await;
    assert_eq!(read().await.unwrap(), 2, "{what}: the write won over the refresh");
    assert_eq!(b.cache.stats().dropped_fills, before.dropped_fills + 1, "{what}: the refresh's store was dropped");
    assert_eq!(read().await.unwrap(), 2, "{what}");
    assert_eq!(db.reads.get(), 3, "{what}: and the new row is cached");
}

#[tokio::test]
async fn keys_is_never_sent() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        let db = Db::default();
        for id in 0..20 {
            read_row(&b.cache, &db, None, id).await;
            read_row(&b.cache, &db, None, id).await;
        }
        write_row(&b.cache, &db, 3, 1).await.unwrap();
        write_all_rows(&b.cache, &db, 2).await.unwrap();
        b.cache.invalidate_tag("row:4").await.unwrap();
        b.cache.set("plain", &1u8, Duration::from_secs(60)).await.unwrap();
        b.cache.invalidate("plain").await.unwrap();
        let (runs, cache) = (Runs::default(), &b.cache);
        recomputed(cache, &runs).await;
        write_result(cache, 1, true).await.unwrap();
        assert!(b.cache.clear_namespace(cache_runtime::DEFAULT_NAMESPACE).await.unwrap() > 0, "{}", b.name);
        b.cache.clear_namespace("inv-other").await.unwrap();
        let calls = b.command_calls().await;
        assert!(calls.get("scan").is_some_and(|n| *n > 0), "{}: clear_namespace ran and SCANned: {calls:?}", b.name);
        assert_eq!(calls.get("keys"), None, "{}: KEYS is never sent: {calls:?}", b.name);
    }
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Issue 27, finding 5: `TTL <prefix>:t:{posts}` was -1: every tag ever purged or read kept a
/// version key that `volatile-*` never evicts (2,000 purges left 2,002 keys). Now every version
/// key expires (30 days after it was last made or bumped), and invalidating a key whose
/// responses never recorded its implicit tag creates no version key at all.
#[tokio::test]
async fn version_keys_expire_and_key_invalidations_make_none() {
    for b in [Backend::redis_without_l1(), Backend::redis_cluster()] {
        let db = Db::default();
        read_row(&b.cache, &db, None, 1).await; // makes the versions of its tags and namespace
        for i in 0..200 {
            b.cache.invalidate_tag(&format!("purged:{i}")).await.unwrap();
            b.cache.invalidate(&format!("gone:{i}")).await.unwrap();
        }
        b.cache.invalidate_tag("rows").await.unwrap();
        let month_ms: i64 = 30 * 86_400_000;
        for key in ["t:t:{rows}", "t:t:{row:1}", "t:t:{%%ns:default}", "t:t:{purged:0}", "t:t:{purged:199}"] {
            let ttl: i64 = b.query(redis::cmd("PTTL").arg(key)).await;
            assert!(ttl > month_ms - 600_000 && ttl <= month_ms, "{}: PTTL {key} = {ttl}", b.name);
        }
        for i in [0, 199] {
            let exists: i64 = b.query(redis::cmd("EXISTS").arg(format!("t:t:{{%%k:default:gone:{i}}}"))).await;
            assert_eq!(exists, 0, "{}: a key invalidation made a version key", b.name);
        }
    }
}

/// Tag and namespace versions created by the cache start at `now_ms × 1024 + random`, never at
/// a small integer (one lost to eviction must never match an old entry again): read them raw.
#[tokio::test]
async fn tag_and_namespace_versions_start_at_fresh_values() {
    for b in [Backend::redis_without_l1(), Backend::redis_cluster()] {
        let before = now_ms();
        let db = Db::default();
        read_row(&b.cache, &db, None, 1).await; // creates the versions of its tags and namespace
        b.cache.invalidate_tag("never-read").await.unwrap(); // a bump of a version that does not exist
        b.cache.clear_namespace("never-read-ns").await.unwrap();
        let after = now_ms();
        for key in ["t:t:{rows}", "t:t:{row:1}", "t:t:{%%ns:default}", "t:t:{never-read}", "t:t:{%%ns:never-read-ns}"] {
            let raw: Option<String> = b.query(redis::cmd("GET").arg(key)).await;
            let version: u64 =
                raw.as_deref().unwrap_or_else(|| panic!("{}: {key} was not created", b.name)).parse().unwrap();
            assert!(
                version >= before * 1024 && version < (after + 1) * 1024,
                "{}: {key} = {version}, not a fresh start (now_ms × 1024 + random, between {} and {})",
                b.name,
                before * 1024,
                (after + 1) * 1024
            );
        }
    }
}
