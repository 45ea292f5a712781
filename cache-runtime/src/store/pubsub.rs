//! Redis pub/sub: channel names, publishing, subscriptions (sharded on a cluster).

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;

use super::cluster::cluster_client;
use super::redis::{RedisStore, Target};
use crate::error::CacheError;

impl RedisStore {
    /// The name of a pub/sub channel of `prefix`: hash-tagged on a cluster, so that all of a
    /// prefix's channels live on one shard.
    pub(crate) fn channel(&self, prefix: &str, name: &str) -> String {
        if self.is_cluster() {
            format!("{{{prefix}}}:{name}")
        } else {
            format!("{prefix}:{name}")
        }
    }

    /// `PUBLISH` (`SPUBLISH` on a cluster); returns how many subscribers received it.
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<usize, CacheError> {
        let command = if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        self.run(redis::cmd(command).arg(channel).arg(message)).await
    }

    /// A subscription to `channels` (`SUBSCRIBE` on a dedicated connection; on a cluster a
    /// RESP3 cluster connection with `SSUBSCRIBE`, which follows the shard when slots move).
    pub(crate) async fn subscribe(&self, channels: &[&str]) -> redis::RedisResult<Subscription> {
        match &self.target {
            Target::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channels).await?;
                let (sink, stream) = pubsub.split();
                Ok(Subscription::Single { sink, stream })
            }
            Target::Cluster { nodes, .. } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let mut conn = cluster_client(nodes, self.timeout, Some(tx))?.get_async_connection().await?;
                conn.ssubscribe(channels).await?;
                let shard_key = channels.first().map_or_else(String::new, |c| (*c).to_owned());
                Ok(Subscription::Cluster { conn, rx, shard_key })
            }
        }
    }
}

/// One received message: its channel and payload.
pub(crate) struct Received {
    pub(crate) channel: String,
    pub(crate) payload: Vec<u8>,
}

/// A live subscription (see [`RedisStore::subscribe`]).
pub(crate) enum Subscription {
    Single {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    /// `shard_key`: a key in the channels' slot (their name), so that a ping goes to the node
    /// that carries the subscription, not to every master.
    Cluster {
        conn: ClusterConnection,
        rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        shard_key: String,
    },
}

impl Subscription {
    /// The next message; `None` once the subscription is lost (messages may have been missed).
    pub(crate) async fn next(&mut self) -> Option<Received> {
        use futures::StreamExt as _;
        match self {
            Subscription::Single { stream, .. } => {
                let msg = stream.next().await?;
                Some(Received { channel: msg.get_channel_name().to_owned(), payload: msg.get_payload_bytes().to_vec() })
            }
            Subscription::Cluster { rx, .. } => loop {
                let push = rx.recv().await?;
                match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        let mut data = push.data.into_iter();
                        let (Some(channel), Some(payload)) = (data.next(), data.next()) else { continue };
                        let (Ok(channel), Ok(payload)) =
                            (redis::from_redis_value::<String>(channel), redis::from_redis_value::<Vec<u8>>(payload))
                        else {
                            continue;
                        };
                        return Some(Received { channel, payload });
                    }
                    // A node connection dropped: the client resubscribes, but what was published
                    // meanwhile is lost.
                    redis::PushKind::Disconnection | redis::PushKind::SUnsubscribe => return None,
                    _ => {}
                }
            },
        }
    }

    /// Whether the subscribed connection still answers, within `timeout`. On one server the
    /// ping goes down the subscription's own connection, so its answer also means that every
    /// message published before it was sent has been received. On a cluster it goes to the
    /// node that carries the channels' shard (a keyed read of that slot), not to every master.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> bool {
        let ping = async {
            match self {
                Subscription::Single { sink, .. } => sink.ping::<redis::Value>().await.is_ok(),
                Subscription::Cluster { conn, shard_key, .. } => {
                    redis::cmd("EXISTS").arg(&*shard_key).query_async::<redis::Value>(conn).await.is_ok()
                }
            }
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(true))
    }
}

/// What a process keeps one subscription for: the L1's invalidation channel (`coherence.rs`)
/// and the wake-ups of `lock` waiters (`lock.rs`). [`listen`] runs the subscription; this says
/// what it is for.
pub(crate) trait Listener: Send + Sync + 'static {
    /// The channels, read at every (re)subscription.
    fn channels(&self) -> Vec<String>;
    /// How stale the subscription may become unnoticed: it is pinged every quarter of this,
    /// and dropped (then made again) when a pong does not come within it. `None`: not pinged.
    fn staleness_bound(&self) -> Option<Duration> {
        None
    }
    /// A subscription could not be made (Redis unreachable); the next try is after a backoff.
    fn unreachable(&self) {}
    /// Subscribed: nothing published from now on can be missed.
    fn subscribed(&self, redis: &RedisStore);
    fn message(&self, redis: &Arc<RedisStore>, message: Received);
    /// The subscription ended (lost, or silent past the staleness bound).
    fn lost(&self);
}

/// Keeps `listener` subscribed for as long as it lives: (re)subscribes with a backoff (50 ms
/// doubling to 1 s), hands it every message, pings. Ends when the listener is dropped.
pub(crate) async fn listen<L: Listener>(listener: Weak<L>, redis: Arc<RedisStore>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(l) = listener.upgrade() else { return };
        let (channels, bound) = (l.channels(), l.staleness_bound());
        drop(l);
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        let mut subscription = match tokio::time::timeout(Duration::from_secs(2), redis.subscribe(&names)).await {
            Ok(Ok(subscription)) => subscription,
            _ => {
                if let Some(l) = listener.upgrade() {
                    l.unreachable();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut confirmed = tokio::time::Instant::now();
        match listener.upgrade() {
            Some(l) => l.subscribed(&redis),
            None => return,
        }
        let bound = bound.unwrap_or(Duration::MAX);
        let mut ping = tokio::time::interval((bound / 4).clamp(Duration::from_millis(10), Duration::from_secs(3600)));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = subscription.next() => {
                    let Some(message) = message else { break };
                    let Some(l) = listener.upgrade() else { return };
                    l.message(&redis, message);
                }
                _ = ping.tick(), if bound != Duration::MAX => {
                    // Messages may be trusted until `confirmed + bound`: the pong must come by then.
                    let sent = tokio::time::Instant::now();
                    let left = (confirmed + bound).saturating_duration_since(sent);
                    if left.is_zero() || !subscription.ping(left).await {
                        break;
                    }
                    confirmed = sent;
                }
            }
        }
        let Some(l) = listener.upgrade() else { return };
        l.lost();
    }
}
