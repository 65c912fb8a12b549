//! `simpool exec` across the pool (issue 19 §1): 256 cards over 16 readers, with a program that
//! takes about 0.2 s (`sleep 0.2`), through a private pcscd with 16 vpcd readers and a
//! `simpool serve` on a simulated pool of 256 cards. The target: at most 16 rounds ×
//! (program + 0.5 s). It prints the whole run, the time per round, what each card costs
//! beside its program (binding the reader to it, vpcd's presence polls, pcscd showing it) and
//! the ratio to the target.
//!
//! `cargo bench --bench exec` (needs pcscd and vsmartcard-vpcd: `driver/pcscd-private
//! install`, and root for the private pcscd's mount namespace). `SIMPOOL_BENCH_QUICK=1` runs
//! 16 cards over 4 readers (a few seconds), to check that it still builds and runs.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASE: u16 = 29500;
const PROGRAM_S: f64 = 0.2;
/// The allowance per card beside its program.
const ALLOWANCE_S: f64 = 0.5;

fn main() {
    let quick = std::env::var_os("SIMPOOL_BENCH_QUICK").is_some();
    let (cards, readers): (u16, u16) = if quick { (16, 4) } else { (256, 16) };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join("simpool-bench-exec");
    let script = repo.join("driver/pcscd-private");
    // A run that panicked may have left its pcscd behind.
    let _ = Command::new(&script)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output();
    let out = Command::new(&script)
        .args([
            "start",
            "--readers",
            &readers.to_string(),
            "--port",
            &BASE.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("driver/pcscd-private");
    assert!(
        out.status.success(),
        "private pcscd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socket = dir.join("run/pcscd.comm");

    // A simulated pool with every slot up to `cards` filled (generated cards).
    let cards_file = dir.join("cards.toml");
    let toml: String = (1..=cards)
        .map(|n| format!("[[card]]\nslot = {n}\n"))
        .collect();
    std::fs::write(&cards_file, toml).unwrap();
    let control = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["serve", "--pool", "sim", "--cards"])
        .arg(&cards_file)
        .args([
            "--vpcd",
            &format!("127.0.0.1:{BASE}"),
            "--readers",
            &readers.to_string(),
            "--control",
            &control,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("simpool serve");
    let t0 = Instant::now();
    loop {
        let up = Command::new(env!("CARGO_BIN_EXE_simpool"))
            .args(["readers", "--control", &control])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if up {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "daemon not up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let list = format!("1-{cards}");
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["exec", "--control", &control, "--card", &list, "--json"])
        .args(["--", "sleep", &PROGRAM_S.to_string()])
        .env("PCSCLITE_CSOCK_NAME", &socket)
        .stderr(Stdio::inherit())
        .output()
        .expect("simpool exec");
    let total = t0.elapsed().as_secs_f64();
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = Command::new(&script)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output();
    assert!(out.status.success(), "exec failed: {:?}", out.status);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), usize::from(cards));
    let ran: Vec<f64> = rows
        .iter()
        .map(|r| r["seconds"].as_f64().expect("every card ran"))
        .collect();
    let program = ran.iter().sum::<f64>() / ran.len() as f64;
    let rounds = f64::from(cards.div_ceil(readers));
    let per_round = total / rounds;
    let target = rounds * (program + ALLOWANCE_S);
    println!("simpool exec: {cards} cards over {readers} readers, program `sleep {PROGRAM_S}`");
    println!(
        "  whole run {total:.2} s = {rounds:.0} rounds × {per_round:.3} s (program {program:.3} s \
         + {:.3} s per card to switch the reader and see the card in pcscd)",
        per_round - program
    );
    println!(
        "  target {rounds:.0} × (program + {ALLOWANCE_S} s) = {target:.2} s: measured/target {:.2}",
        total / target
    );
}
