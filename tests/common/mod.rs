//! Helpers shared by the integration tests, so each exists once:
//! - here: hex, free ports, bounded waits, the manual's vectors, an in-process simulated pool;
//! - `http`: the HTTP/1.1 client (control API, osmo-remsim's REST API, WebDriver);
//! - `proc`: helper processes that die with the test process, also on SIGKILL;
//! - `stack`: the private pcscd, `simpool serve` daemons, PC/SC transmit and waits;
//! - `vectors`: data of `tests/vectors/` (the manual's cards, TS 35.208 set 1);
//! - `remsim`: RSPRO peers and the frames captured from osmo-remsim.
#![allow(dead_code)]

pub mod http;
pub mod proc;
pub mod remsim;
pub mod stack;
pub mod vectors;

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A loopback UDP port nothing is bound to right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback UDP port")
        .port()
}

/// How often the waits below look again.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits until `f` holds, looking every 20 ms; panics naming `what` after `within`.
pub fn wait_for(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] inside a tokio test: the runtime goes on while it waits.
pub async fn wait_for_async(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One `>`/`<` pair of the manual's vectors.
#[derive(Debug, Clone)]
pub struct Step {
    pub request: Vec<u8>,
    /// `None`: no reply.
    pub reply: Option<Vec<u8>>,
    /// The reply depends on a secret key: compare its shape only.
    pub shape_only: bool,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Hex to bytes; whitespace between the digits is allowed (`"A0A4 0000 02"`).
pub fn hex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("valid hex in test vector")
}

/// [`hex`], short, for tests that write many vectors inline.
pub fn h(s: &str) -> Vec<u8> {
    hex(s)
}

/// Bytes as upper-case hex, the way simpool prints them.
pub fn upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// The manual's examples from `tests/vectors/manual.txt`.
pub fn manual_cases() -> Vec<Case> {
    let text = include_str!("../vectors/manual.txt");
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            cases.push(Case {
                name: name.to_string(),
                steps: Vec::new(),
            });
            continue;
        }
        let case = cases.last_mut().expect("a [case] before its lines");
        let (tag, bytes) = line.split_at(1);
        match tag {
            ">" => case.steps.push(Step {
                request: hex(bytes),
                reply: None,
                shape_only: false,
            }),
            "<" | "~" => {
                let step = case.steps.last_mut().expect("a request before its reply");
                step.reply = Some(hex(bytes));
                step.shape_only = tag == "~";
            }
            other => panic!("bad vector line tag {other:?}"),
        }
    }
    cases
}

pub fn case(name: &str) -> Case {
    manual_cases()
        .into_iter()
        .find(|c| c.name == name)
        .expect("known case")
}

/// A simulated pool serving from a runtime thread of its own, for synchronous tests (PC/SC,
/// subprocesses). It serves until the test process ends.
pub fn sim_pool(
    cards: simpool::sim::profile::CardsFile,
    faults: simpool::sim::Faults,
) -> simpool::sim::SimPool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let sim = simpool::sim::SimPool::start("127.0.0.1:0", cards, faults)
                .await
                .unwrap();
            tx.send(sim).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}
