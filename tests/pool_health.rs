//! What the daemon says about its pool through the control API: the built-in simulated pool by
//! that name (not the simulator's random loopback port), and, while the link is not up, why —
//! the cause the log gives (nothing listens there, no answer to ID, …) in `/healthz` and
//! `GET /api/v1/pool`, where the page shows it. Loopback only: a closed port, and a listener
//! that accepts and never answers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::stack::Serve;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path`; (status, JSON body), or `None` while nothing answers.
fn get(control: &str, path: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(control).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {control}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Waits (bounded) until `f` holds for GET `path`; answers the last body.
fn wait_for(control: &str, path: &str, what: &str, f: impl Fn(u16, &Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < end {
        if let Some((status, body)) = get(control, path) {
            if f(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{path}: not {what} within 15 s; last {last:?}");
}

fn serve(pool: &str, extra: &[&str], name: &str) -> (Serve, String) {
    let control = format!("127.0.0.1:{}", free_port());
    // One reader on a vpcd port nobody serves: the pool is what this test is about.
    let vpcd = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--pool",
        pool,
        "--readers",
        "1",
        "--vpcd",
        &vpcd,
        "--control",
        &control,
    ];
    args.extend_from_slice(extra);
    (Serve::start(&args, name), control)
}

#[test]
fn the_simulated_pool_is_named_as_such() {
    let (_serve, control) = serve("sim", &[], "pool-name-sim");
    let health = wait_for(&control, "/healthz", "up", |s, _| s == 200);
    assert_eq!(health["pool"], "built-in simulated pool", "{health}");
    assert_eq!(health["cause"], Value::Null, "{health}");
    let (status, pool) = get(&control, "/api/v1/pool").unwrap();
    assert_eq!(status, 200);
    assert_eq!(pool["address"], "sim", "{pool}");
    assert_eq!(pool["name"], "built-in simulated pool", "{pool}");
    assert_eq!(pool["link"], "up", "{pool}");
    assert_eq!(pool["cause"], Value::Null, "{pool}");
    assert!(pool["id"].is_string(), "{pool}");
}

#[test]
fn a_refused_pool_says_why_in_healthz_and_the_pool_endpoint() {
    let closed = format!("127.0.0.1:{}", free_port());
    let (serve, control) = serve(&closed, &[], "pool-refused");
    let health = wait_for(&control, "/healthz", "down with a cause", |s, b| {
        s == 503 && b["cause"].is_string()
    });
    let cause = health["cause"].as_str().unwrap();
    assert!(
        cause.contains(&closed) && cause.contains("nothing listens there"),
        "{health}"
    );
    assert_eq!(health["pool"], closed.as_str(), "{health}");
    let error = health["error"].as_str().unwrap();
    assert!(
        error.starts_with("pool link ") && error.contains("nothing listens there"),
        "{health}"
    );
    let (_, pool) = get(&control, "/api/v1/pool").unwrap();
    assert_eq!(pool["address"], closed.as_str(), "{pool}");
    assert_eq!(pool["name"], closed.as_str(), "{pool}");
    assert!(
        pool["cause"]
            .as_str()
            .is_some_and(|c| c.contains("nothing listens there")),
        "{pool}"
    );
    // The same words as the log's.
    assert!(serve.log_text().contains(cause), "{}", serve.log_text());
}

#[test]
fn a_listener_that_is_no_pool_says_no_answer_to_id() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Accepts every connection and holds it open without a word.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    let (_serve, control) = serve(&addr, &["--reply-timeout-ms", "200"], "pool-silent");
    let health = wait_for(&control, "/healthz", "down with a cause", |s, b| {
        s == 503 && b["cause"].is_string()
    });
    let cause = health["cause"].as_str().unwrap();
    assert!(
        cause.contains("no answer to ID within 200 ms") && cause.contains("is this a pool?"),
        "{health}"
    );
}

/// The cause goes once the pool answers: a pool that comes up later clears it.
#[test]
fn the_cause_clears_when_the_pool_comes_up() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (_serve, control) = serve(&addr, &[], "pool-late");
    wait_for(&control, "/healthz", "down with a cause", |s, b| {
        s == 503 && b["cause"].is_string()
    });
    // The simulated pool on that very port, from now on (serving until the test ends).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let _sim = simpool::sim::SimPool::start(
                &addr,
                simpool::sim::profile::CardsFile::default_set(),
                simpool::sim::Faults::default(),
            )
            .await
            .unwrap();
            std::future::pending::<()>().await;
        });
    });
    let health = wait_for(&control, "/healthz", "up", |s, _| s == 200);
    assert_eq!(health["cause"], Value::Null, "{health}");
    let (_, pool) = get(&control, "/api/v1/pool").unwrap();
    assert_eq!(pool["cause"], Value::Null, "{pool}");
}
