//! Several banks on one host (issue 23), against a scripted osmo-remsim-server: each bank's
//! control connection comes from its listen address (the server sends clients where it comes
//! from), the log says which address clients get and warns when they may not reach it, a bank
//! that cannot listen names the bank in the way, and `serve --check` reports both.
//!
//! Banks listen on port 9999 (the one the server hands out), so each test re-runs itself in a
//! private network namespace (`unshare -n`, loopback up) where nothing else listens.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::remsim::{identity, Peer};
use simpool::remsim::rspro::{ComponentType, Msg, ResultCode};

const NETNS_MARK: &str = "SIMPOOL_BANKS_NETNS";

/// Runs test `name` of this binary again inside a private network namespace; true if this
/// process is already the one inside (and should do the work).
fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(NETNS_MARK).is_some() {
        return true;
    }
    let root = nix::unistd::Uid::effective().is_root();
    let status = Command::new("unshare")
        .args(if root { &["-n"][..] } else { &["-rn"][..] })
        .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_MARK, "1")
        .status()
        .expect("unshare runs");
    assert!(
        status.success(),
        "{name} in a private network namespace failed"
    );
    false
}

/// A `simpool serve` whose log lines the test reads; killed on drop.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_simpool"));
        cmd.arg("serve")
            .args(["--pool", "sim", "--control", "off"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("simpool serve");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first log line (from the start) containing every one of `parts`, within 10 s.
    fn line(&mut self, parts: &[&str]) -> String {
        let fits = |l: &str| parts.iter().all(|p| l.contains(p));
        if let Some(l) = self.seen.iter().find(|l| fits(l)) {
            return l.clone();
        }
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if fits(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no log line with {parts:?} within 10 s; the log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Whether some line seen so far contains `part`.
    fn said(&self, part: &str) -> bool {
        self.seen.iter().any(|l| l.contains(part))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `simpool serve --check` with these arguments: (exit code, stdout lines).
fn check(args: &[&str]) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .arg("serve")
        .args(["--pool", "sim", "--control", "off", "--check"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

fn verdict<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in {lines:#?}"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not within 10 s: {what}");
}

fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// A scripted osmo-remsim-server: registers every bank that connects and reports where each
/// connection came from, with the bank id it gave.
struct Server {
    addr: SocketAddr,
    banks: tokio::sync::mpsc::UnboundedReceiver<(IpAddr, u16)>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, banks) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(async move {
            loop {
                let Ok((s, from)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut peer = Peer::new(s);
                    let Ok(Msg::ConnectBankReq { bank_id, .. }) =
                        peer.recv_within(Duration::from_secs(5)).await
                    else {
                        return;
                    };
                    peer.send(Msg::ConnectBankRes {
                        identity: identity(ComponentType::Server, "test-server"),
                        result: ResultCode::Ok,
                    })
                    .await;
                    let _ = tx.send((from.ip(), bank_id));
                    // Hold the connection (answering PINGs) until the bank goes.
                    let _ = peer.closed_within(Duration::from_secs(3600)).await;
                });
            }
        });
        Server {
            addr,
            banks,
            _rt: rt,
        }
    }

    /// The next bank to register: (address it connected from, bank id).
    fn next_bank(&mut self) -> (IpAddr, u16) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(b) = self.banks.try_recv() {
                return b;
            }
            assert!(Instant::now() < end, "no bank registered within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn each_bank_connects_from_its_listen_address_and_says_where_clients_go() {
    if !in_private_netns("each_bank_connects_from_its_listen_address_and_says_where_clients_go") {
        return;
    }
    let mut server = Server::start();
    let srv = server.addr.to_string();
    // Two banks on one host, as the issue tried them.
    let mut one = Daemon::start(&[
        "--remsim",
        &srv,
        "--bank-id",
        "1",
        "--remsim-listen",
        "127.0.0.1:9999",
    ]);
    let mut two = Daemon::start(&[
        "--remsim",
        &srv,
        "--bank-id",
        "2",
        "--remsim-listen",
        "127.0.0.2:9999",
    ]);
    let mut seen = [server.next_bank(), server.next_bank()];
    seen.sort();
    assert_eq!(
        seen,
        [(ip("127.0.0.1"), 1), (ip("127.0.0.2"), 2)],
        "each bank's server connection comes from its listen address"
    );
    one.line(&["remsim bank 1: the server sends its clients to 127.0.0.1:9999"]);
    two.line(&["remsim bank 2: the server sends its clients to 127.0.0.2:9999"]);
    // A chosen address: no warning.
    assert!(
        !one.said("WARN") && !two.said("WARN"),
        "{:?} {:?}",
        one.seen,
        two.seen
    );

    // A bank on another port: its clients are sent to port 9999, where bank 2 listens.
    let mut three = Daemon::start(&[
        "--remsim",
        &srv,
        "--bank-id",
        "3",
        "--remsim-listen",
        "127.0.0.2:19999",
    ]);
    assert_eq!(server.next_bank(), (ip("127.0.0.2"), 3));
    three.line(&[
        "WARN",
        "remsim bank 3: clients sent to 127.0.0.2:9999",
        "listens on port 19999",
    ]);
    drop((one, two, three));

    // Every address (the default), reached over loopback: only clients on this host.
    wait_for("port 9999 free", || !listening("127.0.0.1:9999"));
    let mut any = Daemon::start(&["--remsim", &srv, "--bank-id", "4"]);
    assert_eq!(server.next_bank(), (ip("127.0.0.1"), 4));
    any.line(&["remsim bank 4: the server sends its clients to 127.0.0.1:9999"]);
    any.line(&[
        "WARN",
        "remsim bank 4: clients sent to 127.0.0.1:9999: a loopback address",
        "--remsim-listen",
    ]);
}

#[test]
fn a_bank_that_cannot_listen_names_the_bank_in_the_way() {
    if !in_private_netns("a_bank_that_cannot_listen_names_the_bank_in_the_way") {
        return;
    }
    // Bank 1 on every address (the default) takes port 9999 on all of them.
    let mut one = Daemon::start(&["--remsim", "127.0.0.1:9", "--bank-id", "1"]);
    one.line(&["remsim bank 1: clients on 0.0.0.0:9999"]);
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["serve", "--pool", "sim", "--control", "off"])
        .args(["--remsim", "127.0.0.1:9", "--bank-id", "2"])
        .args(["--remsim-listen", "127.0.0.2:9999"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "cannot listen for remsim clients on 127.0.0.2:9999: in use: simpool bank 1 \
             (simpool "
        ) && err.contains("listens on 0.0.0.0:9999")
            && err.contains("--remsim-listen ADDR:9999"),
        "{err}"
    );
}

#[test]
fn check_names_the_bank_in_the_way_and_the_address_clients_get() {
    if !in_private_netns("check_names_the_bank_in_the_way_and_the_address_clients_get") {
        return;
    }
    let mut server = Server::start();
    let srv = server.addr.to_string();
    let mut one = Daemon::start(&[
        "--remsim",
        &srv,
        "--bank-id",
        "1",
        "--remsim-listen",
        "127.0.0.1:9999",
    ]);
    assert_eq!(server.next_bank(), (ip("127.0.0.1"), 1));
    one.line(&["remsim bank 1: the server sends its clients to"]);
    let bank2 = ["--remsim", &srv, "--bank-id", "2", "--remsim-listen"];

    // The same address, and every address: both held by bank 1, which is named.
    for listen in ["127.0.0.1:9999", "0.0.0.0:9999"] {
        let (code, lines) = check(&[&bank2[..], &[listen]].concat());
        assert_eq!(code, 1, "{lines:#?}");
        let v = verdict(
            &lines,
            &format!("FAILED remsim bank listen {listen}: in use: "),
        );
        assert!(
            v.contains("simpool bank 1 (simpool ") && v.contains("listens on 127.0.0.1:9999"),
            "{v}"
        );
    }
    // An address of its own: free, and clients will be sent there; the check connected from it.
    let (code, lines) = check(&[&bank2[..], &["127.0.0.2:9999"]].concat());
    assert_eq!(code, 0, "{lines:#?}");
    verdict(&lines, "ok     remsim bank listen 127.0.0.2:9999: free");
    verdict(
        &lines,
        &format!("ok     remsim server {srv}: accepts connections from 127.0.0.2"),
    );
    assert_eq!(
        verdict(&lines, "ok     remsim bank 2 clients: "),
        "ok     remsim bank 2 clients: the server will send them to 127.0.0.2:9999"
    );
    // Another port: clients are sent to 9999 all the same.
    let (code, lines) = check(&[&bank2[..], &["127.0.0.2:19999"]].concat());
    assert_eq!(code, 1, "{lines:#?}");
    let v = verdict(&lines, "FAILED remsim bank 2 clients: ");
    assert!(
        v.contains("send them to 127.0.0.2:9999") && v.contains("listens on port 19999"),
        "{v}"
    );
    // Something that is not a bank holds an address.
    let squatter = std::net::TcpListener::bind("127.0.0.3:9999").unwrap();
    let (code, lines) = check(&[&bank2[..], &["127.0.0.3:9999"]].concat());
    assert_eq!(code, 1, "{lines:#?}");
    let v = verdict(&lines, "FAILED remsim bank listen 127.0.0.3:9999: in use: ");
    assert!(v.contains("does not answer as an RSPRO bank"), "{v}");
    drop(squatter);

    // The server down: where clients would be sent is still said.
    let (_, lines) = check(&[
        "--remsim",
        "127.0.0.1:9",
        "--bank-id",
        "2",
        "--remsim-listen",
        "127.0.0.2:9999",
    ]);
    verdict(&lines, "FAILED remsim server 127.0.0.1:9: ");
    verdict(
        &lines,
        "ok     remsim bank 2 clients: the server will send them to 127.0.0.2:9999",
    );

    // Bank 1 gone, the default address: free, with the loopback warning (not a failure).
    drop(one);
    wait_for("port 9999 free", || !listening("127.0.0.1:9999"));
    let (code, lines) = check(&["--remsim", &srv, "--bank-id", "2"]);
    assert_eq!(code, 0, "{lines:#?}");
    verdict(&lines, "ok     remsim bank listen 0.0.0.0:9999: free");
    let v = verdict(&lines, "ok     remsim bank 2 clients: ");
    assert!(
        v.starts_with(
            "ok     remsim bank 2 clients: the server will send them to 127.0.0.1:9999; \
             warning: a loopback address: only clients on this host reach this bank"
        ),
        "{v}"
    );
}
