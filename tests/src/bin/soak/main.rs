//! The standing fault soak behind `scripts/soak` (see the README's "Fault soak").
//!
//! Two processes of the example app on one `redis-server` it starts on a free loopback port and
//! one SQLite file: replica A with the process-memory tier (L1), replica B without. Writers and
//! readers work on users, posts and feeds over HTTP while Redis is killed and restarted,
//! paused, flushed, has its internal keys corrupted and its pub/sub clients killed. Every read
//! is checked: after a write returned, no replica may serve the old value past the bound, and
//! nothing may answer a 5xx.
//!
//! Environment: `SOAK_SECS` (300), `SOAK_BOUND_MS` (1000), `SOAK_FAULTS` (`all`, `none`, or a
//! comma-separated list of fault names), `SOAK_FAULT_EVERY_MS` (5000), `SOAK_WRITE_THROUGH`
//! (`both`, `a` or `b`: the replicas writes go through). Exits with 1 when a read was stale
//! beyond the bound or wrong, or a request got a 5xx.
//!
//! `soak --replica` is one replica (the example app, configured by its environment).

mod check;
mod faults;
mod workload;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::test_util::RedisServer;

use faults::{Fault, FaultLog, Injected};
use workload::{Finding, Kind, Shared, REPLICA_NAMES};

/// No faults in the first seconds: both replicas warm up.
const WARM_UP: Duration = Duration::from_secs(2);
/// Findings printed in full, per cause.
const EXAMPLES: usize = 3;

#[derive(Debug)]
struct Settings {
    run_for: Duration,
    bound: Duration,
    faults: Vec<Fault>,
    fault_every: Duration,
    /// Indexes of the replicas writes go through.
    write_through: Vec<usize>,
    /// Checked reads each replica must answer for a run to count (`SOAK_MIN_CHECKED`; default
    /// 20 a second of the run).
    min_checked: u64,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, default: u64| {
            var(name).map_or(Ok(default), |v| v.parse::<u64>().map_err(|_| format!("{name}={v:?} is not a number")))
        };
        let faults = match var("SOAK_FAULTS").as_deref() {
            None | Some("all") => Fault::ALL.to_vec(),
            Some("none") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|name| {
                    Fault::from_name(name.trim()).ok_or_else(|| {
                        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                        format!("SOAK_FAULTS: no fault named {name:?} (all, none, or some of {})", known.join(", "))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let write_through = match var("SOAK_WRITE_THROUGH").as_deref() {
            None | Some("both") => vec![0, 1],
            Some("a") => vec![0],
            Some("b") => vec![1],
            Some(other) => return Err(format!("SOAK_WRITE_THROUGH={other:?}: a, b or both")),
        };
        let secs = number("SOAK_SECS", 300)?;
        Ok(Settings {
            min_checked: number("SOAK_MIN_CHECKED", 20 * secs)?,
            run_for: Duration::from_secs(secs),
            bound: Duration::from_millis(number("SOAK_BOUND_MS", 1000)?),
            faults,
            fault_every: Duration::from_millis(number("SOAK_FAULT_EVERY_MS", 5000)?.max(100)),
            write_through,
        })
    }
}

/// A process of the example app (this binary with `--replica`), killed (by pid) when dropped.
struct Replica {
    child: Child,
    base: String,
}

impl Replica {
    fn start(redis_url: &str, db: &Path, l1: bool) -> Result<Replica, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--replica")
            .env("PORT", "0")
            .env("REDIS_URL", redis_url)
            .env("DATABASE_PATH", db)
            .env("DB_LATENCY_MS", "2")
            .env("CACHE_L1", if l1 { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Ctrl-C reaches the soak only, which then stops the replicas itself.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting a replica: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let read = BufReader::new(stdout).read_line(&mut line);
        let base = line.split_whitespace().nth(2).filter(|_| read.is_ok()).map(str::to_owned);
        let mut replica = Replica { child, base: String::new() };
        replica.base = base.ok_or_else(|| format!("a replica did not start: {line:?}"))?;
        Ok(replica)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fault thread: stopped, joined and its Redis stopped when dropped (also on a panic).
struct FaultThread {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<RedisServer>>,
}

impl FaultThread {
    /// Stops the schedule; the Redis server, running.
    fn finish(mut self) -> Option<RedisServer> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for FaultThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    if std::env::args().nth(1).as_deref() == Some("--replica") {
        return match runtime.block_on(examples::serve_from_env()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("replica: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("soak: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(soak(&settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("soak: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs the soak; `Ok(true)` when it found nothing.
async fn soak(settings: &Settings) -> Result<bool, String> {
    let redis = RedisServer::start().map_err(|e| format!("starting redis-server (is it installed?): {e}"))?;
    let dir = TempDir(std::env::temp_dir().join(format!("cache-toolkit-soak-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;
    let db = dir.0.join("app.sqlite");
    // A first, alone, creates and seeds the database.
    let a = Replica::start(&redis.url(), &db, true)?;
    let b = Replica::start(&redis.url(), &db, false)?;
    let names: Vec<&str> = settings.faults.iter().map(|f| f.name()).collect();
    println!(
        "soak: {} s, bound {} ms, replica {} at {}, replica {} at {}, redis-server at {}, writes through {}, \
         faults every {} ms: {}",
        settings.run_for.as_secs(),
        settings.bound.as_millis(),
        REPLICA_NAMES[0],
        a.base,
        REPLICA_NAMES[1],
        b.base,
        redis.url(),
        settings.write_through.iter().map(|&r| REPLICA_NAMES[r]).collect::<Vec<_>>().join(" and "),
        settings.fault_every.as_millis(),
        if names.is_empty() { "none".to_owned() } else { names.join(", ") },
    );

    let shared =
        Arc::new(Shared::new([a.base.clone(), b.base.clone()], settings.bound, settings.write_through.clone()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workload::USER_WRITERS {
        tasks.push(tokio::spawn(workload::user_writer(shared.clone(), w)));
    }
    tasks.push(tokio::spawn(workload::post_writer(shared.clone())));
    for r in 0..workload::READERS {
        tasks.push(tokio::spawn(workload::reader(shared.clone(), r)));
    }
    let log: FaultLog = Arc::new(Mutex::new(Vec::new()));
    let fault_thread = {
        let (for_thread, log, faults) = (shared.clone(), log.clone(), settings.faults.clone());
        let (first, every) = (started + WARM_UP, settings.fault_every);
        let thread = std::thread::spawn(move || {
            let shared = for_thread;
            if faults.is_empty() {
                while !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return redis;
            }
            faults::run(redis, &faults, first, every, &shared, &log, started)
        });
        FaultThread { shared: shared.clone(), thread: Some(thread) }
    };

    let interrupted = tokio::select! {
        () = tokio::time::sleep(settings.run_for) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let redis = fault_thread.finish();
    for task in tasks {
        task.await.map_err(|e| format!("a workload task failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let clean = report(&shared, &log.lock().unwrap(), settings, started, elapsed, interrupted);
    drop((a, b, redis, dir));
    Ok(clean)
}

/// Prints the counts, the findings by cause, and the final line; whether the run was clean.
fn report(
    shared: &Shared,
    log: &[Injected],
    settings: &Settings,
    started: Instant,
    elapsed: Duration,
    interrupted: bool,
) -> bool {
    let t = &shared.tally;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (requests, writes, stale, wrong, server_errors) =
        (get(&t.requests), get(&t.writes), get(&t.stale_beyond_bound), get(&t.wrong_answers), get(&t.server_errors));
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    for i in log {
        *injected.entry(i.fault).or_default() += 1;
    }
    let injected_list: Vec<String> = injected.iter().map(|(f, n)| format!("{} {n}", f.name())).collect();
    let retired = shared.users.iter().filter(|u| u.retired.load(Ordering::Relaxed)).count();

    println!();
    println!("soak: ran {:.1} s{}", elapsed.as_secs_f64(), if interrupted { " (interrupted by Ctrl-C)" } else { "" });
    println!("requests                  {requests}");
    println!("writes                    {writes}");
    println!("faults injected           {} ({})", log.len(), injected_list.join(", "));
    println!(
        "x-cache of reads          HIT {}, MISS {}, STALE {}, other {}",
        get(&t.x_cache[0]),
        get(&t.x_cache[1]),
        get(&t.x_cache[2]),
        get(&t.x_cache[3])
    );
    println!("slowest request           {} ms", get(&t.slowest_ms));
    println!("requests without answer   {} (connection errors, timeouts; not a finding)", get(&t.failed));
    println!("users no longer checked   {retired} (a write of theirs got no answer and may land late)");
    println!("stale within bound        {} (not a finding)", get(&t.stale_within_bound));
    println!("stale reads beyond bound  {stale}");
    println!("wrong answers             {wrong} (another key's value, an unexpected status or body)");
    println!("5xx                       {server_errors}");

    let findings = t.findings.lock().unwrap();
    if !findings.is_empty() {
        // A finding is put down to the last fault, begun before the read was sent, that touched
        // the key read.
        let mut by_cause: BTreeMap<Option<Fault>, Vec<(&Finding, Option<&Injected>)>> = BTreeMap::new();
        for f in findings.iter() {
            let cause = log.iter().rev().find(|i| i.began <= f.sent && i.touched(f.user));
            by_cause.entry(cause.map(|i| i.fault)).or_default().push((f, cause));
        }
        println!("findings by cause (the last fault before the read that touched the key read):");
        for (cause, list) in &by_cause {
            let count = |kind| list.iter().filter(|(f, _)| f.kind == kind).count();
            let mut reads: BTreeMap<String, usize> = BTreeMap::new();
            for (f, _) in list {
                let via = f.written_via.map_or(String::new(), |v| format!(" (written through {})", REPLICA_NAMES[v]));
                *reads.entry(format!("{} from {}{via}", f.route, REPLICA_NAMES[f.replica])).or_default() += 1;
            }
            let reads: Vec<String> = reads.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let latest = list.iter().filter_map(|(f, i)| Some(f.sent.duration_since(i.as_ref()?.began))).max();
            println!(
                "  {:<14} stale {:>6}  wrong {:>6}  latest {} after it began;  reads: {}",
                cause.map_or("no fault", Fault::name),
                count(Kind::StaleBeyondBound),
                count(Kind::WrongAnswer),
                latest.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis())),
                reads.join(", ")
            );
            for (f, cause) in list.iter().take(EXAMPLES) {
                let after = cause.map_or(String::new(), |i| {
                    format!(" ({} ms after {})", f.sent.duration_since(i.began).as_millis(), i.fault.name())
                });
                println!(
                    "      [{:6.1} s] {} from {}: {}{after}",
                    f.sent.duration_since(started).as_secs_f64(),
                    f.route,
                    REPLICA_NAMES[f.replica],
                    f.detail
                );
            }
        }
    }

    // Not vacuous: each replica answered enough checked reads, and every scheduled fault was
    // injected.
    let checked = [get(&t.checked[0]), get(&t.checked[1])];
    let min_checked = settings.min_checked;
    let not_injected = get(&t.not_injected);
    println!("checked reads             A {}, B {} (at least {min_checked} each)", checked[0], checked[1]);
    println!("faults not injected       {not_injected}");
    let vacuous = checked.iter().any(|&n| n < min_checked) || not_injected > 0;
    if vacuous {
        println!("the run proves nothing: a replica answered too few checked reads, or a fault was not injected");
    }
    let clean = stale == 0 && wrong == 0 && server_errors == 0 && !vacuous;
    println!(
        "SOAK {} secs={} bound_ms={} requests={requests} writes={writes} faults={} stale_beyond_bound={stale} \
         wrong_answers={wrong} 5xx={server_errors} checked_a={} checked_b={} not_injected={not_injected}",
        if clean { "PASS" } else { "FAIL" },
        elapsed.as_secs(),
        settings.bound.as_millis(),
        log.len(),
        checked[0],
        checked[1],
    );
    clean
}
