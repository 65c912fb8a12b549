//! When a test process is killed — a CI time-out's SIGKILL, after which no destructor runs —
//! every helper process it started dies with it: its private pcscd (started through
//! driver/pcscd-private, which runs pcscd in a namespace of its own), its `simpool serve`
//! daemons, the trees a shell or a browser driver starts, and helpers started from a test's
//! thread that has ended since (`PR_SET_PDEATHSIG` fires when the forking *thread* ends). See
//! `tests/common/proc.rs`. Needs root, pcscd and vsmartcard-vpcd, like the PC/SC tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proc::{self, Tied};
use common::stack::{Pcscd, Serve};

const BASE_PORT: u16 = 28700;
const CHILD_MARK: &str = "SIMPOOL_HELPERS_CHILD";

/// The "test process" that `helpers_die_with_a_killed_test_process` kills: starts one helper of
/// each kind, prints their pids, and waits for its stdin to close (it is killed first).
#[test]
#[ignore = "run by helpers_die_with_a_killed_test_process"]
#[allow(clippy::zombie_processes)] // killed with their parent, the point of the test
fn a_test_process_with_helpers() {
    if std::env::var_os(CHILD_MARK).is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("simpool-helpers-{}", std::process::id()));
    let pcscd = Pcscd::start(dir, 2, BASE_PORT);
    let serve = Serve::start(
        &[
            "--pool",
            "sim",
            "--vpcd",
            &pcscd.vpcd_addr(0),
            "--card",
            "18",
        ],
        "helpers-die",
    );
    // A shell's background jobs (grandchildren of this process).
    let tree = proc::tree("sh")
        .args(["-c", "sleep 1000 & sleep 1000 & wait"])
        .stdin(Stdio::null())
        .spawn_tied()
        .unwrap();
    // A helper started from a thread that has ended by the time the process is killed.
    let from_thread = std::thread::spawn(|| {
        Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn_tied()
            .unwrap()
    })
    .join()
    .unwrap();
    let is_sleep = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
    };
    common::wait_for("the shell's two jobs", Duration::from_secs(10), || {
        proc::descendants(tree.id())
            .iter()
            .filter(|p| is_sleep(p))
            .count()
            >= 2
    });
    let mut pids = vec![
        ("pcscd".to_string(), pcscd.pid().expect("pcscd's pid file")),
        ("pcscd-private".into(), pcscd.script_pid()),
        ("simpool serve".into(), serve.child.id()),
        ("helper of an ended thread".into(), from_thread.id()),
    ];
    for p in proc::descendants(tree.id()) {
        pids.push((format!("shell tree process {p}"), p));
    }
    let list: Vec<String> = pids.iter().map(|(w, p)| format!("{p}={w}")).collect();
    // Straight to the file descriptor: the test harness may hold back what `println!` prints.
    let mut out = std::io::stdout();
    writeln!(out, "PIDS {}", list.join(",")).unwrap();
    out.flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

#[test]
fn helpers_die_with_a_killed_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["a_test_process_with_helpers", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_MARK, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn_tied()
        .expect("run this test binary again");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may have begun the line (`test NAME ... `).
            if let Some(i) = line.find("PIDS ") {
                let _ = tx.send(line[i + 5..].to_string());
            }
        }
    });
    let list = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the test process starts its helpers and lists them");
    let pids: Vec<(u32, String)> = list
        .split(',')
        .map(|e| {
            let (p, w) = e.split_once('=').unwrap();
            (p.parse().unwrap(), w.to_string())
        })
        .collect();
    assert!(pids.len() >= 7, "{pids:?}");
    for (p, what) in &pids {
        assert!(
            proc::alive(*p),
            "{what} ({p}) is not running before the kill"
        );
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    let killed = Instant::now();
    let survivors = loop {
        let left: Vec<&(u32, String)> = pids.iter().filter(|(p, _)| proc::alive(*p)).collect();
        if left.is_empty() || killed.elapsed() > Duration::from_secs(10) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let names: Vec<String> = survivors
        .iter()
        .map(|(p, w)| format!("{w} ({p})"))
        .collect();
    // Whatever survived was started here: clean it up before failing.
    for (p, _) in &survivors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        names.is_empty(),
        "still running 10 s after the test process was killed: {}",
        names.join(", ")
    );
    eprintln!(
        "{} helpers gone {:?} after the test process was killed",
        pids.len(),
        killed.elapsed()
    );
}
