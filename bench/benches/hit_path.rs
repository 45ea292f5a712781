//! The hit path through `#[cached]` against the hand-written equivalent, measured side by
//! side in one run. `scripts/bench` prints the ratios.
//!
//! - `memory/cached_macro` vs `memory/moka_direct`: a hit through the macro on the in-memory
//!   store vs rendering the same key and doing a moka get + clone of the same value.
//! - `redis/cached_macro` vs `redis/redis_rs_direct`: a hit through the macro on Redis (L1
//!   off) vs a hand-written redis-rs `GET` + `serde_json` decode over a `ConnectionManager` to
//!   the same server; and `redis/cached_crate`: the `cached` crate's `#[concurrent_cached]`
//!   with `AsyncRedisCache` (its default multiplexed connection) on the same server.
//! - `two_tier/l1_hit` vs `two_tier/memory_hit`: a hit in the process-memory tier of a Redis
//!   cache vs a hit in a memory-only cache.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use bench::{user, User};
use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};
use criterion::{criterion_group, criterion_main, Criterion};

#[cached(expire = 3600, key = "user:<id>", cache = cache, skip = [cache])]
async fn get_user(cache: &Cache, id: u64) -> User {
    user(id)
}

/// The Redis the `cached` crate's cache connects to (its `create` block runs on first call).
static PEER_URL: OnceLock<String> = OnceLock::new();

#[::cached::macros::concurrent_cached(
    map_error = r##"|e| format!("{e:?}")"##,
    ty = "::cached::AsyncRedisCache<u64, User>",
    create = r##" {
        ::cached::AsyncRedisCache::builder("peer-users")
            .ttl(::cached::time::Duration::from_secs(3600))
            .connection_string(PEER_URL.get().expect("set before the first call"))
            .build()
            .await
            .expect("AsyncRedisCache")
    } "##
)]
async fn peer_user(id: u64) -> Result<User, String> {
    Ok(user(id))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let cache = Cache::memory();
    rt.block_on(get_user(&cache, 42));
    let direct: moka::sync::Cache<String, User> = moka::sync::Cache::new(100_000);
    direct.insert(format!("user:{}", 42), user(42));

    let mut group = c.benchmark_group("memory");
    group.bench_function("cached_macro", |b| {
        b.to_async(&rt).iter(|| async { black_box(get_user(&cache, black_box(42)).await) });
    });
    group.bench_function("moka_direct", |b| {
        b.iter(|| {
            let key = format!("user:{}", black_box(42u64));
            // moka returns a clone of the stored value.
            black_box(direct.get(&key))
        });
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let server = RedisServer::start().expect("redis-server");
    let rt = runtime();
    // L1 off: every hit is a Redis round trip.
    let cache = rt.block_on(async {
        Cache::builder().redis(server.url()).l1(false).command_timeout(Duration::from_secs(1)).build().unwrap()
    });
    rt.block_on(get_user(&cache, 42));
    let conn = rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        let json = serde_json::to_vec(&user(42)).unwrap();
        let _: () = redis::cmd("SET").arg("user:42").arg(json).query_async(&mut conn).await.unwrap();
        conn
    });
    PEER_URL.set(server.url()).unwrap();
    rt.block_on(peer_user(42)).unwrap();
    let mut group = c.benchmark_group("redis");
    group.bench_function("cached_macro", |b| {
        b.to_async(&rt).iter(|| async { black_box(get_user(&cache, black_box(42)).await) });
    });
    group.bench_function("cached_crate", |b| {
        b.to_async(&rt).iter(|| async { black_box(peer_user(black_box(42)).await.unwrap()) });
    });
    group.bench_function("redis_rs_direct", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let key = format!("user:{}", black_box(42u64));
                let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
                black_box(serde_json::from_slice::<User>(&bytes).unwrap())
            }
        });
    });
    group.finish();
}

/// A hit in the process-memory tier of a Redis cache vs a hit in a memory-only cache.
fn two_tier(c: &mut Criterion) {
    let server = RedisServer::start().expect("redis-server");
    let rt = runtime();
    let two_tier = rt.block_on(async { Cache::builder().redis(server.url()).build().unwrap() });
    rt.block_on(async {
        get_user(&two_tier, 42).await;
        while !two_tier.l1_live() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        get_user(&two_tier, 42).await; // now in the L1
    });
    let memory = Cache::memory();
    rt.block_on(get_user(&memory, 42));
    let mut group = c.benchmark_group("two_tier");
    group.bench_function("l1_hit", |b| {
        b.to_async(&rt).iter(|| async { black_box(get_user(&two_tier, black_box(42)).await) });
    });
    group.bench_function("memory_hit", |b| {
        b.to_async(&rt).iter(|| async { black_box(get_user(&memory, black_box(42)).await) });
    });
    group.finish();
}

/// The payload codecs on the 4-field user (encode + decode), JSON vs MessagePack.
fn codec(c: &mut Criterion) {
    let value = user(42);
    let json = serde_json::to_vec(&value).unwrap();
    let packed = rmp_serde::to_vec_named(&value).unwrap();
    println!("payload bytes: json {}, msgpack {}", json.len(), packed.len());
    let mut group = c.benchmark_group("codec");
    group.bench_function("json", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).unwrap();
            black_box(serde_json::from_slice::<User>(&bytes).unwrap())
        });
    });
    group.bench_function("msgpack", |b| {
        b.iter(|| {
            let bytes = rmp_serde::to_vec_named(black_box(&value)).unwrap();
            black_box(rmp_serde::from_slice::<User>(&bytes).unwrap())
        });
    });
    group.finish();
}

criterion_group!(benches, memory, redis, two_tier, codec);
criterion_main!(benches);
