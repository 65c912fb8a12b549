//! One way for each operation (issue 18 item 2, issue 17 §3): `scan`, `apdu` and `stop` run the
//! card layer's operations whether the daemon runs them or the command does over a pool
//! connection of its own, so both give the same rows, the same refusals and the same exit
//! codes; an empty slot is refused at once; the exit codes agree with the README's table.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use simpool::pool::SlotState;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BIN: &str = env!("CARGO_BIN_EXE_simpool");

/// `simpool ARGS` with none of the user's settings; `control` is where a daemon is looked for.
fn simpool(args: &[&str], control: &str) -> (Option<i32>, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .env_remove("RUST_LOG")
        .env("SIMPOOL_CONTROL", control)
        .stdin(Stdio::null())
        .output()
        .expect("run simpool");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

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

/// `simpool serve` on `pool` with one unbound reader (vpcd nowhere) and a control address.
struct Daemon {
    child: Child,
    control: String,
}

impl Daemon {
    fn start(pool: &str, extra: &[&str]) -> Daemon {
        let control = free_addr();
        let vpcd = free_addr();
        let child = Command::new(BIN)
            .args(["serve", "--pool", pool, "--readers", "1", "--vpcd", &vpcd])
            .args(["--control", &control])
            .args(extra)
            .env_remove("SIMPOOL_POOL")
            .env_remove("SIMPOOL_CONTROL")
            .env_remove("SIMPOOL_CONTROL_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, control };
        wait_for("daemon up", Duration::from_secs(10), || {
            simpool(&["info"], &d.control).0 == Some(0)
        });
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn empty_slot(sim: &SimPool) -> u16 {
    (1..=256)
        .find(|n| sim.slot_state(*n) == Some(SlotState::Empty))
        .unwrap()
}

fn working(sim: &SimPool) -> Vec<u16> {
    (1..=256)
        .filter(|n| sim.slot_state(*n) == Some(SlotState::Working))
        .collect()
}

#[test]
fn scan_apdu_and_stop_give_the_same_rows_through_the_daemon_and_over_their_own_connection() {
    let sim = common::sim_pool(
        CardsFile::default_set(),
        Faults {
            mute: [7].into(),
            ..Faults::default()
        },
    );
    let addr = sim.addr().to_string();
    let empty = empty_slot(&sim).to_string();
    let runs: Vec<Vec<&str>> = vec![
        vec!["scan", "--json"],
        // SELECT MF, then READ BINARY with no EF selected: the card's own refusal.
        vec![
            "apdu",
            "--json",
            "--card",
            "2",
            "A0A40000023F00",
            "A0B0000009",
            "A0A40000027F20",
        ],
        vec!["apdu", "--json", "--keep", "--card", "3", "A0A40000023F00"],
        vec!["stop", "--json", "--all"],
        vec!["apdu", "--card", "7", "A0A40000023F00"],
        vec!["apdu", "--card", &empty, "A0A40000023F00"],
        vec!["stop", "--json", "--card", "3"],
    ];
    let timeout = ["--reply-timeout-ms", "2000"];
    let nobody = free_addr();
    let own: Vec<_> = runs
        .iter()
        .map(|r| {
            let mut args = r.clone();
            args.extend(["--pool", &addr]);
            args.extend(timeout);
            let t0 = Instant::now();
            let out = simpool(&args, &nobody);
            (out, t0.elapsed())
        })
        .collect();
    assert!(working(&sim).is_empty(), "{:?}", working(&sim));
    let d = Daemon::start(&addr, &timeout);
    for (r, (want, own_took)) in runs.iter().zip(&own) {
        let t0 = Instant::now();
        let got = simpool(r, &d.control);
        let took = t0.elapsed();
        if r[0] == "scan" {
            // The daemon's scan reads a card's details (SPN, MSISDN, EID) after the scan, so
            // that the scan costs no more than the identity read; `scan --pool` has no later
            // and reads them before each row. Everything else is the same.
            assert_eq!(got.0, want.0, "{r:?}: exit");
            assert_eq!(
                without_details(&got.1),
                without_details(&want.1),
                "{r:?}: through the daemon vs over a connection of its own"
            );
            assert!(want.1.contains("\"spn\":\"simpool 1\""), "{}", want.1);
            continue;
        }
        assert_eq!(
            &got, want,
            "{r:?}: through the daemon vs over a connection of its own"
        );
        if r.contains(&empty.as_str()) {
            // Refused at once, naming the slot empty, not after a start that cannot come.
            assert_eq!(got.0, Some(1));
            assert!(
                got.2.contains(&format!("card {empty}: the slot is empty")),
                "{}",
                got.2
            );
            assert!(
                took < Duration::from_millis(1500) && *own_took < Duration::from_millis(1500),
                "{took:?} {own_took:?}"
            );
        }
    }
    // What the rows say, once.
    let scan: Value = serde_json::from_str(&own[0].0 .1).unwrap();
    let seven = scan
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["card"] == 7)
        .unwrap();
    assert!(
        seven["error"].as_str().unwrap().contains("2000 ms"),
        "{seven}"
    );
    let apdu: Value = serde_json::from_str(&own[1].0 .1).unwrap();
    assert_eq!(apdu["responses"].as_array().unwrap().len(), 3, "{apdu}");
    assert_eq!(apdu["errors"], serde_json::json!([null, null, null]));
    let stopped: Value = serde_json::from_str(&own[3].0 .1).unwrap();
    assert_eq!(stopped[0]["card"], 3, "{stopped}");
    assert_eq!(stopped[0]["stopped"], true, "{stopped}");
    assert!(working(&sim).is_empty(), "{:?}", working(&sim));
}

#[test]
fn a_bind_that_has_to_wait_says_why_at_once_and_exits_4_keeping_the_binding() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = Daemon::start(&sim.addr().to_string(), &[]);
    let empty = empty_slot(&sim).to_string();
    let t0 = Instant::now();
    let (code, _, err) = simpool(&["bind", "0", "--card", &empty], &d.control);
    let took = t0.elapsed();
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains(&format!("waiting: card {empty}: the slot is empty")),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "at once, not after 5 s: {took:?}"
    );
    let (code, out, _) = simpool(&["readers", "--json"], &d.control);
    assert_eq!(code, Some(0));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        r[0]["binding"]["card"].to_string(),
        empty,
        "the binding stays"
    );
    assert_eq!(r[0]["state"], "waiting");
    // An ICCID no card has: waiting too, saying so.
    let (code, _, err) = simpool(
        &["bind", "0", "--iccid", "89000000000000000000"],
        &d.control,
    );
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("no free inserted card has it"), "{err}");
}

#[test]
fn exit_codes_agree_with_the_readme_table() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let addr = sim.addr().to_string();
    let nobody = free_addr();
    // The same mistake, the same code: a card outside 1-256 is a usage error everywhere.
    for args in [
        vec!["bind", "0", "--card", "300"],
        vec!["apdu", "--pool", &addr, "--card", "300", "A0A40000023F00"],
        vec!["stop", "--pool", &addr, "--card", "0"],
        vec!["bind", "0", "--iccid", "12ab"],
    ] {
        let (code, _, err) = simpool(&args, &nobody);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
    // A malformed command is refused before the card is started.
    let started = sim
        .stats()
        .card_starts
        .load(std::sync::atomic::Ordering::Relaxed);
    let (code, _, err) = simpool(&["apdu", "--pool", &addr, "--card", "3", "A0A4"], &nobody);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("A0A4: command of 2 bytes is malformed"),
        "{err}"
    );
    assert_eq!(
        sim.stats()
            .card_starts
            .load(std::sync::atomic::Ordering::Relaxed),
        started,
        "card 3 was not started"
    );
    // A control API off loopback without a token is a mistake in the command line.
    let port = free_addr().rsplit_once(':').unwrap().1.to_string();
    let open = format!("0.0.0.0:{port}");
    let (code, _, err) = simpool(
        &[
            "serve",
            "--pool",
            &addr,
            "--readers",
            "1",
            "--control",
            &open,
        ],
        &nobody,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("without --control-token"), "{err}");
    // The daemon's normal end is a signal: 0 for SIGTERM (systemd's stop) and SIGINT.
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut d = Daemon::start(&addr, &[]);
        let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let status = d.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{sig:?}: {status:?}");
    }
    // And --help says so.
    let (_, help, _) = simpool(&["serve", "--help"], &nobody);
    assert!(help.contains("  4    waiting"), "{help}");
    assert!(
        help.contains("the daemons (serve, sim) end with 0 on SIGINT/SIGTERM"),
        "{help}"
    );
}

/// A scan's rows without the details a daemon reads after the scan.
fn without_details(json: &str) -> Value {
    let mut v: Value = serde_json::from_str(json).unwrap();
    for row in v.as_array_mut().unwrap() {
        let row = row.as_object_mut().unwrap();
        for k in ["spn", "msisdn", "eid"] {
            assert!(row.remove(k).is_some(), "{k} missing");
        }
    }
    v
}
