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

async fn redis_cmd(redis: &RedisServer, args: &[&str]) {
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
}

/// A mixed deployment (replica a with the L1, replica b with `CACHE_L1=0`) and internal keys
/// damaged in Redis: a write through either replica is what both serve next. As reported: a
/// write through b left a serving the old user from its L1 (`X-Cache: HIT`) for 30 s; a
/// generation or tag version holding garbage made the write's invalidation fail, so b (which
/// reads Redis) served the old user or post list, and the tag was never cached again.
#[tokio::test]
async fn a_mixed_deployment_with_damaged_keys_serves_every_write_next() {
    let redis = RedisServer::start().unwrap();
    let dir = std::env::temp_dir().join(format!("cache-toolkit-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.sqlite");
    let a = Replica::start_on(&redis.url(), &db, 0);
    let b = Replica::start_on_with(&redis.url(), &db, 0, &[("CACHE_L1", "0")]);
    let c = reqwest::Client::new();
    let user = |r: &Replica, id: u32| format!("{}/users/{id}", r.base);
    let put = async |r: &Replica, id: u32, name: &str| {
        let resp = c.put(user(r, id)).json(&serde_json::json!({ "name": name })).send().await.unwrap();
        assert_eq!(resp.status(), 200, "PUT {name}");
    };

    // 1. A writer without the L1: a's L1 hears of it.
    for _ in 0..3 {
        get_json(&c, &user(&a, 61)).await;
    }
    assert_eq!(get_json(&c, &user(&a, 61)).await.0, "HIT");
    put(&b, 61, "via-L1off").await;
    assert_eq!(get_json(&c, &user(&a, 61)).await.1["name"], "via-L1off", "a serves b's write next");

    // 2. A generation holding garbage, a list or a hash: the write is served by both next.
    for (i, damage) in [["SET", "garbage"], ["RPUSH", "x"], ["HSET", "f"]].iter().enumerate() {
        let key = "axum-app:{default:user:31}:g";
        for r in [&a, &b, &a, &b] {
            get_json(&c, &user(r, 31)).await;
        }
        redis_cmd(&redis, &["DEL", key]).await;
        let mut args = vec![damage[0], key, damage[1]];
        if damage[0] == "HSET" {
            args.push("v");
        }
        redis_cmd(&redis, &args).await;
        let name = format!("after damage {i}");
        put(if i % 2 == 0 { &a } else { &b }, 31, &name).await;
        for r in [&a, &b] {
            assert_eq!(get_json(&c, &user(r, 31)).await.1["name"], name.as_str(), "{damage:?}: {}", r.base);
        }
        // And caching resumes: b (Redis only) answers from the cache again.
        get_json(&c, &user(&b, 31)).await;
        assert_eq!(get_json(&c, &user(&b, 31)).await.0, "HIT", "{damage:?}: cached again");
    }

    // 3. The `posts` tag version holding garbage: a new post is in both lists next, and the list
    // is cached again.
    for r in [&a, &b, &a, &b] {
        get_json(&c, &format!("{}/posts", r.base)).await;
    }
    redis_cmd(&redis, &["SET", "axum-app:t:{posts}", "garbage"]).await;
    let resp = c
        .post(format!("{}/posts", a.base))
        .json(&serde_json::json!({"title": "after garbage", "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    for r in [&a, &b] {
        let (_, posts) = get_json(&c, &format!("{}/posts", r.base)).await;
        assert_eq!(posts[0]["title"], "after garbage", "{}", r.base);
    }
    get_json(&c, &format!("{}/posts", b.base)).await;
    assert_eq!(get_json(&c, &format!("{}/posts", b.base)).await.0, "HIT", "the list is cached again");

    drop((a, b));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
