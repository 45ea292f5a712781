//! `lock`: one caller per key across replicas computes a missing value.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use support::{Backend, Calls};

#[cached(expire = 60, lock, key = "locked:<id>", cache = cache, skip = [cache, calls])]
async fn locked(cache: &Cache, calls: &Calls, id: u32) -> Result<String, String> {
    let n = calls.hit();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(format!("{id} from run {n}"))
}

#[cached(expire = 60, lock = 1, key = "short-lock:<id>", cache = cache, skip = [cache, calls])]
async fn short_lock(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    id
}

fn replica(b: &Backend) -> Cache {
    Cache::builder().redis(b.url()).prefix("t").build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_a_hundred_callers_run_the_body_once() {
    for b in [Backend::redis(), Backend::redis_without_l1(), Backend::redis_cluster()] {
        let other = replica(&b);
        let calls = Arc::new(Calls::default());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let cache = if i % 2 == 0 { b.cache.clone() } else { other.clone() };
                let calls = Arc::clone(&calls);
                tokio::spawn(async move { locked(&cache, &calls, 1).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "1 from run 1", "{}", b.name);
        }
        assert_eq!(calls.get(), 1, "{}: 2 replicas × 100 callers, one body run", b.name);
    }
}

async fn hold_lock(b: &Backend, key: &str, ms: u64) {
    let lock = format!("t:{{default:{key}}}:l");
    let _: () = b.query(redis::cmd("SET").arg(lock).arg("dead-holder").arg("PX").arg(ms)).await;
}

async fn lock_ttl_ms(b: &Backend, key: &str) -> i64 {
    b.query(redis::cmd("PTTL").arg(format!("t:{{default:{key}}}:l"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lock_expires_and_another_caller_takes_over() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        hold_lock(&b, "locked:2", 700).await; // a holder that died without releasing
        let calls = Arc::new(Calls::default());
        let started = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
                tokio::spawn(async move { locked(&cache, &calls, 2).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "2 from run 1", "{}", b.name);
        }
        assert_eq!(calls.get(), 1, "{}", b.name);
        // Not before the dead lock expired (a firm bound: the lock was set before `started`) ...
        assert!(started.elapsed() >= Duration::from_millis(700), "{}: waited for the dead lock to expire", b.name);
        // ... and because it expired, not because the waiters gave up: they would wait for
        // `lock`'s default 10 s. The margin over 700 ms + a 250 ms recheck is 4 s.
        assert!(started.elapsed() < Duration::from_secs(5), "{}: took {:?}", b.name, started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_times_out_runs_the_body_itself() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        hold_lock(&b, "short-lock:3", 30_000).await;
        let calls = Calls::default();
        let started = Instant::now();
        let value = tokio::time::timeout(Duration::from_secs(10), short_lock(&b.cache, &calls, 3)).await;
        assert_eq!(value, Ok(3), "{}: a waiter gives up after its `lock = 1` s", b.name);
        assert_eq!(calls.get(), 1, "{}: ran the body after waiting", b.name);
        assert!(started.elapsed() >= Duration::from_millis(1000), "{}: waited {:?}", b.name, started.elapsed());
        // The other holder's lock is still there: the waiter ran the body without it.
        assert!(lock_ttl_ms(&b, "short-lock:3").await > 0, "{}", b.name);
        assert_eq!(short_lock(&b.cache, &calls, 3).await, 3);
        assert_eq!(calls.get(), 1, "{}: and stored its result", b.name);
    }
}

const HOLDER_ENV: &str = "CACHE_TESTS_LOCK_HOLDER_URL";

/// In the child process (`HOLDER_ENV` set) the body says it holds the lock and never ends.
#[cached(expire = 60, lock = 1, key = "held:<id>", cache = cache, skip = [cache])]
async fn held(cache: &Cache, id: u32) -> String {
    if std::env::var_os(HOLDER_ENV).is_some() {
        use std::io::Write as _;
        println!("holding");
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    format!("{id} from {}", std::process::id())
}

#[tokio::test]
#[ignore = "a helper: run as a child process by `a_killed_holders_lock_is_gone_after_n_seconds`"]
async fn lock_holder_process() {
    let Ok(url) = std::env::var(HOLDER_ENV) else { return };
    let cache = Cache::builder().redis(url).prefix("t").build().unwrap();
    held(&cache, 1).await;
}

/// Killed (by pid) when dropped, should the test fail while it runs.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real holder: another process takes the lock (`lock = 1`) and is killed (SIGKILL) in the
/// middle of its body. Its lock is gone 1 s after it was taken, and a caller here computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lock_is_gone_after_n_seconds() {
    use std::io::BufRead as _;
    for b in [Backend::redis(), Backend::redis_cluster()] {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["lock_holder_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(HOLDER_ENV, b.url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let stdout = child.0.stdout.take().unwrap();
        let holding = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.ends_with("holding"))
        });
        let holding = tokio::time::timeout(Duration::from_secs(30), holding).await;
        assert!(matches!(holding, Ok(Ok(true))), "{}: the child process took the lock", b.name);
        let ttl = lock_ttl_ms(&b, "held:1").await;
        assert!(ttl > 0 && ttl <= 1000, "{}: the child holds the lock, for at most `lock = 1` s: PTTL {ttl}", b.name);
        drop(child); // SIGKILL mid-body: the lock is never released
        let caller = {
            let cache = b.cache.clone();
            tokio::spawn(async move { held(&cache, 1).await })
        };
        // The lock goes by itself, ≤ 1 s after the PTTL above (polling up to 10 s).
        support::eventually("the dead holder's lock is gone", async || lock_ttl_ms(&b, "held:1").await == -2).await;
        assert_eq!(caller.await.unwrap(), format!("1 from {}", std::process::id()), "{}: computed here", b.name);
    }
}

#[tokio::test]
async fn lock_in_memory_is_single_flight() {
    let b = Backend::memory();
    let calls = Arc::new(Calls::default());
    // 50 concurrent callers (the body takes 100 ms, so they overlap): one body run.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls) = (b.cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move { locked(&cache, &calls, 4).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "4 from run 1");
    }
    assert_eq!(calls.get(), 1);
}

/// The first run never finishes on its own (its caller is cancelled); later runs are quick.
#[cached(expire = 60, lock = 5, key = "cancelled-lock:<id>", cache = cache, skip = [cache, calls])]
async fn first_run_hangs(cache: Cache, calls: Arc<Calls>, id: u32) -> u32 {
    if calls.hit() == 1 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    id
}

/// A caller cancelled while it holds the lock (its request dropped, its task aborted) releases
/// it: another replica computes at once instead of waiting out the 5 s hold. The bound (2 s)
/// is the promise, with its margin: without the release the wait is the whole hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_releases_its_lock() {
    for b in [Backend::redis(), Backend::redis_cluster()] {
        let other = Cache::builder().redis(b.url()).prefix("t").build().unwrap();
        let calls = Arc::new(Calls::default());
        let holder = tokio::spawn(first_run_hangs(b.cache.clone(), calls.clone(), 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.get() < 1 {
            assert!(Instant::now() < deadline, "{}: the holder started", b.name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        holder.abort();
        let started = Instant::now();
        assert_eq!(first_run_hangs(other, calls.clone(), 1).await, 1);
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "{}: waited {waited:?} for a lock its holder dropped", b.name);
        assert_eq!(calls.get(), 2, "{}", b.name);
    }
}
