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
        Self::start_nodes(3, 0, &["--cluster-node-timeout", "2000"])
    }

    /// Starts six cluster-enabled servers: three masters, each with one replica
    /// (`--cluster-replicas 1`), a `cluster-node-timeout` of 1000 ms (a killed master is
    /// replaced by its replica within a few seconds), and waits until every node reports
    /// `cluster_state:ok`, knows its role, and every replica's link to its master is up and
    /// synced.
    ///
    /// ```no_run
    /// use cache_runtime::test_util::RedisCluster;
    /// let mut cluster = RedisCluster::start_with_replicas().unwrap();
    /// let slot = RedisCluster::key_slot("{app}:inv");
    /// let master = cluster.master_of_slot(slot).unwrap();
    /// cluster.kill_node(master);
    /// let promoted = cluster.wait_for_failover(slot, std::time::Duration::from_secs(10)).unwrap();
    /// assert_ne!(promoted, master);
    /// ```
    pub fn start_with_replicas() -> std::io::Result<Self> {
        let cluster = Self::start_nodes(3, 1, &["--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view = cluster.view();
            let replicas = view.as_ref().map_or(0, |v| v.iter().filter(|n| n.master_of.is_some()).count());
            let synced = cluster.nodes.iter().filter(|n| replica_synced(n.port())).count();
            if replicas == 3 && synced == 3 {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "within 20 s, {replicas} of 3 replicas joined and {synced} of 3 synced"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `masters` masters with `replicas` replicas each, every node started with `extra_args`.
    fn start_nodes(masters: usize, replicas: usize, extra_args: &[&str]) -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cache-runtime-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for i in 0..masters * (1 + replicas) {
            // Each node keeps its `nodes.conf` in a directory of its own.
            let node_dir = cluster.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node_dir = node_dir.to_string_lossy().into_owned();
            let mut args = vec!["--cluster-enabled", "yes", "--dir", &node_dir];
            args.extend_from_slice(extra_args);
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
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
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

    /// The hash slot of `key` (CRC16 of the key, or of its `{hash tag}`, modulo 16384), as
    /// `CLUSTER KEYSLOT` computes it.
    pub fn key_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let hashed = match bytes.iter().position(|&b| b == b'{') {
            Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
                Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
                _ => bytes,
            },
            None => bytes,
        };
        crc16_xmodem(hashed) % 16_384
    }

    /// The index (in [`nodes_mut`](Self::nodes_mut) and [`node_urls`](Self::node_urls)) of the
    /// master serving `slot`, when every running node agrees on it and that master runs and
    /// is not flagged as failing; `None` otherwise (a fail-over in progress, a node down).
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        let mut agreed = None;
        for node in &self.nodes {
            if node.pid().is_none() {
                continue;
            }
            let view = parse_cluster_nodes(&cli_on(node.port(), &["cluster", "nodes"]).ok()?);
            let master = view.iter().find(|n| n.master && !n.failing && n.slots.iter().any(|r| r.contains(&slot)))?;
            let index = self.nodes.iter().position(|n| n.port() == master.port)?;
            self.nodes[index].pid()?;
            if agreed.is_some_and(|a| a != index) {
                return None;
            }
            agreed = Some(index);
        }
        agreed
    }

    /// The index of the node that replicates the master at `master` (according to the first
    /// running node), if any.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let port = self.nodes.get(master)?.port();
        let view = self.view()?;
        let id = &view.iter().find(|n| n.port == port)?.id;
        let replica = view.iter().find(|n| n.master_of.as_ref() == Some(id))?;
        self.nodes.iter().position(|n| n.port() == replica.port)
    }

    /// Kills the node at `index` (SIGKILL, by pid) and waits for it to exit; returns the pid
    /// it had, or `None` if it was not running.
    pub fn kill_node(&mut self, index: usize) -> Option<u32> {
        let node = self.nodes.get_mut(index)?;
        let pid = node.pid();
        node.kill();
        pid
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on a running,
    /// healthy master of `slot` (see [`master_of_slot`](Self::master_of_slot)); returns its
    /// index. After a master is killed this is the end of the fail-over: its replica was
    /// promoted and the whole cluster knows it.
    pub fn wait_for_failover(&self, slot: u16, within: Duration) -> std::io::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let running = || self.nodes.iter().filter(|n| n.pid().is_some());
            if running().all(|n| cluster_ok(n.port())) {
                if let Some(master) = self.master_of_slot(slot) {
                    return Ok(master);
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("no healthy master of slot {slot} within {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli -c` (following redirections) with `args` against the first running
    /// node; returns its standard output.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .ok_or_else(|| std::io::Error::other("no cluster node is running"))?;
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli_on(node.port(), &all)
    }

    /// `CLUSTER NODES` as the first running node sees it.
    fn view(&self) -> Option<Vec<NodeLine>> {
        let node = self.nodes.iter().find(|n| n.pid().is_some())?;
        Some(parse_cluster_nodes(&cli_on(node.port(), &["cluster", "nodes"]).ok()?))
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    /// Flagged `fail` or `fail?`.
    failing: bool,
    /// The id of its master, for a replica.
    master_of: Option<String>,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping> <pong> <epoch> <link> <slot>…`;
/// importing / migrating slots (`[…]`) are left out.
fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, address, flags, master) = (fields.first()?, fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let port = address.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = flags.split(',').collect();
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => s.parse().ok().map(|one| one..=one),
                })
                .collect();
            Some(NodeLine {
                id: (*id).to_owned(),
                port,
                master: flags.contains(&"master"),
                failing: flags.iter().any(|f| f.starts_with("fail")),
                master_of: (flags.contains(&"slave") && *master != "-").then(|| (*master).to_owned()),
                slots,
            })
        })
        .collect()
}

/// CRC16/XMODEM (polynomial 0x1021), the hash of Redis Cluster key slots.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// `redis-cli -p <port> args…`, its standard output.
fn cli_on(port: u16, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!("redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

/// Whether the node on `port` is a replica whose link to its master is up and not syncing.
fn replica_synced(port: u16) -> bool {
    cli_on(port, &["info", "replication"]).is_ok_and(|info| {
        info.contains("role:slave")
            && info.contains("master_link_status:up")
            && info.contains("master_sync_in_progress:0")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_those_of_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(RedisCluster::key_slot("foo"), 12_182);
        assert_eq!(RedisCluster::key_slot("somekey"), 11_058);
        assert_eq!(RedisCluster::key_slot("{user1000}.following"), RedisCluster::key_slot("user1000"));
        // An empty hash tag hashes the whole key.
        assert_eq!(RedisCluster::key_slot("foo{}{bar}"), 8_363);
    }

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected\n\
                    e7d1 127.0.0.1:30001@40001,host myself,master - 0 0 1 connected 0-5460 7000 [93->-292f]\n\
                    292f 127.0.0.1:30002@40002 master,fail? - 0 0 2 connected 5461-10922\n";
        let view = parse_cluster_nodes(text);
        assert_eq!(view.len(), 3);
        assert_eq!((view[0].port, view[0].master, view[0].master_of.as_deref()), (30004, false, Some("e7d1")));
        assert_eq!(view[1].slots, vec![0..=5460, 7000..=7000]);
        assert!(view[1].master && !view[1].failing);
        assert!(view[2].master && view[2].failing);
    }
}
