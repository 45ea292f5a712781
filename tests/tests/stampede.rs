//! Stampede protection: concurrent misses of one key run the body once (single-flight).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, invalidates, Cache};
use support::{Backend, Calls};

#[cached(expire = 60, key = "slow:<id>", cache = cache, skip = [cache, calls])]
async fn slow(cache: &Cache, calls: &Calls, id: u32) -> Result<String, String> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!("value {id} from run {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_run_the_body_once() {
    for b in Backend::all() {
        let calls = Arc::new(Calls::default());
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
                tokio::spawn(async move { slow(&cache, &calls, 1).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().unwrap());
        }
        assert_eq!(calls.get(), 1, "{}: 1,000 concurrent callers, one body run", b.name);
        assert!(results.iter().all(|r| r == "value 1 from run 1"), "{}: everyone got its result", b.name);
    }
}

#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
    runs: AtomicUsize,
}

#[cached(expire = 60, key = "failing:<id>", cache = cache, skip = [cache, c])]
async fn failing(cache: &Cache, c: &Concurrency, id: u32) -> Result<u32, String> {
    let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
    c.max.fetch_max(now, Ordering::SeqCst);
    c.runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.now.fetch_sub(1, Ordering::SeqCst);
    Err(format!("{id} is unavailable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_bodies_never_run_concurrently_for_one_key() {
    for b in Backend::all() {
        let c = Arc::new(Concurrency::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, c) = (b.cache.clone(), Arc::clone(&c));
                tokio::spawn(async move { failing(&cache, &c, 1).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                Err("1 is unavailable".to_owned()),
                "{}: every caller gets an error",
                b.name
            );
        }
        // Errors are not shared (the error type need not be Clone): each waiter retries, one at a time.
        assert_eq!(c.max.load(Ordering::SeqCst), 1, "{}: never two bodies at once", b.name);
        assert_eq!(c.runs.load(Ordering::SeqCst), 20, "{}", b.name);
    }
}

#[derive(Clone)]
struct Slow {
    cache: Cache,
    calls: Arc<Calls>,
}

#[cached(http, expire = 60, cache = state.cache)]
async fn slow_page(State(state): State<Slow>) -> String {
    let n = state.calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("page from run {n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_cold_page_run_the_handler_once() {
    for b in Backend::all() {
        let state = Slow { cache: b.cache.clone(), calls: Arc::default() };
        let router = Router::new().route("/page", get(slow_page)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/page", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = reqwest::Client::new();
        let requests: Vec<_> = (0..200)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() })
            })
            .collect();
        for request in requests {
            assert_eq!(request.await.unwrap(), "page from run 1", "{}", b.name);
        }
        assert_eq!(state.calls.get(), 1, "{}: 200 concurrent requests, one handler run", b.name);
    }
}

/// The first run waits at the gate, then panics (id 1) or is never let through (id 2: its task
/// is aborted); later runs answer at once.
#[cached(expire = 60, key = "handover:<id>", cache = cache, skip = [cache, calls, gate])]
async fn handover(cache: &Cache, calls: &Calls, gate: &tokio::sync::Semaphore, id: u32) -> String {
    let n = calls.hit();
    if n == 1 {
        drop(gate.acquire().await.unwrap());
        assert_ne!(id, 1, "the leader panics mid-body");
    }
    format!("{id} from run {n}")
}

/// A single-flight leader that panics, or whose future is dropped (its task aborted), hands
/// over to the next waiter: every waiter still gets a value, and the body runs once more. On
/// this one-thread runtime a spawned caller runs until it waits, so once the 10 waiters have
/// started they are all waiting on the leader (no timing involved).
#[tokio::test]
async fn a_leader_that_panics_or_is_cancelled_hands_over_to_the_next_waiter() {
    for b in Backend::all() {
        for (id, how) in [(1, "panics"), (2, "is cancelled")] {
            let (calls, started) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let call = || {
                let (cache, calls, gate, started) = (b.cache.clone(), calls.clone(), gate.clone(), started.clone());
                tokio::spawn(async move {
                    started.hit();
                    handover(&cache, &calls, &gate, id).await
                })
            };
            let leader = call();
            support::eventually("the leader runs the body", async || calls.get() == 1).await;
            let waiters: Vec<_> = (0..10).map(|_| call()).collect();
            support::eventually("every waiter started", async || started.get() == 11).await;
            if id == 1 {
                gate.add_permits(1);
                assert!(leader.await.unwrap_err().is_panic(), "{}", b.name);
            } else {
                leader.abort();
                assert!(leader.await.unwrap_err().is_cancelled(), "{}", b.name);
            }
            for waiter in waiters {
                let got = tokio::time::timeout(Duration::from_secs(10), waiter).await;
                let got = got.unwrap_or_else(|_| panic!("{}: a waiter was stuck after the leader {how}", b.name));
                assert_eq!(got.unwrap(), format!("{id} from run 2"), "{}: the leader {how}", b.name);
            }
            assert_eq!(calls.get(), 2, "{}: after the leader {how}, the body ran once more", b.name);
        }
    }
}

/// A row whose first read is slow: it reads the name, then waits at the gate (a query whose
/// answer is out of date by the time it returns, when the test writes meanwhile).
struct Names {
    name: std::sync::Mutex<&'static str>,
    reads: Calls,
    gate: tokio::sync::Semaphore,
}

impl Names {
    /// The gate closed: the first read waits until the test opens it.
    fn held(name: &'static str) -> Names {
        Names { name: name.into(), reads: Calls::default(), gate: tokio::sync::Semaphore::new(0) }
    }
}

#[cached(expire = 60, key = "name:<id>", tags = ["names"], cache = cache, skip = [cache, db])]
async fn name(cache: &Cache, db: &Names, id: u32) -> String {
    let name = *db.name.lock().unwrap();
    if db.reads.hit() == 1 {
        drop(db.gate.acquire().await.unwrap());
    }
    format!("{id}: {name}")
}

#[invalidates(key = "name:<id>", cache = cache)]
async fn rename(cache: &Cache, db: &Names, id: u32, to: &'static str) {
    let _ = id;
    *db.name.lock().unwrap() = to;
}

#[invalidates(tags = ["names"], cache = cache)]
async fn rename_all(cache: &Cache, db: &Names, to: &'static str) {
    *db.name.lock().unwrap() = to;
}

/// Single-flight must not reach back in time: a read that starts after a write returned never
/// shares the result of a read that began before it (whose query may have seen the old row),
/// in the writer's process or on another replica, with or without an L1, whether the write
/// invalidated a key, a tag or the namespace. (Before: the second read joined the first one's
/// flight and was answered the old name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_starts_after_a_write_returned_never_shares_an_older_read() {
    let mut id = 0;
    for b in Backend::all() {
        let mut readers = vec![("the writer's process", b.cache.clone())];
        if b.name != "memory" {
            for (who, l1) in [("a replica with an L1", true), ("a replica without an L1", false)] {
                let replica = Cache::builder().redis(b.url()).prefix("t").l1(l1).build().unwrap();
                readers.push((who, replica));
            }
            // Every process listens to the invalidations (a call starts its listener).
            let idle = Names::held("idle");
            idle.gate.add_permits(1);
            for (_, cache) in &readers {
                name(cache, &idle, u32::MAX).await;
            }
            let wanted = readers.len() as u64;
            support::eventually("every process listens", async || b.invalidation_listeners().await == wanted).await;
        }
        for (who, reader) in &readers {
            for how in ["key", "tag", "namespace"] {
                id += 1;
                let db = Arc::new(Names::held("old name"));
                let first = tokio::spawn({
                    let (reader, db) = (reader.clone(), db.clone());
                    async move { name(&reader, &db, id).await }
                });
                support::eventually("the first read ran its query", async || db.reads.get() == 1).await;
                match how {
                    "key" => rename(&b.cache, &db, id, "new name").await,
                    "tag" => rename_all(&b.cache, &db, "new name").await,
                    _ => {
                        *db.name.lock().unwrap() = "new name";
                        b.cache.clear_namespace("default").await.unwrap();
                    }
                }
                // The write returned; the first read is still held. A read starting now that
                // joined it would wait for it: bounded, so the failure is an assertion.
                let second = tokio::time::timeout(Duration::from_secs(3), name(reader, &db, id)).await;
                let context = format!("{}, {who}, invalidated by {how}", b.name);
                assert_eq!(
                    second.as_deref(),
                    Ok(&*format!("{id}: new name")),
                    "{context}: a read after the write waited for (or was answered by) a read from before it"
                );
                db.gate.add_permits(1);
                assert_eq!(first.await.unwrap(), format!("{id}: old name"), "{context}: began before the write");
                // The first read's out-of-date answer was not stored over the new one.
                assert_eq!(name(reader, &db, id).await, format!("{id}: new name"), "{context}: stored");
                assert_eq!(name(&b.cache, &db, id).await, format!("{id}: new name"), "{context}: in the writer");
            }
        }
    }
}

/// A write whose invalidation could not reach Redis (paused: it is queued) still ends the reads
/// that began before it in the writer's process: the next read runs the body (it cannot read
/// Redis before the queued invalidation is applied, so it stores nothing meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_invalidation_is_queued_still_ends_older_reads() {
    for b in [Backend::redis_without_l1(), Backend::redis()] {
        let server = b.redis.as_ref().unwrap();
        let db = Arc::new(Names::held("old name"));
        let first = tokio::spawn({
            let (cache, db) = (b.cache.clone(), db.clone());
            async move { name(&cache, &db, 1).await }
        });
        support::eventually("the first read ran its query", async || db.reads.get() == 1).await;
        server.signal("STOP").unwrap();
        rename(&b.cache, &db, 1, "new name").await;
        let second = tokio::time::timeout(Duration::from_secs(3), name(&b.cache, &db, 1)).await;
        server.signal("CONT").unwrap();
        assert_eq!(second.as_deref(), Ok("1: new name"), "{}: a read after the queued write", b.name);
        db.gate.add_permits(1);
        assert_eq!(first.await.unwrap(), "1: old name", "{}: began before the write", b.name);
        assert_eq!(name(&b.cache, &db, 1).await, "1: new name", "{}: once Redis is back", b.name);
    }
}

/// The plain API's `set` is a write too: a read that began before it (its query saw the old
/// row) must not store its answer over the value set, in memory, on Redis, or from another
/// replica. (Before: the read's fill was not refused, and the old row was served from then on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_began_before_a_set_never_stores_over_it() {
    for b in Backend::all() {
        let mut writers = vec![("the reader's process", b.cache.clone())];
        if b.name != "memory" {
            writers.push(("another replica", Cache::builder().redis(b.url()).prefix("t").build().unwrap()));
        }
        for (i, (who, writer)) in writers.iter().enumerate() {
            let key = format!("set-over-{i}");
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let ran = Arc::new(Calls::default());
            let first = tokio::spawn({
                let (cache, key, gate, ran) = (b.cache.clone(), key.clone(), gate.clone(), ran.clone());
                async move {
                    cache
                        .get_or_fetch(&key, Duration::from_secs(60), || async move {
                            ran.hit();
                            drop(gate.acquire().await.unwrap());
                            "old row".to_owned()
                        })
                        .await
                }
            });
            support::eventually("the read ran its query", async || ran.get() == 1).await;
            writer.set(&key, &"set value".to_owned(), Duration::from_secs(60)).await.unwrap();
            gate.add_permits(1);
            assert_eq!(first.await.unwrap(), "old row", "{}, {who}: began before the set", b.name);
            for reader in [&b.cache, writer] {
                assert_eq!(
                    reader.get::<String>(&key).await.as_deref(),
                    Some("set value"),
                    "{}, {who}: the read that began before the set stored over it",
                    b.name
                );
            }
        }
    }
}
