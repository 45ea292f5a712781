//! `#[cached]` on service functions, against process memory and a real redis-server.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, invalidates, Cache};
use serde::{Deserialize, Serialize};
use support::{eventually, Backend, Calls};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[cached(expire = 60, key = "user:<id>", cache = cache, skip = [cache, calls])]
async fn get_user(cache: &Cache, calls: &Calls, id: u64) -> Result<User, String> {
    let n = calls.hit();
    if id == 0 {
        return Err("no user 0".to_owned());
    }
    Ok(User { id, name: format!("user {id} (load {n})") })
}

#[tokio::test]
async fn second_call_does_not_run_the_body() {
    for b in Backend::all() {
        let calls = Calls::default();
        let first = get_user(&b.cache, &calls, 7).await.unwrap();
        let second = get_user(&b.cache, &calls, 7).await.unwrap();
        assert_eq!(first, second, "{}", b.name);
        assert_eq!(calls.get(), 1, "{}: the second call must be served from the cache", b.name);
        get_user(&b.cache, &calls, 8).await.unwrap();
        assert_eq!(calls.get(), 2, "{}: another id is another entry", b.name);
        let stats = b.cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2), "{}", b.name);
    }
}

#[tokio::test]
async fn errors_are_never_stored() {
    for b in Backend::all() {
        let calls = Calls::default();
        assert!(get_user(&b.cache, &calls, 0).await.is_err());
        assert!(get_user(&b.cache, &calls, 0).await.is_err());
        assert_eq!(calls.get(), 2, "{}: an Err must not be cached", b.name);
    }
}

#[cached(expire = 1, key = "short:<id>", cache = cache, skip = [cache, calls])]
async fn short_lived(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    id * 2
}

#[tokio::test]
async fn expiry_refetches() {
    for b in Backend::all() {
        let calls = Calls::default();
        assert_eq!(short_lived(&b.cache, &calls, 4).await, 8);
        assert_eq!(short_lived(&b.cache, &calls, 4).await, 8);
        assert_eq!(calls.get(), 1, "{}", b.name);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(short_lived(&b.cache, &calls, 4).await, 8);
        assert_eq!(calls.get(), 2, "{}: an expired entry must be fetched again", b.name);
    }
}

#[cached(key = "maybe:<id>", cache = cache, skip = [cache, calls])]
async fn maybe(cache: &Cache, calls: &Calls, id: u32) -> Option<u32> {
    calls.hit();
    (id % 2 == 0).then_some(id)
}

#[cached(expire = 60, key = "neg:<id>", cache_none = 1, cache = cache, skip = [cache, calls])]
async fn maybe_negative(cache: &Cache, calls: &Calls, id: u32) -> Option<u32> {
    calls.hit();
    (id % 2 == 0).then_some(id)
}

#[tokio::test]
async fn none_is_stored_only_with_cache_none() {
    for b in Backend::all() {
        let calls = Calls::default();
        assert_eq!(maybe(&b.cache, &calls, 1).await, None);
        assert_eq!(maybe(&b.cache, &calls, 1).await, None);
        assert_eq!(calls.get(), 2, "{}: None is not cached by default", b.name);
        assert_eq!(maybe(&b.cache, &calls, 2).await, Some(2));
        assert_eq!(maybe(&b.cache, &calls, 2).await, Some(2));
        assert_eq!(calls.get(), 3, "{}: Some is cached", b.name);

        let calls = Calls::default();
        assert_eq!(maybe_negative(&b.cache, &calls, 1).await, None);
        assert_eq!(maybe_negative(&b.cache, &calls, 1).await, None);
        assert_eq!(calls.get(), 1, "{}: cache_none stores the None", b.name);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(maybe_negative(&b.cache, &calls, 1).await, None);
        assert_eq!(calls.get(), 2, "{}: a cached None has its own (1 s) ttl", b.name);
    }
}

struct UserService {
    cache: Cache,
    tenant: String,
    calls: Calls,
}

impl UserService {
    #[cached(expire = 60, key = "tenant:<self.tenant>:user:<id>", cache = self.cache)]
    async fn user(&self, id: u64) -> Result<User, std::io::Error> {
        let n = self.calls.hit();
        Ok(User { id, name: format!("{} #{n}", self.tenant) })
    }

    /// No `key`: module path, `Self` type, fn name and the arguments.
    #[cached(cache = &self.cache)]
    async fn search(&self, query: String, page: u32) -> Vec<String> {
        self.calls.hit();
        vec![format!("{query}/{page}")]
    }
}

#[tokio::test]
async fn methods_are_cached_per_receiver_data() {
    for b in Backend::all() {
        let acme = UserService { cache: b.cache.clone(), tenant: "acme".into(), calls: Calls::default() };
        let umbrella = UserService { cache: b.cache.clone(), tenant: "umbrella".into(), calls: Calls::default() };
        let a1 = acme.user(1).await.unwrap();
        assert_eq!(acme.user(1).await.unwrap(), a1);
        assert_eq!(acme.calls.get(), 1, "{}", b.name);
        let u1 = umbrella.user(1).await.unwrap();
        assert_eq!(u1.name, "umbrella #1", "{}: another tenant must not see acme's entry", b.name);

        assert_eq!(acme.search("rust".into(), 1).await, vec!["rust/1"]);
        assert_eq!(acme.search("rust".into(), 1).await, vec!["rust/1"]);
        assert_eq!(acme.search("rust".into(), 2).await, vec!["rust/2"]);
        assert_eq!(acme.calls.get(), 3, "{}: default keys include every argument", b.name);
    }
}

#[cached(key = "pair:<a>:<b>", cache = cache, skip = [cache, calls])]
async fn pair(cache: &Cache, calls: &Calls, a: &str, b: &str) -> String {
    calls.hit();
    format!("{a}|{b}")
}

#[cached(cache = cache, skip = [cache, calls])]
async fn pair_default_key(cache: &Cache, calls: &Calls, a: String, b: String) -> String {
    calls.hit();
    format!("{a}|{b}")
}

#[tokio::test]
async fn argument_values_are_escaped() {
    for b in Backend::all() {
        let calls = Calls::default();
        assert_eq!(pair(&b.cache, &calls, "1:admin", "").await, "1:admin|");
        assert_eq!(pair(&b.cache, &calls, "1", ":admin").await, "1|:admin");
        assert_eq!(pair(&b.cache, &calls, "1", "admin").await, "1|admin");
        assert_eq!(pair(&b.cache, &calls, "1}{*", "x y").await, "1}{*|x y");
        assert_eq!(calls.get(), 4, "{}: distinct argument lists never share a key", b.name);

        let calls = Calls::default();
        assert_eq!(pair_default_key(&b.cache, &calls, "1:admin".into(), "".into()).await, "1:admin|");
        assert_eq!(pair_default_key(&b.cache, &calls, "1".into(), ":admin".into()).await, "1|:admin");
        assert_eq!(pair_default_key(&b.cache, &calls, "1\",\"".into(), "".into()).await, "1\",\"|");
        assert_eq!(pair_default_key(&b.cache, &calls, "1".into(), "\",\"".into()).await, "1|\",\"");
        assert_eq!(calls.get(), 4, "{}: default keys are unambiguous too", b.name);
    }
}

#[cached(expire = 60, key = "ns-user:<id>", namespace = "users", cache = cache, skip = [cache, calls])]
async fn namespaced_user(cache: &Cache, calls: &Calls, id: u64) -> u64 {
    calls.hit();
    id
}

/// Another namespace (the default one) with entries that cannot expire during the test: with
/// `expire = 1` a slow run would recompute them and look like a clear that went too far.
#[cached(expire = 600, key = "kept:<id>", cache = cache, skip = [cache, calls])]
async fn kept(cache: &Cache, calls: &Calls, id: u64) -> u64 {
    calls.hit();
    id
}

#[tokio::test]
async fn clear_namespace_drops_only_that_namespace() {
    for b in Backend::all() {
        let calls = Calls::default();
        let other = Calls::default();
        for id in 0..50 {
            namespaced_user(&b.cache, &calls, id).await;
            kept(&b.cache, &other, id).await;
        }
        assert_eq!(b.cache.clear_namespace("users").await.unwrap(), 50, "{}", b.name);
        for id in 0..50 {
            namespaced_user(&b.cache, &calls, id).await;
            kept(&b.cache, &other, id).await;
        }
        assert_eq!(calls.get(), 100, "{}: every entry of the namespace was dropped", b.name);
        assert_eq!(other.get(), 50, "{}: other namespaces were left alone", b.name);
        // The plain API sees the same entries as the macro.
        assert_eq!(b.cache.namespace("users").get::<u64>("ns-user:3").await, Some(3), "{}", b.name);
        b.cache.namespace("users").invalidate("ns-user:3").await.unwrap();
        namespaced_user(&b.cache, &calls, 3).await;
        assert_eq!(calls.get(), 101, "{}: invalidate(key) drops the macro's entry", b.name);
    }
}

#[tokio::test]
async fn corrupt_or_foreign_entries_are_misses_and_are_overwritten() {
    let b = Backend::redis_without_l1();
    let mut raw = b.raw().await;
    let calls = Calls::default();
    let key = "t:{default:user:5}";
    for garbage in [&b"not an envelope"[..], &[0xCA, 1, 0, 0][..], &[0xCA; 64][..]] {
        let _: () = redis::cmd("SET").arg(key).arg(garbage).query_async(&mut raw).await.unwrap();
        let user = get_user(&b.cache, &calls, 5).await.unwrap();
        assert_eq!(user.id, 5);
        let stored: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut raw).await.unwrap();
        assert_eq!(stored[0], 0xCA, "the corrupt entry was overwritten by a valid one");
        assert_eq!(get_user(&b.cache, &calls, 5).await.unwrap(), user, "and it is served from then on");
    }
    assert_eq!(calls.get(), 3);

    // An entry written for another type (a deploy that changed the struct) is a miss too.
    b.cache.set("user:6", &"just a string".to_string(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(get_user(&b.cache, &calls, 6).await.unwrap().id, 6);
    assert_eq!(calls.get(), 4);
    // A valid envelope whose payload does not decode into User.
    b.cache.set("user:7", &serde_json::json!({"id": "seven"}), Duration::from_secs(60)).await.unwrap();
    assert_eq!(get_user(&b.cache, &calls, 7).await.unwrap().id, 7);
    assert_eq!(calls.get(), 5);
}

#[tokio::test]
async fn a_dead_redis_fails_open_and_caching_resumes() {
    let mut b = Backend::redis_without_l1();
    let calls = Calls::default();
    get_user(&b.cache, &calls, 1).await.unwrap();
    get_user(&b.cache, &calls, 1).await.unwrap();
    assert_eq!(calls.get(), 1);

    b.redis.as_mut().unwrap().kill();
    let started = Instant::now();
    for _ in 0..5 {
        let user = get_user(&b.cache, &calls, 1).await.unwrap();
        assert_eq!(user.id, 1);
    }
    // The promise: each Redis command is bounded by the 200 ms command timeout, and a call
    // sends at most two (its read and its store): 5 calls ≤ 2 s. Bounded over the 5 calls, not
    // each, with 3 s of margin for a loaded machine; an unbounded command would wait for the
    // connection's retries and backoff (many seconds) or forever.
    assert!(started.elapsed() < Duration::from_secs(5), "5 calls on a dead Redis took {:?}", started.elapsed());
    assert_eq!(calls.get(), 6, "with Redis down every call runs the body");
    assert!(b.cache.stats().errors > 0, "the failures are counted");

    b.redis.as_mut().unwrap().restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        get_user(&b.cache, &calls, 2).await.unwrap();
        let before = calls.get();
        get_user(&b.cache, &calls, 2).await.unwrap();
        if calls.get() == before {
            break; // the second call was a hit: caching resumed by itself
        }
        assert!(Instant::now() < deadline, "caching did not resume within 10 s of Redis returning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plain_api_cache_aside() {
    for b in Backend::all() {
        let ttl = Duration::from_secs(60);
        let calls = Calls::default();
        let fetch = || async {
            calls.hit();
            vec!["a".to_string(), "b".to_string()]
        };
        assert_eq!(b.cache.get_or_fetch("posts:hot", ttl, fetch).await, vec!["a", "b"]);
        assert_eq!(b.cache.get_or_fetch("posts:hot", ttl, fetch).await, vec!["a", "b"]);
        assert_eq!(calls.get(), 1, "{}", b.name);
        assert_eq!(b.cache.get::<Vec<String>>("posts:hot").await.unwrap(), vec!["a", "b"]);
        assert_eq!(b.cache.get::<u32>("posts:hot").await, None, "{}: another type is a miss", b.name);
        b.cache.invalidate("posts:hot").await.unwrap();
        assert_eq!(b.cache.get::<Vec<String>>("posts:hot").await, None, "{}", b.name);

        let r: Result<u8, &str> = b.cache.try_get_or_fetch("k", ttl, || async { Err("down") }).await;
        assert_eq!(r, Err("down"));
        let r: Result<u8, &str> = b.cache.try_get_or_fetch("k", ttl, || async { Ok(1) }).await;
        assert_eq!(r, Ok(1));
        let r: Result<u8, &str> = b.cache.try_get_or_fetch("k", ttl, || async { Ok(2) }).await;
        assert_eq!(r, Ok(1), "{}: the Ok was stored", b.name);
    }
}

#[cached(expire = 60)]
async fn global_default(x: u32) -> u32 {
    x + 1
}

#[tokio::test]
async fn the_global_cache_works_without_configuration() {
    let before = cache_runtime::global().stats();
    assert_eq!(global_default(1).await, 2);
    assert_eq!(global_default(1).await, 2);
    let after = cache_runtime::global().stats();
    assert_eq!(after.hits - before.hits, 1);
    assert!(!cache_runtime::global().is_redis());
}

#[tokio::test]
async fn a_stalled_redis_opens_the_circuit_breaker_and_it_closes_by_itself() {
    let b = Backend::redis_without_l1();
    let calls = Calls::default();
    get_user(&b.cache, &calls, 1).await.unwrap();
    let server = b.redis.as_ref().unwrap();
    server.signal("STOP").unwrap();
    // The first calls pay the 200 ms command timeout ...
    for _ in 0..5 {
        get_user(&b.cache, &calls, 1).await.unwrap();
    }
    assert_eq!(b.cache.stats().circuit_openings, 1, "repeated timeouts open the breaker");
    breaker_skips_redis(&b.cache, &calls).await;
    server.signal("CONT").unwrap();
    // It closes by itself once Redis answers: caching resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        get_user(&b.cache, &calls, 3).await.unwrap();
        let before = calls.get();
        get_user(&b.cache, &calls, 3).await.unwrap();
        if calls.get() == before {
            break;
        }
        assert!(Instant::now() < deadline, "caching did not resume within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Right after the breaker opened: calls skip Redis instead of waiting for it. The promise is
/// "no timeout paid", so each call must take less than the 200 ms command timeout (a call that
/// skips Redis takes microseconds: the margin is the whole 200 ms). The breaker stays open 1 s;
/// only calls made within 500 ms of the opening are checked, so none is the probe that follows
/// the cooldown (500 ms of margin).
async fn breaker_skips_redis(cache: &Cache, calls: &Calls) {
    let opened = Instant::now();
    let mut checked = 0;
    while opened.elapsed() < Duration::from_millis(500) && checked < 20 {
        let started = Instant::now();
        assert_eq!(get_user(cache, calls, 1).await.unwrap().id, 1);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(200), "call {checked} with the breaker open took {took:?}");
        checked += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(checked > 0);
}

#[cached(expire = 600, key = "big:<id>", tags = ["big"], cache = cache, skip = [cache, calls])]
async fn big_value(cache: &Cache, calls: &Calls, id: u32) -> String {
    calls.hit();
    format!("{id}:{}", "x".repeat(4000))
}

#[tokio::test]
async fn a_full_redis_means_misses_never_errors() {
    for policy in ["volatile-lru", "allkeys-lru", "noeviction"] {
        let server =
            cache_runtime::test_util::RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", policy])
                .unwrap();
        let cache = Cache::builder().redis(server.url()).l1(false).build().unwrap();
        let calls = Calls::default();
        for round in 0..2 {
            // The second round reads the most recent first: a scan in the same order would
            // find nothing an LRU kept.
            let ids: Vec<u32> = if round == 0 { (0..1500).collect() } else { (0..1500).rev().collect() };
            for id in ids {
                let v = big_value(&cache, &calls, id).await;
                assert!(v.starts_with(&format!("{id}:")), "{policy}: round {round}, id {id}");
            }
        }
        // Evicted (or never stored) entries were recomputed, and some entries were served.
        let stats = cache.stats();
        assert!(calls.get() > 1500, "{policy}: Redis could not keep everything ({} runs)", calls.get());
        assert_eq!(stats.hits + stats.misses, 3000, "{policy}");
        // Under `volatile-lru` only entries are evicted, never the tag and namespace versions
        // (they have no expiry), so what Redis kept is served. Under `allkeys-lru` a version
        // can be evicted too (the LRU clock counts seconds: a version read a moment ago can
        // look as old as an entry), and then every entry recorded under it is a miss: a run
        // that loses one serves nothing, correctly (seen under load in CI).
        if policy == "volatile-lru" {
            assert!(stats.hits > 0, "{policy}: what Redis kept was served ({stats:?})");
        }
        if policy == "noeviction" {
            assert!(stats.errors > 0, "{policy}: refused writes are counted");
        }
    }
}

#[tokio::test]
async fn message_pack_payloads_and_json_payloads_share_one_redis() {
    let server = cache_runtime::test_util::RedisServer::start().unwrap();
    let build = |format| Cache::builder().redis(server.url()).prefix("t").l1(false).format(format).build().unwrap();
    let (packed, json) = (build(cache_runtime::Format::MessagePack), build(cache_runtime::Format::Json));
    let calls = Calls::default();
    let user = get_user(&packed, &calls, 9).await.unwrap();
    assert_eq!(get_user(&packed, &calls, 9).await.unwrap(), user);
    assert_eq!(get_user(&json, &calls, 9).await.unwrap(), user, "a JSON cache reads the MessagePack entry");
    assert_eq!(calls.get(), 1);
    // The stored payload is MessagePack, not JSON.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stored: Vec<u8> = redis::cmd("GET").arg("t:{default:user:9}").query_async(&mut conn).await.unwrap();
    assert_eq!(stored[2] & 2, 2, "the envelope says MessagePack");
    assert!(!stored.windows(6).any(|w| w == b"\"name\""), "no JSON in the payload");
}

#[tokio::test]
async fn values_over_the_size_limit_are_served_but_not_stored() {
    let server = cache_runtime::test_util::RedisServer::start().unwrap();
    // In process memory as in Redis: a test on the memory store sees what production does.
    for (name, builder) in [
        ("memory", Cache::builder()),
        ("redis", Cache::builder().redis(server.url()).l1(false)),
        ("redis+l1", Cache::builder().redis(server.url()).prefix("l1")),
    ] {
        let cache = builder.max_value_bytes(1000).build().unwrap();
        let calls = Calls::default();
        for _ in 0..3 {
            assert!(big_value(&cache, &calls, 1).await.starts_with("1:"));
        }
        assert_eq!(calls.get(), 3, "{name}: a 4 KB value over a 1 KB limit is never stored");
        let stats = cache.stats();
        assert_eq!((stats.oversized, stats.errors, stats.stores), (3, 0, 0), "{name}");
        // Small values are stored as usual.
        get_user(&cache, &calls, 1).await.unwrap();
        get_user(&cache, &calls, 1).await.unwrap();
        assert_eq!(calls.get(), 4, "{name}");
    }
}

#[cached(expire = 600, key = "blob:<id>", cache = cache, skip = [cache, calls])]
async fn blob(cache: &Cache, calls: &Calls, id: u32) -> String {
    calls.hit();
    format!("{id:>200}")
}

#[tokio::test]
async fn process_memory_is_bounded_by_bytes_as_well_as_by_count() {
    let redis = RedisServer::start().unwrap();
    let memory = Cache::builder().prefix("t").max_entries(100_000).max_bytes(64 << 10).build().unwrap();
    let two_tier = Cache::builder().redis(redis.url()).prefix("t").l1_max_bytes(64 << 10).build().unwrap();
    let by_count = Cache::builder().prefix("t").max_entries(50).max_bytes(1 << 30).build().unwrap();
    blob(&two_tier, &Calls::default(), 0).await; // the L1 starts with the first use
    while !two_tier.l1_live() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (name, cache, bound) in [("memory", &memory, 64 << 10), ("two-tier L1", &two_tier, 64 << 10)] {
        let calls = Calls::default();
        for id in 0..2_000 {
            assert_eq!(blob(cache, &calls, id).await.trim_start(), id.to_string());
        }
        let stats = cache.stats();
        assert!(stats.memory_bytes <= bound, "{name}: {stats:?}");
        assert!(stats.memory_entries > 0 && stats.memory_entries < 2_000, "{name}: {stats:?}");
        // Each entry weighs its key, its ~200-byte value and a fixed 640 bytes of bookkeeping:
        // at most 64 KiB / 840 B = 78 fit (without the overhead 327 would).
        assert!(stats.memory_entries <= 64 * 1024 / (640 + 200), "{name}: {stats:?}");
    }
    let calls = Calls::default();
    for id in 0..2_000 {
        blob(&by_count, &calls, id).await;
    }
    let stats = by_count.stats();
    assert!(stats.memory_entries <= 50, "the count bound holds beside a large byte bound: {stats:?}");
    // Values still come back right from Redis when the L1 dropped them.
    assert_eq!(blob(&two_tier, &Calls::default(), 7).await.trim_start(), "7");
}

// ----- return types classified by type, not by spelling -----

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CatalogError(String);

/// A `Result` behind an alias, its error type storable: the trap that once stored `Err`s.
type CatalogResult<T> = Result<T, CatalogError>;
type Lookup = Result<u32, CatalogError>;
type Maybe<T> = Option<T>;

#[cached(expire = 60, key = "alias-result:<id>", cache = cache, skip = [cache, calls, fail])]
async fn aliased_result(cache: &Cache, calls: &Calls, fail: &AtomicBool, id: u32) -> CatalogResult<u32> {
    calls.hit();
    if fail.load(Ordering::SeqCst) {
        Err(CatalogError(format!("{id}: database down")))
    } else {
        Ok(id)
    }
}

#[cached(expire = 60, key = "alias-lookup:<id>", cache = cache, skip = [cache, calls, fail])]
async fn aliased_lookup(cache: &Cache, calls: &Calls, fail: &AtomicBool, id: u32) -> Lookup {
    calls.hit();
    if fail.load(Ordering::SeqCst) {
        Err(CatalogError("down".to_owned()))
    } else {
        Ok(id)
    }
}

#[cached(expire = 60, key = "alias-option:<id>", cache = cache, skip = [cache, calls, fail])]
async fn aliased_option(cache: &Cache, calls: &Calls, fail: &AtomicBool, id: u32) -> Maybe<u32> {
    calls.hit();
    (!fail.load(Ordering::SeqCst)).then_some(id)
}

#[invalidates(key = "alias-result:<id>", cache = cache)]
async fn aliased_write(cache: &Cache, fail: &AtomicBool, id: u32) -> CatalogResult<()> {
    let _ = id;
    if fail.load(Ordering::SeqCst) {
        Err(CatalogError("refused".to_owned()))
    } else {
        Ok(())
    }
}

/// `type CatalogResult<T> = Result<T, DbError>` (and an alias without parameters, and one of
/// `Option`): an `Err` or a `None` is never stored, an `Ok` or a `Some` is; an `#[invalidates]`
/// fn returning such an alias invalidates only on `Ok`.
#[tokio::test]
async fn results_and_options_behind_type_aliases_are_classified_by_type() {
    for b in Backend::all() {
        let (calls, fail) = (Calls::default(), AtomicBool::new(true));
        for _ in 0..3 {
            assert!(aliased_result(&b.cache, &calls, &fail, 1).await.is_err());
            assert!(aliased_lookup(&b.cache, &calls, &fail, 1).await.is_err());
            assert_eq!(aliased_option(&b.cache, &calls, &fail, 1).await, None);
        }
        assert_eq!(calls.get(), 9, "{}: no Err and no None was stored", b.name);
        fail.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(aliased_result(&b.cache, &calls, &fail, 1).await, Ok(1));
            assert_eq!(aliased_lookup(&b.cache, &calls, &fail, 1).await, Ok(1));
            assert_eq!(aliased_option(&b.cache, &calls, &fail, 1).await, Some(1));
        }
        assert_eq!(calls.get(), 12, "{}: Ok and Some were stored", b.name);

        fail.store(true, Ordering::SeqCst);
        assert!(aliased_write(&b.cache, &fail, 1).await.is_err());
        assert_eq!(aliased_result(&b.cache, &calls, &fail, 1).await, Ok(1), "{}: an Err invalidates nothing", b.name);
        fail.store(false, Ordering::SeqCst);
        aliased_write(&b.cache, &fail, 1).await.unwrap();
        assert_eq!(aliased_result(&b.cache, &calls, &fail, 1).await, Ok(1));
        assert_eq!(calls.get(), 13, "{}: an Ok invalidated", b.name);
    }
}

// ----- generic fns: one key per instantiation -----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DocA {
    a: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DocB {
    b: String,
}

#[cached(expire = 60, cache = cache, skip = [cache, calls])]
async fn get_doc<T: cache_runtime::Cacheable + Default>(cache: &Cache, calls: &Calls, id: u32) -> Option<T> {
    let _ = id;
    calls.hit();
    Some(T::default())
}

#[cached(expire = 60, key = "doc:<T>:<id>", cache = cache, skip = [cache, calls])]
async fn get_doc_keyed<T: cache_runtime::Cacheable + Default>(cache: &Cache, calls: &Calls, id: u32) -> Vec<T> {
    let _ = id;
    calls.hit();
    vec![T::default()]
}

/// `get_doc::<A>(1)` and `get_doc::<B>(1)` are two entries (default key, and a key naming `<T>`),
/// not one they take from each other on every call.
#[tokio::test]
async fn each_instantiation_of_a_generic_fn_has_its_own_key() {
    for b in Backend::all() {
        let calls = Calls::default();
        for _ in 0..3 {
            assert_eq!(get_doc::<DocA>(&b.cache, &calls, 1).await, Some(DocA::default()));
            assert_eq!(get_doc::<DocB>(&b.cache, &calls, 1).await, Some(DocB::default()));
            assert_eq!(get_doc_keyed::<DocA>(&b.cache, &calls, 1).await, vec![DocA::default()]);
            assert_eq!(get_doc_keyed::<DocB>(&b.cache, &calls, 1).await, vec![DocB::default()]);
        }
        assert_eq!(calls.get(), 4, "{}: one body run per type and fn", b.name);
    }
}

mod catalog {
    use cache_runtime::{cached, Cache};

    pub struct Catalog {
        pub cache: Cache,
    }

    impl Catalog {
        #[cached(expire = 60, cache = self.cache)]
        pub async fn title(&self, id: u32) -> String {
            format!("title {id}")
        }
    }
}

/// A method's default key names its module once and its type readably:
/// `functions::catalog::Catalog::title:…`, not `functions::catalog::functions%3A%3Acatalog%3A%3ACatalog::…`.
#[tokio::test]
async fn a_methods_default_key_names_its_module_once() {
    let b = Backend::redis_without_l1();
    let catalog = catalog::Catalog { cache: b.cache.clone() };
    assert_eq!(catalog.title(7).await, "title 7");
    let mut conn = b.raw().await;
    let keys: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("t:{*")
        .arg("COUNT")
        .arg(1000)
        .query_async::<(u64, Vec<String>)>(&mut conn)
        .await
        .unwrap()
        .1;
    let entry = keys.iter().find(|k| !k.ends_with(":g")).expect("the entry");
    assert!(entry.starts_with("t:{default:functions::catalog::Catalog::title:"), "{entry}");
    assert!(!entry.contains("%3A%3A"), "{entry}");
}

#[cached(expire = 60, key = "name:<name>", key_fn = by_name_key, cache = cache, skip = [cache, calls])]
async fn by_name(cache: &Cache, calls: &Calls, name: &str) -> String {
    calls.hit();
    name.to_uppercase()
}

/// Plain keys are in the grammar keys are stored and listed in: `"a b"` and `"a%20b"` name one
/// entry (the one a macro stores for the value `a b`); the plain API reaches a macro's entry
/// through the key a user would write and through the key `Namespace::keys` lists (issue 27,
/// finding 4: `'`, `*`, `?` and `%` in a value, and every listed key with an escape, named
/// nothing).
#[tokio::test]
async fn plain_keys_are_escaped_like_macro_keys() {
    for b in Backend::all() {
        b.cache.set("k:a b", &1u32, Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.cache.get::<u32>("k:a%20b").await, Some(1), "{}", b.name);
        b.cache.set("k:a%20b", &2u32, Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.cache.get::<u32>("k:a b").await, Some(2), "{}", b.name);

        let calls = Calls::default();
        let names = ["x y", "x%y", "it's", "x*y?", "50%", "[a]"];
        for name in names {
            assert_eq!(by_name(&b.cache, &calls, name).await, name.to_uppercase());
            assert_eq!(b.cache.get::<String>(&format!("name:{name}")).await, Some(name.to_uppercase()), "{}", b.name);
            assert!(b.cache.inspect(&format!("name:{name}")).await.is_some(), "{}: {name}", b.name);
            b.cache.invalidate(&format!("name:{name}")).await.unwrap();
            assert_eq!(by_name(&b.cache, &calls, name).await, name.to_uppercase());
        }
        assert_eq!(calls.get(), 2 * names.len(), "{}: each invalidate reached the macro's entry", b.name);
        // Every listed key names its entry: inspect finds it, invalidate drops it.
        let (mut listed, mut cursor) = (Vec::new(), Some(String::new()));
        while let Some(at) = cursor {
            let page = b.cache.namespace(cache_runtime::DEFAULT_NAMESPACE).keys(&at, 1000).await.unwrap();
            listed.extend(page.keys.into_iter().filter(|k| k.starts_with("name:")));
            cursor = page.next;
        }
        assert_eq!(listed.len(), names.len(), "{}: {listed:?}", b.name);
        for key in &listed {
            assert!(b.cache.inspect(key).await.is_some(), "{}: listed {key} is found", b.name);
            b.cache.invalidate(key).await.unwrap();
            assert!(b.cache.inspect(key).await.is_none(), "{}: listed {key} is dropped", b.name);
        }
        for name in names {
            by_name(&b.cache, &calls, name).await;
        }
        assert_eq!(calls.get(), 3 * names.len(), "{}: every listed key reached its entry", b.name);
    }
}

/// A method in a namespace, with its key from Rust (an associated fn beside it).
struct Shelf {
    cache: Cache,
    calls: Calls,
}

impl Shelf {
    #[cached(expire = 60, key = "book:<id>:<lang>", namespace = "shelf", key_fn = book_key, cache = self.cache)]
    async fn book(&self, id: u32, lang: String) -> String {
        self.calls.hit();
        format!("book {id} in {lang}")
    }
}

/// Issue 27, finding 4: a typed way to name a fn's key from Rust, so no user re-spells a
/// template (and values with a `:`, which the plain grammar reads as a separator, are named).
#[tokio::test]
async fn a_key_fn_names_the_entry_of_its_fn() {
    for b in Backend::all() {
        let calls = Calls::default();
        let names = ["a:b", "x y", "it's", "50%"];
        for name in names {
            by_name(&b.cache, &calls, name).await;
            let key = by_name_key(&name);
            assert!(b.cache.inspect(&key).await.is_some(), "{}: {key}", b.name);
            b.cache.invalidate(&key).await.unwrap();
            by_name(&b.cache, &calls, name).await;
        }
        assert_eq!(calls.get(), 2 * names.len(), "{}: every key_fn key reached its entry", b.name);
        assert_eq!(by_name_key(&"a:b"), "name:a%3Ab");

        let shelf = Shelf { cache: b.cache.clone(), calls: Calls::default() };
        shelf.book(7, "pt br".into()).await;
        shelf.book(7, "pt br".into()).await;
        assert_eq!(shelf.calls.get(), 1);
        let key = Shelf::book_key(&7, &"pt br".to_owned());
        b.cache.namespace("shelf").invalidate(&key).await.unwrap();
        shelf.book(7, "pt br".into()).await;
        assert_eq!(shelf.calls.get(), 2, "{}: {key} in `shelf` was the method's entry", b.name);
    }
}

/// Owned parameters: an early refresh runs in a background task. Every run notes when it
/// started; the first takes 400 ms, so Δ (the recompute time XFetch weighs) is about 400 ms.
#[cached(expire = 2, early, key = "early:<id>", cache = cache, skip = [cache, runs])]
async fn early_one(cache: Cache, runs: Arc<Mutex<Vec<Instant>>>, id: u32) -> u32 {
    let first = {
        let mut runs = runs.lock().unwrap();
        runs.push(Instant::now());
        runs.len() == 1
    };
    if first {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    id
}

/// `early` (β = 1): a read before expiry refreshes with probability e^(−t/Δ), t the time left.
/// Reading every ~5 ms, P(no refresh drawn while more than 200 ms are left) ≈ exp(−80·e^(−0.5))
/// < 1e-20 (still < 1e-8 with the two draws a process-memory or L1 hit makes today: one on the
/// fast path, one in the read-through, so its probability is squared), so the test is
/// deterministic in practice; the refresh must start before expiry, 200 ms after it was
/// drawn at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refreshes_before_expiry() {
    let backends = Backend::all();
    futures::future::join_all(backends.iter().map(early_refresh_on)).await;
}

async fn early_refresh_on(b: &Backend) {
    let runs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    // Taken BEFORE the fill: the entry is stored after this instant and after the first
    // body's 400 ms sleep, so it is fresh until at least `before_fill + 2.4 s`. A run that
    // starts before then is an early refresh, never a miss after a plain expiry.
    let before_fill = Instant::now();
    assert_eq!(early_one(b.cache.clone(), runs.clone(), 1).await, 1);
    let fresh_until_at_least = before_fill + Duration::from_millis(2400);
    while runs.lock().unwrap().len() < 2 && Instant::now() < fresh_until_at_least + Duration::from_millis(500) {
        assert_eq!(early_one(b.cache.clone(), runs.clone(), 1).await, 1, "{}", b.name);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = runs.lock().unwrap().clone();
    assert!(runs.len() >= 2, "{}: the entry was never refreshed", b.name);
    assert!(
        runs[1] < fresh_until_at_least,
        "{}: the second run started {:?} after the entry's earliest expiry: not early",
        b.name,
        runs[1] - fresh_until_at_least
    );
}

#[cached(expire = 60, key = "none:<id>", cache_none, cache = cache, skip = [cache, calls])]
async fn none_cached(cache: &Cache, calls: &Calls, id: u32) -> Option<u32> {
    calls.hit();
    (id % 2 == 0).then_some(id)
}

#[tokio::test]
async fn cache_none_stores_the_none_and_serves_it() {
    for b in Backend::all() {
        let calls = Calls::default();
        for _ in 0..3 {
            assert_eq!(none_cached(&b.cache, &calls, 1).await, None);
        }
        assert_eq!(calls.get(), 1, "{}: cache_none stores the None; it is served without the body", b.name);
        assert_eq!(b.cache.stats().hits, 2, "{}: as hits", b.name);
        assert_eq!(none_cached(&b.cache, &calls, 2).await, Some(2));
        assert_eq!(none_cached(&b.cache, &calls, 2).await, Some(2));
        assert_eq!(calls.get(), 2, "{}: a Some is stored too", b.name);
        // Without cache_none, the same None is not stored.
        let calls = Calls::default();
        assert_eq!(maybe(&b.cache, &calls, 1).await, None);
        assert_eq!(maybe(&b.cache, &calls, 1).await, None);
        assert_eq!(calls.get(), 2, "{}: None is not stored without cache_none", b.name);
    }
}

/// The first run waits at the gate; `None` whatever the id.
#[cached(expire = 60, key = "slow-none:<id>", cache = cache, skip = [cache, calls, gate])]
async fn slow_none(cache: &Cache, calls: &Calls, gate: &tokio::sync::Semaphore, id: u32) -> Option<u32> {
    if calls.hit() == 1 {
        drop(gate.acquire().await.unwrap());
    }
    let _ = id;
    None
}

/// Single-flight shares a `None` that is not stored with every caller waiting for it. On this
/// one-thread runtime, a spawned caller runs until it waits, so once all 20 have started and
/// one body runs, the 19 others are waiting on that body (no timing involved).
#[tokio::test]
async fn a_none_is_shared_with_the_callers_waiting_for_it() {
    for b in Backend::all() {
        let (calls, started) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls, gate, started) = (b.cache.clone(), calls.clone(), gate.clone(), started.clone());
                tokio::spawn(async move {
                    started.hit();
                    slow_none(&cache, &calls, &gate, 1).await
                })
            })
            .collect();
        eventually("every caller started and one body runs", async || started.get() == 20 && calls.get() == 1).await;
        gate.add_permits(1);
        for caller in callers {
            assert_eq!(caller.await.unwrap(), None, "{}", b.name);
        }
        assert_eq!(calls.get(), 1, "{}: 20 concurrent callers, one body run, its None shared", b.name);
        assert_eq!(slow_none(&b.cache, &calls, &gate, 1).await, None);
        assert_eq!(calls.get(), 2, "{}: and the None was not stored", b.name);
    }
}

/// Everything the `fmt` subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A killed Redis: 5 connection-level failures open the breaker; while open, calls skip Redis;
/// failures are logged at most once a second; after a restart, a probe closes it and caching
/// resumes. One-thread runtime: the subscriber set for this thread sees every task's events.
#[tokio::test]
async fn a_killed_redis_opens_the_breaker_and_failures_are_logged_once_a_second() {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let logs = Logs::default();
    let _subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish()
        .set_default();
    let mut b = Backend::redis_without_l1();
    let calls = Calls::default();
    get_user(&b.cache, &calls, 1).await.unwrap();
    b.redis.as_mut().unwrap().kill();
    let failing_since = Instant::now();
    // Each call sends one command (its read; a failed read stores nothing): one failure each.
    for i in 1..=5 {
        assert_eq!(b.cache.stats().circuit_openings, 0, "open before the 5th failure (call {i})");
        assert_eq!(get_user(&b.cache, &calls, 1).await.unwrap().id, 1);
    }
    assert_eq!(b.cache.stats().circuit_openings, 1, "5 connection-level failures open the breaker");
    breaker_skips_redis(&b.cache, &calls).await;
    // ~3 s of failures, a call every 10 ms.
    let before = b.cache.stats().errors;
    while failing_since.elapsed() < Duration::from_secs(3) {
        get_user(&b.cache, &calls, 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = b.cache.stats();
    assert!(stats.errors - before >= 50, "failures are counted: {stats:?}");
    assert_eq!(stats.circuit_openings, 1, "it stays open while Redis is down (a failed probe re-opens it)");
    let text = logs.text();
    let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    let failures = warns.iter().filter(|l| l.contains("cache store failed")).count();
    // ≥ 1 s apart over ≤ 3.x s of failures: at most 4 lines.
    assert!((1..=4).contains(&failures), "{failures} failure lines for {} failures:\n{text}", stats.errors);
    // Besides them, once each: the breaker opened (not again at each failed probe), and the
    // invalidation channel was lost.
    let once = ["circuit breaker open", "invalidation channel lost"];
    for what in once {
        assert_eq!(warns.iter().filter(|l| l.contains(what)).count(), 1, "{what}:\n{text}");
    }
    assert_eq!(warns.len(), failures + once.len(), "warn lines:\n{text}");

    b.redis.as_mut().unwrap().restart().unwrap();
    eventually("caching resumed after the restart", async || {
        get_user(&b.cache, &calls, 2).await.unwrap();
        let before = calls.get();
        get_user(&b.cache, &calls, 2).await.unwrap();
        calls.get() == before
    })
    .await;
}

const USER_TTL: u64 = 60;

mod ttl {
    pub const STALE: u64 = 30;
}

#[cached(expire = USER_TTL, stale = ttl::STALE * 2, cache_none = USER_TTL / 2, key = "ttl:<id>", cache = cache, skip = [cache, calls])]
async fn with_constant_ttls(cache: &Cache, calls: &Calls, id: u32) -> Option<u32> {
    calls.hit();
    (id > 0).then_some(id)
}

const ONE_SECOND: u64 = 1;

#[cached(expire = ONE_SECOND, key = "short:<id>", cache = cache, skip = [cache, calls])]
async fn short_constant(cache: &Cache, calls: &Calls, id: u32) -> u32 {
    calls.hit();
    id
}

/// Numeric options take constant expressions (`expire = USER_TTL`, `stale = ttl::STALE * 2`)
/// as well as literals, with the same meaning.
#[tokio::test]
async fn numeric_options_take_constant_expressions() {
    for b in Backend::all() {
        let calls = Calls::default();
        for _ in 0..3 {
            assert_eq!(with_constant_ttls(&b.cache, &calls, 1).await, Some(1));
            assert_eq!(with_constant_ttls(&b.cache, &calls, 0).await, None);
        }
        assert_eq!(calls.get(), 2, "{}: a value and a None, each stored once", b.name);
        // `expire = ONE_SECOND` is one second, not the default ttl (300 s).
        let calls = Calls::default();
        short_constant(&b.cache, &calls, 1).await;
        short_constant(&b.cache, &calls, 1).await;
        assert_eq!(calls.get(), 1, "{}", b.name);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        short_constant(&b.cache, &calls, 1).await;
        assert_eq!(calls.get(), 2, "{}: expired after the constant's one second", b.name);
    }
}

const STALE_WINDOW: Duration = Duration::from_secs(30);

/// Every seconds option also takes a `Duration` of whole seconds: a call, a path to a constant.
/// Owned parameters: a stale value is answered at once and refreshed in the background.
#[cached(expire = Duration::from_secs(1), stale = STALE_WINDOW, key = "dur:<id>", cache = cache, skip = [cache, calls])]
async fn duration_ttls(cache: Cache, calls: Arc<Calls>, id: u32) -> String {
    let n = calls.hit();
    format!("{id} v{n}")
}

/// A `Duration` whose seconds are a constant expression, spelled with its full path.
#[cached(expire = std::time::Duration::from_secs(5 * 60), lock = Duration::from_secs(2), cache_none = STALE_WINDOW, key = "dur-long:<id>", cache = cache, skip = [cache, calls])]
async fn long_duration(cache: &Cache, calls: &Calls, id: u32) -> Option<u32> {
    calls.hit();
    (id > 0).then_some(id)
}

/// `expire = Duration::from_secs(1)` expires after one second, and `stale = STALE_WINDOW` (a
/// `const Duration`) then serves the expired value while one refresh replaces it.
#[tokio::test]
async fn seconds_options_take_durations() {
    for b in Backend::all() {
        let calls = Arc::new(Calls::default());
        assert_eq!(duration_ttls(b.cache.clone(), calls.clone(), 1).await, "1 v1");
        assert_eq!(duration_ttls(b.cache.clone(), calls.clone(), 1).await, "1 v1");
        assert_eq!(calls.get(), 1, "{}: fresh within the second", b.name);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // Expired, inside `stale`: the stale value at once, and one refresh.
        assert_eq!(duration_ttls(b.cache.clone(), calls.clone(), 1).await, "1 v1", "{}: served stale", b.name);
        assert!(b.cache.stats().stale >= 1, "{}", b.name);
        eventually("the refresh landed", async || b.cache.stats().stores == 2).await;
        assert_eq!(duration_ttls(b.cache.clone(), calls.clone(), 1).await, "1 v2", "{}: refreshed", b.name);
        assert_eq!(calls.get(), 2, "{}: exactly one refresh", b.name);

        // Five minutes: still fresh after the wait that expired the one-second entry.
        let calls = Calls::default();
        for id in [0, 1] {
            long_duration(&b.cache, &calls, id).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for id in [0, 1] {
            long_duration(&b.cache, &calls, id).await;
        }
        assert_eq!(calls.get(), 2, "{}: a value and a None, each stored once", b.name);
    }
}
