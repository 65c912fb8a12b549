//! Issue 21, "the second hour" (§3 hints, §5 the state file, §6 output, §10 conveniences),
//! and issue 23's command line (one daemon per call, `--instance`, `status --all-instances`):
//! the command line as a user runs it, against simulated pools and daemons on loopback.

mod common;

use common::free_port;
use common::proc::Tied;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
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
        .env_remove("SIMPOOL_INSTANCE")
        .env_remove("SIMPOOL_CONFIG_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> (Option<i32>, String, String) {
    let o = c.output_tied().expect("run simpool");
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

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("simpool-2h-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A simulated pool with the built-in cards on a loopback port; its address.
fn pool() -> String {
    common::sim_pool(CardsFile::default_set(), Faults::default())
        .addr()
        .to_string()
}

/// A closed loopback port.
fn closed() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A daemon (`simpool serve ARGS`, with a control address and vpcd ports of its own) until
/// dropped.
struct Daemon {
    child: Child,
    control: String,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(args, &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let control = format!("127.0.0.1:{}", free_port());
        let vpcd = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["serve", "--vpcd", &vpcd, "--control", &control];
        all.extend(args);
        let child = cmd(&all)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_tied()
            .unwrap();
        let d = Daemon { child, control };
        d.wait_up();
        d
    }

    fn wait_up(&self) {
        let t0 = Instant::now();
        while common::http::call(&self.control, "GET", "/healthz", None).0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = cmd(args);
        c.env("SIMPOOL_CONTROL", &self.control);
        c
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        run(&mut self.cmd(args))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- §3 hints

#[test]
fn a_pool_from_simpool_pool_is_named_as_the_environment_not_as_a_flag() {
    let addr = pool();
    let d = Daemon::start(&["--pool", &addr, "--readers", "1"]);
    // The daemon uses this very pool: refused, and the hint says what the user set.
    let (code, _, err) = run(d.cmd(&["info"]).env("SIMPOOL_POOL", &addr));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("SIMPOOL_POOL={addr}")), "{err}");
    assert!(err.contains("unset SIMPOOL_POOL"), "{err}");
    assert!(!err.contains("--pool"), "{err}");
    // Forced: the warning names the variable too.
    let (code, _, err) = run(d.cmd(&["info", "--force"]).env("SIMPOOL_POOL", &addr));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("(SIMPOOL_POOL={addr}); going around it")),
        "{err}"
    );
    // Given as a flag, the flag is named.
    let (code, _, err) = d.run(&["info", "--pool", &addr]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("--pool {addr}")) && err.contains("leave out --pool"),
        "{err}"
    );

    // A daemon on its built-in simulated pool shares no pool with an address: no warning
    // about it, and an unreachable pool from the environment says where it came from.
    let s = Daemon::start(&["--pool", "sim", "--readers", "1"]);
    let gone = closed();
    let (code, _, err) = run(s.cmd(&["status"]).env("SIMPOOL_POOL", &gone));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("pool {gone} unreachable")), "{err}");
    assert!(err.contains("the pool from SIMPOOL_POOL"), "{err}");
    assert!(
        !err.contains("may be using") && !err.contains("--pool"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn with_no_daemon_every_pool_command_says_so_before_the_unreachable_pool() {
    // A private network namespace with only loopback: nothing answers on the default control
    // address and the factory address cannot be reached.
    for args in [
        "status",
        "scan",
        "info --json",
        "stop --all",
        "apdu --card 18 A0A40000023F00",
    ] {
        let out = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg(format!("ip link set lo up; exec {BIN} {args}"))
            .env_remove("SIMPOOL_POOL")
            .env_remove("SIMPOOL_CONTROL")
            .env_remove("SIMPOOL_INSTANCE")
            .output_tied()
            .expect("unshare (root needed)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args}: {err}");
        let none = err
            .find("no simpool daemon answers on 127.0.0.1:6680")
            .unwrap_or_else(|| panic!("{args}: {err}"));
        let pool = err
            .find("pool 192.168.1.199:6666 unreachable")
            .unwrap_or_else(|| panic!("{args}: {err}"));
        assert!(none < pool, "{args}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args}: {err}");
    }
}

#[test]
fn cards_is_refused_where_there_is_no_simulated_pool_to_shape() {
    let dir = tmp("cards");
    let cards = dir.join("cards.toml");
    std::fs::write(&cards, "[[card]]\nslot = 7\n").unwrap();
    let cards = cards.to_str().unwrap();
    let addr = pool();
    for args in [
        vec!["scan", "--pool", &addr, "--cards", cards],
        vec!["info", "--cards", cards],
    ] {
        let (code, _, err) = simpool(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("is for the simulated pool"), "{args:?}: {err}");
    }
    let (code, _, err) = simpool(&[
        "serve",
        "--pool",
        &addr,
        "--cards",
        cards,
        "--check",
        "--control",
        "off",
        "--readers",
        "1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is for the simulated pool"), "{err}");
    // With the simulated pool it is what shapes it.
    let (code, out, err) = simpool(&["scan", "--pool", "sim", "--cards", cards, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out).as_array().unwrap().len(), 1, "{out}");
    // From a configuration file with a real pool: a warning, not silence.
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!("pool = \"{addr}\"\ncards = \"{cards}\"\ncontrol = \"off\"\n[[reader]]\ncard = 18\nvpcd = \"{}\"\n", closed()),
    )
    .unwrap();
    let (_, _, err) = simpool(&["serve", "--config", cfg.to_str().unwrap(), "--check"]);
    assert!(err.contains("is for the simulated pool; ignored"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_help_says_which_cards_it_simulates() {
    let (code, out, _) = simpool(&["sim", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("SIMs, USIMs and eUICCs"), "{out}");
    assert!(!out.contains("GSM SIMs"), "{out}");
    let (_, out, _) = simpool(&["--help"]);
    assert!(out.contains("USIMs"), "{out}");
}

// ---------------------------------------------------------------- §5 the state file

#[test]
fn a_state_file_in_a_missing_directory_is_refused_at_start_up_and_by_check() {
    let dir = tmp("state");
    let state = dir.join("nonexistent").join("state.json");
    let state = state.to_str().unwrap();
    let t0 = Instant::now();
    let (code, _, err) = run(cmd(&[
        "serve",
        "--pool",
        "sim",
        "--readers",
        "1",
        "--vpcd",
        &closed(),
        "--control",
        &closed(),
        "--state",
        state,
    ])
    .timeout_guard());
    assert_eq!(code, Some(2), "a configuration error: {err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains(state), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "at once");
    // The same from a configuration file, and under --check as one verdict.
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "pool = \"sim\"\nstate = \"{state}\"\ncontrol = \"{}\"\nreaders = 1\nvpcd = \"{}\"\n",
            closed(),
            closed()
        ),
    )
    .unwrap();
    let (code, _, err) = run(cmd(&["serve", "--config", cfg.to_str().unwrap()]).timeout_guard());
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) = simpool(&["serve", "--config", cfg.to_str().unwrap(), "--check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("state {state}")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("FAILED") && line.contains("does not exist"),
        "{line}"
    );
    // A writable place passes, and the check leaves nothing behind.
    let good = dir.join("state.json");
    let (_, out, _) = simpool(&[
        "serve",
        "--pool",
        "sim",
        "--control",
        "off",
        "--check",
        "--readers",
        "1",
        "--vpcd",
        &closed(),
        "--state",
        good.to_str().unwrap(),
    ]);
    assert!(
        out.contains(&format!("ok     state {}: writable", good.display())),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "only serve.toml is left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills a command that does not end within 10 s (a daemon that started after all).
trait TimeoutGuard {
    fn timeout_guard(&mut self) -> &mut Command;
}

impl TimeoutGuard for Command {
    fn timeout_guard(&mut self) -> &mut Command {
        let prog = self.get_program().to_owned();
        let args: Vec<_> = self.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = self
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        let mut c = Command::new("timeout");
        c.arg("10").arg(prog).args(args);
        for (k, v) in envs {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        *self = c;
        self
    }
}

// ---------------------------------------------------------------- §6 output

/// Runs `sh -c LINE` with standard output on a terminal `cols` wide (util-linux `script`);
/// its output lines.
fn on_terminal(line: &str, cols: u16, env: &[(&str, &str)]) -> Vec<String> {
    let o = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty cols {cols} rows 50; {line}"))
        .arg("/dev/null")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output_tied()
        .expect("script (util-linux)");
    // Progress on stderr shares the terminal: what a line shows is what follows its last
    // "clear line".
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.rsplit("\x1b[K").next().unwrap_or(l))
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readers_and_bind_print_aligned_rows_within_100_columns_with_a_header() {
    // Card 2's ICCID, to bind a reader by.
    let (_, out, _) = simpool(&["scan", "--pool", "sim", "--json"]);
    let rows = json(&out);
    let card2 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["card"] == 2)
        .unwrap();
    let iccid2 = card2["iccid"].as_str().unwrap().to_string();
    let d = Daemon::start(&[
        "--pool",
        "sim",
        "--card",
        "18",
        "--imsi",
        "460019894013615",
        "--iccid",
        &iccid2,
        "--readers",
        "4",
    ]);
    let (code, out, err) = d.run(&["readers"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let head = lines[0];
    let col = |name: &str| {
        head.find(name)
            .unwrap_or_else(|| panic!("{name} in {head}"))
    };
    let (iccid, imsi) = (col("ICCID"), col("IMSI"));
    for l in &lines {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    // Every row's ICCID and IMSI start under their headers, whatever the binding.
    let rows: Vec<&str> = lines[1..]
        .iter()
        .copied()
        .filter(|l| l.get(..6).is_some_and(|c| c.trim().parse::<u16>().is_ok()))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for r in &rows {
        assert_eq!(&r[iccid - 1..iccid], " ", "{r}\n{out}");
        assert_ne!(&r[iccid..=iccid], " ", "{r}\n{out}");
        assert_eq!(&r[imsi - 1..imsi], " ", "{r}\n{out}");
        assert_ne!(&r[imsi..=imsi], " ", "{r}\n{out}");
    }
    // Reader 1 is bound by IMSI: the IMSI shows in its column, the binding's kind in its own.
    let r1 = rows[1];
    assert!(r1[imsi..].starts_with("460019894013615"), "{r1}");
    assert!(r1.split_whitespace().any(|w| w == "IMSI"), "{r1}");
    let r2 = rows[2];
    assert!(r2[iccid..].starts_with(&iccid2), "{r2}");
    // A bind prints the reader under the same header (exit 4: no pcscd polls here).
    let (code, out, err) = d.run(&["bind", "3", "--card", "20"]);
    assert_eq!(code, Some(4), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], head, "{out}");
    assert!(lines[1].trim_start().starts_with("3 "), "{out}");
    let (code, out, _) = d.run(&["unbind", "3"]);
    assert_eq!((code, out.lines().next()), (Some(0), Some(head)), "{out}");

    // On a narrow terminal a row is cut at its width, with a marker.
    let lines = on_terminal(
        &format!("{BIN} readers"),
        60,
        &[("SIMPOOL_CONTROL", &d.control)],
    );
    assert!(lines.len() >= 5, "{lines:?}");
    for l in &lines {
        assert!(l.chars().count() <= 60, "{l}");
    }
    assert!(lines.iter().any(|l| l.ends_with('…')), "{lines:?}");
}

#[test]
fn scan_rows_fit_100_columns_and_are_cut_with_a_marker_on_a_narrow_terminal() {
    let d = Daemon::start(&["--pool", "sim", "--card", "18", "--readers", "1"]);
    // Wait for card 18 to be held by reader 0, so its row is a held one.
    let t0 = Instant::now();
    loop {
        let (_, out, _) = d.run(&["status", "--json"]);
        if json(&out)[17]["holder"] == "reader 0" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = d.run(&["scan"]);
    assert_eq!(code, Some(0), "{err}");
    for l in out.lines() {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert!(out.contains("(held by reader 0"), "{out}");
    let lines = on_terminal(
        &format!("{BIN} scan"),
        72,
        &[("SIMPOOL_CONTROL", &d.control)],
    );
    assert!(lines.iter().all(|l| l.chars().count() <= 72), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  33") && l.ends_with('…')),
        "{lines:?}"
    );
}

#[test]
fn status_column_headers_stand_apart() {
    let (code, out, err) = simpool(&["status", "--pool", "sim"]);
    assert_eq!(code, Some(0), "{err}");
    let head: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    let want: Vec<String> = std::iter::once("card".to_string())
        .chain((0..16).map(|i| format!("+{i}")))
        .collect();
    assert_eq!(head, want, "{out}");
}

#[test]
fn apdu_puts_a_gap_before_the_status_word() {
    let (code, out, err) = simpool(&[
        "apdu",
        "--pool",
        "sim",
        "--card",
        "18",
        "A0A40000022FE2",
        "A0C000000F",
        "A0B000000A",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "9F0F");
    let (data, sw) = lines[2].split_once(' ').unwrap_or_else(|| panic!("{out}"));
    assert_eq!((data.len(), sw), (20, "9000"), "{out}");
    assert_eq!(data, common::upper(&common::vectors::ef_iccid(18)), "{out}");
}

#[test]
fn json_is_one_row_per_line_in_a_pipe() {
    let (code, out, err) = simpool(&["status", "--pool", "sim", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 258, "[, 256 rows, ]: {out}");
    assert_eq!((lines[0], lines[257]), ("[", "]"));
    for (i, l) in lines[1..257].iter().enumerate() {
        let row = json(l.trim_end_matches(','));
        assert_eq!(row["card"], i + 1, "{l}");
    }
    assert!(json(&out).is_array());
    let (_, out, _) = simpool(&["info", "--pool", "sim", "--json"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(json(&out)["id"].is_string());
    // The same on a terminal.
    let lines = on_terminal(&format!("{BIN} info --pool sim --json"), 80, &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

#[test]
fn daemon_and_pool_options_may_come_before_the_command() {
    let d = Daemon::start(&["--pool", "sim", "--card", "18"]);
    let (code, out, err) = simpool(&["--control", &d.control, "readers"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Virtual PCD 00 00"), "{out}");
    let (code, out, err) = simpool(&["-q", "--control", &d.control, "--json", "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)[17]["card"], 18);
    let (code, out, err) = simpool(&["--pool=sim", "info"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("V053"), "{out}");
    // An option the command does not take is still refused, naming it.
    let (code, _, err) = simpool(&["--pool", "sim", "completions", "bash"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--pool"), "{err}");
}

// ---------------------------------------------------------------- §10 conveniences

const USIM_SELECT: &str = "00A4040410A0000000871002FFFFFFFF8907090000";

#[test]
fn apdu_auto_fetches_responses_and_repeats_with_the_right_le() {
    let cmds = [USIM_SELECT, "00A40004026F07", "00B0000020"];
    // Without --auto: the status words as the card gives them.
    let mut args = vec!["apdu", "--pool", "sim", "--card", "20"];
    args.extend(cmds);
    let (code, raw, err) = simpool(&args);
    assert_eq!(code, Some(0), "{err}");
    let raw: Vec<&str> = raw.lines().collect();
    assert!(raw[0].starts_with("61") && raw[0].len() == 4, "{raw:?}");
    assert!(raw[2].starts_with("6C"), "{raw:?}");
    // With it: one final answer per command, as an application sees it.
    let mut auto = args.clone();
    auto.insert(1, "--auto");
    let (code, out, err) = simpool(&auto);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("62") && lines[0].ends_with(" 9000"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("62") && lines[1].ends_with(" 9000"),
        "{out}"
    );
    assert_eq!(
        lines[2], "080910100000000002 9000",
        "EF.IMSI of card 20: {out}"
    );
    // Through the daemon, the same (the API's "auto").
    let d = Daemon::start(&["--pool", "sim", "--readers", "1"]);
    let (code, via, err) = d.run(&auto);
    let _ = via;
    let auto_daemon: Vec<&str> = auto
        .iter()
        .copied()
        .filter(|a| *a != "--pool" && *a != "sim")
        .collect();
    assert_eq!(code, Some(0), "{err}");
    let (code, via, err) = d.run(&auto_daemon);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(via, out);
    let mut json_args = auto_daemon.clone();
    json_args.insert(1, "--json");
    let (_, j, _) = d.run(&json_args);
    let v = json(&j);
    assert_eq!(v["responses"][2], "0809101000000000029000", "{j}");
    assert_eq!(v["errors"], serde_json::json!([null, null, null]));
    // A GSM SIM: 9Fxx is fetched with class A0.
    let (code, out, err) = simpool(&[
        "apdu",
        "--auto",
        "--pool",
        "sim",
        "--card",
        "18",
        "A0A40000023F00",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.trim().ends_with(" 9000") && out.len() > 40, "{out}");
}

#[test]
fn apdu_file_takes_commands_one_per_line_with_comments() {
    let dir = tmp("apdu-file");
    let f = dir.join("imsi.apdu");
    std::fs::write(
        &f,
        "# EF.IMSI of a SIM\nA0A40000023F00   # MF\nA0 A4 00 00 02 7F20\n\n  A0A40000026F07\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = simpool(&[
        "apdu",
        "--pool",
        "sim",
        "--card",
        "256",
        "--file",
        f,
        "A0B0000009",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["9F17", "9F17", "9F0F"], "{out}");
    assert_eq!(
        lines[3], "084906108949106351 9000",
        "card 256's IMSI: {out}"
    );
    // From standard input.
    let mut child = cmd(&["apdu", "--pool", "sim", "--card", "256", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"A0A40000023F00 # MF\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "9F17");
    // A bad line is named, before any card is started.
    std::fs::write(dir.join("bad.apdu"), "A0A40000023F00\nA0A4 zz\n").unwrap();
    let bad = dir.join("bad.apdu");
    let (code, _, err) = simpool(&[
        "apdu",
        "--pool",
        "sim",
        "--card",
        "256",
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad.apdu:2:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn scan_card_list_and_free_pick_the_cards() {
    let (code, out, err) = simpool(&["scan", "--pool", "sim", "--json", "--card", "18,256,3-4"]);
    assert_eq!(code, Some(0), "{err}");
    let cards: Vec<u64> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["card"].as_u64().unwrap())
        .collect();
    assert_eq!(cards, [3, 4, 18, 256]);
    let (code, _, err) = simpool(&["scan", "--pool", "sim", "--card", "0,300"]);
    assert_eq!(code, Some(2), "{err}");
    // Through the daemon: card 18 held by reader 0 is listed (from what is known) unless
    // --free; card 2 left running by apdu --keep is left out by --free too.
    let d = Daemon::start(&["--pool", "sim", "--card", "18", "--readers", "1"]);
    let t0 = Instant::now();
    loop {
        let (_, out, _) = d.run(&["status", "--json"]);
        if json(&out)[17]["holder"] == "reader 0" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = d.run(&["apdu", "--keep", "--card", "2", "A0A40000023F00"]);
    assert_eq!(code, Some(0), "{err}");
    let picked = |args: &[&str]| -> Vec<u64> {
        let (code, out, err) = d.run(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["card"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        picked(&["scan", "--json", "--card", "1-3,18"]),
        [1, 2, 3, 18]
    );
    assert_eq!(
        picked(&["scan", "--json", "--card", "1-3,18", "--free"]),
        [1, 3]
    );
    let all_free = picked(&["scan", "--json", "--free"]);
    assert!(!all_free.contains(&18) && !all_free.contains(&2) && all_free.contains(&256));
}

// ---------------------------------------------------------------- issue 23: instances

/// A configuration directory with `pool-a.toml` (a running daemon on the simulated pool,
/// with a control token), `pool-b.toml` (a bank whose daemon is not running) and a cards
/// file, which is no instance.
fn instances(dir: &Path) -> (Daemon, String) {
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let a_control = format!("127.0.0.1:{}", free_port());
    let b_control = closed();
    std::fs::write(
        dir.join("pool-a.toml"),
        format!(
            "pool = \"sim\"\ncontrol = \"{a_control}\"\ncontrol_token = \"{}\"\nvpcd = \"{}\"\nreaders = 1\n",
            token.display(),
            closed()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pool-b.toml"),
        format!(
            "pool = \"10.1.2.4:6666\"\ncontrol = \"{b_control}\"\n[remsim]\nserver = \"10.0.0.5\"\nbank_id = 2\nlisten = \"10.0.0.22:9999\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("cards.toml"), "[[card]]\nslot = 7\n").unwrap();
    let child = cmd(&[
        "serve",
        "--config",
        dir.join("pool-a.toml").to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn_tied()
    .unwrap();
    let d = Daemon {
        child,
        control: a_control,
    };
    let t0 = Instant::now();
    while common::http::call(&d.control, "GET", "/healthz", None).0 != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "pool-a did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (d, b_control)
}

#[test]
fn an_instance_name_picks_the_daemon_from_its_configuration() {
    let dir = tmp("instances");
    let (_a, _) = instances(&dir);
    let cfg = dir.to_str().unwrap();
    let with_dir = |args: &[&str], env: &[(&str, &str)]| {
        run(cmd(args)
            .env("SIMPOOL_CONFIG_DIR", cfg)
            .envs(env.iter().copied()))
    };
    // The instance's control address and token come from pool-a.toml.
    let (code, out, err) = with_dir(&["readers", "--instance", "pool-a"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Virtual PCD 00 00"), "{out}");
    let (code, out, err) = with_dir(&["--instance", "pool-a", "info"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("FF7506718255543339206700"), "{out}");
    let (code, _, err) = with_dir(&["status"], &[("SIMPOOL_INSTANCE", "pool-a")]);
    assert_eq!(code, Some(0), "{err}");
    // A flag wins over the environment.
    let (code, _, err) = with_dir(
        &["readers", "--instance", "pool-a"],
        &[("SIMPOOL_CONTROL", &closed())],
    );
    assert_eq!(code, Some(0), "{err}");
    // An unknown instance names the file it looked for; two ways at once are refused.
    let (code, _, err) = with_dir(&["readers", "--instance", "pool-x"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{cfg}/pool-x.toml")), "{err}");
    let (code, _, err) = with_dir(
        &[
            "readers",
            "--instance",
            "pool-a",
            "--control",
            "127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = with_dir(
        &["readers"],
        &[
            ("SIMPOOL_INSTANCE", "pool-a"),
            ("SIMPOOL_CONTROL", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unset one"), "{err}");
    let (code, _, err) = with_dir(&["readers", "--instance", "../etc/passwd"], &[]);
    assert_eq!(code, Some(2), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_all_instances_lists_each_instance_s_pool_bank_and_state() {
    let dir = tmp("all-instances");
    let (a, b_control) = instances(&dir);
    let cfg = dir.to_str().unwrap();
    let (code, out, err) = run(cmd(&["status", "--all-instances"]).env("SIMPOOL_CONFIG_DIR", cfg));
    assert_eq!(code, Some(3), "pool-b does not answer: {out}{err}");
    assert!(
        err.contains("cards.toml") && err.contains("left out"),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        words(lines[0]),
        ["instance", "control", "pool", "bank", "state"]
    );
    assert!(
        lines[1].starts_with("pool-a ") && lines[1].contains(&a.control),
        "{out}"
    );
    assert!(
        lines[1].contains("built-in simulated pool") && lines[1].contains("running, pool link up"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("pool-b ") && lines[2].contains("10.1.2.4:6666"),
        "{out}"
    );
    assert!(lines[2].contains(" 2  not reachable"), "{out}");
    let (_, out, _) =
        run(cmd(&["status", "--all-instances", "--json"]).env("SIMPOOL_CONFIG_DIR", cfg));
    let rows = json(&out);
    assert_eq!(rows[0]["instance"], "pool-a");
    assert_eq!(
        (&rows[0]["reachable"], &rows[0]["link"], &rows[0]["bank_id"]),
        (&Value::Bool(true), &Value::from("up"), &Value::Null)
    );
    assert_eq!(rows[1]["control"], b_control.as_str());
    assert_eq!(
        (&rows[1]["reachable"], &rows[1]["bank_id"]),
        (&Value::Bool(false), &Value::from(2))
    );
    assert!(
        rows[1]["error"]
            .as_str()
            .unwrap()
            .contains("no simpool daemon answers"),
        "{out}"
    );
    for key in [
        "instance",
        "config",
        "control",
        "pool",
        "bank_id",
        "reachable",
        "link",
        "error",
    ] {
        assert!(rows[1].get(key).is_some(), "{key}: {out}");
    }
    // Nothing configured: said, exit 1.
    let empty = tmp("no-instances");
    let (code, _, err) = run(cmd(&["status", "--all-instances"]).env("SIMPOOL_CONFIG_DIR", &empty));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no instance configurations"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}
