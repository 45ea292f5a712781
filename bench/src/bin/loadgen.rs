//! A closed-loop HTTP/1.1 load generator for loopback benchmarks (what `wrk -c N -d S` does):
//! `loadgen <url> [connections] [seconds] [threads] [warm-up seconds]`. Each connection sends one keep-alive
//! `GET` at a time and reads the whole response (by `Content-Length`) before the next.
//! Prints one line: `requests_per_sec=<n> requests=<n> non_200=<n> errors=<n> p50_us=<n> p99_us=<n>`.
//! A warm-up (default 1 s) precedes the measured window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    non_200: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: loadgen <http://host:port/path> [connections] [seconds] [threads]");
    let connections: usize = args.get(2).map_or(32, |s| s.parse().expect("connections"));
    let seconds: u64 = args.get(3).map_or(5, |s| s.parse().expect("seconds"));
    let threads: usize = args.get(4).map_or(1, |s| s.parse().expect("threads"));
    let warm_up: f64 = args.get(5).map_or(1.0, |s| s.parse().expect("warm-up seconds"));
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: loadgen\r\nAccept: */*\r\n\r\n");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    rt.block_on(async move {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let (authority, request) = (authority.to_owned(), request.clone());
                let (measuring, stop, counts, latencies) =
                    (measuring.clone(), stop.clone(), counts.clone(), latencies.clone());
                tokio::spawn(async move {
                    let mut local = Vec::with_capacity(1 << 16);
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut conn) = TcpStream::connect(&authority).await else {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let _ = conn.set_nodelay(true);
                        let mut buf = Vec::with_capacity(4096);
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            let status = match exchange(&mut conn, request.as_bytes(), &mut buf).await {
                                Ok(status) => status,
                                Err(_) => {
                                    counts.errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            };
                            if measuring.load(Ordering::Relaxed) {
                                if status == 200 {
                                    counts.ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    counts.non_200.fetch_add(1, Ordering::Relaxed);
                                }
                                local.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                            }
                        }
                    }
                    latencies.lock().unwrap().extend(local);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs_f64(warm_up)).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let ok = counts.ok.load(Ordering::Relaxed);
        let non_200 = counts.non_200.load(Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
        lat.sort_unstable();
        let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
        println!(
            "requests_per_sec={:.0} requests={} non_200={} errors={} p50_us={} p99_us={}",
            (ok + non_200) as f64 / elapsed,
            ok + non_200,
            non_200,
            counts.errors.load(Ordering::Relaxed),
            pct(0.5),
            pct(0.99)
        );
    });
}

/// Writes one request and reads one response; returns its status code.
async fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    conn.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let (head_end, body_len) = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| std::io::ErrorKind::InvalidData)?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or(std::io::ErrorKind::InvalidData)?;
            break (end + 4, len);
        }
    };
    while buf.len() < head_end + body_len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = buf.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(status)
}
