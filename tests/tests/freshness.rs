//! Freshness: stale-while-revalidate, stale-if-error, probabilistic early refresh (XFetch).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cache_runtime::{cached, Cache};
use support::{eventually, Backend, Calls};

/// Holds every body run after the first until the test opens it: "answered while the refresh
/// runs" is then an ordering the test controls, not a race against a timer.
struct Gate(tokio::sync::Semaphore);

impl Gate {
    fn closed() -> Arc<Gate> {
        Arc::new(Gate(tokio::sync::Semaphore::new(0)))
    }

    /// Lets the first run through at once; later runs wait until the gate is opened.
    async fn pass(&self, run: usize) {
        if run > 1 {
            self.0.acquire().await.unwrap().forget();
        }
    }

    fn open(&self) {
        self.0.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

/// Owned parameters: the refresh runs in a background task.
#[cached(expire = 1, stale = 30, key = "swr:<id>", cache = cache, skip = [cache, calls, gate])]
async fn swr(cache: Cache, calls: Arc<Calls>, gate: Arc<Gate>, id: u32) -> String {
    let n = calls.hit();
    gate.pass(n).await;
    format!("{id} v{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_at_once_while_one_background_refresh_replaces_them() {
    for b in Backend::all() {
        let (calls, gate) = (Arc::new(Calls::default()), Gate::closed());
        assert_eq!(swr(b.cache.clone(), calls.clone(), gate.clone(), 1).await, "1 v1");
        tokio::time::sleep(Duration::from_millis(1100)).await; // expired, inside `stale`
        let callers: Vec<_> =
            (0..50).map(|_| tokio::spawn(swr(b.cache.clone(), calls.clone(), gate.clone(), 1))).collect();
        // Every caller is answered while the refresh is held at the gate: none waited for it.
        for caller in callers {
            assert_eq!(caller.await.unwrap(), "1 v1", "{}: everyone gets the stale value", b.name);
        }
        assert!(b.cache.stats().stale >= 1, "{}", b.name);
        eventually("the refresh started", async || calls.get() == 2).await;
        gate.open();
        // Waiting on the store, not on reads: a read racing the refresh's store could itself
        // (correctly) start the next refresh once the first one is released.
        eventually("the refresh landed", async || b.cache.stats().stores == 2).await;
        assert_eq!(
            swr(b.cache.clone(), calls.clone(), gate.clone(), 1).await,
            "1 v2",
            "{}: replaced by the refresh",
            b.name
        );
        assert_eq!(calls.get(), 2, "{}: exactly one refresh", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_per_key_across_replicas() {
    let a = Backend::redis();
    let b = Cache::builder().redis(a.redis.as_ref().unwrap().url()).prefix("t").build().unwrap();
    let (calls, gate) = (Arc::new(Calls::default()), Gate::closed());
    assert_eq!(swr(a.cache.clone(), calls.clone(), gate.clone(), 2).await, "2 v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let callers: Vec<_> = (0..40)
        .map(|i| {
            let cache = if i % 2 == 0 { a.cache.clone() } else { b.clone() };
            tokio::spawn(swr(cache, calls.clone(), gate.clone(), 2))
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "2 v1");
    }
    eventually("the refresh started", async || calls.get() == 2).await;
    gate.open();
    eventually("the refresh landed", async || a.cache.stats().stores + b.stats().stores == 2).await;
    assert_eq!(swr(b.clone(), calls.clone(), gate.clone(), 2).await, "2 v2");
    assert_eq!(swr(a.cache.clone(), calls.clone(), gate.clone(), 2).await, "2 v2");
    assert_eq!(calls.get(), 2, "two replicas, 40 stale reads, one refresh");
}

/// A borrowed parameter: the caller that wins the refresh runs it; the others are served the
/// stale value at once.
#[cached(expire = 1, stale = 30, key = "swr-inline:<id>", cache = cache, skip = [cache, calls, gate])]
async fn swr_inline(cache: &Cache, calls: &Calls, gate: &Gate, id: u32) -> String {
    let n = calls.hit();
    gate.pass(n).await;
    format!("{id} v{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_bodies_are_refreshed_by_one_caller() {
    for b in Backend::all() {
        let (calls, gate) = (Arc::new(Calls::default()), Gate::closed());
        assert_eq!(swr_inline(&b.cache, &calls, &gate, 1).await, "1 v1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls, gate) = (b.cache.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move { swr_inline(&cache, &calls, &gate, 1).await })
            })
            .collect();
        // One caller runs the refresh (held at the gate); the 19 others are answered meanwhile.
        eventually("19 callers answered while the refresh is held", async || {
            callers.iter().filter(|c| c.is_finished()).count() == 19
        })
        .await;
        // The refresher may still be taking its lease (a Redis round trip) when the others are
        // answered; it reaches the body (and the gate) right after.
        eventually("the refresh started", async || calls.get() == 2).await;
        gate.open();
        let mut values = Vec::new();
        for caller in callers {
            values.push(caller.await.unwrap());
        }
        values.sort();
        assert_eq!(values.iter().filter(|v| *v == "1 v1").count(), 19, "{}: stale at once: {values:?}", b.name);
        assert_eq!(values.last().map(String::as_str), Some("1 v2"), "{}: one caller refreshed", b.name);
        assert_eq!(calls.get(), 2, "{}", b.name);
    }
}

#[cached(expire = 1, stale_if_error = 2, key = "sie:<id>", cache = cache, skip = [cache, failing])]
async fn flaky(cache: &Cache, failing: &AtomicBool, id: u32) -> Result<u32, String> {
    if failing.load(Ordering::SeqCst) {
        Err(format!("{id}: database down"))
    } else {
        Ok(id * 10)
    }
}

#[tokio::test]
async fn a_failing_body_falls_back_to_the_stale_value() {
    for b in Backend::all() {
        let failing = AtomicBool::new(false);
        assert_eq!(flaky(&b.cache, &failing, 3).await, Ok(30));
        failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await; // expired, inside stale_if_error
        assert_eq!(flaky(&b.cache, &failing, 3).await, Ok(30), "{}: stale value instead of the error", b.name);
        assert!(b.cache.stats().stale >= 1);
        assert_eq!(flaky(&b.cache, &failing, 4).await, Err("4: database down".to_owned()), "{}: nothing stale", b.name);
        tokio::time::sleep(Duration::from_millis(2000)).await; // past the window
        assert_eq!(flaky(&b.cache, &failing, 3).await, Err("3: database down".to_owned()), "{}", b.name);
        failing.store(false, Ordering::SeqCst);
        assert_eq!(flaky(&b.cache, &failing, 3).await, Ok(30));
    }
}

#[cached(expire = 1, stale_if_error = 30, key = "sie-store:<id>", cache = cache, skip = [cache, calls])]
async fn recovered(cache: &Cache, calls: &Calls, id: u32) -> Result<u32, String> {
    Ok(id * 100 + calls.hit() as u32)
}

/// Past its freshness, inside only a `stale_if_error` window, a successful recompute replaces
/// the entry (before: the found entry left no lease, so nothing was stored until the window
/// ended and every call ran the body).
#[tokio::test]
async fn a_recompute_inside_the_stale_if_error_window_is_stored() {
    for b in Backend::all() {
        let calls = Calls::default();
        assert_eq!(recovered(&b.cache, &calls, 1).await, Ok(101));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(recovered(&b.cache, &calls, 1).await, Ok(102), "{}: recomputed", b.name);
        assert_eq!(recovered(&b.cache, &calls, 1).await, Ok(102), "{}: and stored", b.name);
        assert_eq!(calls.get(), 2, "{}", b.name);
    }
}

const KEYS: usize = 1000;

/// When each key's body ran: the first run (its entry is stored after that, so it expires no
/// earlier than that instant + 2 s) and the second (the refresh).
#[derive(Default)]
struct Runs {
    first: OnceLock<Instant>,
    second: OnceLock<Instant>,
    count: AtomicU32,
}

#[cached(expire = 2, beta = 4.0, key = "early:<id>", cache = cache, skip = [cache, runs])]
async fn early(cache: Cache, runs: Arc<Vec<Runs>>, id: usize) -> usize {
    let run = &runs[id];
    match run.count.fetch_add(1, Ordering::SeqCst) {
        0 => drop(run.first.set(Instant::now())),
        1 => drop(run.second.set(Instant::now())),
        _ => {}
    }
    tokio::time::sleep(Duration::from_millis(25)).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_happens_before_expiry_and_is_spread_out() {
    let server = cache_runtime::test_util::RedisServer::start().unwrap();
    let memory = Cache::builder().random_seed(7).build().unwrap();
    let redis = Cache::builder().redis(server.url()).l1(false).random_seed(7).build().unwrap();
    for cache in [memory, redis] {
        early_refresh_on(cache).await;
    }
}

/// Reads every key concurrently (an early refresh runs in its caller for 25 ms: read one key
/// after another, a pass would take as long as its refreshes, and the passes, not the draws,
/// would decide when refreshes are seen).
async fn read_all(cache: &Cache, runs: &Arc<Vec<Runs>>, chunk: usize) {
    for ids in (0..KEYS).collect::<Vec<_>>().chunks(chunk) {
        let reads: Vec<_> = ids.iter().map(|&id| (id, tokio::spawn(early(cache.clone(), runs.clone(), id)))).collect();
        for (id, read) in reads {
            assert_eq!(read.await.unwrap(), id);
        }
    }
}

async fn early_refresh_on(cache: Cache) {
    let redis = cache.is_redis();
    let runs: Arc<Vec<Runs>> = Arc::new((0..KEYS).map(|_| Runs::default()).collect());
    // 1,000 keys written within a few hundred ms, 100 at a time (so that the time each took to
    // compute, which scales the early draw, stays close to the body's 25 ms on a busy machine).
    read_all(&cache, &runs, 100).await;
    // Key `id` expires no earlier than its first run + 2 s: a second run before that is an early
    // refresh, never a plain expiry miss. Read every key every 20 ms until just before the last
    // key's entry expires (however long the fills took).
    let last = runs.iter().filter_map(|r| r.first.get().copied()).max().unwrap();
    let mut passes = 0;
    while last.elapsed() < Duration::from_millis(1900) {
        read_all(&cache, &runs, KEYS).await;
        passes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // When each key was refreshed, counted from its own first run.
    let times: Vec<u128> = runs
        .iter()
        .filter_map(|r| Some(r.second.get()?.duration_since(*r.first.get()?)))
        .filter(|at| *at < Duration::from_millis(2000))
        .map(|at| at.as_millis() / 100)
        .collect();
    assert!(!times.is_empty(), "redis: {redis}: some keys were refreshed before they expired ({passes} passes)");
    let mut buckets = times.clone();
    buckets.sort_unstable();
    buckets.dedup();
    let counts: Vec<usize> = buckets.iter().map(|b| times.iter().filter(|t| *t == b).count()).collect();
    assert!(
        buckets.len() >= 3,
        "redis: {redis}: refreshes are spread over time, not synchronised: 100 ms buckets {buckets:?} holding {counts:?} ({passes} passes)"
    );
    assert!(times.len() < KEYS, "redis: {redis}: not every key recomputed early: {counts:?} in {buckets:?}");
}

// ----- handlers -----

#[derive(Clone)]
struct Page {
    cache: Cache,
    calls: Arc<Calls>,
    failing: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

#[cached(expire = 1, stale = 30, cache = page.cache)]
async fn swr_page(axum::extract::State(page): axum::extract::State<Page>) -> String {
    let n = page.calls.hit();
    page.gate.pass(n).await;
    format!("page v{n}")
}

#[cached(expire = 1, stale_if_error = 30, cache = page.cache)]
async fn fragile_page(axum::extract::State(page): axum::extract::State<Page>) -> (axum::http::StatusCode, String) {
    if page.failing.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "database down".to_owned());
    }
    (axum::http::StatusCode::OK, format!("page v{}", page.calls.hit()))
}

async fn serve_pages(cache: Cache) -> (String, Page) {
    let page = Page { cache, calls: Arc::default(), failing: Arc::default(), gate: Gate::closed() };
    let router = axum::Router::new()
        .route("/swr", axum::routing::get(swr_page))
        .route("/fragile", axum::routing::get(fragile_page))
        .with_state(page.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, page)
}

async fn fetch(c: &reqwest::Client, url: &str) -> (u16, String, String, String) {
    let r = c.get(url).send().await.unwrap();
    let h = |n: &str| r.headers().get(n).map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let (x_cache, cc) = (h("x-cache"), h("cache-control"));
    (r.status().as_u16(), x_cache, cc, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_answer_stale_while_one_refresh_runs() {
    for b in Backend::all() {
        let (base, page) = serve_pages(b.cache.clone()).await;
        let c = reqwest::Client::new();
        let url = format!("{base}/swr");
        let (_, x_cache, cc, body) = fetch(&c, &url).await;
        assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "page v1"), "{}", b.name);
        assert!(cc.ends_with("stale-while-revalidate=30"), "{}: advertised: {cc}", b.name);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let requests: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn({
                    let (c, url) = (c.clone(), url.clone());
                    async move { fetch(&c, &url).await }
                })
            })
            .collect();
        // Every request is answered while the refresh is held at the gate: none waited for it.
        for r in requests {
            let (status, x_cache, _, body) = r.await.unwrap();
            assert_eq!((status, x_cache.as_str(), body.as_str()), (200, "STALE", "page v1"), "{}", b.name);
        }
        eventually("the refresh started", async || page.calls.get() == 2).await;
        page.gate.open();
        eventually("the refresh landed", async || page.cache.stats().stores == 2).await;
        let (_, x_cache, _, body) = fetch(&c, &url).await;
        assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "page v2"), "{}: refreshed in the background", b.name);
        assert_eq!(page.calls.get(), 2, "{}: one refresh", b.name);
    }
}

#[tokio::test]
async fn handlers_serve_stale_if_the_handler_fails() {
    for b in Backend::all() {
        let (base, page) = serve_pages(b.cache.clone()).await;
        let c = reqwest::Client::new();
        let url = format!("{base}/fragile");
        let (status, _, cc, body) = fetch(&c, &url).await;
        assert_eq!((status, body.as_str()), (200, "page v1"));
        assert!(cc.ends_with("stale-if-error=30"), "{}: advertised: {cc}", b.name);
        page.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, x_cache, _, body) = fetch(&c, &url).await;
        assert_eq!(
            (status, x_cache.as_str(), body.as_str()),
            (200, "STALE", "page v1"),
            "{}: the stale page, not the 503",
            b.name
        );
        page.failing.store(false, Ordering::SeqCst);
        let (status, x_cache, _, body) = fetch(&c, &url).await;
        assert_eq!((status, x_cache.as_str(), body.as_str()), (200, "MISS", "page v2"), "{}", b.name);
    }
}

const DRAW_KEYS: usize = 400;

/// The first run of each key takes 500 ms, so Δ (the recompute time XFetch weighs) is ≥ 500 ms.
#[cached(expire = 2, early, key = "draw:<id>", cache = cache, skip = [cache, runs])]
async fn draw(cache: Cache, runs: Arc<Vec<AtomicU32>>, id: usize) -> usize {
    if runs[id].fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    id
}

/// With `early` (β = 1) a read with R left before expiry refreshes with probability e^(−R/Δ),
/// drawn once per read, whichever tier answers. (A fast path that drew, then a read-through that
/// drew again, refreshed with probability e^(−2R/Δ), as if β were ½.) 400 keys read once each
/// with about Δ left: ~37 % refresh, not ~14 %; the bound is 75 % of the expectation computed
/// from each read's own instant (Δ ≥ 500 ms makes it a lower bound), ~4 standard deviations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_draw_is_made_once_per_read() {
    let server = cache_runtime::test_util::RedisServer::start().unwrap();
    for (name, cache) in [
        ("memory", Cache::builder().random_seed(11).build().unwrap()),
        ("redis+l1", Cache::builder().redis(server.url()).prefix("l1").random_seed(11).build().unwrap()),
        ("redis", Cache::builder().redis(server.url()).prefix("r").l1(false).random_seed(11).build().unwrap()),
    ] {
        let runs: Arc<Vec<AtomicU32>> = Arc::new((0..DRAW_KEYS).map(|_| AtomicU32::new(0)).collect());
        let fills: Vec<_> = (0..DRAW_KEYS)
            .map(|id| {
                let (cache, runs) = (cache.clone(), runs.clone());
                tokio::spawn(async move {
                    draw(cache, runs, id).await;
                    Instant::now()
                })
            })
            .collect();
        let mut stored = Vec::new();
        for fill in fills {
            stored.push(fill.await.unwrap());
        }
        // Each entry is fresh until (at most) 2 s after its fill returned; read at about Δ left.
        let last = *stored.iter().max().unwrap();
        tokio::time::sleep((last + Duration::from_millis(1500)).saturating_duration_since(Instant::now())).await;
        let mut expected = 0.0;
        for (id, stored_at) in stored.iter().enumerate() {
            let left = (*stored_at + Duration::from_secs(2)).saturating_duration_since(Instant::now());
            expected += (-left.as_secs_f64() / 0.5).exp();
            assert_eq!(draw(cache.clone(), runs.clone(), id).await, id);
        }
        eventually("the refreshes landed", async || {
            let before: u32 = runs.iter().map(|r| r.load(Ordering::SeqCst)).sum();
            tokio::time::sleep(Duration::from_millis(300)).await;
            before == runs.iter().map(|r| r.load(Ordering::SeqCst)).sum::<u32>()
        })
        .await;
        let refreshed = runs.iter().filter(|r| r.load(Ordering::SeqCst) > 1).count();
        eprintln!("{name}: {refreshed} of {DRAW_KEYS} refreshed early; expected at least ~{expected:.0}");
        assert!(
            refreshed as f64 >= 0.75 * expected,
            "{name}: {refreshed} of {DRAW_KEYS} reads refreshed early, expected at least ~{expected:.0}"
        );
    }
}

/// When the refresh of a stale entry wins its claim but cannot take the lease its store needs
/// (Redis goes silent right after the claim), nothing it computed could be stored: the caller
/// is served the current (stale) value at once and the body does not run, for service fns and
/// handlers alike. (Service fns used to run the body inline in the caller instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_could_not_be_stored_serves_the_current_value_without_running_the_body() {
    let redis = cache_runtime::test_util::RedisServer::start().unwrap();
    for kind in ["service fn", "handler"] {
        // The refresh claim is the one command naming `…}:r` (a handler's response: `…}:h:r`):
        // the lease read after it times out.
        let claim: &'static [u8] = if kind == "handler" { b"}:h:r" } else { b"}:r" };
        let proxy = support::CutProxy::start(redis.port(), claim).await;
        let cache = Cache::builder()
            .redis(&proxy.url)
            .prefix(kind.replace(' ', "-"))
            .l1(false)
            .command_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let (calls, gate) = (Arc::new(Calls::default()), Gate::closed());
        gate.open();
        let (base, page) = serve_pages(cache.clone()).await;
        page.gate.open();
        let client = reqwest::Client::new();
        let read = async || match kind {
            "service fn" => swr(cache.clone(), calls.clone(), gate.clone(), 7).await,
            _ => fetch(&client, &format!("{base}/swr")).await.3,
        };
        let runs = || if kind == "service fn" { calls.get() } else { page.calls.get() };
        assert!(read().await.ends_with("v1"), "{kind}");
        // One ordinary stale refresh first (it also loads the claim's script into Redis, so the
        // claim below is one command).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        read().await;
        eventually("the first refresh landed", async || cache.stats().stores == 2).await;
        let current = read().await;
        assert!(current.ends_with("v2"), "{kind}: {current}");
        tokio::time::sleep(Duration::from_millis(1100)).await; // expired, inside `stale`
        proxy.arm();
        let answer = read().await;
        assert!(proxy.is_cut(), "{kind}: the refresh claimed the key through the proxy");
        assert_eq!(answer, current, "{kind}: the current value is served");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs(), 2, "{kind}: no refresh ran (it could not have been stored)");
    }
}
