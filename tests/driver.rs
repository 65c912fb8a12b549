//! The files of `driver/` as an administrator uses them: `driver/demo` end to end, the systemd
//! units (`systemd-analyze verify`) and the nftables rules (`nft -c -f`). Needs root (mount and
//! network namespaces), pcscd and vsmartcard-vpcd, systemd and nftables (`driver/ensure-build-deps`
//! installs them).

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (driver/ensure-build-deps installs it)"))
}

#[test]
fn demo_serves_cards_18_and_256_and_reads_them_back() {
    let dir = std::env::temp_dir().join(format!("simpool-demo-test-{}", std::process::id()));
    // In a network namespace of its own, so the demo's fixed ports are its own too.
    let out = run(Command::new("unshare")
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
    assert_eq!(
        lines[1],
        ["ATR", "3B9F95801FC38031E073FE21135786810286984418A8"]
    );
    assert_eq!(lines[2], ["ICCID", "89860043191482190636"]);
    assert_eq!(
        lines[5],
        ["ATR", "3B9E94801F478031A073BE211166444D5422010026"]
    );
    assert_eq!(lines[7], ["IMSI", "460019894013615"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_units_verify() {
    // The units run /usr/bin/simpool, where the package puts it: verify copies that run the
    // built binary instead. (tests/package.rs verifies the installed units as they are, man
    // pages included; here they are not installed: --man=no.)
    let dir = std::env::temp_dir().join(format!("simpool-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in ["simpool.service", "simpool@.service"] {
        let text = std::fs::read_to_string(repo().join("driver/systemd").join(unit)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/bin/simpool serve --config"),
            "{unit}"
        );
        std::fs::write(
            dir.join(unit),
            text.replace("/usr/bin/simpool", env!("CARGO_BIN_EXE_simpool")),
        )
        .unwrap();
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("simpool.service"))
        // a template is verified through an instance of it
        .arg(dir.join("simpool@pool-a.service")));
    let msgs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    // systemd-analyze exits 0 on directives it ignores: any message is a failure
    assert!(
        out.status.success() && msgs.trim().is_empty(),
        "systemd-analyze verify: {}\n{msgs}",
        out.status
    );
}

/// What the template unit gives each instance of its own: configuration, state, history and
/// control socket (issue 23); and what the single unit leaves to instances.
#[test]
fn template_unit_keeps_each_instance_apart() {
    let read = |u: &str| std::fs::read_to_string(repo().join("driver/systemd").join(u)).unwrap();
    let (single, template) = (read("simpool.service"), read("simpool@.service"));
    let key = |unit: &str, k: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        key(&template, "ExecStart"),
        ["/usr/bin/simpool serve --config /etc/simpool/%i.toml --state ${STATE_DIRECTORY}/state.json"]
    );
    assert_eq!(key(&template, "StateDirectory"), ["simpool/%i"]);
    assert_eq!(key(&template, "RuntimeDirectory"), ["simpool/%i"]);
    assert_eq!(key(&single, "StateDirectory"), ["simpool"]);
    assert_eq!(key(&single, "RuntimeDirectory"), ["simpool"]);
    // stopping simpool.service must not remove /run/simpool/NAME of running instances
    // (measured: without it systemd removes /run/simpool with everything in it)
    assert_eq!(key(&single, "RuntimeDirectoryPreserve"), ["yes"]);
    // the same hardening in both
    let hardening = |unit: &str| -> Vec<String> {
        let service = &unit[unit.find("User=").unwrap()..unit.find("[Install]").unwrap()];
        service
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.starts_with("StateDirectory=")
                    && !l.starts_with("RuntimeDirectory")
            })
            .map(str::to_string)
            .collect()
    };
    let (h1, h2) = (hardening(&single), hardening(&template));
    assert!(h1.iter().any(|l| l == "ProtectSystem=strict"), "{h1:?}");
    assert_eq!(h1, h2);
}

#[test]
fn nftables_rules_parse() {
    // check only (-c), in a network namespace of its own all the same
    for rule in ["simpool-vpcd.nft", "simpool-remsim.nft"] {
        let out = run(Command::new("unshare")
            .args(["-n", "nft", "-c", "-f"])
            .arg(repo().join("driver/nftables").join(rule)));
        let msgs = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success() && msgs.trim().is_empty(),
            "nft -c -f {rule}: {}\n{msgs}",
            out.status
        );
    }
}
