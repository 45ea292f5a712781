//! Bytes per cached entry for a value whose JSON is 200 bytes, with 100,000 entries:
//! - in process memory (the memory store, and the L1 of a two-tier cache): the growth of this
//!   process's resident memory divided by the number of entries (keys, typed values, moka's
//!   bookkeeping, allocator overhead: what a user pays);
//! - in Redis: the growth of `used_memory` divided by the number of entries, and
//!   `MEMORY USAGE` of one entry.
//!
//! Also checks that `max_bytes` / `l1_max_bytes` bound what is kept.

use std::time::Duration;

use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    bio: String,
}

const N: u64 = 100_000;

fn profile(id: u64) -> Profile {
    let mut p = Profile { id, name: format!("User {id}"), email: format!("user{id}@example.com"), bio: String::new() };
    let len = serde_json::to_vec(&p).unwrap().len();
    p.bio = "x".repeat(200 - len);
    p
}

#[cached(expire = 3600, key = "profile:<id>", cache = cache, skip = [cache])]
async fn get_profile(cache: &Cache, id: u64) -> Profile {
    profile(id)
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    assert_eq!(serde_json::to_vec(&profile(12345)).unwrap().len(), 200);

    let memory = Cache::builder().max_entries(N + 1).build().unwrap();
    let before = rss();
    for id in 0..N {
        get_profile(&memory, id).await;
    }
    let per = (rss() - before) as f64 / N as f64;
    println!("memory store: {per:.0} bytes/entry ({} entries)", memory.stats().memory_entries);
    // `memory` stays alive: memory it freed would be reused below and hide the growth.

    let server = RedisServer::start().expect("redis-server");
    let mut conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let two_tier = Cache::builder().redis(server.url()).prefix("size").l1_max_entries(N + 1).build().unwrap();
    get_profile(&two_tier, u64::MAX).await;
    while !two_tier.l1_live() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (rss_before, redis_before) = (rss(), used_memory(&mut conn).await);
    for id in 0..N {
        get_profile(&two_tier, id).await;
    }
    let l1 = (rss() - rss_before) as f64 / N as f64;
    let in_redis = used_memory(&mut conn).await.saturating_sub(redis_before) as f64 / N as f64;
    let one: u64 =
        redis::cmd("MEMORY").arg("USAGE").arg("size:{default:profile:1}").query_async(&mut conn).await.unwrap();
    println!("two-tier L1: {l1:.0} bytes/entry (process memory, typed values)");
    println!("redis: {in_redis:.0} bytes/entry (used_memory growth); MEMORY USAGE of one entry: {one} bytes");

    // Bounded by weight: 1 MiB of entries at most.
    let bounded = Cache::builder().max_bytes(1 << 20).build().unwrap();
    for id in 0..20_000 {
        get_profile(&bounded, id).await;
    }
    let stats = bounded.stats();
    println!("max_bytes = 1 MiB: {} entries kept, weighing {} bytes", stats.memory_entries, stats.memory_bytes);
    drop(memory);
}
