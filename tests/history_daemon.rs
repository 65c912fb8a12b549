//! The daemon's history and labels (issue 19 §4, §5) through the real stack: a private pcscd
//! with vpcd readers, `simpool serve --history FILE` on a simulated pool that outlives the
//! daemons, PC/SC applications on its readers, the control API and the command line.
//!
//! - A reader's lease: its row has the card's ICCID, the holder, the PC/SC exchanges, the RUN
//!   GSM ALGORITHM and the wrong PIN the application sent, `released` when unbound; it is
//!   still there after a restart (the lease still held at the stop: `daemon-stopped`, with its
//!   end) and after `kill -9` (the lease held then: `daemon-crashed`, its end unknown).
//! - Labels set with `simpool label` survive the restarts, show in `scan`, `status`, the API,
//!   and `bind --label` binds a reader to a card that has them.
//! - A corrupt history file: moved aside with a warning, a new one started, the daemon serves
//!   and records.
//! - Card events: a mute card a reader tries is marked bad and the error indication sent; a
//!   card pulled out and put back is removed and inserted.
//! - A reader keeps its lease across sessions: its row ends `stopped-by-admin` on a forced
//!   stop and `link-lost` when the pool goes away, and a new row begins each time.
//!
//! Run it in a private network namespace:
//! `unshare -n sh -c 'ip link set lo up && cargo test --test history_daemon'`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::http::http;
use common::proc::Tied;
use common::stack::{self, Serve};
use serde_json::{json, Value};
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

const BASE_PORT: u16 = 29100;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("simpool-hd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn api(control: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, _, text) = http(control, method, path, &[], body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn simpool(control: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(args)
        .env("SIMPOOL_CONTROL", control)
        .env_remove("SIMPOOL_POOL")
        .env_remove("RUST_LOG")
        .output_tied()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// A daemon on `pool` with `--history`, readers 0 and 1 bound to cards 18 and 256.
fn serve(pool: &str, vpcd: &str, control: &str, history: &Path, log: &str) -> Serve {
    let s = Serve::start(
        &[
            "--pool",
            pool,
            "--vpcd",
            vpcd,
            "--card",
            "18",
            "--card",
            "256",
            "--control",
            control,
            "--history",
            history.to_str().unwrap(),
        ],
        log,
    );
    common::wait_for("the control API", Duration::from_secs(15), || {
        api(control, "GET", "/healthz", None).0 == 200
    });
    s
}

fn leases(control: &str, query: &str) -> Vec<Value> {
    let (status, v) = api(control, "GET", &format!("/api/v1/history?{query}"), None);
    assert_eq!(status, 200, "{v}");
    v["leases"].as_array().unwrap().clone()
}

/// Waits until card `card`'s history has a lease that `pred` accepts; answers it.
fn wait_lease(control: &str, card: u16, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    common::wait_for(what, Duration::from_secs(10), || {
        found = leases(control, &format!("card={card}"))
            .into_iter()
            .find(|l| pred(l));
        found.is_some()
    });
    found.unwrap()
}

fn stop_gently(mut s: Serve) {
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = s.child.wait().unwrap();
    assert!(st.success(), "serve ended with {st}: {}", s.log_text());
}

#[test]
fn history_rows_survive_a_restart_and_kill_9_and_labels_select_cards() {
    let pcscd = stack::pcscd(BASE_PORT);
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pool = sim.addr().to_string();
    let dir = Dir::new("restart");
    let db = dir.0.join("history.sqlite");
    let control = format!("127.0.0.1:{}", common::free_port());
    let vpcd = pcscd.vpcd_addr(0);
    let daemon = serve(&pool, &vpcd, &control, &db, "hd-1");

    // A PC/SC application on reader 0 (card 18): selections, one RUN GSM ALGORITHM, one
    // wrong PIN.
    let ctx = stack::context();
    let r0 = pcscd.reader_name(0);
    assert!(stack::wait_card(&ctx, &r0, true, Duration::from_secs(15)));
    {
        let card = ctx
            .connect(&r0, pcsc::ShareMode::Shared, pcsc::Protocols::T0)
            .unwrap();
        for _ in 0..3 {
            assert_eq!(stack::tx(&card, "A0A4000002 3F00")[0], 0x9F);
        }
        assert_eq!(stack::tx(&card, "A0A4000002 7F20")[0], 0x9F);
        let sres = stack::tx(&card, "A088000010 00112233445566778899AABBCCDDEEFF");
        assert_eq!(sres[0], 0x9F, "RUN GSM ALGORITHM: {sres:02X?}");
        let wrong = stack::tx(&card, "A020000208 3030303030FFFFFF");
        assert_eq!(wrong, [0x98, 0x04], "a wrong CHV2");
    }
    // While reader 0 holds it: an open row.
    let open = wait_lease(&control, 18, "card 18's open row", |l| l["why"].is_null());
    assert_eq!(open["front_end"], "reader 0");
    assert_eq!(open["holder_kind"], "reader");

    // Unbound: the row ends, with the lease's counters.
    let (status, v) = api(&control, "DELETE", "/api/v1/readers/0", None);
    assert_eq!(status, 200, "{v}");
    let row = wait_lease(&control, 18, "card 18's row to end", |l| {
        l["why"] == "released"
    });
    assert_eq!(row["iccid"], "89860043191482190636", "{row}");
    assert_eq!(row["card"], 18);
    assert!(row["end"].is_string(), "{row}");
    assert!(row["exchanges"].as_u64().unwrap() >= 6, "{row}");
    assert_eq!(row["authentications"], 1, "{row}");
    assert_eq!(row["pin_failures"], 1, "{row}");
    assert_eq!(row["user"], Value::Null);
    let id18 = row["id"].clone();
    // The history's own counters in the metrics.
    let (_, _, metrics) = http(&control, "GET", "/metrics", &[], None);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert!(value("simpool_history_records_written_total ") >= 2.0);
    assert_eq!(value("simpool_history_records_dropped_total "), 0.0);
    assert_eq!(value("simpool_history_records_failed_total "), 0.0);

    // The command line reads the same rows.
    let (code, out, err) = simpool(&control, &["history", "--card", "18", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let h = json(&out);
    assert!(
        h["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id18),
        "{h}"
    );
    let (code, out, err) = simpool(&control, &["history", "--since", "1h", "--limit", "50"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("released") && out.contains("reader 0"),
        "{out}"
    );
    assert_eq!(
        simpool(&control, &["history", "--since", "soon"]).0,
        Some(2),
        "a bad --since is a usage error"
    );
    let (status, e) = api(&control, "GET", "/api/v1/history?card=999", None);
    assert_eq!(status, 400, "{e}");

    // Labels: set, shown, selected by.
    let (code, out, err) = simpool(&control, &["label", "7", "site=lab", "rack=a1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("rack=a1, site=lab"), "{out}");
    let (code, _, err) = simpool(&control, &["label", "8", "site=lab"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = simpool(&control, &["label", "7", "bad key=x"]);
    assert_eq!(code, Some(2), "a bad label is a usage error: {err}");
    let (status, v) = api(
        &control,
        "PUT",
        "/api/v1/cards/8/labels",
        Some(r#"{"set":{"tmp":"1"},"remove":["site"]}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(v, json!({"tmp": "1"}));
    let (code, out, _) = simpool(&control, &["label", "8", "--remove", "tmp", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out), json!({}));
    let (_, v) = api(&control, "GET", "/api/v1/cards/7/labels", None);
    assert_eq!(v, json!({"rack": "a1", "site": "lab"}));
    let (code, out, err) = simpool(&control, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        json(&out)[6]["labels"],
        json!({"rack": "a1", "site": "lab"})
    );
    let (code, out, _) = simpool(&control, &["status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("labels: 7 rack=a1, site=lab"), "{out}");
    let (code, out, err) = simpool(&control, &["scan"]);
    assert_eq!(code, Some(0), "{err}");
    let line7 = out
        .lines()
        .find(|l| l.trim_start().starts_with("7 "))
        .unwrap();
    assert!(line7.ends_with("[rack=a1, site=lab]"), "{line7}");
    // bind --label: reader 0 to the only card labelled rack=a1, and it shows in PC/SC.
    let (code, out, err) = simpool(
        &control,
        &[
            "bind", "0", "--label", "site=lab", "--label", "rack=a1", "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json(&out)["binding"], json!({"card": 7}));
    assert!(stack::wait_card(&ctx, &r0, true, Duration::from_secs(15)));
    // Card 7 is held now: no free card has these labels.
    let (code, _, err) = simpool(&control, &["bind", "1", "--label", "rack=a1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no free inserted card has the labels rack=a1"),
        "{err}"
    );
    assert!(err.contains("card 7 held by reader 0"), "{err}");
    // reserve selects by labels too: card 8 (labelled again) is the free one with site=lab.
    let (code, _, err) = simpool(&control, &["label", "8", "site=lab"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = simpool(
        &control,
        &["reserve", "--label", "site=lab", "--for", "1m", "--json"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let r = json(&out);
    assert_eq!(r["card"], 8, "{out}");
    let (code, _, err) = simpool(&control, &["release", &r["id"].to_string()]);
    assert_eq!(code, Some(0), "{err}");
    // A label protects a card (issue 20 §3): protect=write refuses a write before it reaches
    // the card; without the label the same write gets the card's own answer.
    let write = Some(r#"{"tpdus":["A0A40000023F00","A0A40000022FE2","A0D6000001FF"]}"#);
    let (status, v) = api(&control, "POST", "/api/v1/cards/8/apdu", write);
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["responses"][2], "6982", "{v}");
    let (code, _, err) = simpool(&control, &["label", "8", "protect=write"]);
    assert_eq!(code, Some(0), "{err}");
    let (status, v) = api(&control, "POST", "/api/v1/cards/8/apdu", write);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["responses"][2], "6982", "{v}");
    let (code, _, err) = simpool(&control, &["label", "8", "--remove", "protect"]);
    assert_eq!(code, Some(0), "{err}");

    // A restart: the rows and labels stay; what was held at the stop ended daemon-stopped.
    stop_gently(daemon);
    let daemon = serve(&pool, &vpcd, &control, &db, "hd-2");
    let rows = leases(&control, "limit=100");
    assert!(rows
        .iter()
        .any(|l| l["id"] == id18 && l["why"] == "released"));
    let stopped = rows
        .iter()
        .find(|l| l["card"] == 256 && l["why"] == "daemon-stopped")
        .unwrap_or_else(|| panic!("card 256's lease not daemon-stopped: {rows:?}"));
    assert!(stopped["end"].is_string(), "{stopped}");
    let (_, v) = api(&control, "GET", "/api/v1/cards/7/labels", None);
    assert_eq!(v, json!({"rack": "a1", "site": "lab"}));

    // An API lease that ends, then kill -9: the ended row stays; the one held then is
    // daemon-crashed, its end unknown.
    let (status, v) = api(
        &control,
        "POST",
        "/api/v1/cards/5/apdu",
        Some(r#"{"tpdus":["A0A40000023F00"]}"#),
    );
    assert_eq!(status, 200, "{v}");
    let api_row = wait_lease(&control, 5, "card 5's API row", |l| l["why"] == "released");
    assert_eq!(api_row["holder_kind"], "api");
    assert_eq!(api_row["exchanges"], 1);
    let held = wait_lease(&control, 256, "card 256's row of the second daemon", |l| {
        l["why"].is_null()
    });
    let mut daemon = daemon;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(daemon);
    let _daemon = serve(&pool, &vpcd, &control, &db, "hd-3");
    let rows = leases(&control, "limit=100");
    let find = |id: &Value| rows.iter().find(|l| l["id"] == *id).cloned();
    assert_eq!(find(&api_row["id"]), Some(api_row.clone()), "{rows:?}");
    let crashed = find(&held["id"]).unwrap();
    assert_eq!(crashed["why"], "daemon-crashed", "{crashed}");
    assert_eq!(crashed["end"], Value::Null, "{crashed}");
    assert!(find(&id18).is_some());
}

#[test]
fn a_corrupt_history_file_is_moved_aside_and_the_daemon_serves_and_records() {
    let pcscd = stack::pcscd(BASE_PORT);
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let dir = Dir::new("corrupt");
    let db = dir.0.join("history.sqlite");
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&db, &junk).unwrap();
    let control = format!("127.0.0.1:{}", common::free_port());
    let daemon = serve(
        &sim.addr().to_string(),
        &pcscd.vpcd_addr(8),
        &control,
        &db,
        "hd-corrupt",
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("history.sqlite.corrupt-"))
        .filter(|p| !p.to_string_lossy().ends_with("-wal"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        junk,
        "the old file kept as it was"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("moved aside to") && log.contains("started a new one"),
        "{log}"
    );
    // It serves PC/SC and records in the new file.
    let ctx = stack::context();
    let r = pcscd.reader_name(8);
    assert!(stack::wait_card(&ctx, &r, true, Duration::from_secs(15)));
    {
        let card = ctx
            .connect(&r, pcsc::ShareMode::Shared, pcsc::Protocols::T0)
            .unwrap();
        assert_eq!(stack::tx(&card, "A0A4000002 3F00")[0], 0x9F);
    }
    let (status, _) = api(&control, "DELETE", "/api/v1/readers/0", None);
    assert_eq!(status, 200);
    let row = wait_lease(&control, 18, "a row in the new file", |l| {
        l["why"] == "released"
    });
    assert!(row["exchanges"].as_u64().unwrap() >= 1, "{row}");
}

#[test]
fn without_a_history_labels_and_history_say_what_they_need() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let control = format!("127.0.0.1:{}", common::free_port());
    let vpcd = format!("127.0.0.1:{}", common::free_port());
    let _daemon = Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--readers",
            "1",
            "--vpcd",
            &vpcd,
            "--control",
            &control,
            "--history",
            "off",
        ],
        "hd-off",
    );
    common::wait_for("the control API", Duration::from_secs(15), || {
        api(&control, "GET", "/healthz", None).0 == 200
    });
    let (code, _, err) = simpool(&control, &["label", "7", "site=lab"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("labels are kept in the history database"),
        "{err}"
    );
    let (code, _, err) = simpool(&control, &["history"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("keeps no history"), "{err}");
    let (status, v) = api(&control, "GET", "/api/v1/cards/7", None);
    assert_eq!(status, 200);
    assert_eq!(v["labels"], json!({}));
}

fn event_kinds(control: &str, card: u16) -> Vec<Value> {
    let (status, v) = api(
        control,
        "GET",
        &format!("/api/v1/history?card={card}"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

fn wait_event(control: &str, card: u16, kind: &str) -> Value {
    let mut found = None;
    common::wait_for(
        &format!("card {card} {kind}"),
        Duration::from_secs(20),
        || {
            found = event_kinds(control, card)
                .into_iter()
                .find(|e| e["kind"] == kind);
            found.is_some()
        },
    );
    found.unwrap()
}

#[test]
fn card_events_marked_bad_error_indication_removed_and_inserted() {
    let pcscd = stack::pcscd(BASE_PORT);
    let sim = common::sim_pool(
        CardsFile::default_set(),
        Faults {
            mute: [7].into(),
            ..Faults::default()
        },
    );
    let dir = Dir::new("events");
    let db = dir.0.join("history.sqlite");
    let control = format!("127.0.0.1:{}", common::free_port());
    let _daemon = Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--vpcd",
            &pcscd.vpcd_addr(12),
            "--card",
            "7",
            "--control",
            &control,
            "--history",
            db.to_str().unwrap(),
        ],
        "hd-events",
    );
    common::wait_for("the control API", Duration::from_secs(15), || {
        api(&control, "GET", "/healthz", None).0 == 200
    });
    // Reader 0 tries the mute card 7 until the card layer marks it bad.
    let bad = wait_event(&control, 7, "marked-bad");
    assert!(
        bad["detail"].as_str().unwrap().contains("did not start"),
        "{bad}"
    );
    let ind = wait_event(&control, 7, "error-indication");
    assert_eq!(ind["detail"], bad["detail"]);
    assert_eq!(sim.error_indications(7), 1);
    // Card 9 pulled out, then put back: the slot watcher sees both.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sim.pull(9));
    let removed = wait_event(&control, 9, "removed");
    assert!(sim.push(9));
    let inserted = wait_event(&control, 9, "inserted");
    assert!(inserted["time"].as_str() > removed["time"].as_str());
    // The command line lists them.
    let (code, out, err) = simpool(&control, &["history", "--card", "9"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("removed") && out.contains("inserted"), "{out}");
}

#[test]
fn a_readers_rows_end_stopped_by_an_admin_and_link_lost_and_it_goes_on() {
    let pcscd = stack::pcscd(BASE_PORT);
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let dir = Dir::new("reasons");
    let db = dir.0.join("history.sqlite");
    let control = format!("127.0.0.1:{}", common::free_port());
    let _daemon = serve(
        &sim.addr().to_string(),
        &pcscd.vpcd_addr(14),
        &control,
        &db,
        "hd-reasons",
    );
    let ctx = stack::context();
    let r = pcscd.reader_name(14);
    let present = |what: &str| {
        assert!(
            stack::wait_card(&ctx, &r, true, Duration::from_secs(20)),
            "{what}"
        );
        common::wait_for(what, Duration::from_secs(10), || {
            api(&control, "GET", "/api/v1/readers/0", None).1["state"] == "present"
        });
    };
    present("card 18 in reader 0");
    // An admin stops the card under its reader: the row ends so, the reader starts it again.
    let (status, v) = api(
        &control,
        "POST",
        "/api/v1/cards/18/stop",
        Some(r#"{"force":true}"#),
    );
    assert_eq!(status, 200, "{v}");
    let stopped = wait_lease(&control, 18, "a stopped-by-admin row", |l| {
        l["why"] == "stopped-by-admin"
    });
    assert_eq!(stopped["front_end"], "reader 0");
    present("card 18 back in reader 0");
    let next = wait_lease(&control, 18, "the reader's next row", |l| {
        l["why"].is_null() && l["id"].as_i64() > stopped["id"].as_i64()
    });
    // The pool goes away for a moment: that row ends link-lost, and another begins.
    sim.restart(Duration::from_millis(1500));
    let lost = wait_lease(&control, 18, "a link-lost row", |l| l["why"] == "link-lost");
    assert_eq!(lost["id"], next["id"]);
    present("card 18 in reader 0 after the pool came back");
    wait_lease(&control, 18, "a row after the link came back", |l| {
        l["why"].is_null() && l["id"].as_i64() > lost["id"].as_i64()
    });
}

/// The user and reservation a holder acts for (issue 19 §2, §3) go into its lease's row,
/// open and ended; a lease without them has none.
#[tokio::test(flavor = "current_thread")]
async fn a_leases_owner_is_recorded_when_it_has_one() {
    use simpool::cards::{Cards, Front, Holder, Owner, ReservationRef};
    use simpool::history::{EndReason, History, Options, Query};
    use simpool::pool::{Link, LinkOptions};
    use simpool::values::CardNo;

    let sim =
        simpool::sim::SimPool::start("127.0.0.1:0", CardsFile::default_set(), Faults::default())
            .await
            .unwrap();
    let link = Link::spawn(&sim.addr().to_string(), LinkOptions::default());
    assert!(link.wait_up(Duration::from_secs(5)).await);
    let dir = Dir::new("owner");
    let h = History::open(Options::new(dir.0.join("history.sqlite"))).unwrap();
    let cards = Cards::new(link, Vec::new());
    cards.set_history(h.clone());
    let by_card = |card: u16| Query {
        card: Some(card),
        ..Query::default()
    };

    let mut lease = cards
        .lease(CardNo::of(3), Holder::Api("test".into()))
        .unwrap();
    lease.set_owner(Owner {
        user: Some("alice".into()),
        reservation: Some(ReservationRef {
            id: 17,
            note: Some("nightly CI".into()),
        }),
    });
    lease.start().await.unwrap();
    h.flush().await;
    let open = h.leases(by_card(3)).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].why, None);
    assert_eq!(open[0].began.user.as_deref(), Some("alice"));
    assert_eq!(open[0].began.reservation, Some(17));
    lease
        .transmit(
            &common::hex("A0A4000002 3F00"),
            Duration::from_secs(2),
            Front::Api,
        )
        .await
        .unwrap();
    lease.release().await;
    h.flush().await;
    let rows = h
        .leases(Query {
            user: Some("alice".into()),
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.why, Some(EndReason::Released));
    assert_eq!(r.began.note.as_deref(), Some("nightly CI"));
    assert_eq!(r.began.front_end, "API request from test");
    assert_eq!(r.counters.exchanges, 1);

    // No owner: no user, no reservation. A lease that never started its card: no row.
    let mut plain = cards
        .lease(CardNo::of(4), Holder::Api("test".into()))
        .unwrap();
    plain.start().await.unwrap();
    plain.release().await;
    let idle = cards
        .lease(CardNo::of(5), Holder::Api("test".into()))
        .unwrap();
    idle.release().await;
    h.flush().await;
    let four = h.leases(by_card(4)).await.unwrap();
    assert_eq!(
        (four[0].began.user.clone(), four[0].began.reservation),
        (None, None)
    );
    assert!(h.leases(by_card(5)).await.unwrap().is_empty());
    h.close().await;
}
