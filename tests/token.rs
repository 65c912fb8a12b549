//! Nothing gets around a token-protected daemon (issue 17 §2): every route of the control API
//! refuses a missing, a wrong and a right-length-but-wrong token (and changes nothing); a
//! command without the token is told so and never falls back to a pool connection of its
//! own; a `--pool` naming the daemon's pool is refused unless `--force`; with no daemon
//! answering, the command says so before naming the pool that is unreachable.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use simpool::pool::SlotState;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BIN: &str = env!("CARGO_BIN_EXE_simpool");
const TOKEN: &str = "s3cret-token-0123456789";
/// As long as [`TOKEN`], one byte different.
const ALMOST: &str = "s3cret-token-0123456780";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request; the status and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

struct Daemon {
    child: Child,
    control: String,
    token_file: std::path::PathBuf,
}

impl Daemon {
    /// `simpool serve --control-token F` on `pool`, reader 0 bound to card 18 (vpcd nowhere:
    /// the reader still holds and starts its card).
    fn start(pool: &str) -> Daemon {
        let control = free_addr();
        let vpcd = free_addr();
        let token_file = std::env::temp_dir().join(format!("simpool-token-{}", std::process::id()));
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--pool", pool, "--card", "18", "--vpcd", &vpcd])
            .args(["--control", &control, "--control-token"])
            .arg(&token_file)
            .env_remove("SIMPOOL_POOL")
            .env_remove("SIMPOOL_CONTROL")
            .env_remove("SIMPOOL_CONTROL_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            control,
            token_file,
        };
        wait_for("daemon up", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&d.control).is_ok()
                && http(&d.control, "GET", "/healthz", Some(TOKEN), "").0 == 200
        });
        d
    }

    /// `simpool ARGS` aimed at this daemon; `env` adds settings (SIMPOOL_POOL, a token file).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let o = Command::new(BIN)
            .args(args)
            .env_remove("SIMPOOL_POOL")
            .env_remove("SIMPOOL_CONTROL_TOKEN")
            .env_remove("RUST_LOG")
            .env("SIMPOOL_CONTROL", &self.control)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// What a command must not have changed: card 18 runs under reader 0, no card was started.
struct Untouched<'a> {
    sim: &'a SimPool,
    starts: u64,
}

impl Untouched<'_> {
    fn check(&self, what: &str) {
        assert_eq!(
            self.sim.stats().card_starts.load(Ordering::Relaxed),
            self.starts,
            "{what}: a card was started"
        );
        assert_eq!(
            self.sim.slot_state(18),
            Some(SlotState::Working),
            "{what}: card 18 was stopped"
        );
    }
}

fn up<'a>(sim: &'a SimPool, d: &Daemon) -> Untouched<'a> {
    wait_for("card 18 held and started", Duration::from_secs(10), || {
        let (_, body) = http(&d.control, "GET", "/api/v1/cards/18", Some(TOKEN), "");
        body.contains("\"holder\":\"reader 0\"") && sim.slot_state(18) == Some(SlotState::Working)
    });
    Untouched {
        sim,
        starts: sim.stats().card_starts.load(Ordering::Relaxed),
    }
}

#[test]
fn every_route_refuses_a_missing_wrong_or_almost_right_token_and_changes_nothing() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = Daemon::start(&sim.addr().to_string());
    let untouched = up(&sim, &d);
    let routes: &[(&str, &str, &str)] = &[
        ("GET", "/healthz", ""),
        ("GET", "/api/v1/pool", ""),
        ("GET", "/api/v1/readers", ""),
        ("GET", "/api/v1/readers/0", ""),
        ("PUT", "/api/v1/readers/0", "{\"card\":2}"),
        ("DELETE", "/api/v1/readers/0", ""),
        ("GET", "/api/v1/cards", ""),
        ("GET", "/api/v1/cards/18", ""),
        (
            "POST",
            "/api/v1/cards/2/apdu",
            "{\"tpdus\":[\"A0A40000023F00\"]}",
        ),
        ("POST", "/api/v1/scan", ""),
        ("POST", "/api/v1/cards/18/stop", "{\"force\":true}"),
        ("POST", "/api/v1/stop-all", "{\"force\":true}"),
        ("GET", "/metrics", ""),
    ];
    for token in [
        None,
        Some(ALMOST),
        Some("wrong"),
        Some(""),
        Some(&TOKEN[1..]),
    ] {
        for (method, path, body) in routes {
            let (status, answer) = http(&d.control, method, path, token, body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert!(answer.contains("missing or wrong bearer token"), "{answer}");
        }
    }
    untouched.check("refused requests");
    let (_, readers) = http(&d.control, "GET", "/api/v1/readers/0", Some(TOKEN), "");
    assert!(readers.contains("\"binding\":{\"card\":18}"), "{readers}");
    // The page holds no data and loads without the token; what it reads needs it.
    for path in ["/", "/ui/panel.js", "/ui/panel.css"] {
        assert_eq!(http(&d.control, "GET", path, None, "").0, 200, "{path}");
    }
    // The right token opens every read-only route.
    for (method, path, _) in routes.iter().filter(|r| r.0 == "GET") {
        assert_eq!(
            http(&d.control, method, path, Some(TOKEN), "").0,
            200,
            "{method} {path}"
        );
    }
    // A malformed body is the parser's 400, never "no force": nothing is stopped.
    let (status, body) = http(
        &d.control,
        "POST",
        "/api/v1/stop-all",
        Some(TOKEN),
        "{\"force\":tru",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed JSON"), "{body}");
    untouched.check("a malformed stop");
}

#[test]
fn a_command_without_the_token_is_told_so_and_never_goes_around_the_daemon() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pool = sim.addr().to_string();
    let d = Daemon::start(&pool);
    let untouched = up(&sim, &d);
    let needs = format!(
        "the daemon at {} needs a token (--control-token, SIMPOOL_CONTROL_TOKEN)",
        d.control
    );
    let with_pool = [("SIMPOOL_POOL", pool.as_str())];
    for (args, env) in [
        (vec!["apdu", "--card", "18", "A0A40000023F00"], &[][..]),
        (
            vec!["apdu", "--card", "18", "A0A40000023F00"],
            &with_pool[..],
        ),
        (vec!["stop", "--card", "18"], &[][..]),
        (vec!["stop", "--card", "18"], &with_pool[..]),
        (vec!["stop", "--all"], &with_pool[..]),
        (vec!["scan"], &with_pool[..]),
        (vec!["status"], &[][..]),
        (vec!["info"], &[][..]),
        (vec!["readers"], &[][..]),
    ] {
        let (code, _, err) = d.run(&args, env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {err}");
        assert!(err.contains(&needs), "{args:?} {env:?}: {err}");
        assert!(!err.contains("192.168.1.199"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        if !env.is_empty() {
            assert!(err.contains("--force"), "{err}");
        }
        untouched.check(&format!("{args:?} {env:?}"));
    }
    // A wrong token is named as such.
    let wrong = std::env::temp_dir().join(format!("simpool-wrong-{}", std::process::id()));
    std::fs::write(&wrong, ALMOST).unwrap();
    let (code, _, err) = d.run(
        &["info"],
        &[("SIMPOOL_CONTROL_TOKEN", wrong.to_str().unwrap())],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("refused the token given"), "{err}");
    std::fs::remove_file(&wrong).unwrap();
}

#[test]
fn a_pool_the_daemon_uses_is_refused_unless_forced_and_another_one_is_not() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pool = sim.addr().to_string();
    let d = Daemon::start(&pool);
    let untouched = up(&sim, &d);
    let token = [(
        "SIMPOOL_CONTROL_TOKEN",
        d.token_file.to_str().unwrap().to_string(),
    )];
    let token: Vec<(&str, &str)> = token.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Also when named differently: localhost is 127.0.0.1.
    let port = pool.rsplit_once(':').unwrap().1;
    for name in [pool.clone(), format!("localhost:{port}")] {
        let (code, _, err) = d.run(&["stop", "--card", "18", "--pool", &name], &token);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("the daemon on {} uses pool {name}", d.control)),
            "{err}"
        );
        assert!(err.contains("--force"), "{err}");
        untouched.check(&name);
    }
    let (code, out, err) = d.run(&["info", "--pool", &pool, "--force"], &token);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ID"), "{out}");
    assert!(err.contains("going around it (--force)"), "{err}");
    // Another pool is this command's business: no refusal, no warning.
    let other = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (code, _, err) = d.run(&["info", "--pool", &other.addr().to_string()], &token);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn with_no_daemon_answering_the_command_says_so_before_the_unreachable_pool() {
    // A private network namespace with only loopback: the factory address cannot be reached
    // (nothing leaves the machine), and nothing listens on the default control address.
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            &format!("ip link set lo up; exec {BIN} info"),
        ])
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .output()
        .expect("unshare (root needed)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let none = err
        .find("no simpool daemon answers on 127.0.0.1:6680")
        .unwrap_or_else(|| panic!("{err}"));
    let pool = err
        .find("pool 192.168.1.199:6666 unreachable")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(none < pool, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_control_api_off_loopback_needs_a_token() {
    let port = free_addr().rsplit_once(':').unwrap().1.to_string();
    let o = Command::new(BIN)
        .args(["serve", "--pool", "sim", "--readers", "1", "--control"])
        .arg(format!("0.0.0.0:{port}"))
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "refusing to serve the control API on 0.0.0.0:{port} (not loopback) without \
             --control-token FILE"
        )),
        "{err}"
    );
}
