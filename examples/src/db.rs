//! The example's database: SQLite (a file shared by every replica, or in memory), with a
//! configurable latency added to each call to stand in for a remote database.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};

/// Users 1..=USERS exist after seeding.
pub const USERS: u64 = 1000;
/// Posts 1..=POSTS exist after seeding (more as they are added).
pub const POSTS: u64 = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    /// RFC 3339, UTC, seconds.
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub id: u64,
    pub title: String,
    pub body: String,
    pub created_at: String,
}

#[derive(Debug)]
pub struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database error: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> Self {
        DbError(err.to_string())
    }
}

/// A handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    latency: Duration,
    reads: Arc<AtomicU64>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Db {
    /// Opens (creating and seeding when needed) the database at `path`, or one in memory.
    pub fn open(path: Option<&Path>, latency: Duration) -> Result<Db, DbError> {
        let conn = match path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, updated_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL);",
        )?;
        let seeded: u64 = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
        if seeded < USERS {
            let now = now_rfc3339();
            let tx = conn.unchecked_transaction()?;
            for id in 1..=USERS {
                tx.execute(
                    "INSERT OR IGNORE INTO users (id, name, email, updated_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, format!("User {id}"), format!("user{id}@example.com"), now],
                )?;
            }
            for id in 1..=POSTS {
                tx.execute(
                    "INSERT OR IGNORE INTO posts (id, title, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, format!("Post {id}"), format!("The body of post {id}."), now],
                )?;
            }
            tx.commit()?;
        }
        Ok(Db { conn: Arc::new(Mutex::new(conn)), latency, reads: Arc::new(AtomicU64::new(0)) })
    }

    /// How many reads reached the database (writes are not counted).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    async fn call<T: Send + 'static>(
        &self,
        read: bool,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        if read {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| DbError("connection lock poisoned".to_owned()))?;
            f(&conn).map_err(DbError::from)
        })
        .await
        .map_err(|e| DbError(e.to_string()))?
    }

    /// The user `id`; `None` when there is none, as for any id beyond SQLite's (i64) rowids.
    pub async fn user(&self, id: u64) -> Result<Option<User>, DbError> {
        let Ok(id) = i64::try_from(id) else { return Ok(None) };
        self.call(true, move |c| {
            c.query_row("SELECT id, name, email, updated_at FROM users WHERE id = ?1", [id], |r| {
                Ok(User { id: r.get(0)?, name: r.get(1)?, email: r.get(2)?, updated_at: r.get(3)? })
            })
            .optional()
        })
        .await
    }

    /// Applies the changes; `None` when the user does not exist (as for any id beyond i64).
    pub async fn update_user(
        &self,
        id: u64,
        name: Option<String>,
        email: Option<String>,
    ) -> Result<Option<User>, DbError> {
        let Ok(id) = i64::try_from(id) else { return Ok(None) };
        self.call(false, move |c| {
            let changed = c.execute(
                "UPDATE users SET name = coalesce(?2, name), email = coalesce(?3, email), updated_at = ?4 WHERE id = ?1",
                params![id, name, email, now_rfc3339()],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            c.query_row("SELECT id, name, email, updated_at FROM users WHERE id = ?1", [id], |r| {
                Ok(User { id: r.get(0)?, name: r.get(1)?, email: r.get(2)?, updated_at: r.get(3)? })
            })
            .optional()
        })
        .await
    }

    /// Posts, newest first; none from an offset beyond SQLite's (i64) range, which no table
    /// reaches.
    pub async fn posts(&self, offset: u64, limit: u64) -> Result<Vec<Post>, DbError> {
        let Ok(offset) = i64::try_from(offset) else { return Ok(Vec::new()) };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(true, move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, title, body, created_at FROM posts ORDER BY id DESC LIMIT ?1 OFFSET ?2")?;
            let rows = stmt.query_map([limit, offset], |r| {
                Ok(Post { id: r.get(0)?, title: r.get(1)?, body: r.get(2)?, created_at: r.get(3)? })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn add_post(&self, title: String, body: String) -> Result<Post, DbError> {
        self.call(false, move |c| {
            let created_at = now_rfc3339();
            c.execute(
                "INSERT INTO posts (title, body, created_at) VALUES (?1, ?2, ?3)",
                params![title, body, created_at],
            )?;
            Ok(Post { id: u64::try_from(c.last_insert_rowid()).unwrap_or(0), title, body, created_at })
        })
        .await
    }
}
