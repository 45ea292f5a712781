//! Shared helpers: the backends every behavioural test runs against.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_runtime::test_util::RedisServer;
use cache_runtime::Cache;

/// A cache under test, with the Redis server behind it (if any) kept alive as long as it.
pub struct Backend {
    pub name: &'static str,
    pub cache: Cache,
    pub redis: Option<RedisServer>,
}

impl Backend {
    pub fn memory() -> Backend {
        Backend { name: "memory", cache: Cache::builder().prefix("t").build().unwrap(), redis: None }
    }

    pub fn redis() -> Backend {
        let server = RedisServer::start().expect("redis-server must be installed (scripts/test installs it)");
        let cache = Cache::builder()
            .redis(server.url())
            .prefix("t")
            .command_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        Backend { name: "redis", cache, redis: Some(server) }
    }

    /// Both backends, memory first.
    pub fn all() -> Vec<Backend> {
        vec![Backend::memory(), Backend::redis()]
    }

    /// A raw connection to this backend's Redis.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let server = self.redis.as_ref().expect("a Redis backend");
        let client = redis::Client::open(server.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
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
