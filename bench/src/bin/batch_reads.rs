//! Batch reads (`#[cached(batch)]`), against a fresh redis-server on loopback: 100 ids of which
//! 90 are cached and 10 missing (new ids each round), read
//! - by the batch fn (L1 off: every element from Redis),
//! - by a loop over the single-key fn with the same template,
//! - by hand: one `MGET` of the 100 keys, the query for the missing ones, one pipeline of `SET`s
//!   (no leases, no tags, no generations: the floor),
//! - by the batch fn with every element in this process's L1;
//! - by the batch fn and by hand with all 100 in Redis (reads only).
//!
//! The cases run interleaved, each round in a rotated order (a noisy neighbour slows them alike).
//! Each is printed as its median time, this process's CPU time (client CPU) and redis-server's
//! CPU time per round, and its ratio against the hand-written case of the same reads (the
//! median of the per-round ratios); then, from a few rounds of each case alone, the commands the
//! server ran per round (`INFO commandstats`) and the read events it processed per round (`INFO
//! stats` `total_reads_processed`: one per batch of bytes a client sent, so a round trip's
//! pipelined commands count once; the bench's own `INFO` and `RESETSTAT` calls are taken off).

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

/// The server's CPU time so far (`INFO cpu`: user and system, its main thread and the others).
async fn server_cpu(conn: &mut redis::aio::MultiplexedConnection) -> Duration {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.unwrap();
    let secs: f64 = info
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user").then(|| value.trim().parse::<f64>().ok())?
        })
        .sum();
    Duration::from_secs_f64(secs)
}

/// Read events the server processed so far (`total_reads_processed`).
async fn reads_processed(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.unwrap();
    info.lines().find_map(|line| line.strip_prefix("total_reads_processed:")?.trim().parse().ok()).unwrap_or(0)
}

/// The ids of round `r`: 90 of the warm set, 10 never read before.
fn ids(r: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..90).collect();
    ids.extend((0..10).map(|i| 1_000_000 + r * 10 + i));
    ids
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// CPU time this process has used (every runtime thread: the client's work, the connection's
/// driver and the wake-ups between them included).
fn process_cpu() -> Duration {
    cpu_time::ProcessTime::now().as_duration()
}

/// The cases, each a name and a kind (the by-hand case its ratio is taken against).
const CASES: [&str; 6] = [
    "batch fn",
    "loop over the single fn",
    "by hand (MGET, query, pipelined SET)",
    "batch fn, all in the L1",
    "batch fn, all 100 cached",
    "by hand, all 100 cached",
];

/// Ids read by the "all 100 cached" cases (stored before the first round).
fn cached_ids() -> Vec<u64> {
    (2_000_000..2_000_100).collect()
}

struct Setup {
    caches: [Cache; 2],
    in_l1: Cache,
    conn: redis::aio::MultiplexedConnection,
}

async fn run(setup: &mut Setup, name: &str, r: u64) -> usize {
    let ids = ids(r);
    match name {
        "batch fn" => users(&setup.caches[0], ids).await.len(),
        "loop over the single fn" => {
            let mut n = 0;
            for id in ids {
                n += usize::from(user(&setup.caches[1], id).await.is_some());
            }
            n
        }
        "batch fn, all in the L1" => users(&setup.in_l1, (0..100).collect()).await.len(),
        "batch fn, all 100 cached" => users(&setup.caches[0], cached_ids()).await.len(),
        "by hand, all 100 cached" => by_hand(&mut setup.conn, &cached_ids()).await.len(),
        _ => by_hand(&mut setup.conn, &ids).await.len(),
    }
}

// The runtime an application runs (several threads: a round trip wakes the task from the
// connection's driver on another thread, as in a server).
#[tokio::main]
async fn main() {
    let rounds: u64 = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(400);
    let server = RedisServer::start().expect("redis-server");
    let conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut setup = Setup {
        caches: [
            Cache::builder().redis(server.url()).prefix("batch").l1(false).build().unwrap(),
            Cache::builder().redis(server.url()).prefix("loop").l1(false).build().unwrap(),
        ],
        in_l1: Cache::builder().redis(server.url()).prefix("l1").build().unwrap(),
        conn,
    };
    // Warm the 90 ids everywhere (twice for the L1: the second read copies Redis into it), and
    // the ids the "all 100 cached" cases read.
    users(&setup.caches[0], (0..90).collect()).await;
    users(&setup.caches[0], cached_ids()).await;
    users(&setup.caches[1], (0..90).collect()).await;
    by_hand(&mut setup.conn, &(0..90).collect::<Vec<_>>()).await;
    by_hand(&mut setup.conn, &cached_ids()).await;
    while !setup.in_l1.l1_live() {
        users(&setup.in_l1, (0..100).collect()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    users(&setup.in_l1, (0..100).collect()).await;
    users(&setup.in_l1, (0..100).collect()).await;

    // `ONLY=<a name>`: that case alone (to profile it).
    let only = std::env::var("ONLY").ok();
    let cases: Vec<&str> = CASES.into_iter().filter(|name| only.as_deref().is_none_or(|only| only == *name)).collect();
    // Timed: the cases interleaved, each round in a rotated order, so that each sees the same
    // machine (a noisy neighbour slows every case alike, not only the one running then).
    let mut wall: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds as usize); cases.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds as usize); cases.len()];
    for r in 0..rounds {
        for i in 0..cases.len() {
            let at = (i + r as usize) % cases.len();
            let cpu_started = process_cpu();
            let started = Instant::now();
            let n = run(&mut setup, cases[at], r).await;
            wall[at].push(started.elapsed());
            cpu[at].push(process_cpu().saturating_sub(cpu_started));
            assert_eq!(n, 100);
        }
    }
    // Counted: each case alone for a few rounds (new ids), the server's commands, read events
    // and CPU time per round.
    let counted: u64 = 50;
    let mut counts = Vec::with_capacity(cases.len());
    for name in &cases {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut setup.conn).await.unwrap();
        let reads_before = reads_processed(&mut setup.conn).await;
        let cpu_before = server_cpu(&mut setup.conn).await;
        for r in rounds..rounds + counted {
            run(&mut setup, name, r + 1_000).await;
        }
        let server = server_cpu(&mut setup.conn).await.saturating_sub(cpu_before) / counted as u32;
        // This `INFO stats` is one read event; the one before, after `RESETSTAT`, another.
        let reads = reads_processed(&mut setup.conn).await.saturating_sub(reads_before + 1);
        let per_round: BTreeMap<String, u64> =
            commands(&mut setup.conn).await.into_iter().map(|(c, n)| (c, n / counted)).collect();
        counts.push((per_round, reads as f64 / counted as f64, server));
    }
    let baseline = |name: &str| {
        let hand = if name.contains("all 100 cached") { CASES[5] } else { CASES[2] };
        cases.iter().position(|c| *c == hand)
    };
    println!(
        "100 ids, 90 cached, 10 missing; {rounds} rounds, cases interleaved; medians; client CPU: this process's (all \
         its threads); server CPU: redis-server's per round, mean of {counted} rounds of the case alone; x hand: median of \
         the per-round time ratios against the hand-written case of the same reads"
    );
    for (i, name) in cases.iter().enumerate() {
        let ratio = baseline(name).map_or(String::from("     -"), |b| {
            let ratios: Vec<Duration> = wall[i]
                .iter()
                .zip(&wall[b])
                .map(|(t, h)| Duration::from_secs_f64(t.as_secs_f64() / h.as_secs_f64()))
                .collect();
            format!("{:>5.2}x", median(ratios).as_secs_f64())
        });
        let (per_round, reads, server) = &counts[i];
        let cmds: Vec<String> = per_round.iter().map(|(c, n)| format!("{c}={n}")).collect();
        println!(
            "{name:<38} {:>7.1} µs  client CPU {:>6.1} µs  server CPU {:>6.1} µs  {ratio} hand  {reads:>5.1} server reads  [{}]",
            median(wall[i].clone()).as_secs_f64() * 1e6,
            median(cpu[i].clone()).as_secs_f64() * 1e6,
            server.as_secs_f64() * 1e6,
            cmds.join(" ")
        );
    }
}
