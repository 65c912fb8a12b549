//! `simpool exec` through the real pcscd and vpcd (issue 19 §1): a daemon with four free
//! readers, a simulated pool, and real PC/SC programs (pcsc-tools' `scriptor`) run once per
//! card. Run it in a private network namespace:
//! `unshare -n sh -c 'ip link set lo up && cargo test --test exec'`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{call, get_json};
use common::proc::{alive, Tied};
use common::stack::{self, Serve};
use simpool::exec::hold::HOLD_FOR;
use simpool::sim::profile::{decode_iccid, CardsFile};
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 29300;

/// The daemon's readers are named by their index (reader 0 is pcscd's "Virtual PCD 00 00"):
/// every test's daemon starts at vpcd reader 0, so the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A daemon on vpcd readers 0.. of the binary's pcscd, its control API on a port of its own.
struct Daemon {
    _serve: Serve,
    control: String,
}

fn daemon(sim: &SimPool, readers: u16, extra: &[&str], log: &str) -> Daemon {
    daemon_at(sim, 0, readers, extra, log)
}

/// [`daemon`] on vpcd readers `first`.. (its readers still named 0..: see [`ONE_AT_A_TIME`]).
fn daemon_at(sim: &SimPool, first: u16, readers: u16, extra: &[&str], log: &str) -> Daemon {
    let pcscd = stack::pcscd(BASE_PORT);
    let control = format!("127.0.0.1:{}", common::free_port());
    let (pool, vpcd, n) = (
        sim.addr().to_string(),
        pcscd.vpcd_addr(first),
        readers.to_string(),
    );
    let mut args = vec![
        "--pool",
        &pool,
        "--vpcd",
        &vpcd,
        "--readers",
        &n,
        "--control",
        &control,
    ];
    args.extend_from_slice(extra);
    let serve = Serve::start(&args, log);
    let t0 = Instant::now();
    // 401: up, with token users (`--control-tokens`).
    while !matches!(call(&control, "GET", "/healthz", None).0, 200 | 401) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "control API did not come up; log:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon {
        _serve: serve,
        control,
    }
}

fn pool() -> SimPool {
    common::sim_pool(CardsFile::default_set(), Faults::default())
}

fn exec_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simpool"));
    c.arg("exec")
        .args(args)
        .env("SIMPOOL_CONTROL", &d.control)
        .env_remove("RUST_LOG")
        .env("PCSCLITE_CSOCK_NAME", stack::pcscd(BASE_PORT).socket());
    c
}

fn exec(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let o = exec_cmd(d, args).output_tied().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("simpool-exec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The card's ICCID from scriptor's answer to READ BINARY of EF.ICCID (`< 98 68 … 90 00 : …`).
fn iccid_from_scriptor(out: &str) -> Option<String> {
    let line = out
        .lines()
        .filter(|l| l.starts_with("< "))
        .find(|l| l.contains("90 00") && l.split_whitespace().count() > 6)?;
    let hex: String = line[2..]
        .split(':')
        .next()?
        .split_whitespace()
        .collect::<String>();
    let bytes = hex::decode(hex).ok()?;
    (bytes.len() == 12).then(|| decode_iccid(&bytes[..10]))
}

fn iccid_of(card: u16) -> String {
    CardsFile::default_set()
        .get(card)
        .expect("a card of the default set")
        .profile
        .iccid
        .clone()
}

/// Readers and cards as the daemon sees them after exec: what each reader is bound to, and
/// the cards the pool reports running.
fn bindings(d: &Daemon) -> Vec<serde_json::Value> {
    get_json(&d.control, "/api/v1/readers")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["binding"].clone())
        .collect()
}

fn working_cards(d: &Daemon) -> Vec<u64> {
    get_json(&d.control, "/api/v1/cards")
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "working")
        .map(|c| c["card"].as_u64().unwrap())
        .collect()
}

/// A shell script reading the ICCID with scriptor through the reader exec gave it, after
/// printing what it was told (placeholders and environment).
const READ_ICCID: &str = "echo \"card={card} env=$SIMPOOL_CARD reader={reader} \
    env=$SIMPOOL_READER name=$SIMPOOL_READER_NAME iccid=$SIMPOOL_ICCID imsi={imsi}\"; \
    printf 'A0 A4 00 00 02 3F 00\\nA0 A4 00 00 02 2F E2\\nA0 B0 00 00 0A\\n' \
    | scriptor -r '{reader_name}'";

#[test]
fn exec_runs_a_pcsc_program_on_24_cards_over_4_readers_each_row_its_own_cards_iccid() {
    let _turn = turn();
    let sim = pool();
    // Reader 4 is bound by hand: exec leaves it alone and uses the four free ones.
    let d = daemon(&sim, 5, &["--card", "30"], "exec-24");
    // `--readers 5 --card 30`: the binding takes reader 0.
    assert_eq!(bindings(&d)[0]["card"], 30);
    let dir = scratch("24");
    let t0 = Instant::now();
    let (code, out, err) = exec(
        &d,
        &[
            "--card",
            "1-24",
            "--json",
            "--output-dir",
            dir.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            READ_ICCID,
        ],
    );
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("a JSON array");
    assert_eq!(rows.len(), 24, "{out}");
    let mut readers_used = std::collections::BTreeSet::new();
    for (i, r) in rows.iter().enumerate() {
        let card = i as u64 + 1;
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "card",
                "error",
                "exit",
                "iccid",
                "imsi",
                "reader",
                "reader_name",
                "seconds",
                "stderr",
                "stdout"
            ]
        );
        assert_eq!(r["card"], card, "sorted by card: {r}");
        assert_eq!(r["exit"], 0, "{r}");
        assert!(r["error"].is_null(), "{r}");
        let want = iccid_of(card as u16);
        let stdout = r["stdout"].as_str().unwrap();
        // What the PC/SC program read through its reader is this row's card's ICCID.
        assert_eq!(
            iccid_from_scriptor(stdout).as_deref(),
            Some(want.as_str()),
            "card {card}: {stdout}"
        );
        assert_eq!(r["iccid"], want, "{r}");
        let reader = r["reader"].as_u64().unwrap();
        let name = r["reader_name"].as_str().unwrap();
        assert!((1..=4).contains(&reader), "a free reader, not 0: {r}");
        assert_eq!(name, simpool::vpcd::reader_name(reader as u16));
        readers_used.insert(reader);
        let told = format!(
            "card={card} env={card} reader={reader} env={reader} name={name} iccid={want} \
             imsi={}",
            CardsFile::default_set()
                .get(card as u16)
                .unwrap()
                .profile
                .imsi
        );
        assert!(stdout.starts_with(&told), "{told:?} in\n{stdout}");
        // Kept in files too.
        let kept = std::fs::read_to_string(dir.join(format!("card-{card:03}.out"))).unwrap();
        assert_eq!(kept, stdout);
        assert!(dir.join(format!("card-{card:03}.err")).exists());
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        readers_used.len(),
        4,
        "every free reader reused: {readers_used:?}"
    );
    eprintln!("24 cards over 4 readers: {took:?}");
    // Afterwards: reader 0 still on card 30, the others free, only card 30 running.
    let b = bindings(&d);
    assert_eq!(b[0]["card"], 30, "{b:?}");
    assert!(b[1..].iter().all(serde_json::Value::is_null), "{b:?}");
    // (Card 30 may have been powered down by pcscd meanwhile: it is idle.)
    let t = Instant::now();
    while working_cards(&d).iter().any(|c| *c != 30) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still running: {:?}; {:?}",
            working_cards(&d),
            get_json(&d.control, "/api/v1/cards")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failures_timeouts_and_the_summary_table() {
    let _turn = turn();
    let sim = pool();
    let d = daemon(&sim, 2, &[], "exec-fail");
    let dir = scratch("fail");
    let child = dir.join("child");
    let script = format!(
        "if [ {{card}} = 3 ]; then sleep 60 & echo $! > {}; wait; fi; \
         echo out {{card}}; echo err {{card}} >&2; exit $(( {{card}} == 2 ? 7 : 0 ))",
        child.display()
    );
    let t0 = Instant::now();
    let (code, out, err) = exec(
        &d,
        &[
            "--card",
            "1-4",
            "--timeout",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(code, Some(3), "some failed: {out}{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    // The timed-out run's whole process group was killed, its background child too.
    let pid: u32 = std::fs::read_to_string(&child)
        .unwrap_or_else(|e| panic!("card 3 ran no child ({e}):\n{out}\n{err}"))
        .trim()
        .parse()
        .unwrap();
    common::wait_for(
        "the timed-out run's child killed",
        Duration::from_secs(3),
        || !alive(pid),
    );
    // Each run's output, then the summary table.
    for n in [1, 2, 4] {
        assert!(out.contains(&format!("out {n}\n")), "{out}{err}");
        assert!(out.contains(&format!("err {n}\n")), "{out}{err}");
    }
    let table = &out[out.find("card  ICCID").expect("a summary table")..];
    let line = |card: u16| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&card.to_string()))
            .unwrap_or_else(|| panic!("no row for card {card}:\n{table}"))
            .to_string()
    };
    let cols = |card| {
        line(card)
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(cols(1)[1], iccid_of(1));
    assert_eq!(cols(1)[3], "0", "{table}");
    assert_eq!(cols(2)[3], "7", "{table}");
    assert!(line(3).contains("timed out after 2 s"), "{table}");
    assert!(table.contains("4 cards, 2 failed"), "{table}");
    // Readers back to no binding, no card running.
    assert!(bindings(&d).iter().all(serde_json::Value::is_null));
    common::wait_for("cards stopped", Duration::from_secs(5), || {
        working_cards(&d).is_empty()
    });

    // On a terminal (script(1) gives it one): the live progress line, then the table.
    let cmd = format!(
        "{} exec --card 5-6 -- sleep 0.6",
        env!("CARGO_BIN_EXE_simpool")
    );
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("SIMPOOL_CONTROL", &d.control)
        .env("PCSCLITE_CSOCK_NAME", stack::pcscd(BASE_PORT).socket())
        .env_remove("RUST_LOG")
        .output_tied()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{tty}");
    assert!(tty.contains("running 2 of 2"), "{tty:?}");
    assert!(
        tty.contains("\r\x1b[Kdone 2, failed 0, running 0 of 2"),
        "{tty:?}"
    );
    assert!(tty.contains("2 cards, 0 failed"), "{tty:?}");

    // A card held elsewhere is that card's failure, named; the others run.
    let (code, out, _) = exec(&d, &["--card", "30", "--json", "--", "true"]);
    assert_eq!(code, Some(0), "{out}");
    let _hand = call(
        &d.control,
        "PUT",
        "/api/v1/readers/0",
        Some("{\"card\":31}"),
    );
    let (code, out, err) = exec(&d, &["--card", "31,32", "--json", "--", "true"]);
    assert_eq!(code, Some(3), "{out}{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        rows[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("held by reader 0")),
        "{rows:?}"
    );
    assert_eq!(rows[1]["exit"], 0, "{rows:?}");
    assert_eq!(bindings(&d)[0]["card"], 31, "the hand binding stays");
    // No free reader at all: said at once, exit 1.
    let _hand = call(
        &d.control,
        "PUT",
        "/api/v1/readers/1",
        Some("{\"card\":32}"),
    );
    let (code, _, err) = exec(&d, &["--card", "1", "--", "true"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no free reader"), "{err}");
    assert!(err.contains("reader 0 to card 31"), "{err}");
}

/// Waits until `n` files exist in `dir`.
fn wait_files(dir: &Path, n: usize, within: Duration) {
    common::wait_for(&format!("{n} files in {}", dir.display()), within, || {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) >= n
    });
}

#[test]
fn ctrl_c_in_the_middle_kills_the_runs_and_restores_every_reader() {
    let _turn = turn();
    let sim = pool();
    // Reader 0 bound by hand to card 30; readers 1-3 free.
    let d = daemon(&sim, 4, &["--card", "30"], "exec-int");
    let before = bindings(&d);
    let dir = scratch("int");
    let pids = dir.join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    // Each run starts a background child in its group, notes both pids, and waits.
    let script = format!("sleep 300 & echo $$ $! > {}/{{card}}; wait", pids.display());
    let mut child = exec_cmd(&d, &["--card", "1-12", "--json", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    // Three runs going (three free readers): interrupt.
    wait_files(&pids, 3, Duration::from_secs(20));
    let during = bindings(&d);
    assert!(
        during[1..].iter().all(|b| !b.is_null()),
        "exec holds readers 1-3: {during:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "exec did not end after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON after Ctrl-C");
    assert_eq!(rows.len(), 12);
    let interrupted = rows
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupted"))
        })
        .count();
    assert_eq!(interrupted, 12, "{rows:?}");
    // Every reader as before: reader 0 on card 30, the others free.
    assert_eq!(bindings(&d), before);
    // No program left, no card of exec's left running.
    for f in std::fs::read_dir(&pids).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for pid in text.split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            common::wait_for(
                &format!("run process {pid} killed"),
                Duration::from_secs(3),
                || !alive(pid),
            );
        }
    }
    common::wait_for("exec's cards stopped", Duration::from_secs(5), || {
        working_cards(&d).iter().all(|c| *c == 30)
    });
}

/// pySim's source directory, or `None` (and a loud line) when it is not installed.
fn pysim() -> Option<PathBuf> {
    match std::env::var_os("SIMPOOL_PYSIM") {
        Some(p) if PathBuf::from(&p).join("pySim-read.py").exists() => Some(p.into()),
        _ => {
            eprintln!(
                "*** SKIPPED: exec with pySim (set SIMPOOL_PYSIM to what driver/pysim-build prints)"
            );
            None
        }
    }
}

#[test]
fn exec_with_pysim_read_by_reader_index() {
    let _turn = turn();
    let Some(src) = pysim() else { return };
    let sim = pool();
    let d = daemon(&sim, 3, &["--card", "30"], "exec-pysim");
    let python = src.join("../../venv/bin/python");
    let read = src.join("pySim-read.py");
    // What the README shows: `-p {reader}`, pcscd's index of the reader exec gave the run.
    let (code, out, err) = exec(
        &d,
        &[
            "--card",
            "3-6",
            "--json",
            "--timeout",
            "2m",
            "--",
            python.to_str().unwrap(),
            read.to_str().unwrap(),
            "-p",
            "{reader}",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let card = r["card"].as_u64().unwrap() as u16;
        let stdout = r["stdout"].as_str().unwrap();
        assert!(
            stdout.contains(&format!("ICCID: {}", iccid_of(card))),
            "card {card}: {stdout}\n{}",
            r["stderr"]
        );
    }
}

/// The reservations the daemon lists (on a daemon without tokens).
fn reservations(d: &Daemon) -> Vec<serde_json::Value> {
    get_json(&d.control, "/api/v1/reservations")
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_killed_exec_leaves_no_reader_bound_and_no_program_running() {
    let _turn = turn();
    let sim = pool();
    let d = daemon(&sim, 3, &["--card", "30"], "exec-kill");
    let before = bindings(&d);
    let dir = scratch("kill");
    let pids = dir.join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let script = format!("sleep 300 & echo $$ $! > {}/{{card}}; wait", pids.display());
    let mut child = exec_cmd(&d, &["--card", "1-6", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tied()
        .unwrap();
    wait_files(&pids, 2, Duration::from_secs(20));
    assert!(bindings(&d)[1..].iter().all(|b| !b.is_null()));
    // Each run holds its card by a reservation of exec's own, its reader bound to it.
    let held = reservations(&d);
    assert_eq!(held.len(), 2, "{held:?}");
    for r in &held {
        assert_eq!(r["note"], "simpool exec", "{r}");
        assert!(r["reader"].as_u64().is_some_and(|i| i >= 1), "{r}");
    }
    // No Ctrl-C, no cleanup of its own: SIGKILL. Nobody renews the reservations any more: the
    // daemon ends them when they expire (within their time and its 1 s), which unbinds the
    // readers and stops the cards.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let within = HOLD_FOR + Duration::from_secs(1);
    common::wait_for("exec's reservations ended by the daemon", within, || {
        reservations(&d).is_empty()
    });
    common::wait_for(
        "readers back to their bindings",
        within.saturating_sub(killed.elapsed()) + Duration::from_millis(500),
        || bindings(&d) == before,
    );
    for f in std::fs::read_dir(&pids).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for pid in text.split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            common::wait_for(
                &format!("run process {pid} killed"),
                Duration::from_secs(3),
                || !alive(pid),
            );
        }
    }
    common::wait_for("exec's cards stopped", Duration::from_secs(5), || {
        working_cards(&d).iter().all(|c| *c == 30)
    });
}

/// Token users: exec runs as `ci`, `bob` is another user, `root` an admin.
const CI: &str = "ci-token-00000001";
const BOB: &str = "bob-token-0000002";
const ROOT: &str = "root-token-000003";

fn tokens_file(dir: &Path) -> PathBuf {
    let f = dir.join("tokens");
    std::fs::write(
        &f,
        format!("ci {CI} use\nbob {BOB} use\nroot {ROOT} admin\n"),
    )
    .unwrap();
    f
}

/// A request as the user of `token`: its status and JSON body (`null` when there is none).
fn as_user(
    d: &Daemon,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = common::http::http(
        &d.control,
        method,
        path,
        &[("Authorization", auth.as_str())],
        body,
    );
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[test]
fn exec_holds_each_card_by_a_reservation_of_its_user_that_no_other_user_can_take() {
    let _turn = turn();
    let sim = pool();
    let dir = scratch("users");
    let tokens = tokens_file(&dir);
    // Reader 0 bound by hand (root's), like the other tests' daemons: what an earlier test's
    // daemon left showing there when it was killed is no business of this one.
    let d = daemon(
        &sim,
        4,
        &["--control-tokens", tokens.to_str().unwrap(), "--card", "30"],
        "exec-users",
    );
    let ci = dir.join("ci.token");
    std::fs::write(&ci, CI).unwrap();
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let script = format!(
        "echo {{reader_name}} > {}/{{card}}; sleep 60",
        runs.display()
    );
    let mut child = exec_cmd(&d, &["--card", "1-6", "--json", "--", "sh", "-c", &script])
        .env("SIMPOOL_CONTROL_TOKEN", &ci)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_dir(&runs).unwrap().count() < 3 {
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "3 runs did not start within 20 s: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    // What the daemon says while exec runs: a reservation of ci's per run, with the run's
    // reader bound to its card for ci.
    let (status, list) = as_user(&d, BOB, "GET", "/api/v1/reservations", None);
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{list:?}");
    let (_, readers) = as_user(&d, ROOT, "GET", "/api/v1/readers", None);
    for r in &list {
        assert_eq!(r["user"], "ci", "{r}");
        assert_eq!(r["note"], "simpool exec", "{r}");
        let card = r["card"].as_u64().unwrap();
        let i = r["reader"].as_u64().expect("a reader") as usize;
        assert_eq!(readers[i]["binding"]["card"], card, "{}", readers[i]);
        assert_eq!(readers[i]["user"], "ci", "{}", readers[i]);
        // The program running on that reader is that card's.
        let shown = std::fs::read_to_string(runs.join(card.to_string())).unwrap();
        assert_eq!(
            shown.trim(),
            readers[i]["name"].as_str().unwrap(),
            "card {card}"
        );
    }
    // Another user can take neither the card nor the reader while the run lasts.
    let card = list[0]["card"].as_u64().unwrap();
    let i = list[0]["reader"].as_u64().unwrap();
    let (status, e) = as_user(
        &d,
        BOB,
        "POST",
        "/api/v1/reservations",
        Some(&format!("{{\"card\":{card}}}")),
    );
    assert_eq!(status, 409, "bob reserves exec's card {card}: {e}");
    assert!(e["error"].as_str().unwrap().contains("ci"), "{e}");
    let (status, e) = as_user(
        &d,
        BOB,
        "POST",
        &format!("/api/v1/cards/{card}/apdu"),
        Some("{\"tpdus\":[\"A0A40000023F00\"]}"),
    );
    assert_eq!(status, 409, "bob's APDU on exec's card {card}: {e}");
    assert!(e["error"].as_str().unwrap().contains("ci"), "{e}");
    let (status, e) = as_user(
        &d,
        BOB,
        "PUT",
        &format!("/api/v1/readers/{i}"),
        Some("{\"card\":20}"),
    );
    assert_eq!(status, 409, "bob rebinds exec's reader {i}: {e}");
    assert!(e["error"].as_str().unwrap().contains("bound for ci"), "{e}");
    let (status, e) = as_user(
        &d,
        BOB,
        "POST",
        "/api/v1/reservations",
        Some(&format!(
            "{{\"card\":20,\"reader\":true,\"readers\":[{i}]}}"
        )),
    );
    assert_eq!(
        status, 409,
        "bob reserves card 20 on exec's reader {i}: {e}"
    );
    // Runs longer than a reservation lasts keep theirs: exec renews them.
    std::thread::sleep((HOLD_FOR + Duration::from_secs(2)).saturating_sub(started.elapsed()));
    let (_, later) = as_user(&d, BOB, "GET", "/api/v1/reservations", None);
    let ids = |l: &[serde_json::Value]| l.iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(later.as_array().unwrap()),
        ids(&list),
        "renewed past {HOLD_FOR:?}: {later}"
    );
    // Ctrl-C: exec ends its reservations itself.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let (_, list) = as_user(&d, BOB, "GET", "/api/v1/reservations", None);
    assert_eq!(list, serde_json::json!([]), "exec's reservations ended");
    let (_, readers) = as_user(&d, ROOT, "GET", "/api/v1/readers", None);
    assert!(
        readers.as_array().unwrap()[1..]
            .iter()
            .all(|r| r["binding"].is_null() && r["user"].is_null()),
        "{readers}"
    );
}

#[test]
fn two_users_racing_for_one_free_reader_the_daemon_gives_it_to_one() {
    let _turn = turn();
    let sim = pool();
    let dir = scratch("race");
    let tokens = tokens_file(&dir);
    let d = daemon(
        &sim,
        1,
        &["--control-tokens", tokens.to_str().unwrap()],
        "exec-race",
    );
    for round in 0..3 {
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let ask = |token: &'static str, card: u16| {
                let (d, barrier) = (&d, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    as_user(
                        d,
                        token,
                        "POST",
                        "/api/v1/reservations",
                        Some(&format!(
                            "{{\"card\":{card},\"reader\":true,\"readers\":[0],\"for_s\":60}}"
                        )),
                    )
                })
            };
            let a = ask(CI, 1);
            let b = ask(BOB, 2);
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut got: Vec<(u16, &str)> = vec![(a.0, "ci"), (b.0, "bob")];
        got.sort();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            [201, 409],
            "round {round}: one reservation gets reader 0, the other is refused: {a:?} {b:?}"
        );
        let (won, lost) = if a.0 == 201 {
            (&a.1, &b.1)
        } else {
            (&b.1, &a.1)
        };
        assert_eq!(won["reader"], 0, "{won}");
        assert!(
            lost["error"].as_str().unwrap().contains("reader 0"),
            "the refusal names the reader: {lost}"
        );
        // The reader is the winner's, bound to the winner's card, and nothing else was left
        // reserved by the loser.
        let (_, r) = as_user(&d, ROOT, "GET", "/api/v1/readers/0", None);
        assert_eq!(r["user"], won["user"], "{r}");
        assert_eq!(r["binding"]["card"], won["card"], "{r}");
        let (_, list) = as_user(&d, ROOT, "GET", "/api/v1/reservations", None);
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        let id = won["id"].as_u64().unwrap();
        let (status, _) = as_user(
            &d,
            ROOT,
            "DELETE",
            &format!("/api/v1/reservations/{id}"),
            None,
        );
        assert_eq!(status, 200);
    }
}

#[test]
fn readers_pcscd_does_not_show_are_retired_and_their_cards_given_up_saying_why() {
    let _turn = turn();
    let sim = pool();
    // The daemon's readers 0 and 1 sit on pcscd's vpcd readers 8 and 9: pcscd's "Virtual PCD
    // 00 00" and "00 01", which exec waits on, never show its cards.
    let d = daemon_at(&sim, 8, 2, &[], "exec-faults");
    let (code, out, err) = exec(&d, &["--card", "1-3", "--json", "--", "true"]);
    assert_eq!(code, Some(3), "{out}{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let e = r["error"].as_str().unwrap_or_default();
        assert!(e.starts_with("no reader left to run it"), "{r}");
        assert!(e.contains("pcscd does not show the card in"), "{r}");
        assert!(r["exit"].is_null(), "{r}");
    }
    assert!(err.contains("reader not used again"), "{err}");
    assert!(bindings(&d).iter().all(serde_json::Value::is_null));
    common::wait_for("cards stopped", Duration::from_secs(5), || {
        working_cards(&d).is_empty()
    });
}
