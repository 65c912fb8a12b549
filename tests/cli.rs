//! The `simpool` command line against simulated pools on real sockets, as a user runs it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

fn simpool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(args)
        .env_remove("SIMPOOL_POOL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run simpool");
    (
        out.status.success(),
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

fn scan_json(addr: &str) -> serde_json::Value {
    let (_, out, err) = simpool(&["scan", "--pool", addr, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"))
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
    assert_eq!(card(&v, 18)["iccid"], "89860043191482190636");
    assert_eq!(card(&v, 256)["imsi"], "460019894013615");
    assert_eq!(v.as_array().unwrap().len(), 36, "1-32, 100, 101, 102, 256");
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
    let addr = pool(faults);
    let t0 = Instant::now();
    let v = scan_json(&addr);
    let took = t0.elapsed();
    assert_eq!(card(&v, 18)["iccid"], "89860043191482190636");
    assert_eq!(card(&v, 256)["imsi"], "460019894013615");
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
    assert_eq!(lines[3].len(), 28, "12 bytes and 9000: {}", lines[3]);
    assert!(lines[3].ends_with("9000"));
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
        ["9F0F", "986800349141289160639000"]
    );
}
