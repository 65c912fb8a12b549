//! Card services' authentication (issue 20 §1): the sim-rest API against osmocom pySim's own
//! `contrib/sim-rest-client.py` (unmodified; skipped loudly without `SIMPOOL_PYSIM`), its error
//! answers, the control API's `POST /api/v1/cards/{n}/authenticate` (3G and 2G), `simpool auth`
//! and the metrics. Run inside `unshare -n` (listens on loopback ports).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::http;
use serde_json::{json, Value};
use simpool::cards::Holder;
use simpool::config::{self, FileConfig};
use simpool::serve::Running;
use simpool::sim::algo::{run_gsm, Algo};
use simpool::sim::auth::{c2_c3, Milenage, MilenageConsts};
use simpool::sim::profile::{generated, generated_usim, TS_35_208_SET1_K, TS_35_208_SET1_OPC};
use simpool::values::{CardNo, PoolAddr};

/// TS 35.208 test set 1 on card 20 (whose SQN makes this AUTN fresh once).
const RAND: &str = "23553cbe9637a89d218ae64dae47bf35";
const AUTN: &str = "55f328b43577b9b94a9ffac354dfafb3";

struct Daemon {
    running: Running,
    rest: String,
    control: String,
    _rt: tokio::runtime::Runtime,
}

/// A daemon on the built-in simulated pool with the sim-rest and control APIs, no reader.
fn daemon() -> Daemon {
    daemon_on("127.0.0.1:0")
}

/// [`daemon`] with the sim-rest API on `rest`.
fn daemon_on(rest: &str) -> Daemon {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A history of its own, so the leases' rows can be looked at.
    static DAEMONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let history = std::env::temp_dir().join(format!(
        "simpool-sim-rest-{}-{}.sqlite",
        std::process::id(),
        DAEMONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&history);
    let file = FileConfig {
        pool: Some(PoolAddr::Sim),
        control: Some("127.0.0.1:0".into()),
        sim_rest: Some(rest.into()),
        history: Some(history.display().to_string()),
        ..FileConfig::default()
    };
    let cfg = config::resolve(file, FileConfig::default()).unwrap();
    assert!(cfg.readers.is_empty(), "sim-rest needs no reader");
    let running = rt.block_on(async {
        let r = simpool::serve::start(cfg).await.unwrap();
        assert!(r.link().wait_up(Duration::from_secs(5)).await);
        r
    });
    Daemon {
        rest: running.sim_rest.unwrap().to_string(),
        control: running.control.unwrap().to_string(),
        running,
        _rt: rt,
    }
}

fn post(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let r = http::request(addr, "POST", path, &[], Some(body)).unwrap();
    (r.status, r.json())
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let r = http::request(addr, "GET", path, &[], None).unwrap();
    (r.status, r.json())
}

fn challenge() -> String {
    json!({"rand": RAND, "autn": AUTN}).to_string()
}

/// pySim's source directory, or `None` (and a loud line) when it is not installed.
fn pysim() -> Option<PathBuf> {
    match std::env::var_os("SIMPOOL_PYSIM") {
        Some(p)
            if PathBuf::from(&p)
                .join("contrib/sim-rest-client.py")
                .exists() =>
        {
            Some(p.into())
        }
        _ => {
            eprintln!(
                "*** SKIPPED: pySim's sim-rest-client.py (set SIMPOOL_PYSIM to what driver/pysim-build prints)"
            );
            None
        }
    }
}

/// Runs pySim's client against the daemon's sim-rest port; answers (exit success, output).
/// Its `-p` takes the port as text and then fails to format it (`%u format: a real number is
/// required, not str`): the client works on its default port 8000 only, so the daemon is there.
fn client(src: &std::path::Path, rest: &str, args: &[&str]) -> (bool, String) {
    assert!(rest.ends_with(":8000"), "{rest}");
    let out = common::proc::output(
        Command::new(src.join("../../venv/bin/python"))
            .arg(src.join("contrib/sim-rest-client.py"))
            .args(["-H", "127.0.0.1"])
            .args(args)
            .env("PYTHONUNBUFFERED", "1"),
    )
    .expect("run sim-rest-client.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn usim_keys(card: u16) -> (String, String) {
    let p = generated_usim(card);
    let Algo::Milenage { opc } = p.algo else {
        panic!("card {card} is no Milenage USIM")
    };
    (hex::encode(p.ki), hex::encode(opc))
}

#[test]
fn pysims_client_reads_info_and_runs_aka_from_a_stale_sqn() {
    let Some(src) = pysim() else { return };
    let d = daemon_on("127.0.0.1:8000");
    // Slot 3 is card 4, a USIM.
    let (ok, out) = client(&src, &d.rest, &["-n", "3", "info"]);
    assert!(ok, "{out}");
    let p = generated_usim(4);
    assert!(
        out.contains(&format!(
            "<- {{'imsi': '{}', 'iccid': '{}'}}",
            p.imsi, p.iccid
        )),
        "{out}"
    );
    // Card 6 starts from SQN 0 on the network side but the client's SQN 0 is not fresh for a
    // card that has seen SQN 0 already: the first round below ends in a resynchronisation.
    let (k, opc) = usim_keys(6);
    let (ok, out) = client(
        &src,
        &d.rest,
        &[
            "-n",
            "5",
            "auth",
            "-k",
            &k,
            "-o",
            &opc,
            "-c",
            "7",
            "-s",
            "000000000000",
        ],
    );
    assert!(ok, "{out}");
    let wins = out.matches("successful_3g_authentication").count();
    assert!(wins >= 5, "want at least 5 AKA rounds:\n{out}");
    assert!(!out.contains("ERROR"), "{out}");
    assert!(!out.contains("Traceback"), "{out}");

    // Card 20's SQN is far ahead of the client's 0: a synchronisation failure first, the
    // client resynchronises from the AUTS (and checks it), then RES/CK/IK check out (the
    // client asserts them itself) round after round.
    let k = hex::encode(TS_35_208_SET1_K);
    let opc = hex::encode(TS_35_208_SET1_OPC);
    let (ok, out) = client(
        &src,
        &d.rest,
        &[
            "-n",
            "19",
            "auth",
            "-k",
            &k,
            "-o",
            &opc,
            "-c",
            "6",
            "-s",
            "000000000000",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out.matches("synchronisation_failure").count(), 1, "{out}");
    assert!(out.contains("SQN_MS = ff9bb4d0b5e7"), "{out}");
    assert_eq!(
        out.matches("successful_3g_authentication").count(),
        5,
        "{out}"
    );
    assert!(
        !out.contains("ERROR") && !out.contains("Traceback"),
        "{out}"
    );

    // A 2G SIM (slot 2 is card 3) is refused with a JSON error; the client prints it and stops.
    let (k, _) = usim_keys(4);
    let (_, out) = client(
        &src,
        &d.rest,
        &["-n", "2", "auth", "-k", &k, "-o", &k, "-c", "2"],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("<- ERROR 500: "))
        .unwrap_or_else(|| panic!("no error answer:\n{out}"));
    let v: Value = serde_json::from_str(line.trim_start_matches("<- ERROR 500: ")).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a USIM"),
        "{v}"
    );
    assert!(v["error"]["status_word"].is_string(), "{v}");
    assert_eq!(
        out.matches("-> {").count(),
        1,
        "the client stops at the error:\n{out}"
    );

    // Every request was counted.
    let m = http::request(&d.control, "GET", "/metrics", &[], None).unwrap();
    let line = |result: &str| {
        m.body
            .lines()
            .find(|l| {
                l.starts_with("simpool_authentications_total{")
                    && l.contains("via=\"sim-rest\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {result} series:\n{}", m.body))
    };
    assert!(line("success") >= 10);
    assert!(line("sync_failure") >= 2);
    assert_eq!(line("card_error"), 1);
}

#[test]
fn sim_rest_answers_pysims_shapes_and_errors() {
    let d = daemon();
    // Card 20: TS 35.208 set 1, fresh once, then the same SQN again is a resynchronisation.
    let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/19", &challenge());
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"successful_3g_authentication": {
            "res": "a54211d5e3ba50bf",
            "ck": "b40ba9a3c58b2a05bbf0d987b21bf8cb",
            "ik": "f769bcd751044604127672711c6d3441",
            "kc": "eae4be823af9a08b",
        }})
    );
    let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/19", &challenge());
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["synchronisation_failure"]["auts"].as_str().map(str::len),
        Some(28),
        "{v}"
    );
    // The history has each request's lease as a sim-rest one, named by its peer.
    let mut rows = Vec::new();
    common::wait_for("card 20's sim-rest rows", Duration::from_secs(10), || {
        let (status, v) = get(&d.control, "/api/v1/history?card=20");
        assert_eq!(status, 200, "{v}");
        rows = v["leases"].as_array().unwrap().clone();
        rows.retain(|l| l["authentications"] == 1);
        rows.len() >= 2
    });
    for l in &rows {
        assert_eq!(l["holder_kind"], "sim-rest", "{l}");
        assert!(
            l["front_end"]
                .as_str()
                .unwrap()
                .starts_with("sim-rest request from 127.0.0.1:"),
            "{l}"
        );
        assert!(l["end"].is_string(), "{l}");
    }
    // Another card's key: the MAC does not check out.
    let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/3", &challenge());
    assert_eq!(status, 500, "{v}");
    assert_eq!(v["error"]["status_word"], "9862", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Card Authentication Error - Incorrect MAC"),
        "{v}"
    );
    // Info.
    let (status, v) = get(&d.rest, "/sim-info-api/v1/slot/3");
    assert_eq!(status, 200, "{v}");
    let p = generated_usim(4);
    assert_eq!(v, json!({"imsi": p.imsi, "iccid": p.iccid}));
    // 400 malformed, 404 no such slot, 410 no card.
    for bad in [
        "",
        "{",
        "{\"rand\":\"00\",\"autn\":\"00\"}",
        "{\"autn\":\"x\"}",
    ] {
        let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/19", bad);
        assert_eq!(status, 400, "{bad:?}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"].get("status_word").is_some(), "{v}");
    }
    for slot in ["256", "9999", "x"] {
        let (status, v) = post(
            &d.rest,
            &format!("/sim-auth-api/v1/slot/{slot}"),
            &challenge(),
        );
        assert_eq!(status, 404, "{slot}: {v}");
        let (status, _) = get(&d.rest, &format!("/sim-info-api/v1/slot/{slot}"));
        assert_eq!(status, 404, "{slot}");
    }
    let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/49", &challenge());
    assert_eq!(status, 410, "card 50's slot is empty: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No SIM card"),
        "{v}"
    );
    let (status, _) = get(&d.rest, "/sim-info-api/v1/slot/49");
    assert_eq!(status, 410);
    // 409 while someone else holds the card, naming the holder; the card is not touched.
    let lease = d
        .running
        .daemon
        .cards
        .lease(CardNo::of(8), Holder::Reader(3))
        .unwrap();
    let (status, v) = post(&d.rest, "/sim-auth-api/v1/slot/7", &challenge());
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["holder"], "reader 3", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("reader 3"),
        "{v}"
    );
    let (status, _) = get(&d.rest, "/sim-info-api/v1/slot/7");
    assert_eq!(status, 409);
    drop(lease);
    common::wait_for("card 8 free", Duration::from_secs(5), || {
        d.running.daemon.cards.holder(CardNo::of(8)).is_none()
    });
    let (status, v) = get(&d.rest, "/sim-info-api/v1/slot/7");
    assert_eq!(status, 200, "{v}");
    // Each request's lease ended with it.
    assert_eq!(d.running.daemon.cards.leases_held(), 0);
}

#[test]
fn control_api_authenticates_3g_and_2g() {
    let d = daemon();
    let path = |n: u16| format!("/api/v1/cards/{n}/authenticate");
    let (status, v) = post(&d.control, &path(20), &challenge());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["context"], "3g");
    assert_eq!(v["result"], "success");
    assert_eq!(v["res"], "A54211D5E3BA50BF");
    assert_eq!(v["ck"], "B40BA9A3C58B2A05BBF0D987B21BF8CB");
    assert_eq!(v["ik"], "F769BCD751044604127672711C6D3441");
    assert_eq!(v["sres"], Value::Null);
    assert_eq!(v["auts"], Value::Null);
    let (status, v) = post(&d.control, &path(20), &challenge());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "sync_failure");
    assert!(v["auts"].is_string() && v["res"].is_null(), "{v}");

    // 2G on a SIM (card 3, XOR-2G): RUN GSM ALGORITHM.
    let rand: [u8; 16] = hex::decode(RAND).unwrap().try_into().unwrap();
    let p = generated(3);
    let (sres, kc) = run_gsm(&p.algo, &p.ki, &rand);
    let (status, v) = post(&d.control, &path(3), &json!({"rand": RAND}).to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["context"], "2g");
    assert_eq!(v["sres"], hex::encode_upper(sres), "{v}");
    assert_eq!(v["kc"], hex::encode_upper(kc), "{v}");
    assert!(v["res"].is_null());
    // 2G on a USIM (card 4): the GSM context, SRES and Kc from Milenage's c2/c3.
    let p = generated_usim(4);
    let Algo::Milenage { opc } = p.algo else {
        panic!()
    };
    let m = Milenage::new(&p.ki, &opc, MilenageConsts::default());
    let (sres, kc) = c2_c3(&m.f2345(&rand));
    let (status, v) = post(&d.control, &path(4), &json!({"rand": RAND}).to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["sres"], hex::encode_upper(sres), "{v}");
    assert_eq!(v["kc"], hex::encode_upper(kc), "{v}");

    // Errors: 3G on a SIM is 502 naming why; a bad body 422; held 409; empty 409.
    let (status, v) = post(&d.control, &path(3), &challenge());
    assert_eq!(status, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a USIM"), "{v}");
    let (status, v) = post(&d.control, &path(4), "{\"rand\":\"12\"}");
    assert_eq!(status, 422, "{v}");
    let (status, v) = post(&d.control, &path(4), "{\"rand\":");
    assert_eq!(status, 400, "{v}");
    let lease = d
        .running
        .daemon
        .cards
        .lease(CardNo::of(4), Holder::Scan)
        .unwrap();
    let (status, v) = post(&d.control, &path(4), &challenge());
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["holder"], "scan");
    drop(lease);
    let (status, v) = post(&d.control, &path(50), &challenge());
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("empty"), "{v}");
}

fn simpool(args: &[&str]) -> (i32, String, String) {
    let out = common::proc::output(Command::new(env!("CARGO_BIN_EXE_simpool")).args(args))
        .expect("run simpool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn simpool_auth_on_its_own_pool_and_through_the_daemon() {
    let (code, out, err) = simpool(&[
        "auth", "--pool", "sim", "--card", "20", "--rand", RAND, "--autn", AUTN,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "RES A54211D5E3BA50BF\nCK B40BA9A3C58B2A05BBF0D987B21BF8CB\n\
         IK F769BCD751044604127672711C6D3441\nKc EAE4BE823AF9A08B\n"
    );
    let (code, out, err) = simpool(&[
        "auth", "--pool", "sim", "--card", "3", "--rand", RAND, "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["auts", "card", "ck", "context", "ik", "kc", "res", "result", "sres"]
    );
    assert_eq!(v["context"], "2g");
    // Usage errors before any card is touched; a card's refusal is exit 1.
    let (code, _, err) = simpool(&["auth", "--pool", "sim", "--card", "20", "--rand", "00"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = simpool(&[
        "auth", "--pool", "sim", "--card", "3", "--rand", RAND, "--autn", AUTN,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a USIM"), "{err}");

    let d = daemon();
    let (code, out, err) = simpool(&[
        "auth",
        "--control",
        &d.control,
        "--card",
        "20",
        "--rand",
        RAND,
        "--autn",
        AUTN,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["res"], "A54211D5E3BA50BF");
    let (code, _, err) = simpool(&[
        "auth",
        "--control",
        &d.control,
        "--card",
        "20",
        "--rand",
        RAND,
        "--autn",
        AUTN,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("synchronisation failure"), "{err}");
}
