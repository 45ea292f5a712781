//! Redis round trips per cache operation, counted at the server, not assumed. Two counts per
//! operation, over 1,000 operations:
//! - `round_trips`: commands clients sent, from `MONITOR` (which marks the commands a script
//!   runs as `lua`, so they are not counted as round trips), with the command names;
//! - `server_commands`: everything the server executed, scripts' inner calls included
//!   (`INFO commandstats`, reset with `CONFIG RESETSTAT` before each operation).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench::User;
use cache_runtime::test_util::RedisServer;
use cache_runtime::{cached, invalidates, Cache};

#[cached(expire = 3600, key = "user:<id>", cache = cache, skip = [cache])]
async fn user(cache: &Cache, id: u64) -> User {
    bench::user(id)
}

#[cached(expire = 3600, key = "post:<id>", tags = ["posts"], cache = cache, skip = [cache])]
async fn post(cache: &Cache, id: u64) -> String {
    format!("post {id}")
}

#[invalidates(key = "user:<id>", cache = cache)]
async fn update_user(cache: &Cache, id: u64) -> Result<(), String> {
    let _ = (cache, id);
    Ok(())
}

#[invalidates(tags = ["posts"], cache = cache)]
async fn create_post(cache: &Cache) -> Result<(), String> {
    let _ = cache;
    Ok(())
}

/// Commands the server ran since the last reset (the `CONFIG RESETSTAT` itself excluded).
async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            (!matches!(name, "config|resetstat" | "info" | "echo")).then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// Counts, per command name, what clients sent (not scripts), as `redis-cli monitor` prints it.
#[derive(Default)]
struct Monitor {
    counts: Mutex<BTreeMap<String, u64>>,
    markers: Mutex<Vec<String>>,
}

impl Monitor {
    fn start(port: u16) -> Arc<Monitor> {
        let monitor = Arc::new(Monitor::default());
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli");
        let stdout = child.stdout.take().unwrap();
        let m = Arc::clone(&monitor);
        std::thread::spawn(move || {
            let _child = child;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // `1700000000.123456 [0 127.0.0.1:5000] "MGET" "k"`; scripts' calls say `[0 lua]`.
                let Some((source, command)) = line.split_once("] ") else { continue };
                if source.ends_with(" lua") {
                    continue;
                }
                let mut words = command.split(' ');
                let name = words.next().unwrap_or_default().trim_matches('"').to_ascii_lowercase();
                if name == "echo" {
                    let marker = words.next().unwrap_or_default().trim_matches('"').to_owned();
                    m.markers.lock().unwrap().push(marker);
                    continue;
                }
                *m.counts.lock().unwrap().entry(name).or_default() += 1;
            }
        });
        monitor
    }

    /// Waits until the monitor has seen every command sent before `marker`.
    async fn sync(&self, conn: &mut redis::aio::MultiplexedConnection, marker: &str) {
        let _: String = redis::cmd("ECHO").arg(marker).query_async(conn).await.unwrap();
        while !self.markers.lock().unwrap().iter().any(|m| m == marker) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn measure<F: std::future::Future<Output = ()>>(
    conn: &mut redis::aio::MultiplexedConnection,
    monitor: &Monitor,
    name: &str,
    n: u64,
    mut op: impl FnMut(u64) -> F,
) {
    monitor.sync(conn, &format!("before-{name}").replace(' ', "_")).await;
    monitor.counts.lock().unwrap().clear();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await.unwrap();
    for i in 0..n {
        op(i).await;
    }
    let server: u64 = commands(conn).await.values().sum();
    monitor.sync(conn, &format!("after-{name}").replace(' ', "_")).await;
    let sent: BTreeMap<String, u64> = std::mem::take(&mut *monitor.counts.lock().unwrap())
        .into_iter()
        .filter(|(c, _)| !matches!(c.as_str(), "config" | "info"))
        .collect();
    let trips: u64 = sent.values().sum();
    let per: Vec<String> = sent.iter().map(|(c, calls)| format!("{c}={:.2}", *calls as f64 / n as f64)).collect();
    println!(
        "{name:<34} round_trips={:.2} server_commands={:.2}  ({})",
        trips as f64 / n as f64,
        server as f64 / n as f64,
        per.join(" ")
    );
}

#[tokio::main]
async fn main() {
    let server = RedisServer::start().expect("redis-server");
    let mut conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let monitor = Monitor::start(server.port());
    let redis_only = &Cache::builder().redis(server.url()).prefix("rt").l1(false).build().unwrap();
    let two_tier = &Cache::builder().redis(server.url()).prefix("rt2").build().unwrap();
    const N: u64 = 1000;

    // Warm the entries the hit measurements read.
    for id in 0..N {
        user(redis_only, id).await;
        post(redis_only, id).await;
        user(two_tier, id).await;
    }
    while !two_tier.l1_live() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in 0..N {
        user(two_tier, id).await;
    }
    measure(&mut conn, &monitor, "hit (redis, L1 off)", N, |i| async move {
        user(redis_only, i).await;
    })
    .await;
    measure(&mut conn, &monitor, "hit (tagged, redis, L1 off)", N, |i| async move {
        post(redis_only, i).await;
    })
    .await;
    measure(&mut conn, &monitor, "hit (two-tier, in L1)", N, |i| async move {
        user(two_tier, i).await;
    })
    .await;
    measure(&mut conn, &monitor, "miss + fill (redis, L1 off)", N, |i| async move {
        user(redis_only, N + i).await;
    })
    .await;
    measure(&mut conn, &monitor, "miss + fill (tagged)", N, |i| async move {
        post(redis_only, N + i).await;
    })
    .await;
    measure(&mut conn, &monitor, "write: invalidate key", N, |i| async move {
        update_user(redis_only, i).await.unwrap();
    })
    .await;
    measure(&mut conn, &monitor, "write: invalidate tag", N, |_| async {
        create_post(redis_only).await.unwrap();
    })
    .await;
    measure(&mut conn, &monitor, "write: invalidate key (two-tier)", N, |i| async move {
        update_user(two_tier, i).await.unwrap();
    })
    .await;
}
