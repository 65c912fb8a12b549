//! Sharing the pool (issue 19 §2, §3), through the real daemon: reservations that expire
//! under a PC/SC client holding the reader, named token users refused on each other's
//! reservations and a `read` user refused a write, a second Unix user identified by its peer
//! credentials on the control socket, reservations kept across a daemon restart. Needs pcscd
//! and vsmartcard-vpcd (`driver/pcscd-private install`) for the PC/SC test.

mod common;

use common::proc::Tied;
use std::ffi::CString;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::request;
use common::stack::{self, Serve};
use pcsc::{Protocols, ShareMode};
use serde_json::{json, Value};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 29100;
const BIN: &str = env!("CARGO_BIN_EXE_simpool");

const ALICE: &str = "alice-token-0000000001";
const BOB: &str = "bob-token-000000000002";
const CAROL: &str = "carol-token-00000000003";
const ROOT: &str = "root-admin-token-000004";

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("simpool-sharing-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sim() -> SimPool {
    common::sim_pool(CardsFile::default_set(), Faults::default())
}

struct Daemon {
    serve: Serve,
    control: String,
}

/// A daemon on `sim` with `readers` readers from vpcd reader `first` (no pcscd needed when
/// `pcscd` is false: the readers then wait for vpcd), its control API on a free port.
fn daemon(pool: &str, vpcd: &str, readers: u16, extra: &[&str], name: &str) -> Daemon {
    let control = format!("127.0.0.1:{}", common::free_port());
    let mut args: Vec<String> = vec![
        "--pool".into(),
        pool.into(),
        "--vpcd".into(),
        vpcd.into(),
        "--readers".into(),
        readers.to_string(),
        "--control".into(),
        control.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(&refs, name);
    let d = Daemon { serve, control };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let h = [("Authorization", format!("Bearer {ROOT}"))];
        let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let up =
            request(&d.control, "GET", "/healthz", &headers, None).is_ok_and(|r| r.status == 200);
        if up {
            break;
        }
        assert!(
            Instant::now() < end,
            "control API did not come up; log:\n{}",
            d.serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn auth(token: Option<&str>) -> Vec<(&'static str, String)> {
    token
        .map(|t| vec![("Authorization", format!("Bearer {t}"))])
        .unwrap_or_default()
}

impl Daemon {
    fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let h = auth(token);
        let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = body.map(|b| b.to_string());
        let r = request(&self.control, method, path, &headers, body.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    fn cli(&self, token_file: Option<&std::path::Path>, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--control", &self.control])
            .env_remove("SIMPOOL_POOL")
            .env_remove("SIMPOOL_CONTROL_SOCKET");
        if let Some(f) = token_file {
            c.arg("--control-token").arg(f);
        }
        c.output_tied().expect("run simpool")
    }
}

fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let f = dir.join("tokens");
    std::fs::write(
        &f,
        format!(
            "# name token role\nalice {ALICE} use\nbob {BOB} use\ncarol {CAROL} read\n\
             root {ROOT} admin\n"
        ),
    )
    .unwrap();
    f
}

/// Two `use` users are refused on each other's reserved card, through every route that takes
/// a card (apdu, bind, stop, reserve, renew, release), with 409 naming the owner and the
/// expiry; the owner works on it; a `read` user is refused every write (403) and reads; an
/// admin ends another's reservation. The tokens file is re-read on SIGHUP.
#[test]
fn token_users_are_refused_on_each_others_reservations() {
    let dir = tmp("tokens");
    let tokens = tokens_file(&dir);
    let vpcd = format!("127.0.0.1:{}", common::free_port());
    // The simulated pool inside the daemon: its CPU time is the daemon's (measured below).
    let d = daemon(
        "sim",
        &vpcd,
        2,
        &["--control-tokens", tokens.to_str().unwrap()],
        "sharing-tokens",
    );
    // No token, a wrong one: 401.
    assert_eq!(d.call(None, "GET", "/api/v1/reservations", None).0, 401);
    assert_eq!(
        d.call(
            Some("nope-nope-nope-nope"),
            "GET",
            "/api/v1/reservations",
            None
        )
        .0,
        401
    );

    let (st, a) = d.call(
        Some(ALICE),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": 5, "for_s": 600, "note": "alice's job"})),
    );
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["card"], 5);
    assert_eq!(a["user"], "alice");
    assert_eq!(a["note"], "alice's job");
    for k in [
        "id",
        "iccid",
        "imsi",
        "reader",
        "reader_name",
        "since",
        "expires",
    ] {
        assert!(a.get(k).is_some(), "key {k} missing: {a}");
    }
    let alice_id = a["id"].as_u64().unwrap();
    let (st, b) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": "6", "for_s": 600})),
    );
    assert_eq!(st, 201, "{b}");
    let bob_id = b["id"].as_u64().unwrap();

    let expires = a["expires"].as_str().unwrap().to_string();
    let refused = |who: &str, v: &Value, owner: &str| {
        let text = v.to_string();
        assert!(
            text.contains(owner) && text.contains("until"),
            "{who}: not naming {owner} and the expiry: {text}"
        );
    };
    // bob on alice's card 5, every way.
    let apdu = json!({"tpdus": ["A0A40000023F00"]});
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/cards/5/apdu".to_string(),
            Some(apdu.clone()),
        ),
        (
            "PUT",
            "/api/v1/readers/0".to_string(),
            Some(json!({"card": 5})),
        ),
        ("POST", "/api/v1/cards/5/stop".to_string(), None),
        (
            "POST",
            "/api/v1/reservations".to_string(),
            Some(json!({"card": 5})),
        ),
    ] {
        let (st, v) = d.call(Some(BOB), method, &path, body);
        assert_eq!(st, 409, "bob {method} {path}: {v}");
        refused(&format!("bob {method} {path}"), &v, "alice");
        if path.contains("apdu") {
            assert!(v.to_string().contains(&expires), "the expiry: {v}");
        }
    }
    for (method, path, body) in [
        (
            "POST",
            format!("/api/v1/reservations/{alice_id}/renew"),
            Some(json!({"for_s": 60})),
        ),
        ("DELETE", format!("/api/v1/reservations/{alice_id}"), None),
    ] {
        let (st, v) = d.call(Some(BOB), method, &path, body);
        assert_eq!(st, 409, "bob {method} {path}: {v}");
        assert!(v.to_string().contains("alice"), "{v}");
    }
    // And alice on bob's card 6.
    let (st, v) = d.call(
        Some(ALICE),
        "POST",
        "/api/v1/cards/6/apdu",
        Some(apdu.clone()),
    );
    assert_eq!(st, 409, "{v}");
    refused("alice apdu 6", &v, "bob");
    // The CLI says the same and exits 1.
    let tf = dir.join("bob.token");
    std::fs::write(&tf, BOB).unwrap();
    let out = d.cli(Some(&tf), &["apdu", "--card", "5", "A0A40000023F00"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("reserved by alice"), "{err}");
    // The owner works on it.
    let (st, v) = d.call(
        Some(ALICE),
        "POST",
        "/api/v1/cards/5/apdu",
        Some(apdu.clone()),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["responses"][0].as_str().unwrap().starts_with("9F"), "{v}");
    // Holders name their users: the card list shows the reservation.
    let (_, cards) = d.call(Some(CAROL), "GET", "/api/v1/cards/5", None);
    let holder = cards["holder"].as_str().unwrap_or("");
    assert!(
        holder.contains("alice") && holder.contains(&format!("reservation {alice_id}")),
        "{cards}"
    );

    // carol (read): GETs, no writes.
    let (st, list) = d.call(Some(CAROL), "GET", "/api/v1/reservations", None);
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    for (method, path, body) in [
        ("POST", "/api/v1/reservations", Some(json!({"card": 7}))),
        ("POST", "/api/v1/cards/7/apdu", Some(apdu.clone())),
        ("PUT", "/api/v1/readers/1", Some(json!({"card": 7}))),
        ("POST", "/api/v1/cards/7/stop", None),
        ("POST", "/api/v1/scan", None),
    ] {
        let (st, v) = d.call(Some(CAROL), method, path, body);
        assert_eq!(st, 403, "carol {method} {path}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("carol (role read)"),
            "{v}"
        );
    }
    // A `use` user may not force a stop; an admin may end anyone's reservation.
    let (st, _) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/cards/6/stop",
        Some(json!({"force": true})),
    );
    assert_eq!(st, 403);
    // Waiting: a wait that runs out is 408, saying what blocks it; the daemon sleeps while
    // it waits (measured: 1 tick of CPU in 4 s; a loop that woke itself took 292).
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.serve.child.id())).unwrap();
        // The fields after the command name: state, ppid, …; utime and stime are the 14th
        // and 15th of the line (tpgid may be -1: every field is taken, as text).
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    let (st, v) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": 5, "wait_s": 2})),
    );
    assert_eq!(st, 408, "{v}");
    let ticks = cpu() - before;
    assert!(
        ticks < 30,
        "the daemon spun while a reservation waited: {ticks} ticks in 2 s"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("card 5 is reserved by alice"),
        "{v}"
    );
    // First come, first served: bob queues for card 5, then root; alice's reservation ends
    // (an admin ends it): bob is served, root's wait runs out.
    let waiter = |token: &'static str, wait: u64| {
        let control = d.control.clone();
        std::thread::spawn(move || {
            let h = [("Authorization", format!("Bearer {token}"))];
            let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let body = json!({"card": 5, "wait_s": wait, "for_s": 600}).to_string();
            let r = request(
                &control,
                "POST",
                "/api/v1/reservations",
                &headers,
                Some(&body),
            )
            .unwrap();
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        })
    };
    // A waiter that goes away (its connection closed mid-wait) leaves the queue: it would
    // hold up those queued after it.
    {
        use std::io::Write;
        let mut gone = std::net::TcpStream::connect(&d.control).unwrap();
        let body = json!({"card": 5, "wait_s": 60}).to_string();
        write!(
            gone,
            "POST /api/v1/reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(200));
    let first = waiter(BOB, 20);
    std::thread::sleep(Duration::from_millis(300));
    let second = waiter(ROOT, 3);
    std::thread::sleep(Duration::from_millis(300));
    let (st, v) = d.call(
        Some(ROOT),
        "DELETE",
        &format!("/api/v1/reservations/{alice_id}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = first.join().unwrap();
    assert_eq!(st, 201, "the first waiter: {v}");
    assert_eq!(
        (v["card"].as_u64(), v["user"].as_str()),
        (Some(5), Some("bob"))
    );
    let (st, v) = second.join().unwrap();
    assert_eq!(st, 408, "the second waiter: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("reserved by bob"),
        "{v}"
    );
    let (st, _) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/cards/5/apdu",
        Some(apdu.clone()),
    );
    assert_eq!(st, 200, "card 5 bob's now");
    // Its user renews and releases its own.
    let (st, v) = d.call(
        Some(BOB),
        "POST",
        &format!("/api/v1/reservations/{bob_id}/renew"),
        Some(json!({"for_s": 1200})),
    );
    assert_eq!(st, 200, "{v}");
    assert_ne!(v["expires"], b["expires"]);

    // SIGHUP: a new tokens file is in force at once; alice's token is gone.
    std::fs::write(
        &tokens,
        format!("dave dave-token-0000000005 use\nroot {ROOT} admin\n"),
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(d.serve.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    common::wait_for("the tokens file re-read", Duration::from_secs(5), || {
        d.call(
            Some("dave-token-0000000005"),
            "GET",
            "/api/v1/reservations",
            None,
        )
        .0 == 200
    });
    assert_eq!(
        d.call(Some(ALICE), "GET", "/api/v1/reservations", None).0,
        401
    );
    // bob's reservation still holds against dave.
    let (st, v) = d.call(
        Some("dave-token-0000000005"),
        "POST",
        "/api/v1/cards/6/apdu",
        Some(apdu),
    );
    assert_eq!(st, 409, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reservation with a reader whose time runs out while a PC/SC client holds the card: the
/// daemon ends it by itself within a second of its expiry, the client sees the card removed,
/// the reader is unbound and the card stopped and free.
#[test]
fn a_reservation_expires_under_a_pcsc_client() {
    let sim = sim();
    let pcscd = stack::pcscd(BASE_PORT);
    let d = daemon(
        &sim.addr().to_string(),
        &pcscd.vpcd_addr(0),
        1,
        &[],
        "sharing-expiry",
    );
    let out = d.cli(
        None,
        &[
            "reserve", "--card", "9", "--for", "4s", "--reader", "--note", "ci", "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.serve.log_text()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["card"], 9);
    assert_eq!(r["reader"], 0);
    assert_eq!(r["reader_name"], simpool::vpcd::reader_name(0));
    assert_eq!(r["user"], "anonymous");
    let expires: simpool::history::Timestamp = r["expires"].as_str().unwrap().parse().unwrap();

    let ctx = stack::context();
    let name: CString = pcscd.reader_name(0);
    assert!(stack::wait_card(&ctx, &name, true, Duration::from_secs(10)));
    let card = ctx
        .connect(&name, ShareMode::Shared, Protocols::ANY)
        .expect("connect");
    let resp = stack::tx(&card, "A0A40000023F00");
    assert_eq!(resp[0], 0x9F, "{resp:02X?}");
    // The reader shows who it is for.
    let (_, readers) = d.call(None, "GET", "/api/v1/readers/0", None);
    assert_eq!(readers["user"], "anonymous", "{readers}");
    assert_eq!(readers["reservation"], r["id"], "{readers}");

    // Keep exchanging until the card goes away.
    let gone = loop {
        match stack::try_tx(&card, "A0A40000023F00") {
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break e,
        }
        let now = simpool::history::Timestamp::now();
        assert!(
            now.millis() < expires.millis() + 10_000,
            "card still there 10 s after the expiry; log:\n{}",
            d.serve.log_text()
        );
    };
    let ended_at = simpool::history::Timestamp::now();
    assert!(
        matches!(
            gone,
            pcsc::Error::RemovedCard
                | pcsc::Error::ResetCard
                | pcsc::Error::NoSmartcard
                | pcsc::Error::NotTransacted
        ),
        "{gone}"
    );
    // Within 1 s of the expiry, plus pcscd's presence poll (~0.4 s) and slack.
    let late = ended_at.millis() - expires.millis();
    eprintln!("card gone {late} ms after the expiry ({gone})");
    assert!(late < 2500, "card removed {late} ms after the expiry");
    assert!(stack::wait_card(&ctx, &name, false, Duration::from_secs(5)));
    drop(card);
    let (_, list) = d.call(None, "GET", "/api/v1/reservations", None);
    assert_eq!(list, json!([]));
    let (_, reader) = d.call(None, "GET", "/api/v1/readers/0", None);
    assert_eq!(reader["binding"], Value::Null, "{reader}");
    common::wait_for("card 9 stopped and free", Duration::from_secs(3), || {
        let (_, c) = d.call(None, "GET", "/api/v1/cards/9", None);
        c["holder"].is_null() && c["state"] != "working"
    });
    let log = d.serve.log_text();
    assert!(
        log.contains("reservation 1 of anonymous on card 9 ended: expired"),
        "{log}"
    );
}

/// The Unix control socket names its callers by their peer credentials: root is admin, a
/// member of the socket's group (nobody, by its primary group) gets `use` and its reservation
/// is nobody's; a user outside the group only reads. The CLI finds the socket by
/// SIMPOOL_CONTROL_SOCKET.
#[test]
fn a_second_unix_user_is_named_by_its_peer_credentials() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run a command as another user");
        return;
    }
    let sim = sim();
    let dir = tmp("socket");
    // nobody must reach the socket: a directory everyone may enter.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sock = dir.join("control.sock");
    let group =
        nix::unistd::Group::from_gid(nix::unistd::User::from_name("nobody").unwrap().unwrap().gid)
            .unwrap()
            .unwrap()
            .name;
    let vpcd = format!("127.0.0.1:{}", common::free_port());
    let d = daemon(
        &sim.addr().to_string(),
        &vpcd,
        1,
        &[
            "--control-socket",
            sock.to_str().unwrap(),
            "--control-socket-mode",
            "0666",
            "--control-socket-group",
            &group,
        ],
        "sharing-socket",
    );
    let as_user = |user: &str, group: &str, args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", user, "--regid", group, "--clear-groups", BIN])
            .args(args)
            .env("SIMPOOL_CONTROL_SOCKET", &sock)
            .env_remove("SIMPOOL_CONTROL")
            .output_tied()
            .expect("setpriv")
    };
    let out = as_user(
        "nobody",
        &group,
        &["reserve", "--card", "11", "--for", "10m", "--json"],
    );
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.serve.log_text()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["user"], "nobody", "{r}");
    // Over TCP (anonymous admin) the reservation shows as nobody's; the card's holder too.
    let (_, c) = d.call(None, "GET", "/api/v1/cards/11", None);
    assert!(
        c["holder"]
            .as_str()
            .unwrap()
            .starts_with("reserved by nobody (reservation"),
        "{c}"
    );
    // Another uid, outside the group: it reads, and may not reserve.
    let out = as_user("65533", "65533", &["reservations", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["user"], "nobody");
    let out = as_user("65533", "65533", &["reserve", "--card", "12"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("uid65533 (role read) may not"), "{err}");
    // nobody's own card refuses that user's apdu... and root (admin) ends nobody's
    // reservation over the socket.
    let out = Command::new(BIN)
        .args(["release", &r["id"].to_string(), "--json"])
        .env("SIMPOOL_CONTROL_SOCKET", &sock)
        .output_tied()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = d.serve.log_text();
    assert!(log.contains("ended by root"), "{log}");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reservations are kept in the state file: after a restart the card is still its user's
/// until the same expiry, and one that expired while the daemon was down is ended.
#[test]
fn reservations_survive_a_restart() {
    let sim = sim();
    let dir = tmp("restart");
    let tokens = tokens_file(&dir);
    let state = dir.join("state.json");
    let vpcd = format!("127.0.0.1:{}", common::free_port());
    let args = [
        "--control-tokens",
        tokens.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    let d = daemon(&sim.addr().to_string(), &vpcd, 1, &args, "sharing-restart1");
    let (st, a) = d.call(
        Some(ALICE),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": 3, "for_s": 3600, "reader": true})),
    );
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["reader"], 0, "{a}");
    let (st, short) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": 4, "for_s": 2})),
    );
    assert_eq!(st, 201, "{short}");
    drop(d);
    // Killed (SIGKILL): the state file was written at each change.
    std::thread::sleep(Duration::from_millis(2500));
    let d = daemon(&sim.addr().to_string(), &vpcd, 1, &args, "sharing-restart2");
    let (_, list) = d.call(Some(CAROL), "GET", "/api/v1/reservations", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], a["id"]);
    assert_eq!(list[0]["expires"], a["expires"]);
    let (st, v) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/cards/3/apdu",
        Some(json!({"tpdus": ["A0A40000023F00"]})),
    );
    assert_eq!(st, 409, "{v}");
    // Its reader is bound again for alice, and holds the card for her reservation.
    let (_, r) = d.call(Some(CAROL), "GET", "/api/v1/readers/0", None);
    assert_eq!(r["binding"], json!({"card": 3}), "{r}");
    assert_eq!(r["user"], "alice", "{r}");
    let want = format!("reader 0 (alice, reservation {})", a["id"]);
    common::wait_for(
        "reader 0 holding card 3 for alice",
        Duration::from_secs(5),
        || {
            let (_, c) = d.call(Some(CAROL), "GET", "/api/v1/cards/3", None);
            c["holder"] == json!(want)
        },
    );
    // A new reservation does not reuse an id.
    let (_, n) = d.call(
        Some(BOB),
        "POST",
        "/api/v1/reservations",
        Some(json!({"card": 8})),
    );
    assert!(
        n["id"].as_u64().unwrap() > short["id"].as_u64().unwrap(),
        "{n}"
    );
    common::wait_for("the expired one logged", Duration::from_secs(3), || {
        d.serve.log_text().contains("while the daemon was down")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reserve --eid` on a daemon that has read no card yet: the free cards are read to find the
/// eUICC (issue 24 §3), as for an ICCID or IMSI.
#[test]
fn reserve_finds_an_euicc_by_eid_the_daemon_has_not_read_yet() {
    let sim = sim();
    let vpcd = format!("127.0.0.1:{}", common::free_port());
    let d = daemon(&sim.addr().to_string(), &vpcd, 1, &[], "sharing-identity");
    let eid = sim
        .with_card(33, |c| hex::encode_upper(c.euicc().unwrap().eid()))
        .unwrap();
    let (status, v) = d.call(
        None,
        "POST",
        "/api/v1/reservations",
        Some(serde_json::json!({"eid": eid, "for_s": 60})),
    );
    assert_eq!((status, &v["card"]), (201, &serde_json::json!(33)), "{v}");
}
