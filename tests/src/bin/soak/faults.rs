//! The fault schedule: what is done to the Redis both replicas share, in turn, every few
//! seconds. Runs on a thread of its own (every step blocks).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;

use crate::workload::{Rng, Shared, USERS_WRITTEN};

/// The example app's key prefix (`examples/src/app.rs`).
const PREFIX: &str = "axum-app";
const DOWN_FOR: Duration = Duration::from_secs(1);
const PAUSED_FOR: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// `CLIENT KILL TYPE pubsub`: every replica's invalidation channel is cut.
    KillPubsub,
    /// SIGSTOP for 3 s, then SIGCONT.
    Pause,
    /// Garbage strings under an entry, two generations, the `posts` tag's version and the
    /// `feed` namespace's version.
    CorruptString,
    /// One user's entry copied under other users' keys.
    CopyEntry,
    /// The same keys as `CorruptString` replaced by lists and hashes.
    CorruptType,
    Flushall,
    /// SIGKILL, 1 s down, started again on the same port (empty).
    KillRestart,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillPubsub,
        Fault::Pause,
        Fault::CorruptString,
        Fault::CopyEntry,
        Fault::CorruptType,
        Fault::Flushall,
        Fault::KillRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillPubsub => "kill-pubsub",
            Fault::Pause => "pause",
            Fault::CorruptString => "corrupt-string",
            Fault::CopyEntry => "copy-entry",
            Fault::CorruptType => "corrupt-type",
            Fault::Flushall => "flushall",
            Fault::KillRestart => "kill-restart",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The stored keys the faults touch (the layout of `cache-runtime/src/store/` and `key.rs`):
/// `GET /users/{id}`'s response, a representation of the key `user:{id}` (`…}:h`).
fn user_entry(id: u64) -> String {
    format!("{PREFIX}:{{default:user:{id}}}:h")
}

/// The key `user:{id}`'s implicit tag, which every response of the key records and a write of
/// the user bumps.
fn user_key_tag(id: u64) -> String {
    version(&format!("%%k:default:user:{id}"))
}

fn generation(entry: &str) -> String {
    format!("{entry}:g")
}

fn version(tag: &str) -> String {
    format!("{PREFIX}:t:{{{tag}}}")
}

/// One fault injected.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub began: Instant,
    /// The users whose keys it touched; `None`: every key.
    pub users: Option<Vec<u64>>,
    /// Whether it touched the list of posts and the feeds.
    pub lists: bool,
}

impl Injected {
    /// Whether it may explain a finding on `user` (`None`: the posts or a feed).
    pub fn touched(&self, user: Option<u64>) -> bool {
        match (&self.users, user) {
            (None, _) => true,
            (Some(users), Some(user)) => users.contains(&user),
            (Some(_), None) => self.lists,
        }
    }
}

/// The faults injected so far, in order.
pub type FaultLog = Arc<Mutex<Vec<Injected>>>;

/// Injects `faults` in turn, the first at `first`, then every `every`, until the workload
/// stops; gives the server back (running) at the end.
pub fn run(
    mut redis: RedisServer,
    faults: &[Fault],
    first: Instant,
    every: Duration,
    shared: &Shared,
    log: &FaultLog,
    started: Instant,
) -> RedisServer {
    let mut rng = Rng::new(u64::MAX);
    let mut next = first;
    for fault in faults.iter().copied().cycle() {
        if !sleep_until(next, shared) {
            break;
        }
        let began = Instant::now();
        let result = inject(&mut redis, fault, &mut rng, shared);
        let t = &shared.tally;
        let outcome = match result {
            Ok((what, users, lists)) => {
                log.lock().unwrap().push(Injected { fault, began, users, lists });
                what
            }
            Err(err) => {
                t.not_injected.fetch_add(1, Ordering::Relaxed);
                format!("NOT INJECTED: {err}")
            }
        };
        println!(
            "[{:6.1} s] {:<14} {outcome} (so far: {} requests, {} stale beyond bound, {} wrong answers, {} 5xx)",
            began.duration_since(started).as_secs_f64(),
            fault.name(),
            t.requests.load(Ordering::Relaxed),
            t.stale_beyond_bound.load(Ordering::Relaxed),
            t.wrong_answers.load(Ordering::Relaxed),
            t.server_errors.load(Ordering::Relaxed),
        );
        next += every;
    }
    // Whatever happened, the server is left running and answering.
    let _ = redis.signal("CONT");
    if redis.pid().is_none() {
        let _ = redis.restart();
    }
    redis
}

/// Sleeps until `t`, or until the workload stops (then `false`).
fn sleep_until(t: Instant, shared: &Shared) -> bool {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(50)));
    }
}

/// What a fault did, the users whose keys it touched (`None`: all) and whether it touched the
/// posts and feeds.
type Done = (String, Option<Vec<u64>>, bool);

/// Does `fault`.
fn inject(redis: &mut RedisServer, fault: Fault, rng: &mut Rng, shared: &Shared) -> Result<Done, String> {
    let users = pick_users(rng, 3);
    let everything = |what: String| Ok((what, None, true));
    match fault {
        Fault::KillRestart => {
            redis.kill();
            std::thread::sleep(DOWN_FOR);
            redis.restart().map_err(|e| format!("restart failed: {e}"))?;
            everything(format!("killed, restarted after {} ms", DOWN_FOR.as_millis()))
        }
        Fault::Pause => {
            redis.signal("STOP").map_err(|e| e.to_string())?;
            let until = Instant::now() + PAUSED_FOR;
            // Resumed early if the workload stops meanwhile.
            sleep_until(until, shared);
            redis.signal("CONT").map_err(|e| e.to_string())?;
            everything(format!("paused for {} ms", PAUSED_FOR.as_millis()))
        }
        Fault::Flushall => {
            query(&mut connect(redis)?, &redis::cmd("FLUSHALL"))?;
            everything("FLUSHALL".to_owned())
        }
        Fault::KillPubsub => {
            let killed = query(&mut connect(redis)?, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))?;
            everything(format!("CLIENT KILL TYPE pubsub: {killed:?} clients"))
        }
        Fault::CorruptString => {
            let mut conn = connect(redis)?;
            let keys = corrupted_keys(&users);
            for key in &keys {
                query(&mut conn, redis::cmd("SET").arg(key).arg("garbage \u{0}\u{ff} not ours"))?;
            }
            Ok((format!("garbage strings under {}", keys.join(" ")), Some(users), true))
        }
        Fault::CorruptType => {
            let mut conn = connect(redis)?;
            let keys = corrupted_keys(&users);
            for (i, key) in keys.iter().enumerate() {
                // In one transaction: the replicas write these keys all the time.
                let mut pipe = redis::pipe();
                pipe.atomic().cmd("DEL").arg(key);
                if i % 2 == 0 {
                    pipe.cmd("LPUSH").arg(key).arg("garbage");
                } else {
                    pipe.cmd("HSET").arg(key).arg("garbage").arg("1");
                }
                pipe.query::<redis::Value>(&mut conn).map_err(|e| e.to_string())?;
            }
            Ok((format!("lists and hashes under {}", keys.join(" ")), Some(users), true))
        }
        Fault::CopyEntry => {
            let mut conn = connect(redis)?;
            let (mut copied, mut to_users) = (Vec::new(), Vec::new());
            // Up to 3 copies, from an entry that exists to another user's key.
            for _ in 0..20 {
                let [from, to] = pick_users(rng, 2)[..] else { unreachable!() };
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(user_entry(from)).query(&mut conn).ok().flatten();
                let Some(value) = value else { continue };
                let ttl: i64 = redis::cmd("PTTL").arg(user_entry(from)).query(&mut conn).unwrap_or(-1);
                let ttl = if ttl > 0 { ttl } else { 60_000 };
                query(&mut conn, redis::cmd("SET").arg(user_entry(to)).arg(value).arg("PX").arg(ttl))?;
                copied.push(format!("user {from} -> user {to}"));
                to_users.push(to);
                if copied.len() == 3 {
                    break;
                }
            }
            if copied.is_empty() {
                return Err("no user entry in Redis to copy".to_owned());
            }
            Ok((format!("entries copied: {}", copied.join(", ")), Some(to_users), false))
        }
    }
}

/// An entry, two generations, a key's implicit tag, the `posts` tag's version, the `feed`
/// namespace's version and the generation counter.
fn corrupted_keys(users: &[u64]) -> Vec<String> {
    vec![
        user_entry(users[0]),
        generation(&user_entry(users[1])),
        generation(&user_entry(users[2])),
        user_key_tag(users[1]),
        version("posts"),
        version("%%ns:feed"),
        // The lease counter every user's fills are checked against: damaged, no user's read
        // may turn stale (it is not among the users the fault touched).
        format!("{PREFIX}:generations"),
    ]
}

/// `n` distinct users among those the workload writes.
fn pick_users(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut users = Vec::with_capacity(n);
    while users.len() < n {
        let id = 1 + rng.below(USERS_WRITTEN);
        if !users.contains(&id) {
            users.push(id);
        }
    }
    users
}

fn connect(redis: &RedisServer) -> Result<redis::Connection, String> {
    let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(1)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    Ok(conn)
}

fn query(conn: &mut redis::Connection, cmd: &redis::Cmd) -> Result<redis::Value, String> {
    cmd.query(conn).map_err(|e| e.to_string())
}
