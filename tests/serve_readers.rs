//! `simpool serve`, `simpool read` and `simpool sim` as a user runs them, through the real pcscd
//! and Debian's vpcd: the README's promises about binding readers (flag order, `--iccid`,
//! `--imsi`, `--config`), power and reset (`--reset cached`, power-off), empty slots,
//! `--no-quickack`, and the simulator's loopback default. Needs pcscd and vsmartcard-vpcd
//! (`driver/pcscd-private install`); run inside a private network namespace (fixed ports).
//!
//! What depends on simpool's log wording (src/bridge.rs): `unavailable: …` lines of a reader
//! whose card cannot be shown, and the `: Reset` / `: PowerOn` / `: PowerOff` lines.

mod common;

use common::h;
use common::proc::Tied;
use common::vectors as cards;
use std::ffi::CString;
use std::process::Command;
use std::time::{Duration, Instant};

use common::stack::{self, tx, Serve};
use pcsc::{Context, Disposition, Protocols, ShareMode};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 27300;

fn pool() -> SimPool {
    common::sim_pool(CardsFile::default_set(), Faults::default())
}

/// `simpool serve --pool SIM --vpcd (reader `first`) ARGS`.
fn serve(sim: &SimPool, first: u16, args: &[&str], log: &str) -> Serve {
    let pcscd = stack::pcscd(BASE_PORT);
    let (pool, vpcd) = (sim.addr().to_string(), pcscd.vpcd_addr(first));
    let mut all = vec!["--pool", &pool, "--vpcd", &vpcd];
    all.extend_from_slice(args);
    Serve::start(&all, log)
}

fn name(i: u16) -> CString {
    stack::pcscd(BASE_PORT).reader_name(i)
}

fn shows_card(ctx: &Context, i: u16, serve: &Serve) {
    assert!(
        stack::wait_card(ctx, &name(i), true, Duration::from_secs(15)),
        "{:?} shows no card; simpool log:\n{}",
        name(i),
        serve.log_text()
    );
}

fn connect(ctx: &Context, i: u16) -> pcsc::Card {
    ctx.connect(&name(i), ShareMode::Shared, Protocols::ANY)
        .expect("connect")
}

fn atr(card: &pcsc::Card) -> Vec<u8> {
    card.status2_owned().unwrap().atr().to_vec()
}

fn iccid(card: &pcsc::Card) -> String {
    assert_eq!(tx(card, "A0A40000023F00"), h("9F17"));
    assert_eq!(tx(card, "A0A40000022FE2"), h("9F0F"));
    let r = tx(card, "A0B000000A");
    assert_eq!(r[10..], [0x90, 0x00]);
    simpool::sim::profile::decode_iccid(&r[..10])
}

fn wait_log(serve: &Serve, what: &str) {
    let t0 = Instant::now();
    while !serve.log_text().contains(what) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no {what:?} in simpool's log:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the simpool binary: exit code, stdout, stderr.
fn simpool(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output_tied()
        .expect("run simpool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A slot's state as `simpool status --json` reports it.
fn slot_state(sim: &SimPool, card: usize) -> String {
    let (code, out, err) = simpool(&["status", "--pool", &sim.addr().to_string(), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[card - 1]["state"].as_str().unwrap().to_string()
}

#[test]
fn read_prints_atr_iccid_and_imsi_of_each_reader() {
    let sim = pool();
    let s = serve(&sim, 0, &["--card", "18", "--card", "256"], "read");
    let ctx = stack::context();
    shows_card(&ctx, 0, &s);
    shows_card(&ctx, 1, &s);
    // readers 0 and 1: "Virtual PCD 00 00", "Virtual PCD 00 01"
    let (code, out, err) = simpool(&["read", "--reader", "Virtual PCD 00 0", "--wait", "10"]);
    assert_eq!(code, Some(0), "{err}");
    let text: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(text.len(), 8, "{out}");
    assert_eq!(text[0].join(" "), "Virtual PCD 00 00");
    assert_eq!(text[1], ["ATR", &cards::atr(18)]);
    assert_eq!(text[2], ["ICCID", &cards::iccid(18)]);
    assert_eq!(text[3], ["IMSI", "001010000000018"]);
    assert_eq!(text[4].join(" "), "Virtual PCD 00 01");
    assert_eq!(text[7], ["IMSI", &cards::imsi(256)]);

    let (code, out, err) = simpool(&["read", "--reader", "Virtual PCD 00 01", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["reader"], "Virtual PCD 00 01");
    assert_eq!(
        v[0]["iccid"],
        sim.with_card(256, |c| c.profile().iccid.clone()).unwrap()
    );
    assert_eq!(v[0]["imsi"], cards::imsi(256));

    // a reader without a card: reported, exit 3
    let idle = name(15).into_string().unwrap();
    let (code, out, _) = simpool(&["read", "--reader", &idle]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("error"), "{out}");
}

#[test]
fn reset_cached_keeps_the_card_running() {
    let sim = pool();
    let s = serve(&sim, 2, &["--card", "3", "--reset", "cached"], "cached");
    let ctx = stack::context();
    shows_card(&ctx, 2, &s);
    let mut card = connect(&ctx, 2);
    let atr_before = atr(&card);
    assert_eq!(tx(&card, "A0A40000027F20"), h("9F17"));
    let resets = || {
        s.log_text()
            .lines()
            .filter(|l| l.ends_with(": Reset") || l.ends_with(": PowerOn"))
            .count()
    };
    let before = resets();
    card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
        .unwrap();
    assert!(
        resets() > before,
        "the reset reached simpool:\n{}",
        s.log_text()
    );
    // the selection survived the "reset", and the ATR is the cached one
    assert_eq!(tx(&card, "A0F2000017")[4..6], [0x7F, 0x20]);
    assert_eq!(atr(&card), atr_before);
    assert_eq!(slot_state(&sim, 3), "working");
}

#[test]
fn power_off_stops_the_card() {
    let sim = pool();
    let s = serve(&sim, 3, &["--card", "4"], "poweroff");
    let ctx = stack::context();
    shows_card(&ctx, 3, &s);
    let card = connect(&ctx, 3);
    assert_eq!(tx(&card, "A0A40000023F00"), h("9F17"));
    assert_eq!(slot_state(&sim, 4), "working");
    card.disconnect(Disposition::UnpowerCard)
        .map_err(|(_, e)| e)
        .unwrap();
    wait_log(&s, ": PowerOff");
    let t0 = Instant::now();
    while slot_state(&sim, 4) != "inserted" {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "card 4 still running after power-off:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the next application powers it on again
    let card = connect(&ctx, 3);
    assert_eq!(tx(&card, "A0A40000023F00"), h("9F17"));
    assert_eq!(slot_state(&sim, 4), "working");
}

#[test]
fn readers_bound_in_flag_order_by_identity_never_touching_a_used_card() {
    let sim = pool();
    let card5 = sim.with_card(5, |c| c.profile().iccid.clone()).unwrap();
    // readers 4..7: IMSI of card 256, card 18, ICCID of card 18 (used by reader 5: never found),
    // ICCID of card 5
    let s = serve(
        &sim,
        4,
        &[
            "--imsi",
            &cards::imsi(256),
            "--card",
            "18",
            "--iccid",
            &cards::iccid(18),
            "--iccid",
            &card5,
        ],
        "identity",
    );
    let ctx = stack::context();
    for i in [4, 5, 7] {
        shows_card(&ctx, i, &s);
    }
    let r4 = connect(&ctx, 4);
    assert_eq!(
        atr(&r4),
        h(&cards::atr(256)),
        "reader 4: card 256 (first flag)"
    );
    let r5 = connect(&ctx, 5);
    assert_eq!(iccid(&r5), cards::iccid(18), "reader 5: card 18");
    let r7 = connect(&ctx, 7);
    assert_eq!(iccid(&r7), card5, "reader 7: card 5 by ICCID");
    wait_log(
        &s,
        &format!(
            "ICCID {} unavailable: it is card 18, held by reader 1",
            cards::iccid(18)
        ),
    );
    assert!(
        stack::wait_card(&ctx, &name(6), false, Duration::ZERO),
        "reader 6 shows no card"
    );

    // Reader 6 keeps searching while an application uses card 18 on reader 5: the search
    // never restarts it, so the application's selection survives.
    assert_eq!(tx(&r5, "A0A40000027F20"), h("9F17"));
    let requests = || {
        sim.stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (before, t0) = (requests(), Instant::now());
    while requests() < before + 4 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no search ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = tx(&r5, "A0F2000017");
    assert!(
        status.len() == 25 && status[4..6] == [0x7F, 0x20],
        "card 18 touched: STATUS answered {}",
        hex::encode_upper(&status)
    );
    assert_eq!(slot_state(&sim, 18), "working");
}

#[test]
fn config_file_binds_readers_and_flags_override_it() {
    let sim = pool();
    let dir = std::env::temp_dir().join(format!("simpool-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("simpool.toml");
    // vpcd is wrong in the file: the flag overrides it
    std::fs::write(
        &file,
        format!(
            r#"
pool = "{}"
vpcd = "127.0.0.1:1"
command_timeout_ms = 1500
reply_timeout_ms = 1000
keepalive_ms = 5000
reset = "restart"

[[reader]]
card = 101
[[reader]]
iccid = "{}"
"#,
            sim.addr(),
            cards::iccid(18)
        ),
    )
    .unwrap();
    let vpcd = stack::pcscd(BASE_PORT).vpcd_addr(8);
    let s = Serve::start(
        &["--config", file.to_str().unwrap(), "--vpcd", &vpcd],
        "config",
    );
    let ctx = stack::context();
    shows_card(&ctx, 8, &s);
    shows_card(&ctx, 9, &s);
    let card101 = sim.with_card(101, |c| c.atr().to_vec()).unwrap();
    assert_eq!(atr(&connect(&ctx, 8)), card101, "reader 8: card 101");
    assert_eq!(iccid(&connect(&ctx, 9)), cards::iccid(18));
}

#[test]
fn an_empty_slot_shows_no_card() {
    let sim = pool();
    // card 200 is an empty slot in the built-in set; card 2 next to it is there
    let s = serve(&sim, 10, &["--card", "200", "--card", "2"], "empty");
    let ctx = stack::context();
    shows_card(&ctx, 11, &s);
    wait_log(&s, "card 200 unavailable");
    assert!(
        stack::wait_card(&ctx, &name(10), false, Duration::ZERO),
        "reader 10 shows no card"
    );
    assert!(matches!(
        ctx.connect(&name(10), ShareMode::Shared, Protocols::ANY),
        Err(pcsc::Error::NoSmartcard)
    ));
}

/// Median round trip of a STATUS through pcscd, vpcd and simpool.
fn median_round_trip(card: &pcsc::Card, n: usize) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(tx(card, "A0F2000016").len(), 0x18);
            t0.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

#[test]
fn no_quickack_costs_a_delayed_ack_per_exchange() {
    let sim = pool();
    let fast = serve(&sim, 12, &["--card", "5"], "quickack");
    let slow = serve(&sim, 13, &["--card", "6", "--no-quickack"], "no-quickack");
    let ctx = stack::context();
    shows_card(&ctx, 12, &fast);
    shows_card(&ctx, 13, &slow);
    let (a, b) = (connect(&ctx, 12), connect(&ctx, 13));
    let with = median_round_trip(&a, 21);
    let without = median_round_trip(&b, 21);
    eprintln!("median STATUS round trip: {with:?} with TCP_QUICKACK, {without:?} without");
    // Debian's vpcd sends length and payload in two writes: without QUICKACK the second
    // waits for the delayed ACK (~40 ms).
    assert!(
        without >= Duration::from_millis(25),
        "no delayed ACK seen without QUICKACK: {without:?}"
    );
    assert!(with * 3 < without, "{with:?} with vs {without:?} without");
}

#[test]
fn sim_listens_on_loopback_port_6666_by_default() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .arg("sim")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn_tied()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .find_map(|l| {
            let l = l.ok()?;
            l.contains("listening on").then_some(l)
        })
        .expect("simpool sim says where it listens");
    std::thread::spawn(move || lines.for_each(drop));
    let (code, out, err) = simpool(&["info", "--pool", "127.0.0.1:6666"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.ends_with("listening on 127.0.0.1:6666"), "{line}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("V053"), "{out}");
}
