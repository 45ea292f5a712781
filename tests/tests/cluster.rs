//! A three-master Redis Cluster: what is cached lands on every master, and tags, namespaces,
//! key invalidation and the L1 channel work across slots without a CROSSSLOT error. (The
//! behavioural suites of `functions`, `invalidation`, `stampede`, `freshness`, `layer`, `lock`
//! and `replicas` run on a cluster too, through `Backend::all()`.)

mod support;

use std::time::Duration;

use cache_runtime::test_util::RedisCluster;
use cache_runtime::{cached, invalidates, Cache};
use support::{Backend, Calls};

#[cached(expire = 60, key = "item:<id>", tags = ["items", "owner:<owner>"], namespace = "shop", cache = cache, skip = [cache, calls])]
async fn item(cache: &Cache, calls: &Calls, id: u32, owner: u32) -> String {
    calls.hit();
    format!("item {id} of {owner}")
}

#[cached(expire = 60, key = "row:<id>", cache = cache, skip = [cache, calls, db])]
async fn row(cache: &Cache, calls: &Calls, db: &std::sync::Mutex<Vec<u64>>, id: usize) -> u64 {
    calls.hit();
    db.lock().unwrap()[id]
}

#[invalidates(key = "row:<id>", cache = cache)]
async fn write_row(cache: &Cache, db: &std::sync::Mutex<Vec<u64>>, id: usize, value: u64) -> Result<(), String> {
    db.lock().unwrap()[id] = value;
    Ok(())
}

/// Keys matching `pattern` on each master.
async fn keys_per_node(cluster: &RedisCluster, pattern: &str) -> Vec<usize> {
    let mut counts = Vec::new();
    for url in cluster.node_urls() {
        let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let (mut cursor, mut n) = (0u64, 0);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            n += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        counts.push(n);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_tags_and_namespaces_work_across_every_master() {
    let b = Backend::redis_cluster();
    let cluster = b.cluster.as_ref().unwrap();
    let cache = Cache::builder().redis(b.url()).prefix("t").l1(false).build().unwrap();
    let calls = Calls::default();
    for id in 0..300 {
        assert_eq!(item(&cache, &calls, id, id % 3).await, format!("item {id} of {}", id % 3));
    }
    for id in 0..300 {
        item(&cache, &calls, id, id % 3).await;
    }
    assert_eq!(calls.get(), 300, "the second pass is served by the cluster");
    let per_node = keys_per_node(cluster, "t:{shop:item:*}").await;
    assert_eq!(per_node.iter().sum::<usize>(), 300, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "entries land on every master: {per_node:?}");

    // A tag's entries live on every master; one invalidation reaches them all.
    cache.invalidate_tag("owner:1").await.unwrap();
    for id in 0..300 {
        item(&cache, &calls, id, id % 3).await;
    }
    assert_eq!(calls.get(), 400, "exactly the 100 entries tagged owner:1 were recomputed");
    cache.invalidate_tag("items").await.unwrap();
    for id in 0..300 {
        item(&cache, &calls, id, id % 3).await;
    }
    assert_eq!(calls.get(), 700);

    // clear_namespace scans every master.
    cache.clear_namespace("shop").await.unwrap();
    assert_eq!(keys_per_node(cluster, "t:{shop:item:*}").await, vec![0, 0, 0]);
    for id in 0..300 {
        item(&cache, &calls, id, id % 3).await;
    }
    assert_eq!(calls.get(), 1000);
    let stats = cache.stats();
    assert_eq!((stats.errors, stats.circuit_openings), (0, 0), "no command failed (no CROSSSLOT): {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_seen_by_every_replica_on_a_cluster() {
    let b = Backend::redis_cluster();
    let replicas: Vec<Cache> = (0..3).map(|_| Cache::builder().redis(b.url()).prefix("t").build().unwrap()).collect();
    let db = std::sync::Mutex::new(vec![0u64; 20]);
    let calls = Calls::default();
    // Warm every replica's L1 (it starts with the subscription).
    for _ in 0..20 {
        for r in &replicas {
            for id in 0..20 {
                row(r, &calls, &db, id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = calls.get();
    for r in &replicas {
        for id in 0..20 {
            row(r, &calls, &db, id).await;
        }
    }
    assert_eq!(calls.get(), before, "warm: every replica serves every row without the database");
    assert!(replicas.iter().all(|r| r.stats().hits > 0));
    // Each replica's L1 listens on the sharded channel (and so is in use).
    let mut subscribers = 0;
    for url in b.cluster.as_ref().unwrap().node_urls() {
        let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let (_, n): (String, usize) =
            redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg("{t}:inv").query_async(&mut conn).await.unwrap();
        subscribers += n;
    }
    assert_eq!(subscribers, 3, "three L1s subscribed to {{t}}:inv");

    for i in 1..=200u64 {
        let id = (i as usize * 7) % 20;
        write_row(&replicas[i as usize % 3], &db, id, i).await.unwrap();
        for (n, r) in replicas.iter().enumerate() {
            assert_eq!(row(r, &calls, &db, id).await, i, "write {i}: replica {n} serves the new value");
        }
    }
    for r in &replicas {
        assert_eq!(r.stats().errors, 0, "{:?}", r.stats());
    }
}
