//! Throw-away `redis-server` processes for tests (feature `test-util`).
//!
//! ```no_run
//! let redis = cache_runtime::test_util::RedisServer::start().unwrap();
//! let cache = cache_runtime::Cache::redis(&redis.url()).unwrap();
//! # drop(cache);
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a free loopback port, stopped (by pid) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port of 127.0.0.1, with persistence off.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--maxmemory", "1mb"]`).
    pub fn start_with(extra_args: &[&str]) -> std::io::Result<Self> {
        Self::start_on(extra_args, free_port)
    }

    fn start_on(extra_args: &[&str], port: impl Fn() -> std::io::Result<u16>) -> std::io::Result<Self> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = port()?;
            let mut server =
                RedisServer { port, child: None, extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect() };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("could not start redis-server")))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!("redis-server exited with {status}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(std::io::Error::other("redis-server did not answer PING within 10 s"))
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: persistence is off).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`) to the server with `kill(1)`.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let pid = self.pid().ok_or_else(|| std::io::Error::other("redis-server is not running"))?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -{signal} {pid} failed")))
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would not die of SIGKILL before it is continued on some kernels.
        let _ = self.signal("CONT");
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, made with
/// `redis-cli --cluster create`; every node is stopped (by pid) when dropped.
///
/// ```no_run
/// let cluster = cache_runtime::test_util::RedisCluster::start().unwrap();
/// let cache = cache_runtime::Cache::builder().redis(cluster.url()).build().unwrap();
/// # drop(cache);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, assigns them the slots and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cache-runtime-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for i in 0..3 {
            // Each node keeps its `nodes.conf` in a directory of its own.
            let node_dir = cluster.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node_dir = node_dir.to_string_lossy().into_owned();
            let args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--dir", &node_dir];
            // The cluster bus listens on port + 10000.
            cluster.nodes.push(RedisServer::start_on(&args, || loop {
                let port = free_port()?;
                if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                    return Ok(port);
                }
            })?);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| cluster_ok(n.port())) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("the cluster did not reach cluster_state:ok within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>` (what
    /// `CacheBuilder::redis` accepts).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node servers (to kill or pause one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the node on `port` reports `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
