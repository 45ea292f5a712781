//! The example app's answer to every id and page its routes accept, and its bound on how long a
//! connection may take to send its request headers: over HTTP on TCP, against a process of the
//! app (in-memory cache, SQLite in memory).

mod support;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use examples::db::{POSTS, USERS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::Replica;

/// What a request answered: status, `X-Cache`, body.
struct Answer {
    status: u16,
    x_cache: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// The answer, or why there was none (the connection closed, say).
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let r = request.send().await.map_err(|e| format!("no answer: {e:?}"))?;
    let status = r.status().as_u16();
    let x_cache = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.map_err(|e| format!("no body: {e:?}"))?;
    Ok(Answer { status, x_cache, body })
}

async fn get_user(c: &reqwest::Client, base: &str, id: &str) -> Result<Answer, String> {
    send(c.get(format!("{base}/users/{id}"))).await
}

async fn put_user(c: &reqwest::Client, base: &str, id: &str) -> Result<Answer, String> {
    send(c.put(format!("{base}/users/{id}")).json(&json!({ "email": "new@example.com" }))).await
}

async fn get_feed(c: &reqwest::Client, base: &str, page: &str) -> Result<Answer, String> {
    send(c.get(format!("{base}/feed?page={page}")).bearer_auth("carol")).await
}

/// The ids of the seeded posts on `page` (newest first, 10 a page).
fn posts_on(page: u64) -> Vec<u64> {
    let skip = (page - 1).saturating_mul(10);
    (1..=POSTS).rev().skip(usize::try_from(skip).unwrap_or(usize::MAX)).take(10).collect()
}

fn post_ids(feed: &Value) -> Vec<u64> {
    feed["posts"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn the_reported_urls_answer_404_or_the_right_empty_page() {
    let app = Replica::start_in_memory(&[]);
    let c = reqwest::Client::new();

    for id in ["9223372036854775808", "18446744073709551615"] {
        for round in ["first", "second"] {
            let r = get_user(&c, &app.base, id).await.unwrap();
            assert_eq!(r.status, 404, "{round} GET /users/{id}: {}", r.body);
            assert_ne!(r.x_cache.as_deref(), Some("HIT"), "a 404 is not stored");
        }
    }
    let r = put_user(&c, &app.base, "9223372036854775808").await.unwrap();
    assert_eq!(r.status, 404, "PUT /users/9223372036854775808: {}", r.body);

    let first = get_feed(&c, &app.base, "1").await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(post_ids(&first.json()), posts_on(1));
    assert!(!posts_on(1).is_empty());

    // Past the last post, however far (even where `(page - 1) * 10` no longer fits in an i64 or
    // a u64, as for the page that answered page 1's posts): an empty page, the same when it comes
    // from the cache.
    for page in ["922337203685477582", "1844674407370955163", "1844674407370955162", "18446744073709551615"] {
        for round in ["first", "second"] {
            let r = get_feed(&c, &app.base, page).await.unwrap();
            assert_eq!(r.status, 200, "{round} GET /feed?page={page}: {}", r.body);
            let feed = r.json();
            assert_eq!(feed["page"].as_u64().unwrap().to_string(), page);
            assert_eq!(post_ids(&feed), Vec::<u64>::new(), "{round} GET /feed?page={page} ({:?})", r.x_cache);
            if round == "second" {
                assert_eq!(r.x_cache.as_deref(), Some("HIT"));
            }
        }
    }
    // Beyond a u64: not a page number.
    let r = get_feed(&c, &app.base, "18446744073709551616").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
}

/// Ids and pages as a client may write them: small, anywhere in a u64, right where an i64
/// offset or a u64 product overflows, any i128, and digit strings of any length.
fn numbers(sign: &'static str) -> impl Strategy<Value = String> {
    let i64_max = i64::MAX.unsigned_abs();
    prop_oneof![
        (0..=USERS + 100).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (i64_max - 3..=i64_max + 3).prop_map(|n| n.to_string()),
        (i64_max / 10 - 3..=i64_max / 10 + 3).prop_map(|n| n.to_string()),
        (u64::MAX / 10 - 3..=u64::MAX / 10 + 3).prop_map(|n| n.to_string()),
        (u64::MAX - 3..=u64::MAX).prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        proptest::string::string_regex(&format!("{sign}0*[0-9]{{1,25}}")).unwrap(),
    ]
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A user's id is any u64: 200 with that very user for the seeded ones, 404 for any other
/// (stored or not, twice in a row), 400 for what is not a u64; the same for a PUT.
#[test]
fn every_id_answers_its_own_user_or_404_or_400() {
    let app = Replica::start_in_memory(&[]);
    let rt = runtime();
    let c = reqwest::Client::new();
    let check = |id: String| -> Result<(), TestCaseError> {
        rt.block_on(async {
            let expected = id.parse::<u64>().map(|n| (1..=USERS).contains(&n).then_some(n));
            for round in ["GET", "PUT", "GET after PUT", "GET again"] {
                let r = if round == "PUT" {
                    put_user(&c, &app.base, &id).await
                } else {
                    get_user(&c, &app.base, &id).await
                };
                let r = r.map_err(|e| TestCaseError::fail(format!("{round} /users/{id}: {e}")))?;
                match expected {
                    Err(_) => prop_assert_eq!(r.status, 400, "{} /users/{}: {}", round, id, r.body),
                    Ok(None) => prop_assert_eq!(r.status, 404, "{} /users/{}: {}", round, id, r.body),
                    Ok(Some(n)) => {
                        prop_assert_eq!(r.status, 200, "{} /users/{}: {}", round, id, r.body);
                        let user = r.json();
                        prop_assert_eq!(&user["id"], &json!(n), "{} /users/{}", round, id);
                        prop_assert_eq!(&user["name"], &json!(format!("User {n}")), "{} /users/{}", round, id);
                    }
                }
            }
            Ok(())
        })
    };
    runner().run(&numbers("[+-]?"), check).unwrap();
}

/// A page is any u64 from 1: 200 with that page's posts (empty past the last one, however far),
/// the same from the cache; 400 for 0 and for what is not a u64.
#[test]
fn every_page_answers_its_own_posts_or_400() {
    let app = Replica::start_in_memory(&[]);
    let rt = runtime();
    let c = reqwest::Client::new();
    // A `+` in a query string is a space: leave it out, the server would not see a sign.
    let check = |page: String| -> Result<(), TestCaseError> {
        rt.block_on(async {
            for round in ["first", "second"] {
                let r = get_feed(&c, &app.base, &page)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{round} /feed?page={page}: {e}")))?;
                match page.parse::<u64>() {
                    Ok(0) | Err(_) => prop_assert_eq!(r.status, 400, "{} /feed?page={}: {}", round, page, r.body),
                    Ok(n) => {
                        prop_assert_eq!(r.status, 200, "{} /feed?page={}: {}", round, page, r.body);
                        let feed = r.json();
                        prop_assert_eq!(&feed["page"], &json!(n));
                        prop_assert_eq!(&feed["user"]["name"], &json!("carol"));
                        prop_assert_eq!(
                            post_ids(&feed),
                            posts_on(n),
                            "{} /feed?page={} ({:?})",
                            round,
                            page,
                            r.x_cache
                        );
                    }
                }
            }
            Ok(())
        })
    };
    runner().run(&numbers("-?"), check).unwrap();
}

/// How a slow client's connection ended, and when (from its connect).
#[derive(Debug)]
enum Ended {
    /// The server closed it (EOF or reset), possibly after an answer such as a 408.
    Closed(Duration),
    /// Still open at the deadline.
    Open,
}

/// Connects and sends `first`, then every `drip` one more header line (never the blank line
/// that ends the headers), until the server closes the connection or `deadline` passes.
fn slow_client(addr: &str, first: &str, drip: Option<Duration>, deadline: Duration) -> Ended {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(first.as_bytes()).unwrap();
    stream.set_read_timeout(Some(drip.unwrap_or(Duration::from_millis(50)))).unwrap();
    let mut buf = [0u8; 1024];
    let mut line = 0;
    while started.elapsed() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Ended::Closed(started.elapsed()),
            Ok(_) => {} // an answer (a 408, say): the close follows
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if drip.is_some() {
                    line += 1;
                    if stream.write_all(format!("x-drip-{line}: {line}\r\n").as_bytes()).is_err() {
                        return Ended::Closed(started.elapsed());
                    }
                }
            }
            Err(_) => return Ended::Closed(started.elapsed()),
        }
    }
    Ended::Open
}

/// With `HEADER_READ_TIMEOUT_MS=1000`, connections that do not finish their headers are closed
/// within the bound plus a stated margin (5 s in all), whether they go silent or drip a header
/// line every 250 ms; meanwhile the app keeps answering others.
#[test]
fn connections_that_do_not_finish_their_headers_are_closed_in_bounded_time() {
    const BOUND: Duration = Duration::from_millis(1000);
    const PROMISE: Duration = Duration::from_secs(5);
    let app = Replica::start_in_memory(&[("HEADER_READ_TIMEOUT_MS", "1000")]);
    let addr = app.base.strip_prefix("http://").unwrap().to_owned();

    let mut clients = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        let (first, drip) = match i % 3 {
            0 => ("GET /users/1 HTTP/1.1\r\nhost: x\r\n", Some(Duration::from_millis(250))),
            1 => ("GET /users/1 HTTP/1.1\r\nhost: x\r\n", None),
            _ => ("GET /users/1 HT", None),
        };
        clients.push(std::thread::spawn(move || (i, slow_client(&addr, first, drip, PROMISE))));
    }
    // The app still answers a client that sends its request at once.
    std::thread::sleep(Duration::from_millis(300));
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.write_all(b"GET /users/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for client in clients {
        let (i, ended) = client.join().unwrap();
        match ended {
            Ended::Closed(after) => {
                assert!(after >= BOUND - Duration::from_millis(100), "client {i} closed after {after:?}: too early");
            }
            Ended::Open => panic!("client {i}: still open after {PROMISE:?} (bound {BOUND:?})"),
        }
    }
}
