//! The README's Quick start, compiled and run as written: its block is copied verbatim into
//! `readme` below (a test holds the two to each other), around it only the types it names.
//! Issue 27, finding 1: this pair (a handler calling the fn it shares a key with) never
//! answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;

#[rustfmt::skip]
#[allow(dead_code)]
mod readme {
use axum::extract::{Path, State};
use axum::Json;
use cache_runtime::{cached, Cache};

#[cached(expire = 60, key = "user:<id>")]             // a service function
async fn get_user(db: &Db, id: u64) -> Result<User, DbError> { db.load_user(id).await }

#[cached(expire = 60, key = "user:<id>", public, s_maxage = 120)]   // an axum handler
async fn show_user(Path(id): Path<u64>, State(app): State<App>) -> Result<Json<User>, AppError> {
    Ok(Json(get_user(&app.db, id).await?))
}

pub fn start_up() -> Result<(), Box<dyn std::error::Error>> {
// at start-up, to use Redis instead of process memory:
cache_runtime::init(Cache::builder().redis("redis://127.0.0.1:6379").prefix("myapp").build()?)?;
Ok(())
}

// What the Quick start leaves to the application.
pub use super::{App, AppError, Db, DbError, User};

pub async fn user(db: &Db, id: u64) -> Result<User, DbError> { get_user(db, id).await }

pub fn router(app: App) -> axum::Router { axum::Router::new().route("/users/{id}", axum::routing::get(show_user)).with_state(app) }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

#[derive(Debug)]
pub struct DbError;

#[derive(Debug)]
pub struct AppError;

impl From<DbError> for AppError {
    fn from(_: DbError) -> Self {
        AppError
    }
}

impl axum::response::IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response {
        axum::http::StatusCode::NOT_FOUND.into_response()
    }
}

/// A database of users that counts its reads.
#[derive(Debug, Clone, Default)]
pub struct Db {
    users: Arc<Mutex<HashMap<u64, String>>>,
    loads: Arc<AtomicUsize>,
}

impl Db {
    async fn load_user(&self, id: u64) -> Result<User, DbError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let name = self.users.lock().unwrap().get(&id).cloned().ok_or(DbError)?;
        Ok(User { id, name })
    }
}

#[derive(Debug, Clone)]
pub struct App {
    pub db: Db,
}

/// The README's block is the one compiled above, line for line.
#[test]
fn the_readme_quick_start_is_the_code_compiled_here() {
    let readme = include_str!("../../README.md");
    let start = readme.find("## Quick start\n\n```rust\n").expect("the README has a Quick start") + 24;
    let block = &readme[start..start + readme[start..].find("```\n").unwrap()];
    let this = include_str!("quick_start.rs");
    let (items, start_up) = block.split_at(block.find("// at start-up").unwrap());
    assert!(this.contains(items), "the Quick start's items are not verbatim in quick_start.rs:\n{items}");
    assert!(this.contains(start_up), "the Quick start's start-up lines are not verbatim here:\n{start_up}");
}

/// As a new user runs it: the in-memory default (no `init`), over real HTTP.
#[tokio::test]
async fn the_readme_quick_start_answers_and_caches_both() {
    let db = Db::default();
    db.users.lock().unwrap().insert(7, "Ada".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router: Router = readme::router(App { db: db.clone() });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let c = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    for expected in ["MISS", "HIT"] {
        let r = c.get(format!("{base}/users/7")).send().await.expect("the handler answers");
        assert_eq!((r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap()), (200, expected));
        let cache_control = r.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(cache_control.starts_with("public") && cache_control.contains("s-maxage=120"), "{cache_control}");
        assert_eq!(r.json::<User>().await.unwrap().name, "Ada");
    }
    assert_eq!(db.loads.load(Ordering::SeqCst), 1, "the database was read once");
    // The fn's own value is cached beside the response.
    assert_eq!(readme::user(&db, 7).await.unwrap().name, "Ada");
    assert_eq!(db.loads.load(Ordering::SeqCst), 1);
    // One invalidation of the key ends both.
    db.users.lock().unwrap().insert(7, "Grace".into());
    cache_runtime::global().invalidate("user:7").await.unwrap();
    let r = c.get(format!("{base}/users/7")).send().await.unwrap();
    assert_eq!(r.json::<User>().await.unwrap().name, "Grace");
    assert_eq!(readme::user(&db, 7).await.unwrap().name, "Grace");
}
