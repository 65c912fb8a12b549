//! `serve --check` against vpcd ports through the real pcscd and vpcd (issue 17 §3): a port a
//! running simpool already serves is named as such and nothing is left queued at vpcd; a free
//! port is checked without leaving a connection behind either, so a daemon started right after
//! shows its card at once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{self, Serve};

const BASE_PORT: u16 = 28700;

/// `simpool serve --check ARGS`: exit code and standard output.
fn check(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["serve", "--check", "--control", "off"])
        .args(args)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Connections waiting in the accept queue of the socket listening on `port` (the kernel's
/// `rx_queue` of a LISTEN socket), from /proc/net/tcp.
fn queued(port: u16) -> u32 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()?;
            let listening = f[3] == "0A";
            let rx = u32::from_str_radix(f[4].split_once(':')?.1, 16).ok()?;
            (listening && local_port == port).then_some(rx)
        })
        .sum()
}

#[test]
fn a_served_vpcd_port_is_named_and_no_check_leaves_a_connection_queued() {
    let pcscd = stack::pcscd(BASE_PORT);
    let ctx = stack::context();
    let (p0, p1) = (pcscd.vpcd_addr(0), pcscd.vpcd_addr(1));
    let serve = Serve::start(&["--pool", "sim", "--card", "18", "--vpcd", &p0], "check-a");
    assert!(
        stack::wait_card(&ctx, &pcscd.reader_name(0), true, Duration::from_secs(10)),
        "{}",
        serve.log_text()
    );
    let served = format!(
        "FAILED reader 0 vpcd {p0}: vpcd port {BASE_PORT} is already served (by another simpool?)"
    );
    for _ in 0..2 {
        let (code, out) = check(&["--pool", "sim", "--card", "18", "--vpcd", &p0]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&served), "{out}");
        assert_eq!(queued(BASE_PORT), 0, "a connection left queued at vpcd");
    }
    // A free port: vpcd takes the check's connection at its next poll; nothing stays queued.
    let (code, out) = check(&["--pool", "sim", "--card", "2", "--vpcd", &p1]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "ok     reader 0 vpcd {p1}: accepts connections (pcscd with vpcd is there)"
        )),
        "{out}"
    );
    assert_eq!(queued(BASE_PORT + 1), 0);
    // So a daemon started right after on that port shows its card within pcscd's polls.
    let t0 = Instant::now();
    let second = Serve::start(&["--pool", "sim", "--card", "2", "--vpcd", &p1], "check-b");
    assert!(
        stack::wait_card(&ctx, &pcscd.reader_name(1), true, Duration::from_secs(3)),
        "{}",
        second.log_text()
    );
    eprintln!("card shown {:?} after the check", t0.elapsed());
    drop(serve);
    drop(second);
}
