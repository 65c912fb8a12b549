//! The daemon as the single owner of the pool, through the real pcscd + vpcd: readers bound,
//! rebound and unbound at runtime while others run, card leases, the control API against bad
//! input, the state file. Needs pcscd and vsmartcard-vpcd (`driver/pcscd-private install`).

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::call as http;
use common::stack::{self, try_tx as tx, Serve};
use pcsc::{Context, Disposition, Protocols, ShareMode};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 27100;

/// A daemon with `readers` readers starting at vpcd reader `first`, its control API on `control`.
struct Daemon {
    serve: Serve,
    control: String,
    names: Vec<CString>,
}

fn daemon(sim: &SimPool, first: u16, readers: u16, control: u16, extra: &[&str]) -> Daemon {
    let pcscd = stack::pcscd(BASE_PORT);
    let control = format!("127.0.0.1:{control}");
    let mut args: Vec<String> = vec![
        "--pool".into(),
        sim.addr().to_string(),
        "--vpcd".into(),
        pcscd.vpcd_addr(first),
        "--readers".into(),
        readers.to_string(),
        "--control".into(),
        control.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(&refs, &format!("runtime{first}"));
    let names = (0..readers).map(|i| pcscd.reader_name(first + i)).collect();
    let d = Daemon {
        serve,
        control,
        names,
    };
    let end = Instant::now() + Duration::from_secs(10);
    while http(&d.control, "GET", "/healthz", None).0 != 200 {
        assert!(
            Instant::now() < end,
            "control API did not come up; log:\n{}",
            d.serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

impl Daemon {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_simpool"))
            .args(args)
            .args(["--control", &self.control])
            .env_remove("SIMPOOL_POOL")
            .output_tied()
            .expect("run simpool")
    }

    fn wait(&self, ctx: &Context, i: usize, present: bool) {
        assert!(
            stack::wait_card(ctx, &self.names[i], present, Duration::from_secs(10)),
            "reader {i} did not become {}; log:\n{}",
            if present { "present" } else { "empty" },
            self.serve.log_text()
        );
    }
}

/// A raw HTTP answer (of a request the test wrote by hand): status and body.
fn parse_response(out: &str) -> (u16, String) {
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

fn connect(ctx: &Context, name: &CString) -> pcsc::Card {
    ctx.connect(name, ShareMode::Shared, Protocols::ANY)
        .expect("connect")
}

fn iccid_of(sim: &SimPool, card: u16) -> String {
    sim.with_card(card, |c| c.profile().iccid.clone())
        .expect("a card in that slot")
}

/// Reader 0 runs an exchange loop (SELECT + READ BINARY of EF.ICCID) on its card until told to
/// stop; answers (exchanges, failures, slowest).
fn exchange_loop(
    ctx_name: CString,
    stop: Arc<AtomicBool>,
    expect_iccid: Vec<u8>,
) -> std::thread::JoinHandle<(u64, u64, Duration)> {
    std::thread::spawn(move || {
        let ctx = stack::context();
        let card = connect(&ctx, &ctx_name);
        let (mut n, mut failures, mut slowest) = (0u64, 0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = tx(&card, "A0A40000023F00").is_ok_and(|r| r[0] == 0x9F)
                && tx(&card, "A0A40000022FE2").is_ok_and(|r| r[0] == 0x9F)
                && tx(&card, "A0B000000A").is_ok_and(|r| r == expect_iccid);
            slowest = slowest.max(t.elapsed());
            n += 3;
            if !ok {
                failures += 1;
            }
        }
        let _ = card.disconnect(Disposition::LeaveCard);
        (n, failures, slowest)
    })
}

fn raw_iccid(sim: &SimPool, card: u16) -> Vec<u8> {
    let mut v = simpool::sim::profile::encode_iccid(&iccid_of(sim, card)).to_vec();
    v.extend_from_slice(&[0x90, 0x00]);
    v
}

#[test]
fn bind_rebind_unbind_while_another_reader_runs() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = daemon(&sim, 0, 2, 27190, &["--card", "18"]);
    let ctx = stack::context();
    d.wait(&ctx, 0, true);
    // Reader 1 starts without a card.
    d.wait(&ctx, 1, false);

    let stop = Arc::new(AtomicBool::new(false));
    let frames = || sim.stats().card_frames_in.load(Ordering::Relaxed);
    let before = frames();
    let looper = exchange_loop(d.names[0].clone(), stop.clone(), raw_iccid(&sim, 18));
    // Rebinding starts once reader 0's loop is busy on the pool (a few rounds of its frames).
    common::wait_for("reader 0 exchanging", Duration::from_secs(10), || {
        frames() >= before + 20
    });

    for (card, imsi) in [
        (256u16, Some(cards::imsi(256).as_str())),
        (2, None),
        (101, None),
    ] {
        let out = d.cli(&["bind", "1", "--card", &card.to_string()]);
        assert!(
            out.status.success(),
            "bind: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait(&ctx, 1, true);
        let c = connect(&ctx, &d.names[1]);
        let (iccid, got_imsi) = simpool::client::read_identity(&c).expect("read through reader 1");
        assert_eq!(iccid, iccid_of(&sim, card), "card {card} in reader 1");
        if let Some(imsi) = imsi {
            assert_eq!(got_imsi.as_deref(), Some(imsi));
        }
        let _ = c.disconnect(Disposition::LeaveCard);
    }
    let out = d.cli(&["unbind", "1"]);
    assert!(out.status.success());
    d.wait(&ctx, 1, false);
    let (_, body) = http(&d.control, "GET", "/api/v1/readers/1", None);
    let r = json(&body);
    assert_eq!(r["state"], "absent");
    assert_eq!(r["binding"], serde_json::Value::Null);

    stop.store(true, Ordering::Relaxed);
    let (n, failures, slowest) = looper.join().unwrap();
    assert!(n > 30, "reader 0 kept exchanging ({n})");
    assert_eq!(failures, 0, "reader 0 disturbed ({n} exchanges)");
    // Within the command bound (1.5 s); no exchange waited on another reader's rebinding.
    assert!(slowest < Duration::from_millis(1500), "{slowest:?}");
}

#[test]
fn rebinding_shows_removal_first_and_the_right_card_every_time() {
    let rounds: usize = std::env::var("SIMPOOL_REBINDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = daemon(&sim, 2, 1, 27191, &["--card", "1"]);
    let ctx = stack::context();
    d.wait(&ctx, 0, true);
    let cards: Vec<u16> = (1..=32).collect();
    let mut held = connect(&ctx, &d.names[0]);
    for i in 0..rounds {
        let card = cards[(i + 1) % cards.len()];
        let (status, body) = http(
            &d.control,
            "PUT",
            "/api/v1/readers/0",
            Some(&format!("{{\"card\":{card}}}")),
        );
        assert_eq!(status, 200, "round {i}: {body}");
        // The handle opened on the previous card must see it removed, never the new card.
        match tx(&held, "A0A40000023F00") {
            Err(pcsc::Error::RemovedCard | pcsc::Error::ResetCard | pcsc::Error::NoSmartcard) => {}
            other => panic!("round {i}: old handle got {other:?} instead of 'card removed'"),
        }
        let _ = held.disconnect(Disposition::LeaveCard);
        d.wait(&ctx, 0, true);
        held = connect(&ctx, &d.names[0]);
        let (iccid, _) = simpool::client::read_identity(&held).expect("read");
        assert_eq!(iccid, iccid_of(&sim, card), "round {i}: card {card}");
    }
}

#[test]
fn two_clients_racing_for_one_card_one_wins() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = daemon(&sim, 4, 2, 27192, &[]);
    let ctx = stack::context();
    for card in [5u16, 6, 7, 8, 9] {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| d.cli(&["bind", "0", "--card", &card.to_string()]));
            let b = s.spawn(|| d.cli(&["bind", "1", "--card", &card.to_string()]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "card {card}: exactly one bind wins");
        let loser = if a.status.success() { &b } else { &a };
        let err = String::from_utf8_lossy(&loser.stderr);
        assert!(err.contains("held by reader"), "{err}");
        // And the API says 409 naming the holder.
        let winner = if a.status.success() { 0 } else { 1 };
        let (status, body) = http(
            &d.control,
            "PUT",
            &format!("/api/v1/readers/{}", 1 - winner),
            Some(&format!("{{\"card\":{card}}}")),
        );
        assert_eq!(status, 409, "{body}");
        assert_eq!(json(&body)["holder"], format!("reader {winner}"));
        d.wait(&ctx, winner, true);
        for r in ["0", "1"] {
            assert!(d.cli(&["unbind", r]).status.success());
        }
    }
}

#[test]
fn scan_through_the_daemon_leaves_a_live_session_intact() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = daemon(&sim, 6, 1, 27193, &["--card", "18"]);
    let ctx = stack::context();
    d.wait(&ctx, 0, true);
    let card = connect(&ctx, &d.names[0]);
    for sel in ["A0A40000023F00", "A0A40000027F10", "A0A40000026F3A"] {
        assert_eq!(tx(&card, sel).unwrap()[0], 0x9F, "{sel}");
    }
    let record = tx(&card, "A0B201041E").unwrap();
    assert_eq!(record.len(), 32);
    assert_eq!(record[30..], [0x90, 0x00]);

    let out = d.cli(&["scan", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json(&String::from_utf8_lossy(&out.stdout));
    let row18 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["card"] == 18)
        .expect("card 18 listed");
    assert_eq!(row18["holder"], "reader 0");
    assert_eq!(row18["iccid"], cards::iccid(18));
    assert!(
        rows.as_array().unwrap().len() > 30,
        "the free cards were read"
    );

    // Same selection, same record: the card was not restarted under the application.
    assert_eq!(tx(&card, "A0B201041E").unwrap(), record, "not 94 08");
    let _ = card.disconnect(Disposition::LeaveCard);

    // status and apdu go through the daemon too, and respect the lease.
    let out = d.cli(&["status", "--json"]);
    let st = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(st[17]["holder"], "reader 0");
    let out = d.cli(&["apdu", "--card", "18", "A0F2000016"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by reader 0"));
    let out = d.cli(&["apdu", "--card", "2", "A0A40000023F00"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "9F17");
}

#[test]
fn bad_api_input_gets_its_status_and_the_daemon_keeps_serving() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let d = daemon(&sim, 8, 1, 27194, &[]);
    let c = d.control.as_str();
    let within = |what: &str, f: &dyn Fn() -> (u16, String), want: u16| {
        let t = Instant::now();
        let (status, body) = f();
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{what}: {:?}",
            t.elapsed()
        );
        if want >= 400 {
            assert!(json(&body)["error"].is_string(), "{what}: {body}");
        }
        assert_eq!(http(c, "GET", "/healthz", None).0, 200, "after {what}");
    };
    within(
        "malformed JSON",
        &|| http(c, "PUT", "/api/v1/readers/0", Some("{\"card\":")),
        400,
    );
    within(
        "unknown reader",
        &|| http(c, "PUT", "/api/v1/readers/7", Some("{\"card\":2}")),
        404,
    );
    within(
        "reader not a number",
        &|| http(c, "GET", "/api/v1/readers/x", None),
        404,
    );
    within(
        "card 0",
        &|| http(c, "PUT", "/api/v1/readers/0", Some("{\"card\":0}")),
        422,
    );
    within(
        "card 257",
        &|| http(c, "PUT", "/api/v1/readers/0", Some("{\"card\":257}")),
        422,
    );
    within(
        "IMSI not digits",
        &|| {
            http(
                c,
                "PUT",
                "/api/v1/readers/0",
                Some("{\"imsi\":\"46001abc\"}"),
            )
        },
        422,
    );
    within(
        "unknown path",
        &|| http(c, "GET", "/api/v2/nothing", None),
        404,
    );
    within(
        "wrong method",
        &|| http(c, "POST", "/api/v1/readers", None),
        405,
    );
    within(
        "apdu card 300",
        &|| {
            http(
                c,
                "POST",
                "/api/v1/cards/300/apdu",
                Some("{\"tpdus\":[\"A0F2000016\"]}"),
            )
        },
        404,
    );
    within(
        "apdu bad hex",
        &|| {
            http(
                c,
                "POST",
                "/api/v1/cards/2/apdu",
                Some("{\"tpdus\":[\"A0Z\"]}"),
            )
        },
        422,
    );
    within(
        "1 MB body",
        &|| {
            let big = format!("{{\"card\":\"{}\"}}", "9".repeat(1 << 20));
            http(c, "PUT", "/api/v1/readers/0", Some(&big))
        },
        413,
    );

    // A client that sends half a request and stalls, and 200 idle connections: others go on.
    let stalled_at = Instant::now();
    let mut stalled = TcpStream::connect(c).unwrap();
    stalled
        .write_all(b"PUT /api/v1/readers/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"ca")
        .unwrap();
    let mut half_header = TcpStream::connect(c).unwrap();
    half_header.write_all(b"GET /api/v1/rea").unwrap();
    let idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(c).unwrap()).collect();
    within(
        "healthz beside stalled clients",
        &|| http(c, "GET", "/healthz", None),
        200,
    );
    within(
        "readers beside stalled clients",
        &|| http(c, "GET", "/api/v1/readers", None),
        200,
    );
    // The stalled body gets its answer (408) within the body timeout, not never.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = String::new();
    let _ = stalled.read_to_string(&mut out);
    assert_eq!(parse_response(&out).0, 408, "{out}");
    assert!(
        stalled_at.elapsed() < Duration::from_millis(1500),
        "408 after {:?}",
        stalled_at.elapsed()
    );
    // Half a header line: the connection is closed once the header timeout (1 s) passes.
    half_header
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = half_header.read_to_end(&mut rest);
    assert!(
        stalled_at.elapsed() < Duration::from_millis(2500),
        "half a header held the connection for {:?}",
        stalled_at.elapsed()
    );
    drop(idle);
    drop(half_header);
    within(
        "readers after",
        &|| http(c, "GET", "/api/v1/readers", None),
        200,
    );
    within("cards", &|| http(c, "GET", "/api/v1/cards", None), 200);
    let (_, body) = http(c, "GET", "/api/v1/cards", None);
    assert_eq!(json(&body).as_array().unwrap().len(), 256);
}

#[test]
fn a_lease_ends_with_an_http_client_that_goes_away() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    sim.update_faults(|f| {
        f.latency_min = Duration::from_millis(30);
        f.latency_max = Duration::from_millis(30);
    });
    let d = daemon(&sim, 9, 1, 27195, &[]);
    let tpdus: Vec<String> = (0..200).map(|_| "\"A0F2000016\"".to_string()).collect();
    let body = format!("{{\"tpdus\":[{}]}}", tpdus.join(","));
    let mut s = TcpStream::connect(&d.control).unwrap();
    write!(
        s,
        "POST /api/v1/cards/3/apdu HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The request holds card 3 …
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, b) = http(&d.control, "GET", "/api/v1/cards/3", None);
        if json(&b)["holder"]
            .as_str()
            .is_some_and(|h| h.starts_with("API request"))
        {
            break;
        }
        assert!(Instant::now() < end, "card 3 never held: {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // … until its client disconnects mid-request.
    drop(s);
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, b) = http(&d.control, "GET", "/api/v1/cards/3", None);
        let v = json(&b);
        if v["holder"].is_null() {
            assert_ne!(v["state"], "working", "card stopped when freed: {b}");
            break;
        }
        assert!(Instant::now() < end, "lease outlived its client: {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bindings_survive_a_restart_and_a_corrupt_state_file_is_ignored() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let dir = std::env::temp_dir().join(format!("simpool-runtime-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let state_s = state.to_str().unwrap();
    let ctx = stack::context();
    {
        let d = daemon(&sim, 10, 2, 27196, &["--card", "18", "--state", state_s]);
        let out = d.cli(&["bind", "1", "--card", "256"]);
        assert!(out.status.success());
        d.wait(&ctx, 1, true);
    }
    let saved = json(&std::fs::read_to_string(&state).unwrap());
    assert_eq!(saved["readers"][1]["card"], 256);
    {
        let d = daemon(&sim, 10, 2, 27196, &["--card", "18", "--state", state_s]);
        d.wait(&ctx, 1, true);
        let out = d.cli(&["readers", "--json"]);
        let r = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(r[1]["binding"]["card"], 256, "restored");
        assert_eq!(r[0]["binding"]["card"], 18);
    }
    std::fs::write(&state, b"{\"version\":1,\"readers\":[{\"card\":").unwrap();
    {
        let d = daemon(&sim, 10, 2, 27196, &["--card", "18", "--state", state_s]);
        d.wait(&ctx, 0, true);
        let (_, body) = http(&d.control, "GET", "/api/v1/readers/1", None);
        assert_eq!(json(&body)["binding"], serde_json::Value::Null);
        assert!(d.serve.log_text().contains("corrupt"), "logged");
        // And a bind rewrites it whole.
        assert!(d.cli(&["bind", "1", "--card", "2"]).status.success());
    }
    let saved = json(&std::fs::read_to_string(&state).unwrap());
    assert_eq!(saved["readers"][1]["card"], 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
