//! What Redis holds may be damaged: internal keys overwritten with foreign values or types, an
//! entry copied under another key. None of it loses an invalidation, blocks caching for good,
//! or serves one key's value under another. And process memory is bounded by bytes by default.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};
use support::rows::{live, read_plain, read_row, write_plain, write_tagged, Db};
use support::Calls;

#[cached(expire = 60, key = "id:<id>", cache = cache, skip = [cache, calls])]
async fn echo_id(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    id
}

#[cached(expire = 60, lock = 1, key = "locked:<id>", cache = cache, skip = [cache, calls])]
async fn locked(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    tokio::time::sleep(Duration::from_millis(50)).await;
    id
}

fn cache(server: &RedisServer, l1: bool) -> Cache {
    Cache::builder().redis(server.url()).prefix("c").l1(l1).command_timeout(Duration::from_millis(200)).build().unwrap()
}

/// Three replicas on `server`: two with a live L1, one without.
async fn replicas(server: &RedisServer) -> (Cache, Cache, Cache) {
    let (a, b, plain) = (cache(server, true), cache(server, true), cache(server, false));
    live(&a).await;
    live(&b).await;
    (a, b, plain)
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The ways an internal key can be damaged: a foreign string, a number beyond what the scripts
/// count to (17 digits), a value of another type, or lost (evicted under `maxmemory`).
#[derive(Debug, Clone, Copy)]
enum Damage {
    Garbage,
    OutOfRange,
    List,
    Hash,
    Evicted,
}

const DAMAGES: [Damage; 5] = [Damage::Garbage, Damage::OutOfRange, Damage::List, Damage::Hash, Damage::Evicted];

async fn damage(conn: &mut redis::aio::MultiplexedConnection, key: &str, how: Damage) {
    let _: () = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
    let _: () = match how {
        Damage::Garbage => redis::cmd("SET").arg(key).arg("garbage").query_async(conn).await.unwrap(),
        Damage::OutOfRange => redis::cmd("SET").arg(key).arg("99999999999999999").query_async(conn).await.unwrap(),
        Damage::List => redis::cmd("RPUSH").arg(key).arg("x").query_async(conn).await.unwrap(),
        Damage::Hash => redis::cmd("HSET").arg(key).arg("f").arg("v").query_async(conn).await.unwrap(),
        Damage::Evicted => (),
    };
}

/// `plain:1` cached on three replicas, `key` damaged `how`, then a write of 7 through one of
/// them: the key invalidation still drops the entry from Redis and from every L1, and the key
/// is cached again afterwards. The server, the replica without an L1 and the database.
async fn a_key_invalidation_survives_damage_to(key: &str, how: Damage) -> (RedisServer, Cache, Db) {
    let server = RedisServer::start().unwrap();
    let (a, b, plain) = replicas(&server).await;
    let db = Db::default();
    for c in [&a, &b, &plain] {
        assert_eq!(read_plain(c, &db, 1).await, 0);
    }
    damage(&mut raw(&server).await, key, how).await;
    write_plain(&a, &db, 1, 7).await.unwrap();
    assert_eq!(a.stats().errors, 0, "{key} {how:?}: the invalidation was applied, not failed");
    for c in [&a, &b, &plain] {
        assert_eq!(read_plain(c, &db, 1).await, 7, "{key} {how:?}: every replica serves the write");
    }
    // Caching works again: a read fills, the next ones do not reach the database.
    let reads = db.reads.get();
    for c in [&plain, &plain, &a, &b] {
        assert_eq!(read_plain(c, &db, 1).await, 7);
    }
    assert_eq!(db.reads.get(), reads, "{key} {how:?}: the key is cached again");
    (server, plain, db)
}

/// A corrupt generation key never swallows a key invalidation.
#[tokio::test]
async fn a_corrupt_generation_never_swallows_a_key_invalidation() {
    for how in DAMAGES {
        a_key_invalidation_survives_damage_to("c:{default:plain:1}:g", how).await;
    }
}

/// A generation damaged before any write: reads repair it and cache again (a fill never
/// depends on a generation it cannot read).
#[tokio::test]
async fn a_corrupt_generation_is_repaired_by_reads() {
    for how in DAMAGES {
        let server = RedisServer::start().unwrap();
        let plain = cache(&server, false);
        let mut conn = raw(&server).await;
        damage(&mut conn, "c:{default:plain:2}:g", how).await;
        let db = Db::default();
        for _ in 0..4 {
            assert_eq!(read_plain(&plain, &db, 2).await, 0);
        }
        assert!(db.reads.get() <= 2, "{how:?}: cached again after one repair, {} reads", db.reads.get());
    }
}

#[cached(expire = 60, key = "id:<ids>", batch, cache = cache, skip = [cache, computed])]
async fn echo_ids(cache: &Cache, computed: &std::sync::Mutex<Vec<u32>>, ids: Vec<u32>) -> Vec<(u32, u32)> {
    computed.lock().unwrap().extend(&ids);
    ids.into_iter().map(|id| (id, id)).collect()
}

#[cached(expire = 60, key = "id:<ids>", batch, cache = cache, skip = [cache, computed])]
async fn echo_ids_during_a_write(
    cache: &Cache,
    computed: &std::sync::Mutex<Vec<u32>>,
    ids: Vec<u32>,
) -> Vec<(u32, u32)> {
    // A write elsewhere while the batch computes: the generation counter moves, so each fill
    // is checked against its own generation.
    cache.invalidate("elsewhere").await.unwrap();
    computed.lock().unwrap().extend(&ids);
    ids.into_iter().map(|id| (id, id)).collect()
}

/// A batch whose fills go to Redis in one script call, one element's generation damaged. While
/// nothing was invalidated since the read (the generation counter did not move), every fill is
/// stored. After a write elsewhere, each fill is checked against its generation: the others are
/// stored, the damaged one is repaired (its fill dropped), and the next batch computes only it,
/// after which nothing is computed again.
#[tokio::test]
async fn a_corrupt_generation_in_a_batch_spoils_only_its_element() {
    for how in DAMAGES {
        let server = RedisServer::start().unwrap();
        let plain = cache(&server, false);
        damage(&mut raw(&server).await, "c:{default:id:12}:g", how).await;
        let computed = std::sync::Mutex::new(Vec::new());
        assert_eq!(echo_ids(&plain, &computed, vec![11, 12]).await, vec![(11, 11), (12, 12)]);
        assert_eq!(echo_ids(&plain, &computed, vec![11, 12]).await, vec![(11, 11), (12, 12)]);
        assert_eq!(computed.lock().unwrap().clone(), vec![11, 12], "{how:?}: nothing invalidated, all stored");

        damage(&mut raw(&server).await, "c:{default:id:2}:g", how).await;
        let computed = std::sync::Mutex::new(Vec::new());
        for _ in 0..3 {
            assert_eq!(echo_ids_during_a_write(&plain, &computed, vec![1, 2, 3]).await, vec![(1, 1), (2, 2), (3, 3)]);
        }
        let computed = computed.into_inner().unwrap();
        // `Evicted` is an absent generation, which is not damage: every fill is stored at once.
        let expected = if matches!(how, Damage::Evicted) { vec![1, 2, 3] } else { vec![1, 2, 3, 2] };
        assert_eq!(computed, expected, "{how:?}");
    }
}

/// A damaged generation counter (on one server, the counter every read carries and every key
/// invalidation moves on): the invalidation still reaches every replica, caching works again
/// at once, and with nothing cached reads alone repair it.
#[tokio::test]
async fn a_corrupt_generation_counter_never_swallows_an_invalidation_or_stops_caching() {
    for how in DAMAGES {
        let (server, plain, db) = a_key_invalidation_survives_damage_to("c:generations", how).await;
        let mut conn = raw(&server).await;
        // Damaged with a generation recorded and nothing cached: reads alone repair it (the
        // repaired counter starts above every generation handed out before).
        damage(&mut conn, "c:generations", how).await;
        let _: () = redis::cmd("DEL").arg("c:{default:plain:1}").query_async(&mut conn).await.unwrap();
        let reads = db.reads.get();
        for _ in 0..4 {
            assert_eq!(read_plain(&plain, &db, 1).await, 7);
        }
        assert_eq!(db.reads.get() - reads, 1, "{how:?}: one read computes, the next ones hit");
    }
}

/// A corrupt tag or namespace version: the invalidation still reaches every reader, and the
/// tag is repaired so that its entries are cached again.
#[tokio::test]
async fn a_corrupt_tag_or_namespace_version_is_repaired() {
    for (version_key, is_namespace) in [("c:t:{rows}", false), ("c:t:{%%ns:rows}", true)] {
        for how in DAMAGES {
            let server = RedisServer::start().unwrap();
            let (a, b, plain) = replicas(&server).await;
            let db = Db::default();
            for c in [&a, &b, &plain] {
                assert_eq!(read_row(c, &db, 1).await, 0);
            }
            let mut conn = raw(&server).await;
            damage(&mut conn, version_key, how).await;
            if is_namespace {
                db.row.store(9, Ordering::SeqCst);
                a.clear_namespace("rows").await.unwrap();
            } else {
                write_tagged(&a, &db, 9).await.unwrap();
            }
            assert_eq!(a.stats().errors, 0, "{version_key} {how:?}: the invalidation was applied");
            for c in [&a, &b, &plain] {
                assert_eq!(read_row(c, &db, 1).await, 9, "{version_key} {how:?}: every replica serves the write");
            }
            let reads = db.reads.get();
            for c in [&plain, &plain, &a, &b] {
                assert_eq!(read_row(c, &db, 1).await, 9);
            }
            assert_eq!(db.reads.get(), reads, "{version_key} {how:?}: the tagged entry is cached again");

            // Damaged with nothing cached: reads alone repair it.
            damage(&mut conn, version_key, how).await;
            let reads = db.reads.get();
            for _ in 0..4 {
                assert_eq!(read_row(&plain, &db, 2).await, 9);
            }
            assert!(db.reads.get() - reads <= 2, "{version_key} {how:?}: cached again after one repair");
        }
    }
}

/// A lock key holding a foreign value without an expiry cannot block `lock` for good: callers
/// are still collapsed into one body run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_lock_key_does_not_block_the_lock() {
    for how in DAMAGES {
        let server = RedisServer::start().unwrap();
        let (a, b) = (cache(&server, false), cache(&server, true));
        let mut conn = raw(&server).await;
        damage(&mut conn, "c:{default:locked:1}:l", how).await;
        let calls = Arc::new(Calls::default());
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
                let calls = Arc::clone(&calls);
                tokio::spawn(async move { locked(&cache, &calls, 1).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 1);
        }
        assert_eq!(calls.get(), 1, "{how:?}: 40 callers on 2 replicas, one body run");
    }
}

/// The bytes of `id:106` copied under `id:105`'s key are a miss, never user 106 served as 105.
#[tokio::test]
async fn an_entry_copied_under_another_key_is_a_miss() {
    let server = RedisServer::start().unwrap();
    let plain = cache(&server, false);
    let calls = Calls::default();
    assert_eq!(echo_id(&plain, &calls, 105).await, 105);
    assert_eq!(echo_id(&plain, &calls, 106).await, 106);
    let mut conn = raw(&server).await;
    let bytes: Vec<u8> = redis::cmd("GET").arg("c:{default:id:106}").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET").arg("c:{default:id:105}").arg(bytes).query_async(&mut conn).await.unwrap();
    assert_eq!(echo_id(&plain, &calls, 105).await, 105, "the copied entry is not served");
    assert_eq!(calls.get(), 3, "it was a miss");
    assert_eq!(echo_id(&plain, &calls, 105).await, 105);
    assert_eq!(calls.get(), 3, "and was replaced by 105's own entry");
}

/// An entry whose recorded tag name was damaged (a byte that makes it no UTF-8, so no tag of
/// ours) is a miss for a single read and a batch's element alike, on a replica with or without
/// an L1, and is replaced by a good entry: it is never served.
#[tokio::test]
async fn an_entry_with_a_damaged_tag_name_is_a_miss() {
    let server = RedisServer::start().unwrap();
    let (two_tier, _, plain) = replicas(&server).await;
    let calls = Calls::default();
    let computed = std::sync::Mutex::new(Vec::new());
    assert_eq!(echo_id(&plain, &calls, 7).await, 7);
    assert_eq!(echo_ids(&plain, &computed, vec![8]).await, vec![(8, 8)]);
    let mut conn = raw(&server).await;
    for (round, reader) in [&plain, &two_tier].into_iter().enumerate() {
        for id in [7, 8] {
            let key = format!("c:{{default:id:{id}}}");
            let mut bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
            // The envelope's tag section follows its 50-byte header and the ETag (byte 3 its
            // length): a length byte, then the first recorded tag's name (the namespace's).
            let name = 50 + usize::from(bytes[3]) + 1;
            assert!(bytes[name - 1] > 0, "the entry records a tag");
            bytes[name] = 0xff;
            let _: () = redis::cmd("SET").arg(&key).arg(bytes).query_async(&mut conn).await.unwrap();
        }
        let (runs, batch_runs) = (calls.get(), computed.lock().unwrap().len());
        assert_eq!(echo_id(reader, &calls, 7).await, 7);
        assert_eq!(calls.get(), runs + 1, "round {round}: the damaged entry was not served: the body ran");
        assert_eq!(echo_ids(reader, &computed, vec![8]).await, vec![(8, 8)]);
        assert_eq!(computed.lock().unwrap().len(), batch_runs + 1, "round {round}: the damaged element was computed");
        assert_eq!(echo_id(reader, &calls, 7).await, 7);
        assert_eq!(echo_ids(reader, &computed, vec![8]).await, vec![(8, 8)]);
        assert_eq!(
            (calls.get(), computed.lock().unwrap().len()),
            (runs + 1, batch_runs + 1),
            "round {round}: replaced by good entries"
        );
    }
}

#[cached(expire = 600, key = "big:<id>", cache = cache, skip = [cache])]
async fn big(cache: &Cache, id: u32) -> String {
    let _ = id;
    "x".repeat(2 << 20)
}

/// With no bound configured, a few large values cannot exhaust the process: the memory store
/// and the L1 are bounded by bytes by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_memory_is_bounded_by_bytes_by_default() {
    let memory = Cache::builder().prefix("c").build().unwrap();
    for id in 0..160 {
        assert_eq!(big(&memory, id).await.len(), 2 << 20);
    }
    let stats = memory.stats();
    assert!(
        stats.memory_bytes <= cache_runtime::DEFAULT_MAX_BYTES,
        "160 values of 2 MiB: {} bytes held, bound {}",
        stats.memory_bytes,
        cache_runtime::DEFAULT_MAX_BYTES
    );
    assert!(stats.memory_bytes >= cache_runtime::DEFAULT_MAX_BYTES / 2, "and it does hold values: {stats:?}");

    let server = RedisServer::start().unwrap();
    let two_tier = cache(&server, true);
    live(&two_tier).await;
    for id in 0..48 {
        assert_eq!(big(&two_tier, id).await.len(), 2 << 20);
        assert_eq!(big(&two_tier, id).await.len(), 2 << 20, "read back (into the L1)");
    }
    let stats = two_tier.stats();
    assert!(
        stats.memory_bytes <= cache_runtime::DEFAULT_L1_MAX_BYTES,
        "48 values of 2 MiB: the L1 holds {} bytes, bound {}",
        stats.memory_bytes,
        cache_runtime::DEFAULT_L1_MAX_BYTES
    );
    assert!(stats.memory_entries > 0, "and it does hold values: {stats:?}");
}
