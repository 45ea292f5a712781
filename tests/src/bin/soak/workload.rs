//! The workload: writers and readers over HTTP on users, posts and feeds, and the tally of
//! what they saw.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::check::{PostHistory, UserHistory, Verdict, Write};

/// Users `1..=USERS_WRITTEN` are written and read (each by one writer).
pub const USERS_WRITTEN: u64 = 48;
pub const USER_WRITERS: u64 = 4;
pub const READERS: u64 = 6;
/// Between two writes of one writer: each user is written about every 2 s.
const USER_WRITE_PAUSE: Duration = Duration::from_millis(150);
const POST_WRITE_PAUSE: Duration = Duration::from_millis(700);
/// Between two reads of one reader.
const READ_PAUSE: Duration = Duration::from_millis(2);
const FEED_READERS: [&str; 3] = ["soak-alice", "soak-bob", "soak-carol"];
pub const REPLICA_NAMES: [&str; 2] = ["A (L1)", "B (no L1)"];

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value older than a write that returned at least the bound before the read was sent.
    StaleBeyondBound,
    /// Not a value of the key read: another key's value, an unexpected status or body.
    WrongAnswer,
}

/// One stale or wrong read.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: Kind,
    pub sent: Instant,
    /// `user`, `posts` or `feed`.
    pub route: &'static str,
    /// The user read (`None`: the posts or a feed).
    pub user: Option<u64>,
    pub replica: usize,
    /// The replica the missed write went through (stale reads).
    pub written_via: Option<usize>,
    pub detail: String,
}

/// Counters (every field counts requests unless said otherwise).
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Writes answered with a 2xx.
    pub writes: AtomicU64,
    /// Requests that got no answer (connection refused or reset, timeout).
    pub failed: AtomicU64,
    pub server_errors: AtomicU64,
    pub stale_within_bound: AtomicU64,
    pub stale_beyond_bound: AtomicU64,
    pub wrong_answers: AtomicU64,
    /// `X-Cache` of the reads: HIT, MISS, STALE, other.
    pub x_cache: [AtomicU64; 4],
    pub slowest_ms: AtomicU64,
    /// Reads whose answer was checked against the history, per replica (A, B).
    pub checked: [AtomicU64; 2],
    /// Scheduled faults that could not be injected.
    pub not_injected: AtomicU64,
    pub findings: Mutex<Vec<Finding>>,
}

/// What the tasks share.
#[derive(Debug)]
pub struct Shared {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:<port>` of replica A, then B.
    pub bases: [String; 2],
    pub bound: Duration,
    /// The replicas writes go through (in turn).
    pub write_through: Vec<usize>,
    pub stop: AtomicBool,
    pub tally: Tally,
    /// Index `id - 1`.
    pub users: Vec<UserKey>,
    pub posts: PostHistory,
}

#[derive(Debug, Default)]
pub struct UserKey {
    pub history: UserHistory,
    /// A write of it got no answer and may still land after a later one: no longer written or
    /// checked.
    pub retired: AtomicBool,
}

/// An answer below 500.
struct Answer {
    status: reqwest::StatusCode,
    body: Vec<u8>,
}

/// A request that got no answer below 500 (each counted).
enum Failure {
    /// Connection refused or reset, or a timeout: the request may still be served later.
    NoAnswer,
    ServerError,
}

impl Shared {
    pub fn new(bases: [String; 2], bound: Duration, write_through: Vec<usize>) -> Shared {
        Shared {
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client"),
            bases,
            bound,
            write_through,
            stop: AtomicBool::new(false),
            tally: Tally::default(),
            users: (0..USERS_WRITTEN).map(|_| UserKey::default()).collect(),
            posts: PostHistory::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends a request and counts what came back; `read`: count its `X-Cache` too.
    async fn call(&self, request: reqwest::RequestBuilder, read: bool) -> Result<Answer, Failure> {
        let t = &self.tally;
        t.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let x_cache = response.headers().get("x-cache").map(|v| v.as_bytes().to_vec());
            Ok::<_, reqwest::Error>((status, x_cache, response.bytes().await?.to_vec()))
        }
        .await;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        t.slowest_ms.fetch_max(ms, Ordering::Relaxed);
        match result {
            Err(_) => {
                t.failed.fetch_add(1, Ordering::Relaxed);
                Err(Failure::NoAnswer)
            }
            Ok((status, ..)) if status.is_server_error() => {
                t.server_errors.fetch_add(1, Ordering::Relaxed);
                Err(Failure::ServerError)
            }
            Ok((status, x_cache, body)) => {
                if read {
                    let i = match x_cache.as_deref() {
                        Some(b"HIT") => 0,
                        Some(b"MISS") => 1,
                        Some(b"STALE") => 2,
                        _ => 3,
                    };
                    t.x_cache[i].fetch_add(1, Ordering::Relaxed);
                }
                Ok(Answer { status, body })
            }
        }
    }

    fn found(&self, finding: Finding) {
        let counter = match finding.kind {
            Kind::StaleBeyondBound => &self.tally.stale_beyond_bound,
            Kind::WrongAnswer => &self.tally.wrong_answers,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.tally.findings.lock().unwrap().push(finding);
    }

    fn judge(&self, verdict: Verdict, sent: Instant, read: Read, what: impl FnOnce() -> String) {
        self.tally.checked[read.replica].fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Fresh => {}
            Verdict::StaleWithinBound => {
                self.tally.stale_within_bound.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::StaleBeyondBound { missed } => {
                let behind = sent.saturating_duration_since(missed.returned);
                self.found(Finding {
                    kind: Kind::StaleBeyondBound,
                    sent,
                    route: read.route,
                    user: read.user,
                    replica: read.replica,
                    written_via: Some(missed.via),
                    detail: format!(
                        "{}, missing {} (returned {} ms before the read was sent, written through {})",
                        what(),
                        missed.value,
                        behind.as_millis(),
                        REPLICA_NAMES[missed.via]
                    ),
                });
            }
        }
    }

    fn wrong(&self, sent: Instant, read: Read, detail: String) {
        let Read { route, user, replica } = read;
        self.found(Finding { kind: Kind::WrongAnswer, sent, route, user, replica, written_via: None, detail });
    }
}

/// What was read, and from which replica.
#[derive(Debug, Clone, Copy)]
struct Read {
    route: &'static str,
    user: Option<u64>,
    replica: usize,
}

/// A small xorshift generator: the workload needs variety, not quality.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(stream: u64) -> Rng {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Rng((nanos as u64 ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Writes the users `id` with `id % USER_WRITERS == writer`, in turn, each through A and B
/// alternately, each write with a larger number in the name (`soak u<id> n<number>`).
pub async fn user_writer(s: Arc<Shared>, writer: u64) {
    let ids: Vec<u64> = (1..=USERS_WRITTEN).filter(|id| id % USER_WRITERS == writer).collect();
    let mut number = 0;
    for round in 0.. {
        if s.stopped() {
            break;
        }
        for &id in &ids {
            let key = &s.users[(id - 1) as usize];
            if s.stopped() {
                break;
            }
            if key.retired.load(Ordering::Relaxed) {
                continue;
            }
            number += 1;
            let via = s.write_through[((round + id) % s.write_through.len() as u64) as usize];
            let put = s
                .client
                .put(format!("{}/users/{id}", s.bases[via]))
                .json(&json!({ "name": format!("soak u{id} n{number}") }));
            match s.call(put, false).await {
                Ok(answer) if answer.status.is_success() => {
                    s.tally.writes.fetch_add(1, Ordering::Relaxed);
                    key.history.record(Write { value: number, returned: Instant::now(), via });
                }
                Ok(answer) => {
                    let read = Read { route: "user", user: Some(id), replica: via };
                    s.wrong(Instant::now(), read, format!("PUT /users/{id} answered {}", answer.status));
                }
                // A 5xx is over; a request without an answer may still land after a later one.
                Err(Failure::ServerError) => {}
                Err(Failure::NoAnswer) => key.retired.store(true, Ordering::Relaxed),
            }
            tokio::time::sleep(USER_WRITE_PAUSE).await;
        }
    }
}

/// Creates posts through A and B alternately.
pub async fn post_writer(s: Arc<Shared>) {
    let mut number = 0u64;
    while !s.stopped() {
        number += 1;
        let via = s.write_through[(number % s.write_through.len() as u64) as usize];
        let post = s
            .client
            .post(format!("{}/posts", s.bases[via]))
            .json(&json!({ "title": format!("soak post {number}"), "body": "written by scripts/soak" }));
        if let Ok(answer) = s.call(post, false).await {
            let id = serde_json::from_slice::<Value>(&answer.body).ok().and_then(|p| p["id"].as_u64());
            match (answer.status.as_u16(), id) {
                (201, Some(id)) => {
                    s.tally.writes.fetch_add(1, Ordering::Relaxed);
                    s.posts.record(Write { value: id, returned: Instant::now(), via });
                }
                (status, _) => {
                    let read = Read { route: "posts", user: None, replica: via };
                    s.wrong(Instant::now(), read, format!("POST /posts answered {status}"));
                }
            }
        }
        tokio::time::sleep(POST_WRITE_PAUSE).await;
    }
}

/// Reads users (70 %), feeds (20 %) and the list of posts (10 %) from either replica, and
/// checks every answer.
pub async fn reader(s: Arc<Shared>, reader: u64) {
    let mut rng = Rng::new(reader);
    while !s.stopped() {
        let replica = rng.below(2) as usize;
        match rng.below(10) {
            0..=6 => read_user(&s, replica, 1 + rng.below(USERS_WRITTEN)).await,
            7 | 8 => {
                let who = FEED_READERS[rng.below(FEED_READERS.len() as u64) as usize];
                read_feed(&s, replica, who, 1 + rng.below(2)).await;
            }
            _ => read_posts(&s, replica).await,
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
}

/// The write number in a user's name: 0 for the seeded `User <id>`.
fn write_number(id: u64, name: &str) -> Option<u64> {
    if name == format!("User {id}") {
        return Some(0);
    }
    name.strip_prefix(&format!("soak u{id} n"))?.parse().ok()
}

async fn read_user(s: &Shared, replica: usize, id: u64) {
    let read = Read { route: "user", user: Some(id), replica };
    let sent = Instant::now();
    let Ok(answer) = s.call(s.client.get(format!("{}/users/{id}", s.bases[replica])), true).await else {
        return;
    };
    let user = serde_json::from_slice::<Value>(&answer.body).unwrap_or(Value::Null);
    let name = user["name"].as_str().unwrap_or_default();
    let number = write_number(id, name).filter(|_| answer.status == 200 && user["id"] == id);
    let Some(number) = number else {
        let body = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]).into_owned();
        return s.wrong(sent, read, format!("GET /users/{id} answered {} {body}", answer.status));
    };
    let key = &s.users[(id - 1) as usize];
    if !key.retired.load(Ordering::Relaxed) {
        let verdict = key.history.check(number, sent, s.bound);
        s.judge(verdict, sent, read, || format!("GET /users/{id} served write {number}"));
    }
}

async fn read_posts(s: &Shared, replica: usize) {
    let read = Read { route: "posts", user: None, replica };
    let sent = Instant::now();
    let Ok(answer) = s.call(s.client.get(format!("{}/posts", s.bases[replica])), true).await else {
        return;
    };
    match serde_json::from_slice::<Value>(&answer.body).ok().and_then(|v| first_id(&v)) {
        Some(first) if answer.status == 200 => {
            let verdict = s.posts.check(first, 1, sent, s.bound);
            s.judge(verdict, sent, read, || format!("GET /posts served newest post {first}"));
        }
        _ => s.wrong(sent, read, format!("GET /posts answered {}", answer.status)),
    }
}

async fn read_feed(s: &Shared, replica: usize, who: &str, page: u64) {
    let read = Read { route: "feed", user: None, replica };
    let sent = Instant::now();
    let get = s.client.get(format!("{}/feed?page={page}", s.bases[replica])).bearer_auth(who);
    let Ok(answer) = s.call(get, true).await else {
        return;
    };
    let feed = serde_json::from_slice::<Value>(&answer.body).unwrap_or(Value::Null);
    match first_id(&feed["posts"]) {
        Some(first) if answer.status == 200 && feed["user"]["name"] == who && feed["page"] == page => {
            let verdict = s.posts.check(first, 10 * (page - 1) + 1, sent, s.bound);
            s.judge(verdict, sent, read, || format!("GET /feed?page={page} ({who}) began with post {first}"));
        }
        _ => {
            let body = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]).into_owned();
            s.wrong(sent, read, format!("GET /feed?page={page} ({who}) answered {} {body}", answer.status));
        }
    }
}

/// The id of the first post of a JSON list of posts (0 for an empty list).
fn first_id(posts: &Value) -> Option<u64> {
    match posts.as_array()?.first() {
        Some(post) => post["id"].as_u64(),
        None => Some(0),
    }
}
