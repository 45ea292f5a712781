//! Two processes of the example app on one Redis and one SQLite file: a write through one is
//! what the other serves next, for every write, with each process's process-memory tier on.

mod support;

use std::time::Duration;

use cache_runtime::test_util::{RedisCluster, RedisServer};
use support::Replica;

async fn get_json(c: &reqwest::Client, url: &str) -> (String, serde_json::Value) {
    let r = c.get(url).bearer_auth("carol").send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let x_cache = r.headers()["x-cache"].to_str().unwrap().to_owned();
    (x_cache, r.json().await.unwrap())
}

#[tokio::test]
async fn a_write_through_one_replica_is_served_by_the_other_next() {
    let redis = RedisServer::start().unwrap();
    writes_are_served_by_the_other_replica_next(&redis.url(), "single").await;
}

#[tokio::test]
async fn the_same_on_a_redis_cluster() {
    let cluster = RedisCluster::start().unwrap();
    writes_are_served_by_the_other_replica_next(&cluster.url(), "cluster").await;
}

async fn writes_are_served_by_the_other_replica_next(redis_url: &str, name: &str) {
    let dir = std::env::temp_dir().join(format!("cache-toolkit-replicas-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.sqlite");
    let a = Replica::start_on(redis_url, &db, 0);
    let b = Replica::start_on(redis_url, &db, 0);
    let c = reqwest::Client::new();
    let user = |r: &Replica| format!("{}/users/1", r.base);

    // Warm both replicas (their L1s start with the first request).
    for _ in 0..3 {
        get_json(&c, &user(&a)).await;
        get_json(&c, &user(&b)).await;
    }
    let (x_cache, _) = get_json(&c, &user(&b)).await;
    assert_eq!(x_cache, "HIT");

    for i in 0..100 {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let name = format!("name {i}");
        let r = c.put(user(writer)).json(&serde_json::json!({ "name": name })).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let (_, body) = get_json(&c, &user(reader)).await;
        assert_eq!(body["name"], name.as_str(), "write {i}: the other replica serves the new row");
        let (x_cache, body) = get_json(&c, &user(reader)).await;
        assert_eq!((x_cache.as_str(), &body["name"]), ("HIT", &serde_json::json!(name)), "and caches it");
    }

    // Tags across processes: a new post is in the other replica's list and feeds next.
    let (_, posts) = get_json(&c, &format!("{}/posts", a.base)).await;
    let (_, feed) = get_json(&c, &format!("{}/feed?page=1", a.base)).await;
    let r = c
        .post(format!("{}/posts", b.base))
        .json(&serde_json::json!({"title": "from b", "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, after) = get_json(&c, &format!("{}/posts", a.base)).await;
    assert_eq!(after.as_array().unwrap().len(), posts.as_array().unwrap().len() + 1);
    assert_eq!(after[0]["title"], "from b");
    let (_, feed_after) = get_json(&c, &format!("{}/feed?page=1", a.base)).await;
    assert_ne!(feed_after["posts"][0], feed["posts"][0]);
    assert_eq!(feed_after["posts"][0]["title"], "from b");

    drop((a, b));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
