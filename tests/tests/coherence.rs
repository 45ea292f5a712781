//! Two tiers: a process-memory L1 in front of Redis, coherent across replicas.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;
use cache_runtime::Cache;
use support::rows::{live, read_plain, read_row, write_plain, write_tagged, Db};

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
    let mut redis_reads_before_writes = 0;
    for value in 1..=200u64 {
        // Every replica has the current row in its L1 ...
        let before = redis_reads(&server).await;
        for cache in [&a, &b, &c] {
            assert_eq!(read_plain(cache, &db, 1).await, value - 1);
            assert_eq!(read_row(cache, &db, 1).await, value - 1);
        }
        if value > 1 {
            redis_reads_before_writes += redis_reads(&server).await - before;
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
    // And the L1s did their job: the reads between writes (what the replicas had read since the
    // last write) were answered from process memory. Without the L1 all 199 × 6 reach Redis;
    // a few may, when an acknowledgement came after the coherence timeout (an L1 fill is then
    // refused): at most 5%.
    assert!(redis_reads_before_writes <= 199 * 6 / 20, "Redis reads between writes: {redis_reads_before_writes}");
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
    // A change b cannot hear of: its subscription is cut, and the entry is dropped from
    // Redis behind the cache's back (nothing is published).
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    db.row.store(9, Ordering::SeqCst);
    let _: () = redis::cmd("DEL").arg("c:{default:plain:1}").query_async(&mut conn).await.unwrap();
    // b notices the lost channel, drops its L1, and reads Redis again.
    until("b serves the new row", async || read_plain(&b, &db, 1).await == 9).await;
    until("b's L1 is live again", async || b.l1_live()).await;
}

/// A process without an L1 (a replica with `l1(false)`, a worker, a CLI) still tells every
/// other replica's L1 of its writes: keys, tags, namespaces and plain `set`s.
#[tokio::test]
async fn a_writer_without_an_l1_reaches_every_l1() {
    let server = RedisServer::start().unwrap();
    let a = replica(&server);
    let writer = Cache::builder().redis(server.url()).prefix("c").l1(false).build().unwrap();
    live(&a).await;
    let db = Db::default();
    assert_eq!(read_plain(&a, &db, 1).await, 0);
    assert_eq!(read_row(&a, &db, 1).await, 0);
    let reads = db.reads.get();
    assert_eq!(read_plain(&a, &db, 1).await, 0, "in a's L1");
    assert_eq!(db.reads.get(), reads);

    write_plain(&writer, &db, 1, 1).await.unwrap();
    assert_eq!(read_plain(&a, &db, 1).await, 1, "a key invalidated by a process without an L1");
    write_tagged(&writer, &db, 2).await.unwrap();
    assert_eq!(read_row(&a, &db, 1).await, 2, "a tag invalidated by a process without an L1");
    db.row.store(3, Ordering::SeqCst);
    writer.clear_namespace("rows").await.unwrap();
    assert_eq!(read_row(&a, &db, 1).await, 3, "a namespace cleared by a process without an L1");

    assert_eq!(a.get::<u64>("direct").await, None);
    a.set("direct", &4u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.get::<u64>("direct").await, Some(4), "in a's L1");
    writer.set("direct", &5u64, Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.get::<u64>("direct").await, Some(5), "a plain set by a process without an L1");
    writer.invalidate("direct").await.unwrap();
    assert_eq!(a.get::<u64>("direct").await, None, "a plain invalidate by a process without an L1");
    assert_eq!(writer.stats().errors, 0);
}

/// A replica without an L1 whose invalidation channel is down (here: its subscription cut while
/// its reads pass, the state every replica is in for a moment when a paused Redis resumes) must
/// not serve from Redis what was stored before: a write made meanwhile by a replica that cannot
/// reach Redis has its invalidation queued there. Found by the fault soak (a pause: replica B
/// served three users' names from before writes through A that had returned 1.1 to 1.9 s
/// earlier). Once the channel is back and the queue applied, B serves the write and caches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_channel_is_down_does_not_serve_what_was_stored_before() {
    let server = RedisServer::start().unwrap();
    let (to_a, to_b) =
        (support::PartitionProxy::start(server.port()).await, support::PartitionProxy::start(server.port()).await);
    let build = |url: &str, l1: bool| {
        Cache::builder().redis(url).prefix("c").l1(l1).command_timeout(Duration::from_millis(200)).build().unwrap()
    };
    let (a, b) = (build(&to_a.url, true), build(&to_b.url, false));
    live(&a).await;
    let db = Db::default();
    // b's channel is subscribed (both replicas listen), and b caches the row in Redis.
    assert_eq!(read_plain(&b, &db, 1).await, 0);
    until("b subscribed", async || subscribers(&server).await == 2).await;
    assert_eq!(read_plain(&b, &db, 1).await, 0);
    assert_eq!(db.reads.get(), 1, "b's second read is a hit");

    // a is cut off from Redis: its write's invalidation is queued in a.
    to_a.cut();
    write_plain(&a, &db, 1, 1).await.unwrap();
    assert_eq!(a.stats().errors, 1, "a's invalidation failed (queued)");
    // b's channel goes silent past its staleness bound (1 s) while its reads still pass.
    to_b.cut_subscribers();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for _ in 0..5 {
        assert_eq!(read_plain(&b, &db, 1).await, 1, "b served what was stored before its channel went down");
    }

    // Healed: a applies its queue, b subscribes again; b serves the write and caches it again.
    to_a.heal();
    to_b.heal();
    until("b subscribed again", async || subscribers(&server).await == 2).await;
    until("the write is cached again", async || {
        let reads = db.reads.get();
        read_plain(&b, &db, 1).await == 1 && read_plain(&b, &db, 1).await == 1 && db.reads.get() == reads
    })
    .await;
}

/// How many connections are subscribed to the invalidation channel of prefix `c`.
async fn subscribers(server: &RedisServer) -> u64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, u64) = redis::cmd("PUBSUB").arg("NUMSUB").arg("c:inv").query_async(&mut conn).await.unwrap();
    n
}

/// Redis paused (SIGSTOP) right after a replica cached a value in its L1: another replica's
/// write cannot be published (it is queued), so the L1 must stop answering on its own. The
/// promise: no older value later than `l1_staleness_bound` (1 s by default) after the write
/// returned; the margin for a loaded 2-core machine is 400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_l1_stops_answering_within_its_bound() {
    let server = RedisServer::start().unwrap();
    let a = replica(&server);
    let writer = replica(&server);
    live(&a).await;
    live(&writer).await;
    let db = Db::default();
    assert_eq!(read_plain(&a, &db, 1).await, 0);
    assert_eq!(read_plain(&a, &db, 1).await, 0, "in a's L1");
    server.signal("STOP").unwrap();
    let result = async {
        write_plain(&writer, &db, 1, 1).await.unwrap();
        let written = Instant::now();
        let mut last_old = None;
        while written.elapsed() < Duration::from_secs(4) {
            if read_plain(&a, &db, 1).await == 0 {
                last_old = Some(written.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last_old
    }
    .await;
    server.signal("CONT").unwrap();
    if let Some(last_old) = result {
        assert!(
            last_old <= Duration::from_millis(1400),
            "a served the invalidated value {last_old:?} after the write returned (bound 1 s + 400 ms margin)"
        );
    }
    // And once Redis is back, a serves the write from its caches again.
    until("a is live again", async || a.l1_live()).await;
    assert_eq!(read_plain(&a, &db, 1).await, 1);
}

/// `l1_ttl`: an entry leaves the L1 after l1_ttl even though it stays fresh in Redis (60 s):
/// a read then reaches Redis (counted by the server) and is answered from it.
#[tokio::test]
async fn an_entry_leaves_the_l1_after_l1_ttl() {
    let server = RedisServer::start().unwrap();
    let l1_ttl = Duration::from_millis(500);
    let cache = Cache::builder().redis(server.url()).prefix("c").l1_ttl(l1_ttl).build().unwrap();
    live(&cache).await;
    let db = Db::default();
    // Taken before the fill: the L1 copy cannot expire before `before_fill + l1_ttl`.
    let before_fill = Instant::now();
    read_plain(&cache, &db, 1).await;
    let reads = redis_reads(&server).await;
    until("a read reaches Redis", async || {
        read_plain(&cache, &db, 1).await;
        redis_reads(&server).await > reads
    })
    .await;
    // Firm (load only makes it later): the L1 held it for l1_ttl.
    assert!(before_fill.elapsed() >= l1_ttl, "the L1 dropped it after {:?}", before_fill.elapsed());
    assert_eq!(db.reads.get(), 1, "answered from Redis, where it is still fresh");
}

/// `l1_max_entries`: the L1 holds at most that many entries.
#[tokio::test]
async fn the_l1_holds_at_most_l1_max_entries() {
    let server = RedisServer::start().unwrap();
    let cache = Cache::builder().redis(server.url()).prefix("c").l1_max_entries(10).build().unwrap();
    live(&cache).await;
    let db = Db::default();
    for id in 0..100 {
        read_plain(&cache, &db, id).await;
        read_plain(&cache, &db, id).await;
    }
    let stats = cache.stats();
    assert!(stats.memory_entries > 0 && stats.memory_entries <= 10, "{stats:?}");
    assert_eq!(db.reads.get(), 100, "Redis kept every entry");
}
