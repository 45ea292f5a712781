//! Batch reads (`#[cached(batch)]`), against a fresh redis-server on loopback: 100 ids of which
//! 90 are cached and 10 missing (new ids each round), read
//! - by the batch fn (L1 off: every element from Redis),
//! - by a loop over the single-key fn with the same template,
//! - by hand: one `MGET` of the 100 keys, the query for the missing ones, one pipeline of `SET`s
//!   (no leases, no tags, no generations: the floor),
//! - by the batch fn with every element in this process's L1;
//! - by the batch fn and by hand with all 100 in Redis (reads only).
//!
//! Each printed as the median time of `ROUNDS` rounds and as a ratio against the others in the
//! same run, with the commands the server ran per round (`INFO commandstats`) and the read
//! events it processed per round (`INFO stats` `total_reads_processed`: one per batch of bytes
//! a client sent, so a round trip's pipelined commands count once; the bench's own `INFO` and
//! `RESETSTAT` calls are taken off).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bench::User;
use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, Cache};

#[cached(expire = 3600, key = "user:<id>", cache = cache, skip = [cache])]
async fn user(cache: &Cache, id: u64) -> Option<User> {
    Some(bench::user(id))
}

#[cached(expire = 3600, key = "user:<ids>", batch, cache = cache, skip = [cache])]
async fn users(cache: &Cache, ids: Vec<u64>) -> HashMap<u64, User> {
    ids.into_iter().map(|id| (id, bench::user(id))).collect()
}

/// The hand-written version: `MGET`, the query for what is missing, one pipeline of `SET EX`.
async fn by_hand(conn: &mut redis::aio::MultiplexedConnection, ids: &[u64]) -> HashMap<u64, User> {
    let keys: Vec<String> = ids.iter().map(|id| format!("hand:user:{id}")).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(conn).await.unwrap();
    let mut out = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    for (id, value) in ids.iter().zip(values) {
        match value.and_then(|v| serde_json::from_slice::<User>(&v).ok()) {
            Some(user) => drop(out.insert(*id, user)),
            None => missing.push(*id),
        }
    }
    if missing.is_empty() {
        return out;
    }
    let mut pipe = redis::pipe();
    for id in missing {
        let user = bench::user(id);
        pipe.cmd("SET")
            .arg(format!("hand:user:{id}"))
            .arg(serde_json::to_vec(&user).unwrap())
            .arg("EX")
            .arg(3600)
            .ignore();
        out.insert(id, user);
    }
    let _: () = pipe.query_async(conn).await.unwrap();
    out
}

async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            (!matches!(name, "config|resetstat" | "info")).then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// The ids of round `r`: 90 of the warm set, 10 never read before.
/// Read events the server processed so far (`total_reads_processed`).
async fn reads_processed(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.unwrap();
    info.lines().find_map(|line| line.strip_prefix("total_reads_processed:")?.trim().parse().ok()).unwrap_or(0)
}

fn ids(r: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..90).collect();
    ids.extend((0..10).map(|i| 1_000_000 + r * 10 + i));
    ids
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: u64 = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(200);
    let server = RedisServer::start().expect("redis-server");
    let mut conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let caches = [
        Cache::builder().redis(server.url()).prefix("batch").l1(false).build().unwrap(),
        Cache::builder().redis(server.url()).prefix("loop").l1(false).build().unwrap(),
    ];
    let in_l1 = Cache::builder().redis(server.url()).prefix("l1").build().unwrap();
    // Warm the 90 ids everywhere (twice for the L1: the second read copies Redis into it).
    users(&caches[0], (0..90).collect()).await;
    users(&caches[1], (0..90).collect()).await;
    by_hand(&mut conn, &(0..90).collect::<Vec<_>>()).await;
    while !in_l1.l1_live() {
        users(&in_l1, (0..100).collect()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    users(&in_l1, (0..100).collect()).await;
    users(&in_l1, (0..100).collect()).await;

    let mut results: Vec<(&str, Duration, BTreeMap<String, u64>, f64)> = Vec::new();
    let names = [
        "batch fn",
        "loop over the single fn",
        "by hand (MGET, query, pipelined SET)",
        "batch fn, all in the L1",
        "batch fn, all 100 cached",
        "by hand, all 100 cached",
    ];
    // `ONLY=<a name>`: that case alone (to profile it).
    let only = std::env::var("ONLY").ok();
    for name in names {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let mut times = Vec::with_capacity(rounds as usize);
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
        let reads_before = reads_processed(&mut conn).await;
        for r in 0..rounds {
            let ids = ids(r);
            let started = Instant::now();
            let n = match name {
                "batch fn" => users(&caches[0], ids).await.len(),
                "loop over the single fn" => {
                    let mut n = 0;
                    for id in ids {
                        n += usize::from(user(&caches[1], id).await.is_some());
                    }
                    n
                }
                "batch fn, all in the L1" => users(&in_l1, (0..100).collect()).await.len(),
                "batch fn, all 100 cached" => users(&caches[0], (1_000_000..1_000_100).collect()).await.len(),
                "by hand, all 100 cached" => {
                    by_hand(&mut conn, &(1_000_000..1_000_100).collect::<Vec<_>>()).await.len()
                }
                _ => by_hand(&mut conn, &ids).await.len(),
            };
            times.push(started.elapsed());
            assert_eq!(n, 100);
        }
        // This `INFO stats` is one read event; the one before, after `RESETSTAT`, another.
        let reads = reads_processed(&mut conn).await.saturating_sub(reads_before + 1);
        let per_round = commands(&mut conn).await.into_iter().map(|(c, n)| (c, n / rounds)).collect();
        results.push((name, median(times), per_round, reads as f64 / rounds as f64));
    }
    let batch = results[0].1.as_secs_f64();
    println!("100 ids, 90 cached, 10 missing; median of {rounds} rounds; commands the server ran per round");
    for (name, time, per_round, reads) in &results {
        let cmds: Vec<String> = per_round.iter().map(|(c, n)| format!("{c}={n}")).collect();
        println!(
            "{name:<40} {:>8.1} µs  {:>6.2}x the batch fn  {reads:>5.1} server reads  [{}]",
            time.as_secs_f64() * 1e6,
            time.as_secs_f64() / batch,
            cmds.join(" ")
        );
    }
}
