//! Routes of the example application (the route contract is documented in the README).

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_runtime::{cached, invalidates, Cache};
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt as _};
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, Post, User, USERS};

/// Settings read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    /// Unset: the in-memory cache. Set: Redis.
    pub redis_url: Option<String>,
    /// Unset: SQLite in memory.
    pub database_path: Option<PathBuf>,
    pub db_latency: Duration,
    /// With Redis: the process-memory tier in front of it (`CACHE_L1`, default on; `0` = off).
    pub l1: bool,
    /// How long a client may take to send a request's headers (`HEADER_READ_TIMEOUT_MS`, 10 s).
    pub header_read_timeout: Duration,
    /// `ADMIN_TOKEN`: set, the cache's admin surface is served at `/admin` behind it.
    pub admin_token: Option<String>,
    /// The CDN in front of the app, purged on every invalidation (unset: none).
    pub cdn: Option<Cdn>,
}

/// A CDN whose cache the app purges: `FASTLY_SERVICE_ID` + `FASTLY_API_TOKEN`, or
/// `CLOUDFLARE_ZONE_ID` + `CLOUDFLARE_API_TOKEN`; `FASTLY_API_URL` / `CLOUDFLARE_API_URL` point
/// either at another API address.
#[derive(Debug, Clone)]
pub enum Cdn {
    Fastly { service_id: String, api_token: String, api_url: Option<String> },
    Cloudflare { zone_id: String, api_token: String, api_url: Option<String> },
}

impl Cdn {
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Cdn>, String> {
        let pair = |id: &str, token: &str| match (var(id), var(token)) {
            (Some(id), Some(token)) => Ok(Some((id, token))),
            (None, None) => Ok(None),
            _ => Err(format!("set both {id} and {token}, or neither")),
        };
        match (pair("FASTLY_SERVICE_ID", "FASTLY_API_TOKEN")?, pair("CLOUDFLARE_ZONE_ID", "CLOUDFLARE_API_TOKEN")?) {
            (Some(_), Some(_)) => Err("configure one CDN: Fastly or Cloudflare, not both".to_owned()),
            (Some((service_id, api_token)), None) => {
                Ok(Some(Cdn::Fastly { service_id, api_token, api_url: var("FASTLY_API_URL") }))
            }
            (None, Some((zone_id, api_token))) => {
                Ok(Some(Cdn::Cloudflare { zone_id, api_token, api_url: var("CLOUDFLARE_API_URL") }))
            }
            (None, None) => Ok(None),
        }
    }

    /// `builder` with this CDN's purger.
    fn install(&self, builder: cache_runtime::CacheBuilder) -> cache_runtime::CacheBuilder {
        use cache_runtime::cdn::{Cloudflare, Fastly};
        match self.clone() {
            Cdn::Fastly { service_id, api_token, api_url } => {
                let fastly = Fastly::new(service_id, api_token);
                builder.purger(match api_url {
                    Some(url) => fastly.base_url(url),
                    None => fastly,
                })
            }
            Cdn::Cloudflare { zone_id, api_token, api_url } => {
                let cloudflare = Cloudflare::new(zone_id, api_token);
                builder.purger(match api_url {
                    Some(url) => cloudflare.base_url(url),
                    None => cloudflare,
                })
            }
        }
    }
}

impl Config {
    /// In memory, no added database latency, any free port, no admin surface, no CDN: what the
    /// tests start from (`Config { redis_url: …, ..Config::local() }`).
    pub fn local() -> Config {
        Config {
            port: 0,
            redis_url: None,
            database_path: None,
            db_latency: Duration::ZERO,
            l1: true,
            header_read_timeout: Duration::from_secs(10),
            admin_token: None,
            cdn: None,
        }
    }

    /// `PORT` (3000), `REDIS_URL`, `DATABASE_PATH`, `DB_LATENCY_MS` (5), `CACHE_L1` (1),
    /// `HEADER_READ_TIMEOUT_MS` (10000), `ADMIN_TOKEN` (unset: no `/admin`), a CDN to purge
    /// (see [`Cdn`]).
    pub fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port =
            var("PORT").map_or(Ok(3000), |v| v.parse().map_err(|_| format!("PORT={v:?} is not a port number")))?;
        let latency_ms: u64 = var("DB_LATENCY_MS")
            .map_or(Ok(5), |v| v.parse().map_err(|_| format!("DB_LATENCY_MS={v:?} is not a number of milliseconds")))?;
        let header_read_timeout_ms: u64 = var("HEADER_READ_TIMEOUT_MS").map_or(Ok(10_000), |v| {
            v.parse()
                .ok()
                .filter(|&ms| ms > 0)
                .ok_or_else(|| format!("HEADER_READ_TIMEOUT_MS={v:?} is not a number of milliseconds above 0"))
        })?;
        Ok(Config {
            port,
            redis_url: var("REDIS_URL"),
            database_path: var("DATABASE_PATH").map(PathBuf::from),
            db_latency: Duration::from_millis(latency_ms),
            l1: var("CACHE_L1").is_none_or(|v| v != "0" && v != "false"),
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            admin_token: var("ADMIN_TOKEN"),
            cdn: Cdn::from_env(var)?,
        })
    }
}

/// Shared state: the database and the cache.
#[derive(Clone, Debug)]
pub struct App {
    pub db: Db,
    pub cache: Cache,
}

impl App {
    pub fn new(config: &Config) -> Result<App, Box<dyn std::error::Error + Send + Sync>> {
        let db = Db::open(config.database_path.as_deref(), config.db_latency)?;
        let mut builder = Cache::builder().prefix("axum-app");
        if let Some(url) = &config.redis_url {
            builder = builder.redis(url).l1(config.l1);
        }
        if let Some(cdn) = &config.cdn {
            builder = cdn.install(builder);
        }
        let cache = builder.build()?;
        Ok(App { db, cache })
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/users/{id}", get(get_user).put(update_user))
        .route("/posts", get(list_posts).post(create_post))
        .route("/feed", get(feed))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Errors answered as JSON with a status.
#[derive(Debug)]
pub enum AppError {
    NotFound,
    BadRequest(&'static str),
    Db(DbError),
}

impl From<DbError> for AppError {
    fn from(err: DbError) -> Self {
        AppError::Db(err)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            AppError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.to_owned()),
            AppError::Db(err) => {
                tracing::error!(%err, "database call failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

async fn index() -> &'static str {
    "routes: GET /users/{id} (1..=1000), PUT /users/{id}, GET /posts, POST /posts, GET /feed?page=N (Authorization: Bearer <name>), GET /metrics\n"
}

/// `GET /users/{id}`: private, 60 s, `Last-Modified` from `updated_at`. Any u64 is an id (404
/// unless the user exists); anything else is a 400 from the `Path` extractor.
#[cached(expire = 60, key = "user:<id>", last_modified = "updated_at", cache = app.cache)]
async fn get_user(Path(id): Path<u64>, State(app): State<App>) -> Result<Json<User>, AppError> {
    app.db.user(id).await?.map(Json).ok_or(AppError::NotFound)
}

#[derive(Debug, Deserialize)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// `PUT /users/{id}`: writes, then (on success) drops the cached user on every replica; 404
/// for an id (any u64) that names no user, as `GET` answers.
#[invalidates(key = "user:<id>", cache = app.cache)]
async fn update_user(
    Path(id): Path<u64>,
    State(app): State<App>,
    Json(patch): Json<UserPatch>,
) -> Result<Json<User>, AppError> {
    if patch.name.is_none() && patch.email.is_none() {
        return Err(AppError::BadRequest("nothing to update: send `name` and/or `email`"));
    }
    let user = app.db.update_user(id, patch.name, patch.email).await?.ok_or(AppError::NotFound)?;
    Ok(Json(user))
}

/// `GET /posts`: public, for browsers 60 s, shared caches 120 s, CDNs 600 s; tagged `posts`
/// (for the CDN too: `Surrogate-Key: posts ns:default`, purged by `POST /posts`);
/// for 60 s after expiry the old list is served while one background refresh replaces it; a
/// cold list is computed by one replica while the others wait for it (`lock`).
#[cached(
    expire = 60,
    stale = 60,
    lock,
    key = "posts",
    tags = ["posts"],
    public,
    s_maxage = 120,
    cdn_max_age = 600,
    cdn_tags,
    cache = app.cache
)]
async fn list_posts(State(app): State<App>) -> Result<Json<Vec<Post>>, AppError> {
    Ok(Json(app.db.posts(0, 100).await?))
}

#[derive(Debug, Deserialize)]
pub struct NewPost {
    pub title: String,
    pub body: String,
}

/// `POST /posts`: adds a post, then drops everything tagged `posts` (the list and every feed),
/// on every replica and, with a CDN configured, at the CDN.
#[invalidates(tags = ["posts"], cache = app.cache)]
async fn create_post(State(app): State<App>, Json(post): Json<NewPost>) -> Result<(StatusCode, Json<Post>), AppError> {
    if post.title.trim().is_empty() {
        return Err(AppError::BadRequest("`title` must not be empty"));
    }
    let post = app.db.add_post(post.title, post.body).await?;
    Ok((StatusCode::CREATED, Json(post)))
}

/// The caller, from `Authorization: Bearer <name>`: every name is a user of its own.
#[derive(Debug, Clone, Serialize)]
pub struct AuthUser {
    pub id: u64,
    pub name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.typed_try_get::<Authorization<Bearer>>() {
            Ok(Some(auth)) if !auth.token().is_empty() => {
                let name = auth.token().to_owned();
                // A stable id per name, above the seeded users (FNV-1a).
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for b in name.bytes() {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                Ok(AuthUser { id: USERS + 1 + hash % 1_000_000_000, name })
            }
            _ => Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": "send `Authorization: Bearer <name>`" })),
            )
                .into_response()),
        }
    }
}

fn first_page() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    #[serde(default = "first_page")]
    pub page: u64,
}

#[derive(Debug, Serialize)]
pub struct Feed {
    pub user: AuthUser,
    pub page: u64,
    pub posts: Vec<Post>,
}

/// `GET /feed?page=N`: per user (key and `Vary: Authorization`), private. Pages are the u64s
/// from 1; every page past the last post is empty, however far (400 for 0 or a non-u64).
#[cached(
    expire = 30,
    key = "feed:<user.id>:<page>",
    namespace = "feed",
    tags = ["posts"],
    vary = ["authorization"],
    cache = app.cache
)]
async fn feed(
    user: AuthUser,
    Query(FeedQuery { page }): Query<FeedQuery>,
    State(app): State<App>,
) -> Result<Json<Feed>, AppError> {
    if page == 0 {
        return Err(AppError::BadRequest("pages start at 1"));
    }
    // Past `u64::MAX` posts, where the offset overflows, there is no post either.
    let posts = match (page - 1).checked_mul(10) {
        Some(offset) => app.db.posts(offset, 10).await?,
        None => Vec::new(),
    };
    Ok(Json(Feed { user, page, posts }))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let s = app.cache.stats();
    let mut out = String::new();
    for (name, help, value) in [
        ("cache_hits_total", "Reads answered from the cache.", s.hits),
        ("cache_misses_total", "Reads that ran the handler.", s.misses),
        ("cache_stale_total", "Reads answered with a stale entry.", s.stale),
        ("cache_errors_total", "Cache store operations that failed (the request went on without the cache).", s.errors),
        ("db_queries_total", "Reads that reached the database.", app.db.reads()),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
    }
    // Per cached handler (and fn): the same, labelled by its name.
    let functions = cache_runtime::function_stats();
    for (name, help, value) in [
        (
            "cache_function_hits_total",
            "Reads of one handler answered from the cache.",
            (|f: &cache_runtime::FunctionStats| f.hits) as fn(&cache_runtime::FunctionStats) -> u64,
        ),
        ("cache_function_misses_total", "Reads of one handler that ran it.", |f| f.misses),
        ("cache_function_stale_total", "Reads of one handler answered with a stale entry.", |f| f.stale),
        (
            "cache_function_collapsed_total",
            "Reads of one handler answered with what a concurrent read computed.",
            |f| f.collapsed,
        ),
        ("cache_function_stored_bytes_total", "Bytes one handler's responses stored.", |f| f.bytes_stored),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for f in &functions {
            out.push_str(&format!("{name}{{function=\"{}\"}} {}\n", f.name, value(f)));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
