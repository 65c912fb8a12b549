//! The files of `driver/` as an administrator uses them: `driver/demo` end to end, the systemd
//! unit (`systemd-analyze verify`) and the nftables rule (`nft -c -f`). Needs root (mount and
//! network namespaces), pcscd and vsmartcard-vpcd, systemd and nftables (`driver/ensure-build-deps`
//! installs them).

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output_tied()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (driver/ensure-build-deps installs it)"))
}

#[test]
fn demo_serves_cards_18_and_256_and_reads_them_back() {
    let dir = std::env::temp_dir().join(format!("simpool-demo-test-{}", std::process::id()));
    // In a network namespace of its own, so the demo's fixed ports are its own too.
    // A PID namespace too: the demo's pcscd and simpool die with the test, however it ends.
    let out = run(Command::new("unshare")
        .args(common::proc::OWN_PIDS)
        .args(["-n", "bash", "-c", "ip link set lo up && exec driver/demo"])
        .current_dir(repo())
        .env("SIMPOOL_BIN", env!("CARGO_BIN_EXE_simpool"))
        .env("SIMPOOL_DEMO_DIR", &dir)
        .env_remove("PCSCLITE_CSOCK_NAME")
        .env_remove("RUST_LOG"));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // `simpool read`: a reader line, then ATR, ICCID and IMSI, per reader
    assert_eq!(lines.len(), 8, "{stdout}");
    assert_eq!(lines[1], ["ATR", &cards::atr(18)]);
    assert_eq!(lines[2], ["ICCID", &cards::iccid(18)]);
    assert_eq!(lines[5], ["ATR", &cards::atr(256)]);
    assert_eq!(lines[7], ["IMSI", &cards::imsi(256)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_verifies() {
    // The unit runs /usr/local/bin/simpool: put the built binary there, in a mount namespace
    // of its own (a tmpfs over /usr/local/bin that nothing else sees).
    let script = r#"mount -t tmpfs tmpfs /usr/local/bin && cp "$BIN" /usr/local/bin/simpool &&
        exec systemd-analyze verify "$UNIT""#;
    let out = run(Command::new("unshare")
        .args(["-m", "bash", "-c", script])
        .env("BIN", env!("CARGO_BIN_EXE_simpool"))
        .env("UNIT", repo().join("driver/systemd/simpool.service")));
    let msgs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // systemd-analyze exits 0 on directives it ignores: any message is a failure
    assert!(
        out.status.success() && msgs.trim().is_empty(),
        "systemd-analyze verify: {}\n{msgs}",
        out.status
    );
}

#[test]
fn nftables_rule_parses() {
    // check only (-c), in a network namespace of its own all the same
    let out = run(Command::new("unshare")
        .args(["-n", "nft", "-c", "-f"])
        .arg(repo().join("driver/nftables/simpool-vpcd.nft")));
    let msgs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && msgs.trim().is_empty(),
        "nft -c -f: {}\n{msgs}",
        out.status
    );
}
