//! Where two features meet (issue 27): a cached handler calling a service fn cached on the
//! same key (the README's Quick start pair), cached calls nested on one key, and `vary` with
//! `#[invalidates(key)]`. Over real HTTP, on memory, Redis, Redis with the L1 and a cluster;
//! the writes go through one replica and are read through another where there is Redis.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{cached, invalidates, Cache};
use serde::{Deserialize, Serialize};
use support::{serve, Backend};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// A database of users and carts, counting its reads.
#[derive(Default)]
struct Rows {
    users: Mutex<HashMap<u64, String>>,
    carts: Mutex<HashMap<String, Vec<String>>>,
    loads: std::sync::atomic::AtomicUsize,
}

impl Rows {
    fn loads(&self) -> usize {
        self.loads.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn load(&self) {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The service's handle: its cache and the database (shared by the replicas).
#[derive(Clone)]
struct Db {
    cache: Cache,
    rows: Arc<Rows>,
}

#[derive(Debug)]
struct DbError;

/// The Quick start's service fn.
#[cached(expire = 60, key = "user:<id>", cache = db.cache)]
async fn get_user(db: &Db, id: u64) -> Result<User, DbError> {
    db.rows.load();
    let name = db.rows.users.lock().unwrap().get(&id).cloned().ok_or(DbError)?;
    Ok(User { id, name })
}

struct AppError(StatusCode);

impl axum::response::IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response()
    }
}

/// The Quick start's handler, on the same key, calling the service fn.
#[cached(expire = 60, key = "user:<id>", public, s_maxage = 120, cache = app.cache)]
async fn show_user(Path(id): Path<u64>, State(app): State<Db>) -> Result<Json<User>, AppError> {
    get_user(&app, id).await.map(Json).map_err(|_| AppError(StatusCode::NOT_FOUND))
}

#[invalidates(key = "user:<id>", cache = app.cache)]
async fn rename_user(Path(id): Path<u64>, State(app): State<Db>, name: String) -> StatusCode {
    app.rows.users.lock().unwrap().insert(id, name);
    StatusCode::NO_CONTENT
}

/// A per-user handler: one entry per `Authorization` value.
#[cached(expire = 60, key = "cart:<user>", vary = ["authorization"], private, cache = app.cache)]
async fn show_cart(
    Path(user): Path<String>,
    State(app): State<Db>,
    headers: HeaderMap,
) -> Result<Json<Vec<String>>, AppError> {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {user}")) {
        return Err(AppError(StatusCode::UNAUTHORIZED));
    }
    app.rows.load();
    Ok(Json(app.rows.carts.lock().unwrap().get(&user).cloned().unwrap_or_default()))
}

#[invalidates(key = "cart:<user>", cache = app.cache)]
async fn put_cart(Path(user): Path<String>, State(app): State<Db>, Json(items): Json<Vec<String>>) -> StatusCode {
    app.rows.carts.lock().unwrap().insert(user, items);
    StatusCode::NO_CONTENT
}

/// Carts in a namespace of their own.
#[cached(expire = 60, key = "cart:<user>", namespace = "carts", cache = app.cache)]
async fn show_carts_cart(Path(user): Path<String>, State(app): State<Db>) -> Json<Vec<String>> {
    app.rows.load();
    Json(app.rows.carts.lock().unwrap().get(&user).cloned().unwrap_or_default())
}

/// Issue 27, finding 3: `namespace = "carts"` here cleared every cart; `in_namespace` names
/// the key's namespace.
#[invalidates(key = "cart:<user>", in_namespace = "carts", cache = app.cache)]
async fn put_carts_cart(Path(user): Path<String>, State(app): State<Db>, Json(items): Json<Vec<String>>) -> StatusCode {
    app.rows.carts.lock().unwrap().insert(user, items);
    StatusCode::NO_CONTENT
}

fn router(db: Db) -> Router {
    Router::new()
        .route("/users/{id}", get(show_user).put(rename_user))
        .route("/carts/{user}", get(show_cart).put(put_cart))
        .route("/ns/carts/{user}", get(show_carts_cart).put(put_carts_cart))
        .with_state(db)
}

/// Two replicas of the service on one backend (on memory: one process, so one cache), over
/// real HTTP; the database is shared.
async fn replicas(backend: &Backend, rows: &Arc<Rows>) -> (Db, String, Db, String) {
    let a = Db { cache: backend.cache.clone(), rows: Arc::clone(rows) };
    let b = match backend.redis.is_some() || backend.cluster.is_some() {
        true => {
            let builder = Cache::builder().redis(backend.url()).prefix("t").command_timeout(Duration::from_millis(500));
            let l1 = backend.name != "redis";
            Db { cache: builder.l1(l1).build().unwrap(), rows: Arc::clone(rows) }
        }
        false => a.clone(),
    };
    let (base_a, base_b) = (serve(router(a.clone())).await, serve(router(b.clone())).await);
    (a, base_a, b, base_b)
}

fn client() -> reqwest::Client {
    // Every request must answer: a nested call that waits for itself would hang.
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn header<'h>(r: &'h reqwest::Response, name: &str) -> &'h str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Issue 27, finding 1: the Quick start's handler calling the Quick start's fn on one key
/// answered never (the fn joined the handler's single-flight); and the two stored different
/// types under one key.
#[tokio::test]
async fn the_quick_start_pair_answers_and_each_keeps_its_own_entry() {
    for backend in Backend::all() {
        let rows = Arc::new(Rows::default());
        rows.users.lock().unwrap().insert(1, "Ada".into());
        let (a, base_a, b, base_b) = replicas(&backend, &rows).await;
        let c = client();
        let r = c.get(format!("{base_a}/users/1")).send().await.expect("the handler answers");
        assert_eq!((r.status().as_u16(), header(&r, "x-cache")), (200, "MISS"), "{}", backend.name);
        assert_eq!(r.json::<User>().await.unwrap().name, "Ada");
        let r = c.get(format!("{base_a}/users/1")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), header(&r, "x-cache")), (200, "HIT"), "{}", backend.name);
        assert_eq!(rows.loads(), 1, "{}: the database is read once", backend.name);
        // The fn's own value is stored beside the response, not over it: a direct call is a
        // hit, and the handler's next answer is still a hit.
        assert_eq!(get_user(&a, 1).await.unwrap().name, "Ada");
        let r = c.get(format!("{base_a}/users/1")).send().await.unwrap();
        assert_eq!(header(&r, "x-cache"), "HIT", "{}: the fn's value did not evict the response", backend.name);
        assert_eq!(rows.loads(), 1, "{}: neither evicted the other", backend.name);
        // A write through one replica ends both representations on every replica.
        let r = c.put(format!("{base_a}/users/1")).body("Grace").send().await.unwrap();
        assert_eq!(r.status(), 204);
        for base in [&base_b, &base_a] {
            let r = c.get(format!("{base}/users/1")).send().await.unwrap();
            assert_eq!(r.json::<User>().await.unwrap().name, "Grace", "{}: fresh after the write", backend.name);
        }
        assert_eq!(get_user(&b, 1).await.unwrap().name, "Grace", "{}", backend.name);
        assert_eq!(get_user(&a, 1).await.unwrap().name, "Grace", "{}", backend.name);
    }
}

/// A service fn calling another cached on the same key (its stored key is the same): the inner
/// call runs without the cache instead of waiting for the outer one's flight.
#[cached(expire = 60, key = "profile:<id>", cache = db.cache)]
async fn profile_name(db: &Db, id: u64) -> Option<String> {
    db.rows.load();
    db.rows.users.lock().unwrap().get(&id).cloned()
}

#[cached(expire = 60, key = "profile:<id>", cache = db.cache)]
async fn profile(db: &Db, id: u64) -> Option<User> {
    let name = profile_name(db, id).await?;
    Some(User { id, name })
}

#[tokio::test]
async fn a_cached_fn_nested_in_one_on_the_same_key_answers() {
    for backend in Backend::all() {
        let rows = Arc::new(Rows::default());
        rows.users.lock().unwrap().insert(7, "Lin".into());
        let db = Db { cache: backend.cache.clone(), rows: Arc::clone(&rows) };
        let first = tokio::time::timeout(Duration::from_secs(10), profile(&db, 7)).await;
        assert_eq!(first.expect("a nested call on its own key answers").unwrap().name, "Lin", "{}", backend.name);
        assert_eq!(profile(&db, 7).await.unwrap().name, "Lin");
        assert_eq!(rows.loads(), 1, "{}: the outer value is cached", backend.name);
    }
}

/// Issue 27, finding 2: `vary` stored one entry per token under the key; `#[invalidates(key)]`
/// dropped none of them, and the next read with the same token was a HIT with the old cart.
#[tokio::test]
async fn invalidating_a_key_ends_every_vary_variant_on_every_replica() {
    for backend in Backend::all() {
        let rows = Arc::new(Rows::default());
        rows.carts.lock().unwrap().insert("alice".into(), vec!["tea".into()]);
        let (_, base_a, _, base_b) = replicas(&backend, &rows).await;
        let c = client();
        let cart = |base: &String| {
            let (c, url) = (c.clone(), format!("{base}/carts/alice"));
            async move {
                let r = c.get(url).bearer_auth("alice").send().await.unwrap();
                assert_eq!(r.status(), 200);
                let x_cache = header(&r, "x-cache").to_owned();
                (x_cache, r.json::<Vec<String>>().await.unwrap())
            }
        };
        for base in [&base_a, &base_b, &base_a, &base_b] {
            assert_eq!(cart(base).await.1, ["tea"], "{}", backend.name);
        }
        assert_eq!(cart(&base_b).await.0, "HIT", "{}", backend.name);
        let loads = rows.loads();
        let r = c.put(format!("{base_a}/carts/alice")).json(&["tea", "milk"]).send().await.unwrap();
        assert_eq!(r.status(), 204);
        for base in [&base_a, &base_b] {
            let (x_cache, items) = cart(base).await;
            assert_eq!(items, ["tea", "milk"], "{}: the write is visible ({x_cache})", backend.name);
        }
        assert!(rows.loads() > loads, "{}", backend.name);
        // The new cart is cached again.
        assert_eq!(cart(&base_b).await, ("HIT".to_owned(), vec!["tea".to_owned(), "milk".to_owned()]));
        // The plain API's invalidation of the key reaches the variants too.
        backend.cache.invalidate("cart:alice").await.unwrap();
        rows.carts.lock().unwrap().insert("alice".into(), vec!["rice".into()]);
        assert_eq!(cart(&base_b).await.1, ["rice"], "{}: the plain API's invalidate", backend.name);
    }
}

/// `#[invalidates(key, in_namespace)]` drops that key in that namespace, on every replica, and
/// nothing else there.
#[tokio::test]
async fn a_key_in_another_namespace_is_invalidated_alone() {
    for backend in Backend::all() {
        let rows = Arc::new(Rows::default());
        for user in ["alice", "bob"] {
            rows.carts.lock().unwrap().insert(user.into(), vec![format!("{user}'s tea")]);
        }
        let (_, base_a, _, base_b) = replicas(&backend, &rows).await;
        let c = client();
        let cart = |base: &String, user: &str| {
            let (c, url) = (c.clone(), format!("{base}/ns/carts/{user}"));
            async move {
                let r = c.get(url).send().await.unwrap();
                let x_cache = header(&r, "x-cache").to_owned();
                (x_cache, r.json::<Vec<String>>().await.unwrap())
            }
        };
        for base in [&base_a, &base_b] {
            for user in ["alice", "bob"] {
                cart(base, user).await;
            }
        }
        assert_eq!(cart(&base_b, "bob").await.0, "HIT", "{}", backend.name);
        let r = c.put(format!("{base_a}/ns/carts/alice")).json(&["milk"]).send().await.unwrap();
        assert_eq!(r.status(), 204);
        for base in [&base_a, &base_b] {
            assert_eq!(cart(base, "alice").await.1, ["milk"], "{}: alice's cart is fresh", backend.name);
            let (x_cache, items) = cart(base, "bob").await;
            assert_eq!(
                (x_cache.as_str(), items),
                ("HIT", vec!["bob's tea".to_owned()]),
                "{}: bob's stays",
                backend.name
            );
        }
    }
}
