//! Faults under load, through two processes of the example app on one Redis: Redis killed and
//! restarted, Redis paused and resumed. A bounded load generator (loopback only) checks that no
//! request fails or hangs, and that caching comes back by itself.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::test_util::{RedisCluster, RedisServer};
use support::Replica;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
    slowest_ms: AtomicU64,
    /// When each response was received and whether it was a hit.
    hits: Mutex<Vec<(Instant, bool)>>,
}

/// `workers` loops of GET /users/{1..=50} against both replicas until `stop` (bounded by time).
fn load(
    bases: Vec<String>,
    workers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    (0..workers)
        .map(|w| {
            let (client, bases, stop, tally) = (client.clone(), bases.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut i = w;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let url = format!("{}/users/{}", bases[i % bases.len()], 1 + i % 50);
                    i += 7;
                    let started = Instant::now();
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_server_error() => {
                            tally.server_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let hit = r.headers().get("x-cache").is_some_and(|v| v == "HIT");
                            // A body that cannot be read whole is a failed request, not an ok.
                            if r.bytes().await.is_ok() {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                tally.hits.lock().unwrap().push((Instant::now(), hit));
                            } else {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tally.slowest_ms.fetch_max(ms, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Stops the load, then checks what every fault test promises: it ran, no 5xx, no failed
/// request, none slower than `slowest_ms`, and a hit within `hits_within` of `back`.
async fn stop_and_check(
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<()>>,
    tally: &Tally,
    slowest_ms: u64,
    back: Option<(Instant, Duration)>,
) {
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok > 200, "the load ran: {ok} requests");
    assert_eq!(tally.server_errors.load(Ordering::Relaxed), 0, "no 5xx");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "no failed request");
    // The promise: no request waits much longer than the command timeout (250 ms) plus the
    // database call; `slowest_ms` is that with a margin for a loaded 2-core machine.
    let slowest = tally.slowest_ms.load(Ordering::Relaxed);
    assert!(slowest < slowest_ms, "slowest request {slowest} ms");
    if let Some((back, within)) = back {
        let first_hit_after =
            tally.hits.lock().unwrap().iter().filter(|(at, hit)| *hit && *at > back).map(|(at, _)| *at - back).min();
        let first_hit_after = first_hit_after.expect("hits resumed after Redis came back");
        // Hits may come from an L1 filled after the return; either way caching is back.
        assert!(first_hit_after < within, "first hit {first_hit_after:?} after Redis returned");
    }
}

/// Keeps the load running until a hit is recorded after `back` (caching resumed by itself),
/// for at most 10 s: ordering, not a fixed sleep that a loaded machine could outlast.
async fn until_a_hit_after(tally: &Tally, back: Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tally.hits.lock().unwrap().iter().any(|(at, hit)| *hit && *at > back) {
        assert!(Instant::now() < deadline, "hits resumed after Redis came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two reads of /users/{id} on each replica (their L1s start with the first request).
async fn warm(c: &reqwest::Client, replicas: [&Replica; 2], id: u64) {
    for r in replicas {
        for _ in 0..2 {
            c.get(format!("{}/users/{id}", r.base)).send().await.unwrap();
        }
    }
}

/// Every replica serves /users/{id} with `name`.
async fn assert_all_serve(c: &reqwest::Client, replicas: [&Replica; 2], id: u64, name: &str) {
    for r in replicas {
        let body: serde_json::Value =
            c.get(format!("{}/users/{id}", r.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["name"], name, "{}", r.base);
    }
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cache-toolkit-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("app.sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let mut redis = RedisServer::start().unwrap();
    let db = temp_db("kill");
    let (a, b) = (Replica::start(&redis, &db, 2), Replica::start(&redis, &db, 2));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(vec![a.base.clone(), b.base.clone()], 8, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart().unwrap();
    let back = Instant::now();
    until_a_hit_after(&tally, back).await;
    stop_and_check(&stop, workers, &tally, 1000, Some((back, Duration::from_secs(10)))).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_under_load_and_a_write_during_the_pause() {
    let redis = RedisServer::start().unwrap();
    let db = temp_db("pause");
    let (a, b) = (Replica::start(&redis, &db, 2), Replica::start(&redis, &db, 2));
    let c = reqwest::Client::new();
    warm(&c, [&a, &b], 77).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(vec![a.base.clone(), b.base.clone()], 8, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("STOP").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A write during the pause: the database changes, the invalidation is queued.
    let r =
        c.put(format!("{}/users/77", a.base)).json(&serde_json::json!({"name": "paused write"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.signal("CONT").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_and_check(&stop, workers, &tally, 1000, None).await;
    // After the pause, the write is what every replica serves.
    assert_all_serve(&c, [&a, &b], 77, "paused write").await;
    drop((a, b));
}

/// A Redis Cluster master killed and restarted under load: the one that holds the shard of the
/// invalidation channel and the written user's slot, kept down past `cluster-node-timeout`
/// (2 s) so that the cluster sees it fail (no replica: every slot fails until it is back). The
/// same promises as a single Redis, and a write made while it is down (its invalidation queued)
/// is what every replica serves once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_and_restarted_under_load() {
    let mut cluster = RedisCluster::start().unwrap();
    let master = cluster.master_of_slot(RedisCluster::key_slot("{axum-app}:inv")).expect("the channel's master");
    let id = (1..=500)
        .find(|id| cluster.master_of_slot(RedisCluster::key_slot(&user_key(*id))) == Some(master))
        .expect("a user on the channel's master");
    let db = temp_db("cluster-kill");
    let url = cluster.url();
    let (a, b) = (Replica::start_on(&url, &db, 2), Replica::start_on(&url, &db, 2));
    let c = reqwest::Client::new();
    warm(&c, [&a, &b], id).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(vec![a.base.clone(), b.base.clone()], 8, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nodes_mut()[master].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r =
        c.put(format!("{}/users/{id}", a.base)).json(&serde_json::json!({"name": "written while down"})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    // Past the cluster-node-timeout: the cluster marks the master failed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.nodes_mut()[master].restart().unwrap();
    let back = Instant::now();
    until_a_hit_after(&tally, back).await;
    stop_and_check(&stop, workers, &tally, 1500, Some((back, Duration::from_secs(10)))).await;
    assert_all_serve(&c, [&a, &b], id, "written while down").await;
    drop((a, b));
}

/// The stored key of the example app's `GET /users/{id}` entry (a handler's response: `:h`).
fn user_key(id: u64) -> String {
    format!("axum-app:{{default:user:{id}}}:h")
}

/// The name `base` serves for user `id`, and whether it was an `X-Cache: HIT`.
async fn user_name(c: &reqwest::Client, base: &str, id: u64) -> (String, bool) {
    let r = c.get(format!("{base}/users/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {base}/users/{id}");
    let hit = r.headers().get("x-cache").is_some_and(|v| v == "HIT");
    let body: serde_json::Value = r.json().await.unwrap();
    (body["name"].as_str().unwrap().to_owned(), hit)
}

async fn put_name(c: &reqwest::Client, base: &str, id: u64, name: &str) {
    let r = c.put(format!("{base}/users/{id}")).json(&serde_json::json!({ "name": name })).send().await.unwrap();
    assert_eq!(r.status(), 200, "PUT {base}/users/{id}");
}

/// A Redis Cluster with one replica per master; under load through two example processes, the
/// master that carries the invalidation channel's shard (`{axum-app}:inv`) and the slots of
/// written users is killed (SIGKILL) and stays down: its replica is promoted, no request fails,
/// a write made before the kill (even the instant before) or during the outage is what both
/// processes serve after the fail-over, and each process's L1 is subscribed again on the new
/// master: it holds a value that is no longer in Redis (so it answers from process memory), and
/// a write through the other process is what it serves next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failed_over_to_its_replica_under_load() {
    let mut cluster = RedisCluster::start_with_replicas().unwrap();
    let channel_slot = RedisCluster::key_slot("{axum-app}:inv");
    let doomed = cluster.master_of_slot(channel_slot).expect("a master carries the channel's shard");
    let successor = cluster.replica_of(doomed).expect("the master has a replica");
    // Users the load (1..=50) never reads: five on the doomed master's slots, one elsewhere.
    let mut on_doomed = Vec::new();
    let mut elsewhere = None;
    for id in 51..=1000 {
        if cluster.master_of_slot(RedisCluster::key_slot(&user_key(id))) == Some(doomed) {
            on_doomed.push(id);
        } else {
            elsewhere = elsewhere.or(Some(id));
        }
        if on_doomed.len() == 5 && elsewhere.is_some() {
            break;
        }
    }
    let (&[before, last, down, a_to_b, b_to_a], Some(elsewhere)) = (&on_doomed[..], elsewhere) else {
        panic!("five users on the doomed master and one elsewhere: {on_doomed:?} {elsewhere:?}");
    };

    let db = temp_db("cluster-failover");
    let url = cluster.url();
    let (a, b) = (Replica::start_on(&url, &db, 2), Replica::start_on(&url, &db, 2));
    let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut checked_reads = 0u32;
    // Writes before the kill, each read back through both processes (twice: into their L1s).
    for (id, name) in [(before, "before"), (elsewhere, "before, elsewhere")] {
        put_name(&c, &a.base, id, name).await;
        for r in [&a, &b] {
            for _ in 0..2 {
                assert_eq!(user_name(&c, &r.base, id).await.0, name, "{} after the write", r.base);
                checked_reads += 1;
            }
        }
    }
    // `last` and `down` are cached (old names) in Redis and in both L1s; `last` is written the
    // instant before the kill, `down` while the master is down.
    for id in [last, down] {
        for r in [&a, &b] {
            for _ in 0..2 {
                assert_eq!(user_name(&c, &r.base, id).await.0, format!("User {id}"), "seeded name");
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(vec![a.base.clone(), b.base.clone()], 8, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The old entry of `down` is in Redis (so on the replica that will be promoted).
    let exists = tokio::task::block_in_place(|| cluster.cli(&["exists", &user_key(down)])).unwrap();
    assert_eq!(exists.trim(), "1", "user {down} is cached in Redis");
    put_name(&c, &b.base, last, "last before the kill").await;
    let killed_at = Instant::now();
    cluster.kill_node(doomed).expect("the doomed master was running");
    // A write while the master is down and not yet replaced: its invalidation is queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put_started = Instant::now();
    put_name(&c, &a.base, down, "during the outage").await;
    let outage_put = put_started.elapsed();
    let promoted = tokio::task::block_in_place(|| cluster.wait_for_failover(channel_slot, Duration::from_secs(15)))
        .expect("the fail-over completes");
    let failover = killed_at.elapsed();
    let failed_over_at = Instant::now();
    assert_eq!(promoted, successor, "the doomed master's replica was promoted");
    // The users' slots moved with the channel's (one master's slots go to its replica).
    let slot = RedisCluster::key_slot(&user_key(before));
    assert_eq!(tokio::task::block_in_place(|| cluster.master_of_slot(slot)), Some(promoted));

    // Writes made before the kill: the first reads after the fail-over already serve them.
    for (id, name) in [(before, "before"), (elsewhere, "before, elsewhere"), (last, "last before the kill")] {
        for r in [&a, &b] {
            assert_eq!(user_name(&c, &r.base, id).await.0, name, "{} after the fail-over", r.base);
            checked_reads += 1;
        }
    }
    // The write during the outage: its invalidation is retried (every 100 ms) until the new
    // master takes it; until then the promoted replica may still hold the old entry.
    // An L1 not flushed when its channel was lost would serve the old name for 30 s (`l1_ttl`).
    let deadline = failed_over_at + Duration::from_secs(3);
    let mut outage_stale = 0u32;
    for r in [&a, &b] {
        while user_name(&c, &r.base, down).await.0 != "during the outage" {
            outage_stale += 1;
            assert!(Instant::now() < deadline, "{} serves the write made during the outage", r.base);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        checked_reads += 1;
    }
    let outage_write_seen = failed_over_at.elapsed();

    // Each L1 is back: a value whose Redis copy is gone is still a hit, so it came from process
    // memory; then a write through the other process is what it serves next, which needs the
    // invalidation to have reached it through the channel on the new master.
    let mut l1_back = Vec::new();
    let mut late: Vec<Duration> = Vec::new();
    for (reader, writer, id) in [(&b, &a, a_to_b), (&a, &b, b_to_a)] {
        // Observed 0.3 to 5 s (subscribe attempts time out after 2 s, then back off up to 1 s).
        let deadline = failed_over_at + Duration::from_secs(10);
        let old = loop {
            let (old, hit) = user_name(&c, &reader.base, id).await;
            if hit {
                let deleted = tokio::task::block_in_place(|| cluster.cli(&["del", &user_key(id)])).unwrap();
                let (again, hit) = user_name(&c, &reader.base, id).await;
                // Hits before the L1 is back come from Redis: the entry must have been there.
                assert_eq!(deleted.trim(), "1", "the entry of user {id} was in Redis");
                assert_eq!(again, old);
                if hit {
                    break old;
                }
            }
            assert!(Instant::now() < deadline, "the L1 of {} answers again after the fail-over", reader.base);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        l1_back.push(failed_over_at.elapsed());
        let new = format!("after the fail-over, through {}", writer.base);
        assert_ne!(old, new);
        let put_at = Instant::now();
        put_name(&c, &writer.base, id, &new).await;
        assert_eq!(user_name(&c, &writer.base, id).await.0, new, "{} serves its own write", writer.base);
        // The promise is "at once": when the write returns, the other replica's L1 has dropped
        // the old name. (Within ~1 s of the fail-over the writer's invalidation can fail once
        // on its cluster connection; it is retried before the write returns.) An L1 deaf on the
        // new master would serve the old name for `l1_ttl` (30 s).
        let (seen, _) = user_name(&c, &reader.base, id).await;
        if seen != new {
            late.push(put_at.elapsed());
        }
        assert_eq!(seen, new, "{} serves the write made through {} next", reader.base, writer.base);
        checked_reads += 2;
    }
    stop_and_check(&stop, workers, &tally, 1500, Some((failed_over_at, Duration::from_secs(3)))).await;
    eprintln!(
        "fail-over {failover:?} after the kill; PUT during the outage {outage_put:?}, served by both {outage_write_seen:?} after it \
         ({outage_stale} old reads before); \
         L1s answering again {l1_back:?} after it; {} requests, {} hits, slowest {} ms, 0 5xx, 0 failed; \
         {checked_reads} checked reads; {} old reads after a write after the fail-over, the last {:?} after the PUT",
        tally.ok.load(Ordering::Relaxed),
        tally.hits.lock().unwrap().iter().filter(|(_, hit)| *hit).count(),
        tally.slowest_ms.load(Ordering::Relaxed),
        late.len(),
        late.last(),
    );
    drop((a, b));
}
