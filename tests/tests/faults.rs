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

/// Two reads of /users/77 on each replica (their L1s start with the first request).
async fn warm(c: &reqwest::Client, replicas: [&Replica; 2]) {
    for r in replicas {
        for _ in 0..2 {
            c.get(format!("{}/users/77", r.base)).send().await.unwrap();
        }
    }
}

/// Every replica serves /users/77 with `name`.
async fn assert_all_serve(c: &reqwest::Client, replicas: [&Replica; 2], name: &str) {
    for r in replicas {
        let body: serde_json::Value = c.get(format!("{}/users/77", r.base)).send().await.unwrap().json().await.unwrap();
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
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Command timeout 250 ms (+ the database call): no request waits much longer.
    stop_and_check(&stop, workers, &tally, 1000, Some((back, Duration::from_millis(1500)))).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_under_load_and_a_write_during_the_pause() {
    let redis = RedisServer::start().unwrap();
    let db = temp_db("pause");
    let (a, b) = (Replica::start(&redis, &db, 2), Replica::start(&redis, &db, 2));
    let c = reqwest::Client::new();
    warm(&c, [&a, &b]).await;
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
    assert_all_serve(&c, [&a, &b], "paused write").await;
    drop((a, b));
}

/// A Redis Cluster master killed and restarted under load (its slots, and while the cluster
/// sees it down every slot, fail): the same promises as a single Redis, and a write made while
/// it is down is what every replica serves once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_and_restarted_under_load() {
    let mut cluster = RedisCluster::start().unwrap();
    let db = temp_db("cluster-kill");
    let url = cluster.url();
    let (a, b) = (Replica::start_on(&url, &db, 2), Replica::start_on(&url, &db, 2));
    let c = reqwest::Client::new();
    warm(&c, [&a, &b]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(vec![a.base.clone(), b.base.clone()], 8, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nodes_mut()[1].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.put(format!("{}/users/77", a.base)).json(&serde_json::json!({"name": "written while down"})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.nodes_mut()[1].restart().unwrap();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop_and_check(&stop, workers, &tally, 1500, Some((back, Duration::from_millis(2000)))).await;
    assert_all_serve(&c, [&a, &b], "written while down").await;
    drop((a, b));
}
