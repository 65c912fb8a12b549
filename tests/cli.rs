//! The `simpool` command line against simulated pools on real sockets, as a user runs it.

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::process::Command;
use std::time::{Duration, Instant};

use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

fn simpool(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = run(args);
    (code == Some(0), out, err)
}

/// Runs `simpool ARGS`: exit code, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(args)
        .env_remove("SIMPOOL_POOL")
        .env("RUST_LOG", "warn")
        .output_tied()
        .expect("run simpool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn info_prints_the_manual_id_and_version() {
    let addr = pool(Faults::default());
    let (ok, out, err) = simpool(&["info", "--pool", &addr]);
    assert!(ok, "{err}");
    assert!(out.contains("FF7506718255543339206700"), "{out}");
    assert!(out.contains("V053"), "{out}");
}

/// `scan --json`, checking the exit status: 0, or 3 when a card failed.
fn scan_json(addr: &str) -> serde_json::Value {
    let (code, out, err) = run(&["scan", "--pool", addr, "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    let failed = v.as_array().unwrap().iter().any(|c| !c["error"].is_null());
    assert_eq!(code, Some(if failed { 3 } else { 0 }), "exit status; {err}");
    v
}

/// A simulated pool with the built-in cards; its address.
fn pool(faults: Faults) -> String {
    common::sim_pool(CardsFile::default_set(), faults)
        .addr()
        .to_string()
}

fn card(v: &serde_json::Value, n: u64) -> &serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["card"] == n)
        .unwrap_or_else(|| panic!("card {n} in {v}"))
}

#[test]
fn scan_decodes_the_manual_cards() {
    let addr = pool(Faults::default());
    let v = scan_json(&addr);
    assert_eq!(card(&v, 18)["iccid"], cards::iccid(18));
    assert_eq!(card(&v, 256)["imsi"], cards::imsi(256));
    assert_eq!(v.as_array().unwrap().len(), 39, "1-35, 100, 101, 102, 256");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["error"].is_null() && c["iccid"].is_string()));
}

#[test]
fn scan_copes_with_split_replies_nulls_latency_and_a_mute_card() {
    let faults = Faults {
        latency_min: Duration::from_millis(20),
        latency_max: Duration::from_millis(50),
        split: 1,
        mute: [7].into(),
        ..Faults::default()
    };
    // every card sends 3 NULL bytes before the answer of slow commands
    let mut cards = CardsFile::default_set();
    cards.pool.nulls = 3;
    let addr = common::sim_pool(cards, faults).addr().to_string();
    let t0 = Instant::now();
    let v = scan_json(&addr);
    let took = t0.elapsed();
    assert_eq!(card(&v, 18)["iccid"], cards::iccid(18));
    assert_eq!(card(&v, 256)["imsi"], cards::imsi(256));
    assert!(
        card(&v, 7)["error"].is_string(),
        "mute card reported as an error"
    );
    let others_ok = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["card"] != 7)
        .all(|c| c["error"].is_null());
    assert!(others_ok, "{v}");
    // concurrent: far less than 36 cards × 7 exchanges × (frames × 20-50 ms)
    assert!(took < Duration::from_secs(30), "scan took {took:?}");

    // The scan reads files only; RUN GSM ALGORITHM is a slow command: its answer comes after
    // the NULL bytes.
    let (ok, out, err) = simpool(&[
        "apdu",
        "--pool",
        &addr,
        "--card",
        "2",
        "A0A40000027F20",
        "A088000010 12305263415263524195637485967463",
        "A0C000000C",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["9F17", "9F0C"]);
    // SRES ‖ Kc, a gap, the status word.
    assert!(lines[2].len() == 29 && lines[2].ends_with(" 9000"), "{out}");
}

#[test]
fn apdu_runs_the_manual_gsm_authentication() {
    let addr = pool(Faults::default());
    let (ok, out, err) = simpool(&[
        "apdu",
        "--pool",
        &addr,
        "--card",
        "2",
        "A0A40000023F00",
        "A0A40000027F20",
        "A088000010 12305263415263524195637485967463",
        "A0C000000C",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["9F17", "9F17", "9F0C"]);
    assert_eq!(lines[3].len(), 29, "12 bytes, a gap and 9000: {}", lines[3]);
    assert!(lines[3].ends_with(" 9000"));
}

#[test]
fn status_shows_a_grid_and_json() {
    let addr = pool(Faults {
        abnormal: [3].into(),
        ..Faults::default()
    });
    let (ok, out, _) = simpool(&["status", "--pool", &addr]);
    assert!(ok);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        16
    );
    assert!(out.contains('!'));
    let (ok, out, _) = simpool(&["status", "--pool", &addr, "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 256);
    assert_eq!(v[2]["state"], "abnormal");
    assert_eq!(v[200]["state"], "empty");
}

#[test]
fn errors_are_one_clear_line_and_non_zero() {
    // nothing listens there
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap().to_string();
    drop(l);
    let (ok, out, err) = simpool(&["info", "--pool", &dead]);
    assert!(!ok && out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");

    let addr = pool(Faults {
        mute: [5].into(),
        ..Faults::default()
    });
    let (ok, _, err) = simpool(&["apdu", "--pool", &addr, "--card", "5", "A0F2000016"]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    let (ok, _, err) = simpool(&["apdu", "--pool", &addr, "--card", "200", "A0F2000016"]);
    assert!(!ok && err.contains("card 200"), "{err}");
    let (ok, _, err) = simpool(&["apdu", "--pool", &addr, "--card", "2", "A0XYZ"]);
    assert!(!ok && err.contains("bad hex"), "{err}");
    let (ok, _, err) = simpool(&["apdu", "--pool", &addr, "--card", "300", "A0F2000016"]);
    assert!(!ok && err.contains("1-256"), "{err}");
}

#[test]
fn pool_sim_runs_in_process() {
    let (ok, out, err) = simpool(&[
        "apdu",
        "--pool",
        "sim",
        "--card",
        "18",
        "A0A40000022FE2",
        "A0B000000A",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "9F0F".to_string(),
            // The data, a gap, the status word.
            format!("{} 9000", common::upper(&cards::ef_iccid(18)))
        ]
    );
}

fn slot_states(addr: &str) -> serde_json::Value {
    let (ok, out, err) = simpool(&["status", "--pool", addr, "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn scan_prints_a_table_exits_3_on_a_failed_card_and_stops_cards_that_were_idle() {
    let addr = pool(Faults {
        mute: [9].into(),
        ..Faults::default()
    });
    // card 18 is working before the scan (apdu --keep leaves it started), the others are idle
    let (ok, _, err) = simpool(&[
        "apdu",
        "--pool",
        &addr,
        "--keep",
        "--card",
        "18",
        "A0F2000016",
    ]);
    assert!(ok, "{err}");
    assert_eq!(slot_states(&addr)[17]["state"], "working");

    let (code, out, err) = run(&["scan", "--pool", &addr]);
    assert_eq!(code, Some(3), "a failing card: exit 3; {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["card", "state", "ICCID", "IMSI", "ATR"]
    );
    let rows = lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u16>().is_ok())
        })
        .count();
    assert_eq!(rows, 39, "a row per inserted card:\n{out}");
    // Each card read has its facts on lines of their own, below its row, within 100 columns.
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{out}");
    let at = |n: u16| {
        lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(&n.to_string()))
            .unwrap_or_else(|| panic!("card {n} in\n{out}"))
    };
    let line = |n: u16| lines[at(n)];
    assert_eq!(
        (lines[at(18) + 1].trim(), lines[at(18) + 2].trim()),
        (
            "sim  PIN1 disabled, 3 tries  PUK1 10 tries",
            "SPN \"simpool 18\""
        )
    );
    // PIN1 enabled: the ICCID shown, the IMSI hidden, saying so.
    assert!(line(30).contains("89494400000000000302"), "{out}");
    assert!(line(30).contains("hidden by PIN1"), "{out}");
    assert_eq!(
        lines[at(30) + 1].trim(),
        "usim  PIN1 enabled, not verified, 3 tries  PUK1 10 tries  hidden by PIN1: IMSI, MSISDN"
    );
    assert_eq!(
        lines[at(29) + 2].trim(),
        "SPN \"simpool 29\"  MSISDN +491700000029"
    );
    assert!(lines[at(33) + 1].contains("euicc"), "{out}");
    assert!(
        lines[at(33) + 2].contains("EID 89049032000000000000000003300006"),
        "{out}"
    );
    assert_eq!(
        line(18).split_whitespace().collect::<Vec<_>>(),
        [
            "18",
            "working",
            &cards::iccid(18),
            "001010000000018",
            &cards::atr(18)
        ]
    );
    assert!(line(256).contains(&cards::imsi(256)), "{out}");
    assert!(line(9).contains("error:"), "{}", line(9));

    // the scan started every card; those that were idle are stopped again
    let states = slot_states(&addr);
    assert_eq!(states[17]["state"], "working", "card 18 left running");
    for n in [1usize, 2, 100, 256] {
        assert_eq!(states[n - 1]["state"], "inserted", "card {n}");
    }

    // no failing card: exit 0
    let (code, _, err) = run(&["scan", "--pool", &pool(Faults::default())]);
    assert_eq!(code, Some(0), "{err}");
}

/// `simpool sim ARGS` in the background; its address from its log.
struct Sim {
    child: std::process::Child,
    addr: String,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_simpool"))
            .arg("sim")
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn_tied()
            .expect("run simpool sim");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("simpool sim says where it listens")
                .unwrap();
            if let Some((_, a)) = line.split_once("simulated pool listening on ") {
                break a.trim().to_string();
            }
        };
        // keep draining its log so that it never blocks on a full pipe
        std::thread::spawn(move || lines.for_each(drop));
        Sim { child, addr }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sim_serves_a_cards_file_and_its_knobs() {
    let dir = std::env::temp_dir().join(format!("simpool-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cards.toml");
    std::fs::write(
        &file,
        r#"
[[card]]
slot = 7
iccid = "8949440000000000071"
imsi = "001010000000007"
ki = "000102030405060708090a0b0c0d0e0f"
algo = "xor2g"

[[card]]
slot = 8
iccid = "8949440000000000089"
imsi = "001010000000008"
ki = "000102030405060708090a0b0c0d0e0f"
algo = "xor2g"

[[card]]
slot = 9
iccid = "8949440000000000097"
imsi = "001010000000009"
ki = "000102030405060708090a0b0c0d0e0f"
algo = "xor2g"
state = "mute"
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let sim = Sim::start(&[
        "--listen",
        "127.0.0.1:0",
        "--cards",
        f,
        "--abnormal",
        "8",
        "--split",
        "1",
        "--nulls",
        "2",
        "--latency-ms",
        "1-3",
        "--garbage-every",
        "3",
    ]);
    let v = scan_json(&sim.addr);
    assert_eq!(v.as_array().unwrap().len(), 3, "only the file's cards: {v}");
    assert_eq!(card(&v, 7)["iccid"], "8949440000000000071");
    assert_eq!(card(&v, 7)["imsi"], "001010000000007");
    assert!(card(&v, 8)["error"].is_string(), "--abnormal 8: {v}");
    assert_eq!(card(&v, 8)["state"], "abnormal");
    assert!(card(&v, 9)["error"].is_string(), "state = mute: {v}");

    let sim = Sim::start(&["--listen", "127.0.0.1:0", "--mute", "2"]);
    let v = scan_json(&sim.addr);
    assert_eq!(v.as_array().unwrap().len(), 39, "the built-in set: {v}");
    assert!(card(&v, 2)["error"].is_string(), "--mute 2: {v}");
    assert_eq!(card(&v, 18)["iccid"], cards::iccid(18));

    let (code, _, err) = run(&["sim", "--listen", "127.0.0.1:0", "--mute", "300"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("1-256"), "{err}");
}
