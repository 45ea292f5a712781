//! A model of the public surface (issue 27): generated programs of reads and writes, run on two
//! replicas against one backend, each answer checked against a reference model.
//!
//! Reads: a service fn, a fn nested in another on the same key, a cached handler over real
//! HTTP (`vary`, calling the fn on its own key: the Quick start's pair), a batch fn sharing the
//! fn's entries, the plain API's `get_or_fetch`. Writes: `#[invalidates(key)]` on a fn and on
//! an HTTP handler, the plain API's `invalidate` with a key as a user writes it and with a key
//! as it is listed, the plain API's `set`, `#[invalidates(tags)]`. Names carry the bytes keys
//! escape (` `, `'`, `:`, `%`). `MODEL_SKIP` leaves kinds of steps out (to look past one
//! finding at the others on an old commit).
//!
//! The model: a database of numbers; every write changes it, then invalidates. After every
//! step, each read answers within [`STEP_BOUND`], with the database's value as of the last
//! write that returned (on any replica); the plain API, which declares no tags, with at least
//! the value of the last write that invalidated the key itself (a tag invalidation does not
//! reach an entry it stored, by design: the entry carries no tag). A failure shrinks to a minimal program and prints the
//! seed that replays it (`MODEL_SEED=… cargo test -p tests --test model`). `MODEL_CASES` sets
//! the programs per backend (CI: the default; `scripts/model` runs a long campaign and prints
//! what it covered).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{cached, invalidates, Cache};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The names items are keyed by: plain, with a space, a quote, a separator, a percent sign.
const NAMES: [&str; 5] = ["7", "a b", "it's", "x:y", "50%"];
const TOKENS: [&str; 2] = ["alice", "bob"];
/// How long one step may take before it counts as hung.
const STEP_BOUND: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);

/// One replica's handle: its cache and the database every replica shares.
#[derive(Clone)]
struct Db {
    cache: Cache,
    rows: Arc<Mutex<HashMap<String, u64>>>,
}

impl Db {
    fn value(&self, name: &str) -> u64 {
        self.rows.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn write(&self, name: &str, value: u64) {
        self.rows.lock().unwrap().insert(name.to_owned(), value);
    }
}

#[cached(expire = 60, key = "item:<name>", tags = ["items"], cache = db.cache, skip = [db])]
async fn item(db: &Db, name: String) -> u64 {
    db.value(&name)
}

/// A fn cached on the same key as the one it calls.
#[cached(expire = 60, key = "item:<name>", tags = ["items"], cache = db.cache, skip = [db])]
async fn item_view(db: &Db, name: String) -> String {
    format!("v{}", item(db, name).await)
}

#[cached(expire = 60, key = "item:<names>", tags = ["items"], batch, cache = db.cache, skip = [db])]
async fn items(db: &Db, names: Vec<String>) -> HashMap<String, u64> {
    names.into_iter().map(|name| (name.clone(), db.value(&name))).collect()
}

#[invalidates(key = "item:<name>", cache = db.cache)]
async fn set_item(db: &Db, name: String, value: u64) -> Result<(), ()> {
    db.write(&name, value);
    Ok(())
}

#[invalidates(tags = ["items"], cache = db.cache)]
async fn set_all(db: &Db, value: u64) -> Result<(), ()> {
    for name in NAMES {
        db.write(name, value);
    }
    Ok(())
}

/// The handler on the fn's key, one entry per `Authorization` value.
#[cached(expire = 60, key = "item:<name>", tags = ["items"], vary = ["authorization"], cache = db.cache)]
async fn show_item(Path(name): Path<String>, State(db): State<Db>) -> Json<u64> {
    Json(item(&db, name).await)
}

/// A handler on the same key that reads the database itself (no nested cached call).
#[cached(expire = 60, key = "item:<name>", tags = ["items"], vary = ["authorization"], cache = db.cache)]
async fn show_item_direct(Path(name): Path<String>, State(db): State<Db>) -> Json<u64> {
    Json(db.value(&name))
}

#[invalidates(key = "item:<name>", cache = db.cache)]
async fn put_item(Path(name): Path<String>, State(db): State<Db>, body: String) -> axum::http::StatusCode {
    db.write(&name, body.parse().unwrap_or(0));
    axum::http::StatusCode::NO_CONTENT
}

#[derive(Debug, Clone)]
enum Step {
    ReadFn { replica: usize, name: usize },
    ReadNested { replica: usize, name: usize },
    ReadHttp { replica: usize, name: usize, token: usize },
    ReadHttpDirect { replica: usize, name: usize, token: usize },
    ReadBatch { replica: usize, names: Vec<usize> },
    ReadPlain { replica: usize, name: usize },
    WriteFn { replica: usize, name: usize },
    WriteHttp { replica: usize, name: usize },
    WritePlain { replica: usize, name: usize },
    WriteListed { replica: usize, name: usize },
    WriteSet { replica: usize, name: usize },
    WriteTag { replica: usize },
}

impl Step {
    fn kind(&self) -> usize {
        match self {
            Step::ReadFn { .. } => 0,
            Step::ReadNested { .. } => 1,
            Step::ReadHttp { .. } => 2,
            Step::ReadBatch { .. } => 3,
            Step::ReadPlain { .. } => 4,
            Step::WriteFn { .. } => 5,
            Step::WriteHttp { .. } => 6,
            Step::WritePlain { .. } => 7,
            Step::WriteListed { .. } => 8,
            Step::WriteSet { .. } => 9,
            Step::WriteTag { .. } => 10,
            Step::ReadHttpDirect { .. } => 11,
        }
    }
}

/// Each kind of step: its name in `MODEL_SKIP`, what it does.
const KINDS: [(&str, &str); 12] = [
    ("fn", "fn read"),
    ("nested", "nested read"),
    ("http", "http read (vary, calling the fn)"),
    ("batch", "batch read"),
    ("plain", "plain read"),
    ("write-fn", "#[invalidates(key)] fn"),
    ("write-http", "#[invalidates(key)] http"),
    ("write-plain", "plain invalidate (as written)"),
    ("write-listed", "plain invalidate (as listed)"),
    ("set", "plain set"),
    ("write-tag", "#[invalidates(tags)]"),
    ("http-direct", "http read (vary, reading the database)"),
];

/// Steps of every kind but those named in `MODEL_SKIP` (comma-separated names of [`KINDS`]:
/// to look past one finding at the others).
fn step() -> impl Strategy<Value = Step> {
    let skip = std::env::var("MODEL_SKIP").unwrap_or_default();
    let (r, n, t) = (0..2usize, 0..NAMES.len(), 0..TOKENS.len());
    let all: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (3, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::ReadFn { replica, name }).boxed()),
        (2, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::ReadNested { replica, name }).boxed()),
        (
            3,
            (r.clone(), n.clone(), t.clone())
                .prop_map(|(replica, name, token)| Step::ReadHttp { replica, name, token })
                .boxed(),
        ),
        (
            2,
            (r.clone(), proptest::collection::vec(n.clone(), 1..4))
                .prop_map(|(replica, names)| Step::ReadBatch { replica, names })
                .boxed(),
        ),
        (2, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::ReadPlain { replica, name }).boxed()),
        (1, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::WriteFn { replica, name }).boxed()),
        (1, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::WriteHttp { replica, name }).boxed()),
        (1, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::WritePlain { replica, name }).boxed()),
        (1, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::WriteListed { replica, name }).boxed()),
        (1, (r.clone(), n.clone()).prop_map(|(replica, name)| Step::WriteSet { replica, name }).boxed()),
        (1, r.clone().prop_map(|replica| Step::WriteTag { replica }).boxed()),
        (2, (r, n, t).prop_map(|(replica, name, token)| Step::ReadHttpDirect { replica, name, token }).boxed()),
    ];
    let kept: Vec<(u32, BoxedStrategy<Step>)> = all
        .into_iter()
        .zip(KINDS)
        .filter(|(_, (id, _))| !skip.split(',').any(|s| s.trim() == *id))
        .map(|(kind, _)| kind)
        .collect();
    proptest::strategy::Union::new_weighted(kept)
}

/// A name's key as the README tells a user to write it for the plain API: the template's text,
/// the value as it is, a `:` in it escaped.
fn written_key(name: &str) -> String {
    format!("item:{}", name.replace(':', "%3A"))
}

/// A name's key as `Namespace::keys` and `/admin/keys` list it.
fn listed_key(name: &str) -> String {
    let mut key = String::from("item:");
    cache_runtime::key::escape_into(&mut key, name);
    key
}

/// A path segment for `name`.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// One program's replicas: their handles and base URLs.
struct World {
    replicas: Vec<(Db, String)>,
    /// Per name, the value of the last write that invalidated its key (not only its tag).
    key_written: Mutex<HashMap<&'static str, u64>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    client: reqwest::Client,
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

async fn world(caches: [Cache; 2]) -> World {
    let rows = Arc::new(Mutex::new(HashMap::new()));
    let (mut replicas, mut servers) = (Vec::new(), Vec::new());
    for cache in caches {
        let db = Db { cache, rows: Arc::clone(&rows) };
        let router = Router::new()
            .route("/items/{name}", get(show_item).put(put_item))
            .route("/direct/{name}", get(show_item_direct))
            .with_state(db.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        servers.push(tokio::spawn(async move { axum::serve(listener, router).await.unwrap() }));
        replicas.push((db, base));
    }
    World {
        replicas,
        key_written: Mutex::default(),
        servers,
        client: reqwest::Client::builder().timeout(STEP_BOUND).build().unwrap(),
    }
}

/// Steps run, by kind (a backend's programs).
type Covered = [AtomicUsize; 12];

/// Runs one step; `Err` says how its answer differed from the model's.
async fn run_step(w: &World, step: &Step, next: &mut u64, covered: &Covered) -> Result<(), String> {
    covered[step.kind()].fetch_add(1, Ordering::Relaxed);
    let expect = |got: u64, name: &str, db: &Db| {
        let want = db.value(name);
        if got == want {
            Ok(())
        } else {
            Err(format!("{name:?}: answered {got}, the database holds {want}"))
        }
    };
    match step {
        Step::ReadFn { replica, name } => {
            let (db, _) = &w.replicas[*replica];
            expect(item(db, NAMES[*name].to_owned()).await, NAMES[*name], db)
        }
        Step::ReadNested { replica, name } => {
            let (db, _) = &w.replicas[*replica];
            let got = item_view(db, NAMES[*name].to_owned()).await;
            expect(got.trim_start_matches('v').parse().unwrap_or(u64::MAX), NAMES[*name], db)
        }
        Step::ReadHttp { replica, name, token } | Step::ReadHttpDirect { replica, name, token } => {
            let (db, base) = &w.replicas[*replica];
            let route = if matches!(step, Step::ReadHttp { .. }) { "items" } else { "direct" };
            let url = format!("{base}/{route}/{}", segment(NAMES[*name]));
            let r = w.client.get(url).bearer_auth(TOKENS[*token]).send().await.map_err(|e| format!("GET: {e}"))?;
            expect(r.json::<u64>().await.map_err(|e| e.to_string())?, NAMES[*name], db)
        }
        Step::ReadBatch { replica, names } => {
            let (db, _) = &w.replicas[*replica];
            let asked: Vec<String> = names.iter().map(|&n| NAMES[n].to_owned()).collect();
            let got = items(db, asked.clone()).await;
            for name in &asked {
                expect(got.get(name).copied().unwrap_or(u64::MAX), name, db)?;
            }
            Ok(())
        }
        Step::ReadPlain { replica, name } => {
            let (db, _) = &w.replicas[*replica];
            let name = NAMES[*name];
            let got = db.cache.get_or_fetch(&written_key(name), TTL, || async { db.value(name) }).await;
            // The plain API declares no tags: a tag invalidation does not reach what it (or
            // `set`) stored, only a write of the key does. Values only grow.
            let floor = w.key_written.lock().unwrap().get(name).copied().unwrap_or(0);
            if (floor..=db.value(name)).contains(&got) {
                Ok(())
            } else {
                Err(format!("{name:?}: answered {got}, the key was last written with {floor}"))
            }
        }
        Step::WriteFn { replica, name } => {
            *next += 1;
            w.key_written.lock().unwrap().insert(NAMES[*name], *next);
            set_item(&w.replicas[*replica].0, NAMES[*name].to_owned(), *next)
                .await
                .map_err(|()| "write failed".to_owned())
        }
        Step::WriteHttp { replica, name } => {
            *next += 1;
            w.key_written.lock().unwrap().insert(NAMES[*name], *next);
            let url = format!("{}/items/{}", w.replicas[*replica].1, segment(NAMES[*name]));
            let r = w.client.put(url).body(next.to_string()).send().await.map_err(|e| format!("PUT: {e}"))?;
            if r.status() == 204 {
                Ok(())
            } else {
                Err(format!("PUT answered {}", r.status()))
            }
        }
        Step::WritePlain { replica, name } | Step::WriteListed { replica, name } => {
            *next += 1;
            w.key_written.lock().unwrap().insert(NAMES[*name], *next);
            let (db, name) = (&w.replicas[*replica].0, NAMES[*name]);
            db.write(name, *next);
            let key = if matches!(step, Step::WritePlain { .. }) { written_key(name) } else { listed_key(name) };
            db.cache.invalidate(&key).await.map_err(|e| e.to_string())
        }
        Step::WriteSet { replica, name } => {
            *next += 1;
            w.key_written.lock().unwrap().insert(NAMES[*name], *next);
            let (db, name) = (&w.replicas[*replica].0, NAMES[*name]);
            db.write(name, *next);
            db.cache.set(&written_key(name), next, TTL).await.map_err(|e| e.to_string())
        }
        Step::WriteTag { replica } => {
            *next += 1;
            set_all(&w.replicas[*replica].0, *next).await.map_err(|()| "write failed".to_owned())
        }
    }
}

/// What one backend's programs run on: a fresh pair of caches per program (a prefix of its own).
type Caches = Box<dyn Fn(usize) -> [Cache; 2]>;

/// Runs `MODEL_CASES` programs (default 12) against the caches `make` builds.
fn check_model(backend: &str, make: Caches) {
    let cases = std::env::var("MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12);
    let seed: u64 = std::env::var("MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand_seed);
    eprintln!("model on {backend}: {cases} programs, MODEL_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 256, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let program = AtomicUsize::new(0);
    let covered: Covered = Default::default();
    let result = runner.run(&proptest::collection::vec(step(), 1..24), |steps| {
        rt.block_on(async {
            let w = world(make(program.fetch_add(1, Ordering::Relaxed))).await;
            let mut next = 0;
            for (i, step) in steps.iter().enumerate() {
                match tokio::time::timeout(STEP_BOUND, run_step(&w, step, &mut next, &covered)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => return Err(TestCaseError::fail(format!("step {i} {step:?}: {why}"))),
                    Err(_) => {
                        return Err(TestCaseError::fail(format!("step {i} {step:?}: no answer within {STEP_BOUND:?}")))
                    }
                }
            }
            Ok(())
        })
    });
    let covered: Vec<String> =
        KINDS.iter().zip(&covered).map(|((_, k), n)| format!("{k}: {}", n.load(Ordering::Relaxed))).collect();
    eprintln!("model on {backend}: steps run: {}", covered.join(", "));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, minimal)) => {
            panic!("model on {backend} (MODEL_SEED={seed}): {why}\nminimal program:\n{minimal:#?}")
        }
        Err(TestError::Abort(why)) => panic!("model on {backend} (MODEL_SEED={seed}): aborted: {why}"),
    }
}

fn rand_seed() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

#[test]
fn the_model_holds_in_memory() {
    check_model(
        "memory",
        Box::new(|i| {
            let cache = Cache::builder().prefix(format!("m{i}")).build().unwrap();
            [cache.clone(), cache]
        }),
    );
}

/// Two replicas on one Redis: `l1` says whether each has the process-memory tier.
fn on_redis(url: String, l1: [bool; 2]) -> Caches {
    Box::new(move |i| {
        l1.map(|l1| {
            let builder = Cache::builder().redis(url.clone()).prefix(format!("m{i}")).l1(l1);
            builder.command_timeout(Duration::from_millis(500)).build().unwrap()
        })
    })
}

#[test]
fn the_model_holds_on_redis() {
    let redis = cache_runtime::test_util::RedisServer::start().unwrap();
    check_model("redis (one replica with an L1, one without)", on_redis(redis.url(), [true, false]));
}

#[test]
fn the_model_holds_on_redis_with_l1s() {
    let redis = cache_runtime::test_util::RedisServer::start().unwrap();
    check_model("redis+l1", on_redis(redis.url(), [true, true]));
}

#[test]
fn the_model_holds_on_a_cluster() {
    let cluster = cache_runtime::test_util::RedisCluster::start().unwrap();
    check_model("cluster+l1", on_redis(cluster.url(), [true, true]));
}
