//! osmocom pySim itself against simpool: pySim-read, pySim-shell and pySim-trace through
//! pcsc-lite's pcscd → vpcd → `simpool serve` → the simulated pool. pySim (GPL) is installed
//! outside the repository by `driver/pysim-build`, which prints the directory to put in
//! `SIMPOOL_PYSIM` (`driver/test` does both); without it every test here says SKIPPED and
//! passes. Needs pcscd and vsmartcard-vpcd; run inside `unshare -n` (pySim-trace binds UDP
//! 4729).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{self, Serve};
use simpool::sim::profile::{generated_euicc_profile, CardsFile};
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 28700;

/// pySim's source directory, or `None` (and a loud line) when it is not installed.
fn pysim() -> Option<PathBuf> {
    match std::env::var_os("SIMPOOL_PYSIM") {
        Some(p) if PathBuf::from(&p).join("pySim-shell.py").exists() => Some(p.into()),
        _ => {
            eprintln!(
                "*** SKIPPED: pySim tests (set SIMPOOL_PYSIM to what driver/pysim-build prints)"
            );
            None
        }
    }
}

fn python(src: &std::path::Path) -> PathBuf {
    src.join("../../venv/bin/python")
}

/// Runs a pySim script with a deadline; answers (exit success, stdout + stderr).
fn run(src: &std::path::Path, args: &[&str], within: Duration) -> (bool, String) {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "simpool-pysim-{}-{n}-{}.log",
        std::process::id(),
        args[0]
    ));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(python(src))
        .args(args)
        .current_dir(src)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("run pySim");
    let end = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => panic!("pySim {args:?} did not finish within {within:?}:\n{text}"),
    }
}

fn serve(sim: &SimPool, reader: u16, card: u16, extra: &[&str]) -> Serve {
    let pcscd = stack::pcscd(BASE_PORT);
    let mut args = vec![
        "--pool".to_string(),
        sim.addr().to_string(),
        "--vpcd".into(),
        pcscd.vpcd_addr(reader),
        "--card".into(),
        card.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(&refs, &format!("pysim-reader{reader}"));
    let ctx = stack::context();
    let name = pcscd.reader_name(reader);
    assert!(
        stack::wait_card(&ctx, &name, true, Duration::from_secs(15)),
        "{name:?} shows no card; simpool log:\n{}",
        serve.log_text()
    );
    serve
}

/// pySim's reader choice for reader `i`: by name (pySim's `-p` counts pcscd's own order).
fn reader(i: u16) -> String {
    let name = stack::pcscd(BASE_PORT).reader_name(i);
    format!("^{}$", name.to_str().unwrap())
}

fn script(name: &str, lines: &[&str]) -> String {
    let p = std::env::temp_dir().join(format!("simpool-pysim-{}-{name}", std::process::id()));
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p.display().to_string()
}

fn iccid_of(sim: &SimPool, card: u16) -> String {
    sim.with_card(card, |c| c.profile().iccid.clone()).unwrap()
}

#[test]
fn pysim_read_on_a_sim_and_on_a_usim() {
    let Some(src) = pysim() else { return };
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    for (r, card) in [(0u16, 3u16), (1, 4)] {
        let _serve = serve(&sim, r, card, &[]);
        let (ok, out) = run(
            &src,
            &["pySim-read.py", "--pcsc-regex", &reader(r)],
            Duration::from_secs(60),
        );
        assert!(ok, "pySim-read on card {card}:\n{out}");
        let iccid = iccid_of(&sim, card);
        assert!(
            out.contains(&format!("ICCID: {iccid}")),
            "card {card}:\n{out}"
        );
        let imsi = format!("IMSI: 0010100000{card:05}");
        assert!(out.contains(&imsi), "card {card}:\n{out}");
        // Everything pySim-read looks for is there (on the USIM through class 00: DF.GSM on
        // the UICC face; pySim-read's USIM part runs only for card types it knows by ATR).
        assert!(!out.contains("Can't read"), "card {card}:\n{out}");
        assert!(
            out.contains("SIM Service Table: ff33c3f3"),
            "card {card}:\n{out}"
        );
        assert!(
            out.contains(&format!("SPN: simpool {card}")),
            "card {card}:\n{out}"
        );
    }
}

#[test]
fn pysim_shell_on_a_usim_imsi_and_authenticate() {
    let Some(src) = pysim() else { return };
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let _serve = serve(&sim, 2, 20, &[]);
    // TS 35.208 test set 1 on card 20 (see the README).
    let s = script(
        "usim",
        &[
            "select ADF.USIM",
            "select EF.IMSI",
            "read_binary_decoded",
            "select ADF.USIM",
            "authenticate 23553cbe9637a89d218ae64dae47bf35 55f328b43577b9b94a9ffac354dfafb3",
        ],
    );
    let (ok, out) = run(
        &src,
        &[
            "pySim-shell.py",
            "--pcsc-regex",
            &reader(2),
            "--noprompt",
            "--script",
            &s,
        ],
        Duration::from_secs(90),
    );
    assert!(ok, "{out}");
    assert!(out.contains("\"imsi\": \"001010000000020\""), "{out}");
    assert!(out.contains("\"res\": \"a54211d5e3ba50bf\""), "{out}");
    assert!(
        out.contains("\"ck\": \"b40ba9a3c58b2a05bbf0d987b21bf8cb\""),
        "{out}"
    );
    assert!(
        out.contains("\"ik\": \"f769bcd751044604127672711c6d3441\""),
        "{out}"
    );
}

#[test]
fn pysim_shell_on_an_euicc_enable_a_profile_then_reset() {
    let Some(src) = pysim() else { return };
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let _serve = serve(&sim, 3, 33, &[]);
    let p0 = generated_euicc_profile(33, 0).card;
    let p1 = generated_euicc_profile(33, 1).card;
    let eid = sim
        .with_card(33, |c| hex::encode_upper(c.euicc().unwrap().eid()))
        .unwrap();
    let enable = format!("enable_profile --iccid {}", p1.iccid);
    let s = script(
        "euicc",
        &[
            "select MF",
            "select EF.ICCID",
            "read_binary_decoded",
            "select ADF.ISD-R",
            "get_eid",
            "get_profiles_info",
            &enable,
            "get_profiles_info",
            "reset",
            "select MF",
            "select EF.ICCID",
            "read_binary_decoded",
        ],
    );
    let (ok, out) = run(
        &src,
        &[
            "pySim-shell.py",
            "--pcsc-regex",
            &reader(3),
            "--noprompt",
            "--script",
            &s,
        ],
        Duration::from_secs(90),
    );
    assert!(ok, "{out}");
    assert!(out.contains("Consumer eUICC (SGP.22)"), "{out}");
    assert!(out.contains(&format!("\"eid_value\": \"{eid}\"")), "{out}");
    assert!(out.contains("\"enable_result\": \"ok\""), "{out}");
    // Before the reset EF.ICCID is the first profile's, after it the second's.
    let a = out.find(&format!("\"iccid\": \"{}\"\n}}", p0.iccid));
    let b = out.rfind(&format!("\"iccid\": \"{}\"\n}}", p1.iccid));
    assert!(
        matches!((a, b), (Some(a), Some(b)) if a < b),
        "EF.ICCID {} then {}:\n{out}",
        p0.iccid,
        p1.iccid
    );
    // Both profiles listed, with the states before and after the enable.
    assert_eq!(
        out.matches("\"profile_state\": \"enabled\"").count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("\"profile_state\": \"disabled\"").count(),
        2,
        "{out}"
    );
}

#[test]
fn pysim_shell_export_finds_the_files_of_a_real_usim() {
    let Some(src) = pysim() else { return };
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let _serve = serve(&sim, 4, 4, &[]);
    let (_, out) = run(
        &src,
        &[
            "pySim-shell.py",
            "--pcsc-regex",
            &reader(4),
            "--noprompt",
            "-e",
            "export",
        ],
        Duration::from_secs(120),
    );
    let exported = out.lines().filter(|l| l.starts_with("select ")).count();
    // "unable to export N elementary file(s) and M dedicated file(s)" (absent when all were).
    let missing = out
        .lines()
        .find_map(|l| l.split("unable to export ").nth(1))
        .map(|rest| {
            let n: Vec<u32> = rest
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (n[0], n[1])
        })
        .unwrap_or((0, 0));
    eprintln!("pySim-shell export on card 4: {exported} files exported, missing {missing:?}");
    // Measured: before issue 24, 27 exported, 86 EFs and 10 DFs missing; now 173, 47 and 10.
    assert!(exported >= 170, "{exported} exported:\n{out}");
    assert!(missing.0 <= 47 && missing.1 <= 10, "{missing:?}:\n{out}");
    for must in [
        "EF.ECC",
        "EF.GID1",
        "EF.SMSP",
        "EF.FDN",
        "DF.TELECOM",
        "EF.ADN",
    ] {
        assert!(
            !out.contains(&format!("/{must}, SW match failed")),
            "{must} missing:\n{out}"
        );
    }
}

#[test]
fn pysim_trace_decodes_simpools_gsmtap_of_a_usim_session() {
    let Some(src) = pysim() else { return };
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let _serve = serve(&sim, 5, 20, &["--gsmtap", "127.0.0.1:4729"]);
    // pySim-trace's --bind-port is broken in this pySim (a str goes to bind()): the default
    // 127.0.0.1:4729 is the one simpool sends to.
    let log = std::env::temp_dir().join(format!("simpool-pysim-{}-trace", std::process::id()));
    let trace = Command::new(python(&src))
        .args(["pySim-trace.py", "gsmtap-udp"])
        .current_dir(&src)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed however the test ends.
    let trace = KillOnDrop(trace);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Entering main loop")
    {
        assert!(Instant::now() < deadline, "pySim-trace did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = script(
        "trace",
        &[
            "select ADF.USIM",
            "select EF.IMSI",
            "read_binary_decoded",
            "select ADF.USIM",
            "authenticate 23553cbe9637a89d218ae64dae47bf35 55f328b43577b9b94a9ffac354dfafb3",
        ],
    );
    let (ok, out) = run(
        &src,
        &[
            "pySim-shell.py",
            "--pcsc-regex",
            &reader(5),
            "--noprompt",
            "--script",
            &s,
        ],
        Duration::from_secs(90),
    );
    assert!(ok, "{out}");
    let want = [
        "MF/ADF.USIM/EF.IMSI",
        "\"imsi\": \"001010000000020\"",
        "a54211d5e3ba50bf",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if want.iter().all(|w| t.contains(w)) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(trace);
    for w in want {
        assert!(text.contains(w), "{w} not in pySim-trace's output:\n{text}");
    }
    assert!(
        text.contains("CardReset(3b8b801fc773696d706f6f6c5553494dba)"),
        "{text}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
