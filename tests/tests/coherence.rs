//! Two tiers: a process-memory L1 in front of Redis, coherent across replicas.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, invalidates, Cache};
use support::Calls;

#[derive(Default, Debug)]
struct Db {
    row: AtomicU64,
    reads: Calls,
}

#[cached(expire = 60, key = "row:<id>", tags = ["rows"], namespace = "rows", cache = cache, skip = [cache, db])]
async fn read_row(cache: &Cache, db: &Db, id: u32) -> u64 {
    let _ = id;
    db.reads.hit();
    db.row.load(Ordering::SeqCst)
}

#[cached(expire = 60, key = "plain:<id>", cache = cache, skip = [cache, db])]
async fn read_plain(cache: &Cache, db: &Db, id: u32) -> u64 {
    let _ = id;
    db.reads.hit();
    db.row.load(Ordering::SeqCst)
}

#[invalidates(key = "plain:<id>", cache = cache)]
async fn write_plain(cache: &Cache, db: &Db, id: u32, value: u64) -> Result<(), ()> {
    let _ = id;
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

#[invalidates(tags = ["rows"], cache = cache)]
async fn write_tagged(cache: &Cache, db: &Db, value: u64) -> Result<(), ()> {
    db.row.store(value, Ordering::SeqCst);
    Ok(())
}

fn replica(server: &RedisServer) -> Cache {
    Cache::builder().redis(server.url()).prefix("c").command_timeout(Duration::from_millis(200)).build().unwrap()
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn live(cache: &Cache) {
    let db = Db::default();
    // The first cached call starts the invalidation channel.
    read_plain(cache, &db, u32::MAX).await;
    until("the L1 is live", async || cache.l1_live()).await;
}

async fn redis_reads(server: &RedisServer) -> u64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_mget:") || l.starts_with("cmdstat_get:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn l1_hits_do_not_reach_redis() {
    let server = RedisServer::start().unwrap();
    let cache = replica(&server);
    live(&cache).await;
    let db = Db::default();
    read_row(&cache, &db, 1).await;
    let before = redis_reads(&server).await;
    for _ in 0..100 {
        read_row(&cache, &db, 1).await;
    }
    assert_eq!(redis_reads(&server).await - before, 0, "100 hits, all from process memory");
    assert_eq!(db.reads.get(), 1);
}

#[tokio::test]
async fn a_write_on_one_replica_is_what_every_replica_serves_next() {
    let server = RedisServer::start().unwrap();
    let (a, b, c) = (replica(&server), replica(&server), replica(&server));
    for cache in [&a, &b, &c] {
        live(cache).await;
    }
    let db = Db::default();
    for value in 1..=200u64 {
        // Every replica has the current row in its L1 ...
        for cache in [&a, &b, &c] {
            assert_eq!(read_plain(cache, &db, 1).await, value - 1);
            assert_eq!(read_row(cache, &db, 1).await, value - 1);
        }
        // ... one replica writes; once the write returns, none serves the old row.
        let writer = [&a, &b, &c][usize::try_from(value % 3).unwrap()];
        if value % 2 == 0 {
            write_plain(writer, &db, 1, value).await.unwrap();
            assert_eq!(read_plain(&a, &db, 1).await, value);
            assert_eq!(read_plain(&b, &db, 1).await, value);
            assert_eq!(read_plain(&c, &db, 1).await, value);
            write_tagged(writer, &db, value).await.unwrap();
        } else {
            write_tagged(writer, &db, value).await.unwrap();
            write_plain(writer, &db, 1, value).await.unwrap();
        }
        for cache in [&a, &b, &c] {
            assert_eq!(read_row(cache, &db, 1).await, value, "tagged entry after write {value}");
            assert_eq!(read_plain(cache, &db, 1).await, value, "keyed entry after write {value}");
        }
    }
    // And the L1s did their job: most reads never reached the database.
    assert!(db.reads.get() < 200 * 4 + 10, "database reads: {}", db.reads.get());
    for cache in [&a, &b] {
        cache.clear_namespace("rows").await.unwrap();
    }
}

#[tokio::test]
async fn namespace_clears_reach_every_l1() {
    let server = RedisServer::start().unwrap();
    let (a, b) = (replica(&server), replica(&server));
    live(&a).await;
    live(&b).await;
    let db = Db::default();
    assert_eq!(read_row(&b, &db, 1).await, 0);
    db.row.store(5, Ordering::SeqCst);
    a.clear_namespace("rows").await.unwrap();
    assert_eq!(read_row(&b, &db, 1).await, 5);
}

#[tokio::test]
async fn losing_the_invalidation_channel_flushes_the_l1() {
    let server = RedisServer::start().unwrap();
    let b = replica(&server);
    live(&b).await;
    let db = Db::default();
    assert_eq!(read_plain(&b, &db, 1).await, 0);
    assert_eq!(read_plain(&b, &db, 1).await, 0, "now in b's L1");
    // A write whose message b cannot receive: its subscription is cut, and the entry is
    // replaced in Redis by a cache that publishes nothing.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    let silent = Cache::builder().redis(server.url()).prefix("c").l1(false).build().unwrap();
    db.row.store(9, Ordering::SeqCst);
    write_plain(&silent, &db, 1, 9).await.unwrap();
    // b notices the lost channel, drops its L1, and reads Redis again.
    until("b serves the new row", async || read_plain(&b, &db, 1).await == 9).await;
    until("b's L1 is live again", async || b.l1_live()).await;
}
