//! Issue 13, "a new user's first hour": the command line as a newcomer runs it — closed pipes,
//! log levels, SIMPOOL_POOL everywhere, binding clashes, interrupted scans, stopping cards,
//! JSON shapes, exit codes, completions and man pages, the driver scripts.

mod common;

use common::free_port;
use common::proc::Tied;
use common::vectors as cards;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use simpool::pool::{Link, LinkOptions, SlotState};
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

const BIN: &str = env!("CARGO_BIN_EXE_simpool");

/// `simpool ARGS` with none of the user's SIMPOOL_* settings.
fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> (Option<i32>, String, String) {
    let o: Output = c.output_tied().expect("run simpool");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn simpool(args: &[&str]) -> (Option<i32>, String, String) {
    run(&mut cmd(args))
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// A simulated pool with the built-in cards; its address.
fn pool(faults: Faults) -> String {
    common::sim_pool(CardsFile::default_set(), faults)
        .addr()
        .to_string()
}

/// The pool's slot states, read over a connection of the test's own.
fn states(addr: &str) -> Vec<SlotState> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let link = Link::connect(addr, LinkOptions::default()).await.unwrap();
            link.states().await.unwrap()
        })
}

fn working(addr: &str) -> Vec<u16> {
    states(addr)
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == SlotState::Working)
        .map(|(i, _)| i as u16 + 1)
        .collect()
}

/// A pipe whose reading end is already closed: every write to the other end fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    w
}

// ---------------------------------------------------------------- 1. closed pipes

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() {
    let addr = pool(Faults::default());
    for args in [
        vec!["scan", "--pool", "sim", "--json"],
        vec!["scan", "--pool", "sim"],
        vec!["status", "--pool", "sim", "--json"],
        vec!["status", "--pool", "sim"],
        vec!["info", "--pool", "sim"],
        vec!["apdu", "--pool", &addr, "--card", "2", "A0A40000023F00"],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let (code, _, err) = run(cmd(&args).stdout(Stdio::from(closed_pipe())));
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
    // The card the apdu started is stopped although its output went nowhere.
    assert!(working(&addr).is_empty(), "{:?}", working(&addr));
}

#[test]
fn scan_into_a_pipe_closed_after_the_first_line_stops_its_cards() {
    let addr = pool(Faults {
        latency_min: Duration::from_millis(20),
        latency_max: Duration::from_millis(20),
        ..Faults::default()
    });
    let mut child = cmd(&["scan", "--pool", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.starts_with("card"), "{first}");
    drop(lines); // `| head -1`
    let st = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(working(&addr).is_empty(), "{:?}", working(&addr));
}

// ---------------------------------------------------------------- 2. log levels

/// Runs `simpool serve …` until its control API on `control` answers (its start-up logged by
/// then), then SIGTERM; its stderr.
fn stderr_once_up(mut c: Command, control: &str) -> String {
    let mut child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn_tied()
        .unwrap();
    common::wait_for("serve's control API", Duration::from_secs(10), || {
        common::http::call(control, "GET", "/healthz", None).0 == 200
    });
    terminate(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

#[test]
fn serve_logs_at_info_by_default_and_v_q_rust_log_move_the_level() {
    let vpcd = format!("127.0.0.1:{}", free_port());
    let control = format!("127.0.0.1:{}", free_port());
    let serve = |pre: &[&str], rust_log: Option<&str>| {
        let mut args: Vec<&str> = pre.to_vec();
        args.extend([
            "serve",
            "--pool",
            "sim",
            "--readers",
            "1",
            "--control",
            &control,
            "--vpcd",
            &vpcd,
        ]);
        let mut c = cmd(&args);
        if let Some(l) = rust_log {
            c.env("RUST_LOG", l);
        }
        stderr_once_up(c, &control)
    };
    let default = serve(&[], None);
    assert!(
        default.contains(" INFO "),
        "serve is silent by default: {default}"
    );
    let quiet = serve(&["-q"], None);
    assert!(!quiet.contains(" INFO "), "-q: {quiet}");
    let verbose = serve(&["-v"], None);
    assert!(verbose.contains(" DEBUG "), "-v: {verbose}");
    // RUST_LOG wins over -v.
    let env = serve(&["-v"], Some("error"));
    assert!(
        !env.contains(" INFO ") && !env.contains(" DEBUG "),
        "RUST_LOG=error -v: {env}"
    );
    // A one-shot command warns only by default; -v shows its info lines (the in-process
    // simulator's), -q -q nothing at all.
    let (_, _, err) = simpool(&["info", "--pool", "sim"]);
    assert!(!err.contains(" INFO "), "{err}");
    let (code, _, err) = simpool(&["-v", "info", "--pool", "sim"]);
    assert_eq!(code, Some(0));
    assert!(err.contains(" INFO "), "-v: {err}");
    let (code, _, err) = simpool(&["-qq", "info", "--pool", "127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert!(
        !err.contains(" WARN ") && !err.contains(" ERROR "),
        "-qq: {err}"
    );
}

// ---------------------------------------------------------------- 3. SIMPOOL_POOL

/// `simpool ARGS` in a private network namespace (only loopback, brought up): a command that
/// ignored SIMPOOL_POOL and dialled the factory address could reach nothing off this machine.
fn isolated(script: &str, envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    // A PID namespace too: what the script starts in the background dies with the test.
    let mut c = Command::new("unshare");
    c.args(common::proc::OWN_PIDS)
        .args(["-n", "sh", "-c"])
        .arg(format!("ip link set lo up && {script}"))
        .env("SIMPOOL", BIN)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        c.env(k, v);
    }
    let r = run(&mut c);
    assert!(
        !r.2.contains("unshare failed") && !r.2.contains("Operation not permitted"),
        "this test needs root for a private network namespace: {}",
        r.2
    );
    r
}

#[test]
fn simpool_pool_is_honoured_by_every_command_in_a_private_network() {
    let sim = [("SIMPOOL_POOL", "sim")];
    let (code, out, err) = isolated("\"$SIMPOOL\" info --json", &sim);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["id"], "FF7506718255543339206700");
    let (code, out, err) = isolated("\"$SIMPOOL\" status --json", &sim);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out).as_array().unwrap().len(), 256);
    let (code, out, err) = isolated("\"$SIMPOOL\" scan --json", &sim);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out).as_array().unwrap().len(), 39);
    let (code, out, err) = isolated("\"$SIMPOOL\" apdu --card 18 A0A40000022FE2", &sim);
    assert_eq!((code, out.trim()), (Some(0), "9F0F"), "{err}");
    let (code, _, err) = isolated("\"$SIMPOOL\" stop --all", &sim);
    assert_eq!(code, Some(0), "{err}");
    // serve: the daemon's pool is the simulated one; a client asks it through the control API.
    let (code, out, err) = isolated(
        "\"$SIMPOOL\" serve --readers 1 --vpcd 127.0.0.1:35963 2>/dev/null & \
         for i in $(seq 50); do env -u SIMPOOL_POOL \"$SIMPOOL\" info --json && break; sleep 0.2; done; \
         kill $!",
        &sim,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("FF7506718255543339206700"),
        "serve ignored SIMPOOL_POOL: {out} {err}"
    );
}

#[test]
fn serve_settings_rank_flag_over_environment_over_file_over_default() {
    let dir = std::env::temp_dir().join(format!("simpool-prec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("simpool.toml");
    std::fs::write(
        &file,
        "pool = \"127.0.0.9:6666\"\ncontrol = \"127.0.0.1:7001\"\n[[reader]]\ncard = 18\n",
    )
    .unwrap();
    // `serve --check` names the pool and control address it uses in its verdicts; in a private
    // network, so whatever it dials stays on this machine.
    let check = |flags: &str, env: &[(&str, &str)]| {
        let (code, out, err) = isolated(
            &format!(
                "\"$SIMPOOL\" serve --check --config {} {flags}",
                file.display()
            ),
            env,
        );
        assert!(code == Some(0) || code == Some(1), "{out}{err}");
        let pool = out
            .lines()
            .find_map(|l| {
                l.split_once(" pool ")
                    .map(|(_, r)| r.split(':').next().unwrap_or(""))
            })
            .unwrap_or("")
            .to_string();
        let control = out
            .lines()
            .find_map(|l| l.split_once(" control API ").map(|(_, r)| r.to_string()))
            .map(|r| r.rsplit_once(':').map_or(r.clone(), |(a, _)| a.to_string()))
            .unwrap_or_else(|| "off".into());
        (pool, control, out)
    };
    let env = [
        ("SIMPOOL_POOL", "sim"),
        ("SIMPOOL_CONTROL", "127.0.0.1:7002"),
    ];
    let (pool, control, out) = check("", &[]);
    assert_eq!(
        (pool.as_str(), control.as_str()),
        ("127.0.0.9", "127.0.0.1:7001"),
        "file: {out}"
    );
    let (pool, control, out) = check("", &env);
    assert_eq!(
        (pool.as_str(), control.as_str()),
        ("(built-in simulator)", "127.0.0.1:7002"),
        "environment over file: {out}"
    );
    let (pool, control, out) = check("--pool 127.0.0.8:1 --control off", &env);
    assert_eq!(
        (pool.as_str(), control.as_str()),
        ("127.0.0.8", "off"),
        "flags: {out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- 4. binding clashes

#[test]
fn binding_clashes_at_start_up_name_both_sides() {
    let (code, _, err) = simpool(&[
        "serve",
        "--pool",
        "sim",
        "--control",
        "off",
        "--card",
        "18",
        "--iccid",
        &cards::iccid(18),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "ICCID {} is card 18, already bound to reader 0",
            cards::iccid(18)
        )),
        "{err}"
    );
    let (code, _, err) = simpool(&[
        "serve",
        "--pool",
        "sim",
        "--control",
        "off",
        "--imsi",
        &cards::imsi(256),
        "--card",
        "256",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "card 256 is already bound to reader 0 (as IMSI {})",
            cards::imsi(256)
        )),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("simpool-clash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("twice.toml");
    std::fs::write(&file, "[[reader]]\ncard = 18\n[[reader]]\ncard = 18\n").unwrap();
    let (code, _, err) = simpool(&["serve", "--check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("reader 1: card 18 is already bound to reader 0"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- 5. stopping cards

#[test]
fn an_interrupted_scan_leaves_no_card_running_that_was_idle_before_it() {
    let addr = pool(Faults {
        latency_min: Duration::from_millis(150),
        latency_max: Duration::from_millis(150),
        ..Faults::default()
    });
    // Card 2 runs before the scan (started by someone else): it must stay running.
    let (code, _, err) = simpool(&[
        "apdu",
        "--pool",
        &addr,
        "--keep",
        "--card",
        "2",
        "A0A40000023F00",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(working(&addr), [2]);
    let child = cmd(&["scan", "--pool", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    // Interrupt once the scan has started cards.
    let t0 = Instant::now();
    loop {
        if working(&addr).len() > 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "scan started no card"
        );
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let rows = stdout.lines().count() - 1;
    assert!(rows < 36, "the scan was not interrupted mid-way: {stdout}");
    assert_eq!(working(&addr), [2], "cards left running: {stderr}");
}

/// Issue 17 §3: replies to the reads a Ctrl-C abandoned are expected, not bad frames: the
/// link is not dropped for them, the stops are confirmed, and the messages agree.
#[test]
fn an_interrupted_scan_of_a_slow_pool_says_one_consistent_thing() {
    let addr = pool(Faults {
        latency_min: Duration::from_millis(200),
        latency_max: Duration::from_millis(400),
        ..Faults::default()
    });
    let child = cmd(&["scan", "--pool", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    // Interrupt while many reads are under way (the scan reads cards concurrently).
    let t0 = Instant::now();
    while working(&addr).len() < 8 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "scan started no card"
        );
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    for wrong in [
        "no one waits",
        "dropping the connection",
        "did not confirm",
        "connection lost",
    ] {
        assert!(!stderr.contains(wrong), "{wrong:?} in: {stderr}");
    }
    assert!(stderr.contains("stopped the"), "{stderr}");
    assert_eq!(
        working(&addr),
        Vec::<u16>::new(),
        "cards left running: {stderr}"
    );
}

#[test]
fn apdu_stops_its_card_unless_keep_and_stop_stops_cards() {
    let addr = pool(Faults::default());
    let apdu = |keep: bool, card: &str| {
        let mut args = vec!["apdu", "--pool", &addr, "--card", card, "A0A40000023F00"];
        if keep {
            args.push("--keep");
        }
        let (code, out, err) = simpool(&args);
        assert_eq!((code, out.trim()), (Some(0), "9F17"), "{err}");
    };
    apdu(false, "2");
    assert!(working(&addr).is_empty());
    apdu(true, "2");
    apdu(true, "18");
    assert_eq!(working(&addr), [2, 18]);
    let (code, out, err) = simpool(&["stop", "--pool", &addr, "--card", "18", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v[0]["card"], 18);
    assert_eq!(v[0]["stopped"], true);
    assert_eq!(working(&addr), [2]);
    apdu(true, "18");
    let (code, out, err) = simpool(&["stop", "--pool", &addr, "--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("card   2  stopped") && out.contains("card  18  stopped"),
        "{out}"
    );
    assert!(working(&addr).is_empty());
    let (code, _, err) = simpool(&["stop", "--pool", &addr, "--card", "300"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = simpool(&["stop", "--pool", &addr]);
    assert_eq!(code, Some(2), "--card or --all: {err}");
}

/// A daemon on the simulated pool with reader 0 bound to card 18; its control address.
struct Daemon {
    child: Child,
    control: String,
}

impl Daemon {
    fn start() -> Daemon {
        let control = format!("127.0.0.1:{}", free_port());
        let vpcd = format!("127.0.0.1:{}", free_port());
        let child = cmd(&[
            "serve",
            "--pool",
            "sim",
            "--card",
            "18",
            "--readers",
            "2",
            "--vpcd",
            &vpcd,
            "--control",
            &control,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tied()
        .unwrap();
        let d = Daemon { child, control };
        let t0 = Instant::now();
        while d.run(&["info"]).0 != Some(0) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        run(cmd(args).env("SIMPOOL_CONTROL", &self.control))
    }

    fn card(&self, n: usize) -> Value {
        let (code, out, err) = self.run(&["status", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        json(&out)[n - 1].clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

#[test]
fn stop_through_the_daemon_refuses_held_cards_unless_forced() {
    let d = Daemon::start();
    let t0 = Instant::now();
    while d.card(18)["holder"] != "reader 0" {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", d.card(18));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = d.run(&["apdu", "--keep", "--card", "2", "A0A40000023F00"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        d.card(2)["state"],
        "working",
        "apdu --keep through the daemon"
    );
    let (code, _, err) = d.run(&["stop", "--card", "18"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("card 18 is held by reader 0 (--force"),
        "{err}"
    );
    // Forced: stopped under its holder, who is named.
    let (code, out, err) = d.run(&["stop", "--card", "18", "--force", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(
        (&v[0]["stopped"], &v[0]["holder"]),
        (&Value::Bool(true), &Value::from("reader 0")),
        "{out}"
    );
    let (code, out, err) = d.run(&["stop", "--card", "2", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)[0]["stopped"], true);
    assert_eq!(d.card(2)["state"], "inserted");
    // apdu without --keep: the daemon stops the card after the request.
    let (code, _, err) = d.run(&["apdu", "--card", "3", "A0A40000023F00"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(d.card(3)["state"], "inserted");
    // --all leaves the held card alone (and says so), --all --force stops it too.
    d.run(&["apdu", "--keep", "--card", "2", "A0A40000023F00"]);
    d.run(&["apdu", "--keep", "--card", "18", "A0A40000023F00"]);
    let (code, out, err) = d.run(&["stop", "--all", "--json"]);
    let rows = json(&out);
    let row = |n: u64| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["card"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(row(2)["stopped"], true, "{out} {err}");
    if row(18) != Value::Null {
        // Card 18 runs (the apdu was refused: it is held) only if its reader started it.
        assert_eq!(row(18)["stopped"], false, "{out}");
        assert_eq!(row(18)["holder"], "reader 0", "{out}");
    }
    assert_eq!(code, Some(0), "held cards left alone are no failure: {err}");
    let (code, out, err) = d.run(&["stop", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    if row(18) != Value::Null {
        assert!(out.contains("left running: held by reader 0"), "{out}");
        let (code, out, err) = d.run(&["stop", "--all", "--force", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let rows = json(&out);
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["card"] == 18 && r["stopped"] == true),
            "{out}"
        );
    }
}

#[test]
fn scan_prints_rows_as_cards_finish_and_progress_only_on_a_terminal() {
    // Card 7 never answers: the scan cannot end before its 3 s timeout, the others can.
    let addr = pool(Faults {
        mute: [7].into(),
        ..Faults::default()
    });
    let mut child = cmd(&["scan", "--pool", &addr, "--reply-timeout-ms", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    let mut first = String::new();
    lines.read_line(&mut header).unwrap();
    lines.read_line(&mut first).unwrap();
    assert!(first.contains("inserted"), "{first}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first row came only when the scan was over"
    );
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    let st = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(3), "card 7 failed: {err}");
    assert!(
        rest.lines()
            .last()
            .unwrap_or("")
            .contains("   7  inserted  error"),
        "{rest}"
    );
    assert!(!err.contains("cards"), "progress off a terminal: {err}");
    // On a terminal (`script` gives the command a pty), progress shows on stderr.
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} scan --pool {addr} --reply-timeout-ms 500"),
            "/dev/null",
        ])
        .env_remove("SIMPOOL_CONTROL")
        .output_tied()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("/39 cards"), "{tty}");
}

// ---------------------------------------------------------------- 7. JSON, exit codes, help

#[test]
fn json_shapes_have_stable_keys() {
    let addr = pool(Faults {
        mute: [7].into(),
        ..Faults::default()
    });
    let (code, out, _) = simpool(&["scan", "--pool", &addr, "--json"]);
    assert_eq!(code, Some(3), "a failed card makes the scan partial");
    let rows = json(&out);
    let keys = [
        "card", "state", "atr", "iccid", "imsi", "type", "spn", "msisdn", "eid", "pin1", "puk1",
        "hidden", "holder", "error", "labels",
    ];
    for r in rows.as_array().unwrap() {
        let mut got: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        got.sort_unstable();
        let mut want = keys.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{r}");
    }
    let seven = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["card"] == 7)
        .unwrap();
    assert!(
        seven["error"].is_string() && seven["iccid"].is_null(),
        "{seven}"
    );
    let (code, out, _) = simpool(&["status", "--pool", &addr, "--json"]);
    assert_eq!(code, Some(0));
    let v = json(&out);
    assert_eq!(v.as_array().unwrap().len(), 256);
    assert_eq!(
        v[6],
        serde_json::json!({"card": 7, "state": "inserted", "holder": null, "labels": {}, "refused": null,
            "type": null, "spn": null, "msisdn": null, "eid": null,
            "pin1": {"enabled": null, "verified": null, "tries": null},
            "puk1": {"tries": null}, "hidden": []})
    );
    let (code, out, _) = simpool(&["info", "--pool", &addr, "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        json(&out),
        serde_json::json!({"id": "FF7506718255543339206700", "version": "V053"})
    );
    let (code, out, _) = simpool(&[
        "apdu",
        "--pool",
        &addr,
        "--card",
        "2",
        "--json",
        "A0A40000023F00",
    ]);
    assert_eq!(code, Some(0));
    let v = json(&out);
    assert_eq!(v["responses"], serde_json::json!(["9F17"]));
    assert_eq!(v["errors"], serde_json::json!([null]));
}

#[test]
fn exit_codes_mean_the_same_for_every_command() {
    let addr = pool(Faults {
        mute: [5].into(),
        ..Faults::default()
    });
    // 2: usage (clap's own, and simpool's checks of values)
    assert_eq!(simpool(&["status", "--bogus"]).0, Some(2));
    assert_eq!(
        simpool(&["apdu", "--pool", &addr, "--card", "2", "A0XYZ"]).0,
        Some(2)
    );
    assert_eq!(
        simpool(&["apdu", "--pool", &addr, "--card", "300", "A0"]).0,
        Some(2)
    );
    assert_eq!(simpool(&["serve", "--pool", "sim"]).0, Some(2), "no reader");
    // 1: error
    assert_eq!(
        simpool(&["apdu", "--pool", &addr, "--card", "5", "A0F2000016"]).0,
        Some(1)
    );
    let dead = format!("127.0.0.1:{}", free_port());
    assert_eq!(simpool(&["info", "--pool", &dead]).0, Some(1));
    assert_eq!(simpool(&["readers", "--control", &dead]).0, Some(1));
    // 3: partial
    assert_eq!(simpool(&["scan", "--pool", &addr]).0, Some(3));
    // 0
    assert_eq!(simpool(&["status", "--pool", &addr]).0, Some(0));
}

#[test]
fn help_lists_exit_codes_json_help_and_clean_usage_lines() {
    let (_, top, _) = simpool(&["--help"]);
    let subs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|s| s != "help")
        .collect();
    assert!(subs.len() >= 12, "{subs:?}");
    for s in &subs {
        let (code, help, err) = simpool(&[s, "--help"]);
        assert_eq!(code, Some(0), "{s}: {err}");
        assert!(help.contains("Exit status"), "{s} --help: {help}");
        assert!(help.contains("130  interrupted"), "{s}");
        if let Some(l) = help.lines().find(|l| l.trim_start().starts_with("--json")) {
            assert!(l.trim() != "--json", "{s}: --json has no help text");
            // The command's own options, not under the pool's or daemon's heading.
            let json_at = help.find("      --json").unwrap();
            for heading in ["\nPool:", "\nDaemon:"] {
                if let Some(h) = help.find(heading) {
                    assert!(json_at < h, "{s}: --json under {heading:?}:\n{help}");
                }
            }
        }
    }
    // The flattened pool and daemon options stay out of the usage line after an error.
    for s in &subs {
        let (code, _, err) = simpool(&[s, "--bogus"]);
        assert_eq!(code, Some(2), "{s}");
        let usage = err.lines().find(|l| l.starts_with("Usage:")).unwrap_or("");
        assert!(
            usage.starts_with(&format!("Usage: simpool {s}")),
            "{s}: {err}"
        );
        assert!(
            !usage.contains("<--") && !usage.contains("--pool") && !usage.contains("--control"),
            "{s}: {usage}"
        );
    }
}

// ---------------------------------------------------------------- 8. completions, man

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = simpool(&["completions", shell]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("scan") && out.contains("--pool"), "{shell}");
    }
    assert_eq!(simpool(&["completions", "tcsh"]).0, Some(2));
    let (code, out, _) = simpool(&["man"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(".ie") || out.contains(".TH simpool 1"),
        "{out}"
    );
    assert!(out.contains(".SH \"EXIT STATUS\""));
    let dir = std::env::temp_dir().join(format!("simpool-man-{}", std::process::id()));
    let (code, _, err) = simpool(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for page in [
        "simpool.1",
        "simpool-scan.1",
        "simpool-serve.1",
        "simpool-stop.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- 6. driver scripts

fn driver(script: &str) -> Command {
    Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("driver")
            .join(script),
    )
}

#[test]
fn every_driver_script_answers_help_with_zero() {
    // Every executable file of driver/, so a new script cannot come without --help.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("driver");
    let mut scripts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            use std::os::unix::fs::PermissionsExt;
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 7, "{scripts:?}");
    for s in &scripts {
        let (code, out, err) = run(driver(s).arg("--help"));
        assert_eq!(code, Some(0), "{s} --help: {err}");
        assert!(out.lines().count() >= 2, "{s} --help printed: {out}");
    }
}

#[test]
fn demo_reuses_or_refuses_a_running_demo_and_stop_stops_all_of_it() {
    let dir = std::env::temp_dir().join(format!("simpool-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A running "demo": a simpool process and a process named pcscd (a copy of sleep).
    let mut simpool = cmd(&["sim", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .spawn_tied()
        .unwrap();
    std::fs::write(dir.join("simpool.pid"), simpool.id().to_string()).unwrap();
    let demo = |arg: Option<&str>| {
        let mut c = driver("demo");
        c.env("SIMPOOL_DEMO_DIR", &dir);
        if let Some(a) = arg {
            c.arg(a);
        }
        run(&mut c)
    };
    // simpool without its pcscd: --keep refuses, plain demo refuses.
    let (code, _, err) = demo(Some("--keep"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--stop"), "{err}");
    let fake = dir.join("pcscd");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut pcscd = Command::new(&fake).arg("600").spawn_tied().unwrap();
    std::fs::write(dir.join("pcscd.pid"), pcscd.id().to_string()).unwrap();
    let (code, _, err) = demo(Some("--keep"));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("reusing"), "{err}");
    let (code, _, err) = demo(None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("driver/demo --stop"), "{err}");
    let (code, _, err) = demo(Some("--stop"));
    assert_eq!(code, Some(0), "{err}");
    let t0 = Instant::now();
    while simpool.try_wait().unwrap().is_none() || pcscd.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "--stop left a process: {err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.join("simpool.pid").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
