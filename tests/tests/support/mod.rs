//! Shared helpers: the backends every behavioural test runs against.

#![allow(dead_code)]

pub mod cdn_mock;
pub mod rows;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_runtime::test_util::{RedisCluster, RedisServer};
use cache_runtime::Cache;

/// A cache under test, with the Redis server behind it (if any) kept alive as long as it.
pub struct Backend {
    pub name: &'static str,
    pub cache: Cache,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

impl Backend {
    pub fn memory() -> Backend {
        Backend { name: "memory", cache: Cache::builder().prefix("t").build().unwrap(), redis: None, cluster: None }
    }

    /// Redis with the process-memory tier in front (the default with Redis).
    pub fn redis() -> Backend {
        Self::redis_with(true)
    }

    /// Redis alone: every read goes to Redis (for tests that tamper with what Redis holds).
    pub fn redis_without_l1() -> Backend {
        Self::redis_with(false)
    }

    fn redis_with(l1: bool) -> Backend {
        let server = RedisServer::start().expect("redis-server must be installed (scripts/test installs it)");
        let cache = Cache::builder()
            .redis(server.url())
            .prefix("t")
            .l1(l1)
            .command_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        Backend { name: if l1 { "redis+l1" } else { "redis" }, cache, redis: Some(server), cluster: None }
    }

    /// A three-master Redis Cluster, with the L1 (reached through its `redis+cluster://` URL).
    pub fn redis_cluster() -> Backend {
        let cluster = RedisCluster::start().expect("redis-server and redis-cli must be installed");
        let cache = Cache::builder()
            .redis(cluster.url())
            .prefix("t")
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        Backend { name: "cluster+l1", cache, redis: None, cluster: Some(cluster) }
    }

    /// Every backend: memory, Redis, Redis with the L1, a Redis Cluster with the L1.
    pub fn all() -> Vec<Backend> {
        vec![Backend::memory(), Backend::redis_without_l1(), Backend::redis(), Backend::redis_cluster()]
    }

    /// The URL another cache would use to share this backend's Redis (or cluster).
    pub fn url(&self) -> String {
        match (&self.redis, &self.cluster) {
            (Some(server), _) => server.url(),
            (_, Some(cluster)) => cluster.url(),
            _ => panic!("{} has no Redis", self.name),
        }
    }

    /// Runs one command on this backend's Redis (on a cluster, routed by its key).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match (&self.redis, &self.cluster) {
            (Some(_), _) => cmd.query_async(&mut self.raw().await).await.unwrap(),
            (_, Some(cluster)) => {
                let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
                cmd.query_async(&mut client.get_async_connection().await.unwrap()).await.unwrap()
            }
            _ => panic!("{} has no Redis", self.name),
        }
    }

    /// `INFO commandstats` of every server (each node of a cluster), summed: calls per command
    /// name (`mget`, `scan`, `keys`…).
    pub async fn command_calls(&self) -> HashMap<String, u64> {
        let urls = match (&self.redis, &self.cluster) {
            (Some(server), _) => vec![server.url()],
            (_, Some(cluster)) => cluster.node_urls(),
            _ => panic!("{} has no Redis", self.name),
        };
        let mut calls = HashMap::new();
        for url in urls {
            let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
            for line in info.lines() {
                let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                    continue;
                };
                let n = rest.split("calls=").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok());
                *calls.entry(name.to_owned()).or_default() += n.unwrap_or(0);
            }
        }
        calls
    }

    /// How many connections listen on the invalidation channel of the prefix `t` (every
    /// node's `PUBSUB NUMSUB`, or `SHARDNUMSUB` on a cluster, summed).
    pub async fn invalidation_listeners(&self) -> u64 {
        let (urls, command, channel) = match (&self.redis, &self.cluster) {
            (Some(server), _) => (vec![server.url()], "NUMSUB", "t:inv"),
            (_, Some(cluster)) => (cluster.node_urls(), "SHARDNUMSUB", "{t}:inv"),
            _ => panic!("{} has no Redis", self.name),
        };
        let mut listeners = 0;
        for url in urls {
            let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            let counts: Vec<(String, u64)> =
                redis::cmd("PUBSUB").arg(command).arg(channel).query_async(&mut conn).await.unwrap();
            listeners += counts.iter().map(|(_, n)| n).sum::<u64>();
        }
        listeners
    }

    /// A raw connection to this backend's Redis.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let server = self.redis.as_ref().expect("a Redis backend");
        let client = redis::Client::open(server.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

/// Polls `ok` until it holds, for at most 10 s (generous: only a broken build takes that long).
pub async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts how many times a body ran.
#[derive(Default, Debug)]
pub struct Calls(AtomicUsize);

impl Calls {
    pub fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A process of the example app (`cargo run --example axum_app`'s code), killed (by pid) when
/// dropped.
pub struct Replica {
    child: Child,
    pub base: String,
}

impl Replica {
    /// Starts one on a free port, on `redis` and the SQLite file `db`.
    pub fn start(redis: &RedisServer, db: &std::path::Path, db_latency_ms: u32) -> Replica {
        Self::start_on(&redis.url(), db, db_latency_ms)
    }

    /// Starts one on a free port, on the Redis (or `redis+cluster://` cluster) at `redis_url`.
    pub fn start_on(redis_url: &str, db: &std::path::Path, db_latency_ms: u32) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_app_replica"));
        command.env("REDIS_URL", redis_url).env("DATABASE_PATH", db).env("DB_LATENCY_MS", db_latency_ms.to_string());
        Self::spawn(command)
    }

    /// Like [`start_on`](Self::start_on), with `env` on top (e.g. `CACHE_L1=0`).
    pub fn start_on_with(redis_url: &str, db: &std::path::Path, db_latency_ms: u32, env: &[(&str, &str)]) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_app_replica"));
        command
            .env("REDIS_URL", redis_url)
            .env("DATABASE_PATH", db)
            .env("DB_LATENCY_MS", db_latency_ms.to_string())
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Starts one on a free port with the in-memory cache and SQLite in memory, no added
    /// latency, and `env` on top.
    pub fn start_in_memory(env: &[(&str, &str)]) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_app_replica"));
        command.env_remove("REDIS_URL").env_remove("DATABASE_PATH").env("DB_LATENCY_MS", "0").envs(env.iter().copied());
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Replica {
        let mut child = command.env("PORT", "0").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.split_whitespace().nth(2).expect("`listening on http://…`").to_owned();
        Replica { child, base }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a Redis that can be made to go silent in the middle of a read:
/// armed, it forwards the first command whose bytes contain `trigger` (and its reply), then
/// drops every later byte a client sends, on every connection, so the next command times out.
/// A fault placed between two commands of one read, which timing alone cannot place.
#[allow(dead_code)]
pub struct CutProxy {
    pub url: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[allow(dead_code)]
impl CutProxy {
    pub async fn start(upstream: u16, trigger: &'static [u8]) -> CutProxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (armed, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (a, c) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
                let (armed, cut) = (a.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if cut.load(Ordering::SeqCst) {
                            continue;
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        if armed.load(Ordering::SeqCst) && buf[..n].windows(trigger.len()).any(|w| w == trigger) {
                            cut.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        CutProxy { url, armed, cut }
    }

    /// From now on, the first command naming the trigger is the last one forwarded.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// A TCP proxy in front of a Redis that partitions its clients: [`cut`](Self::cut) drops every
/// byte a client sends from then on (its commands time out, as with a paused server), and
/// [`cut_subscribers`](Self::cut_subscribers) only on connections that subscribed (the
/// invalidation channel goes silent while reads and writes still pass). [`heal`](Self::heal)
/// closes the connections that were cut (their streams lost bytes) and forwards again.
#[allow(dead_code)]
pub struct PartitionProxy {
    pub url: String,
    /// 0: forward; 1: drop every client's bytes; 2: drop those of subscribed connections.
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// How many times it was healed.
    heals: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[allow(dead_code)]
impl PartitionProxy {
    pub async fn start(upstream: u16) -> PartitionProxy {
        use std::sync::atomic::{AtomicU64, AtomicU8};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (mode, heals) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicU64::new(0)));
        let (m, h) = (mode.clone(), heals.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let (mode, heals) = (m.clone(), h.clone());
                tokio::spawn(async move {
                    let replies = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    // `cut`: the heal count when this connection was cut.
                    let (mut subscribed, mut cut) = (false, None);
                    loop {
                        if cut.is_some_and(|at| heals.load(Ordering::SeqCst) != at) {
                            break;
                        }
                        let read = tokio::time::timeout(Duration::from_millis(20), client_rx.read(&mut buf));
                        let n = match read.await {
                            Err(_) => continue,
                            Ok(Ok(0) | Err(_)) => break,
                            Ok(Ok(n)) => n,
                        };
                        subscribed |= buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"));
                        let drop_now = match mode.load(Ordering::SeqCst) {
                            1 => true,
                            2 => subscribed,
                            _ => false,
                        };
                        if drop_now && cut.is_none() {
                            cut = Some(heals.load(Ordering::SeqCst));
                        }
                        if cut.is_none() && server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    replies.abort();
                });
            }
        });
        PartitionProxy { url, mode, heals }
    }

    /// Every client's bytes are dropped from now on, on every connection (new ones too).
    pub fn cut(&self) {
        self.mode.store(1, Ordering::SeqCst);
    }

    /// The bytes of connections that subscribed (now or later) are dropped from now on.
    pub fn cut_subscribers(&self) {
        self.mode.store(2, Ordering::SeqCst);
    }

    /// Forwards again; the connections that were cut are closed.
    pub fn heal(&self) {
        self.mode.store(0, Ordering::SeqCst);
        self.heals.fetch_add(1, Ordering::SeqCst);
    }
}

/// Serves `router` on a free loopback port; its base URL (`http://127.0.0.1:port`).
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}
