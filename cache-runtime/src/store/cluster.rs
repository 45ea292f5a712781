//! A Redis Cluster's client, its connection (made in a task of its own), and one slot per
//! master (where `SCAN` and pattern deletes run).

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// The cluster connection, made in a task of its own: connecting (seed, `CLUSTER SLOTS`, every
/// node) may take longer than one command's timeout, and must not start over each time one
/// gives up.
pub(super) struct ClusterSlot {
    client: ClusterClient,
    conn: arc_swap::ArcSwapOption<ClusterConnection>,
    connecting: std::sync::atomic::AtomicBool,
    connected: tokio::sync::Notify,
}

/// Longest a background connection attempt to a cluster may take before the next one starts.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ClusterSlot {
    pub(super) fn new(client: ClusterClient) -> ClusterSlot {
        ClusterSlot {
            client,
            conn: arc_swap::ArcSwapOption::empty(),
            connecting: std::sync::atomic::AtomicBool::new(false),
            connected: tokio::sync::Notify::new(),
        }
    }

    pub(super) async fn get(self: &Arc<Self>) -> redis::RedisResult<ClusterConnection> {
        use std::sync::atomic::Ordering;
        if let Some(c) = self.conn.load_full() {
            return Ok(ClusterConnection::clone(&c));
        }
        let connected = self.connected.notified();
        tokio::pin!(connected);
        connected.as_mut().enable();
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let slot = Arc::clone(self);
            tokio::spawn(async move {
                let made = tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, slot.client.get_async_connection()).await;
                if let Ok(Ok(conn)) = made {
                    slot.conn.store(Some(Arc::new(conn)));
                }
                slot.connecting.store(false, Ordering::Release);
                slot.connected.notify_waiters();
            });
        }
        // The caller's command timeout bounds this wait; the attempt goes on without it.
        connected.await;
        self.conn.load_full().map(|c| ClusterConnection::clone(&c)).ok_or_else(|| {
            redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, "no cluster connection yet"))
        })
    }
}

pub(super) fn cluster_client(
    nodes: &[String],
    timeout: Duration,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout);
    if let Some(push) = push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
    }
    builder.build()
}

/// The first slot of each master in a `CLUSTER SLOTS` reply (`[[start, end, [host, port,
/// id…], replicas…]…]`), one per master.
pub(super) fn one_slot_per_master(reply: &redis::Value) -> Vec<u16> {
    let redis::Value::Array(ranges) = reply else { return Vec::new() };
    let mut seen = Vec::new();
    let mut slots = Vec::new();
    for range in ranges {
        let redis::Value::Array(fields) = range else { continue };
        let (Some(redis::Value::Int(start)), Some(master)) = (fields.first(), fields.get(2)) else { continue };
        let redis::Value::Array(master) = master else { continue };
        let address: Vec<String> = master.iter().take(2).map(|v| format!("{v:?}")).collect();
        if seen.contains(&address) {
            continue;
        }
        seen.push(address);
        if let Ok(slot) = u16::try_from(*start) {
            slots.push(slot);
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_is_taken_per_master() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port: i64| Array(vec![BulkString(b"127.0.0.1".to_vec()), Int(port), BulkString(b"id".to_vec())]);
        let reply = Array(vec![
            Array(vec![Int(0), Int(5460), node(30001), node(30004)]),
            Array(vec![Int(5461), Int(10922), node(30002)]),
            Array(vec![Int(10923), Int(12000), node(30003)]),
            // A master owning two ranges is scanned once.
            Array(vec![Int(12001), Int(16383), node(30001)]),
        ]);
        assert_eq!(one_slot_per_master(&reply), vec![0, 5461, 10923]);
        assert!(one_slot_per_master(&Int(3)).is_empty());
    }
}
