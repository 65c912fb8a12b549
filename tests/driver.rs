//! The files of `driver/` as an administrator uses them: `driver/demo` end to end, the systemd
//! units (`systemd-analyze verify`) and the nftables rules (`nft -c -f`). Needs root (mount and
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

/// `driver/demo --stop` for a demo directory, when dropped.
struct KeptDemo(PathBuf);

impl Drop for KeptDemo {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("driver/demo"))
            .arg("--stop")
            .env("SIMPOOL_DEMO_DIR", &self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn demo_keep_into_a_pipe_returns() {
    // The kept daemons write to their log files only: none holds the pipe open for `tail`.
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("simpool-demo-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kept = KeptDemo(dir.clone());
    // (the test reads files, not pipes: a pipe the kept daemon held would block it too)
    let (out_file, err_file) = (dir.join("test.stdout"), dir.join("test.stderr"));
    let mut demo = Command::new("unshare")
        .args([
            "-n",
            "bash",
            "-c",
            "ip link set lo up && driver/demo --keep | tail -n 3",
        ])
        .current_dir(repo())
        .env("SIMPOOL_BIN", env!("CARGO_BIN_EXE_simpool"))
        .env("SIMPOOL_DEMO_DIR", &dir)
        .env_remove("PCSCLITE_CSOCK_NAME")
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let read = |f: &PathBuf| std::fs::read_to_string(f).unwrap_or_default();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = demo.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > std::time::Duration::from_secs(60) {
            // bash and tail; the demo's daemons are in sessions of their own
            let pg = nix::unistd::Pid::from_raw(demo.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = demo.wait();
            panic!(
                "`driver/demo --keep | tail` still open after 60 s:\n{}{}",
                read(&out_file),
                read(&err_file)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (stdout, stderr) = (read(&out_file), read(&err_file));
    assert!(status.success(), "{stdout}\n{stderr}");
    // the last of `simpool read`'s lines: reader 1's card, 256
    assert!(
        stdout.contains("IMSI   460019894013615"),
        "{stdout}\n{stderr}"
    );
    // and the demo is still there: kept, serving
    assert!(stderr.contains("Left running"), "{stderr}");
    let pid: String = std::fs::read_to_string(dir.join("simpool.pid")).unwrap();
    let pid = pid.trim().to_string();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "simpool"
    );
    let log = std::fs::read_to_string(dir.join("simpool.log")).unwrap();
    assert!(log.contains("reader 0"), "its log: {log}");
    drop(kept);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// Packages whose presence means a desktop stack (or a test tool) came along.
const NOT_FOR_THE_DEMO: &[&str] = &[
    "chromium",
    "libgtk",
    "libgdk",
    "gtk-",
    "libx11",
    "x11-",
    "libcups",
    "cups",
    "libwayland",
    "libgl1",
    "mesa",
    "notification-daemon",
    "system-config-printer",
    "upower",
    "dbus-user-session",
    "tshark",
    "wireshark",
    "python3-prometheus",
];

#[test]
fn demo_installs_only_what_the_demo_uses() {
    // What the demo's own installation steps would install on a fresh machine (apt simulated
    // against an empty dpkg status, with the scripts' real flags).
    let out = run(Command::new(repo().join("driver/demo")).arg("--dry-run"));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let pkgs: Vec<&str> = stdout.lines().collect();
    for want in [
        "pcscd",
        "vsmartcard-vpcd",
        "libpcsclite-dev",
        "pkg-config",
        "build-essential",
        "curl",
    ] {
        assert!(pkgs.contains(&want), "{want} missing: {pkgs:?}");
    }
    let extra = |pkgs: &[&str]| -> Vec<String> {
        pkgs.iter()
            .filter(|p| NOT_FOR_THE_DEMO.iter().any(|d| p.starts_with(d)))
            .map(|p| p.to_string())
            .collect()
    };
    assert!(
        extra(&pkgs).is_empty(),
        "the demo would install {:?}",
        extra(&pkgs)
    );
    // The same check finds them where they belong: the watch tools of the test suite.
    let status = std::env::temp_dir().join(format!("simpool-dpkg-status-{}", std::process::id()));
    std::fs::write(&status, "").unwrap();
    let out =
        run(Command::new(repo().join("driver/ensure-watch-deps"))
            .env("SIMPOOL_APT_SIMULATE", &status));
    std::fs::remove_file(&status).unwrap();
    let watch = text(&out.stdout);
    let watch: Vec<&str> = watch.lines().collect();
    let found = extra(&watch);
    assert!(
        found.iter().any(|p| p == "chromium") && found.iter().any(|p| p.starts_with("libgtk-3")),
        "{found:?}"
    );
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
        ["/usr/bin/simpool serve --config /etc/simpool/%i.toml --state ${STATE_DIRECTORY}/state.json \
          --history ${STATE_DIRECTORY}/history.sqlite"]
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
