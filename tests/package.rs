//! The Debian package (`driver/package`) as a lab server's admin meets it: installed with
//! `apt-get install ./simpool_….deb`, run by a real systemd as PID 1, upgraded, removed and
//! purged. Everything runs in `driver/systemd-container`: this machine's own system,
//! copy-on-write, with a private loopback network, so the host is left as it was.
//!
//! The package: `SIMPOOL_DEB` (what `driver/test` builds with `driver/package`, a release
//! build), or one `driver/package` makes here from the test build of simpool. Needs root,
//! cgroup2, dpkg-dev, pcscd and vsmartcard-vpcd (`driver/ensure-build-deps`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CARD_18_ICCID: &str = "89860043191482190636";
const REFUSAL: &str = "pool not configured: set pool in /etc/simpool/simpool.toml";

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

/// `version` in Cargo.toml: what `simpool --version` says and the package's upstream version.
fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The packages under test, in one directory (shared read-only with the containers): the
/// package, and the same files under a higher version, to upgrade to.
struct Debs {
    dir: PathBuf,
    first: String,
    upgrade: String,
}

fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| {
        // (under target/: the containers of an earlier run are gone, their files may not be)
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("package-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let built = match std::env::var_os("SIMPOOL_DEB") {
            Some(p) => PathBuf::from(p),
            None => {
                let out = run(Command::new(repo().join("driver/package"))
                    .args(["--bin", env!("CARGO_BIN_EXE_simpool"), "--out"])
                    .arg(dir.join("out")));
                assert!(
                    out.status.success(),
                    "driver/package: {}",
                    text(&out.stderr)
                );
                PathBuf::from(text(&out.stdout).trim())
            }
        };
        let first = built.file_name().unwrap().to_string_lossy().into_owned();
        let arch = text(&run(Command::new("dpkg").arg("--print-architecture")).stdout);
        // target/debian/simpool_<version>_<arch>.deb, the version Cargo's
        assert!(
            first.starts_with(&format!("simpool_{}-", cargo_version()))
                && first.ends_with(&format!("_{}.deb", arch.trim())),
            "{first}"
        );
        std::fs::copy(&built, dir.join(&first)).unwrap();
        // The same package under a higher version: an upgrade runs every maintainer script's
        // upgrade path.
        let tree = dir.join("repack");
        assert!(
            run(Command::new("dpkg-deb").arg("-R").arg(&built).arg(&tree))
                .status
                .success()
        );
        let control = tree.join("DEBIAN/control");
        let c = std::fs::read_to_string(&control).unwrap();
        let version = c
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap()
            .to_string();
        let next = format!("{version}+upgrade1");
        std::fs::write(
            &control,
            c.replace(
                &format!("Version: {version}\n"),
                &format!("Version: {next}\n"),
            ),
        )
        .unwrap();
        let upgrade = first.replace(&version, &next);
        let out = run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(dir.join(&upgrade)));
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::remove_dir_all(&tree).unwrap();
        Debs {
            dir,
            first,
            upgrade,
        }
    })
}

/// A `driver/systemd-container`, stopped on drop (and with the test process, if it is killed).
struct Container {
    pid: String,
}

impl Container {
    fn boot(systemd: bool) -> Container {
        let d = debs();
        let mut c = Command::new(repo().join("driver/systemd-container"));
        c.arg("boot")
            .arg("--share")
            .arg(&d.dir)
            .arg("--stop-with")
            .arg(std::process::id().to_string())
            .arg("--log")
            .arg(d.dir.join(format!("container-{systemd}.log")));
        if !systemd {
            c.arg("--no-systemd");
        }
        let out = run(&mut c);
        let log = std::fs::read_to_string(d.dir.join(format!("container-{systemd}.log")));
        assert!(
            out.status.success(),
            "driver/systemd-container boot: {}\n{log:?}",
            text(&out.stderr)
        );
        Container {
            pid: text(&out.stdout).trim().to_string(),
        }
    }

    /// Runs a shell script inside: (exit code, stdout, stderr).
    fn sh(&self, script: &str) -> (i32, String, String) {
        let out = run(Command::new(repo().join("driver/systemd-container"))
            .args(["exec", &self.pid, "sh", "-c", script]));
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    /// Runs a script that must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let (code, out, err) = self.sh(script);
        assert_eq!(code, 0, "`{script}` in the container:\n{out}\n{err}");
        out
    }

    /// Waits until `script` succeeds; its stdout.
    fn until(&self, what: &str, script: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let (code, out, err) = self.sh(script);
            if code == 0 {
                return out;
            }
            assert!(
                t0.elapsed() < within,
                "{what}: not within {within:?} (`{script}`):\n{out}\n{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn value(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_string()
    }

    fn apt(&self, args: &str) -> String {
        self.ok(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get -y -q {args} 2>&1"
        ))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("driver/systemd-container"))
            .args(["stop", &self.pid])
            .status();
    }
}

/// What the package installs, each checked inside the container.
const FILES: &[&str] = &[
    "/usr/bin/simpool",
    "/lib/systemd/system/simpool.service",
    "/lib/systemd/system/simpool@.service",
    "/etc/simpool/simpool.toml",
    "/usr/share/bash-completion/completions/simpool",
    "/usr/share/zsh/vendor-completions/_simpool",
    "/usr/share/fish/vendor_completions.d/simpool.fish",
    "/usr/share/simpool/nftables/simpool-vpcd.nft",
    "/usr/share/simpool/nftables/simpool-remsim.nft",
    "/usr/share/simpool/vpcd-readers",
    "/usr/share/doc/simpool/README.md",
    "/usr/share/doc/simpool/README.Debian",
    "/usr/share/doc/simpool/copyright",
    "/usr/share/doc/simpool/changelog.Debian.gz",
    "/usr/share/doc/simpool/examples/reader.conf.d/simpool-vpcd",
    "/usr/share/doc/simpool/examples/pcscd.service.d/simpool.conf",
    "/usr/share/doc/simpool/examples/instance.toml",
];

/// Installs the package and checks what every installation must show, with or without systemd.
fn install_and_check(c: &Container) {
    let d = debs();
    // A machine that had the package before would hide what the install does.
    c.ok(
        "! getent passwd simpool || deluser --system --quiet simpool; \
          ! getent group simpool || delgroup --system --quiet simpool; \
          ! dpkg -s simpool >/dev/null 2>&1 || dpkg --purge simpool >/dev/null",
    );
    c.apt(&format!("install /srv/share/{}", d.first));

    for f in FILES {
        c.ok(&format!("test -s {f}"));
    }
    assert_eq!(
        c.ok("dpkg-query -W -f '${Conffiles}' simpool")
            .split_whitespace()
            .next(),
        Some("/etc/simpool/simpool.toml")
    );
    // One man page per command, as `simpool man --dir` writes them, compressed.
    let dir = std::env::temp_dir().join(format!("simpool-package-man-{}", std::process::id()));
    assert!(run(Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["man", "--dir"])
        .arg(&dir))
    .status
    .success());
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(pages.len() >= 10 && pages.contains(&"simpool-serve.1".to_string()));
    let installed = c.ok("cd /usr/share/man/man1 && ls simpool*.1.gz");
    let installed: Vec<&str> = installed.lines().collect();
    let want: Vec<String> = pages.iter().map(|p| format!("{p}.gz")).collect();
    assert_eq!(installed, want);
    let serve = c.ok("man -l /usr/share/man/man1/simpool-serve.1.gz 2>&1");
    assert!(serve.contains("--config"), "{serve}");
    // completions: bash loads it; zsh and fish files are theirs
    c.ok("bash -c '. /usr/share/bash-completion/completions/simpool && complete -p simpool'");
    assert!(c
        .ok("head -n 1 /usr/share/zsh/vendor-completions/_simpool")
        .starts_with("#compdef simpool"));
    assert!(c
        .ok("cat /usr/share/fish/vendor_completions.d/simpool.fish")
        .contains("complete -c simpool"));
    // the copyright names the crates compiled in, with their licenses
    let copyright = c.ok("cat /usr/share/doc/simpool/copyright");
    for crate_ in [" tokio ", " pcsc ", " axum "] {
        assert!(copyright.contains(crate_), "copyright lacks{crate_}");
    }

    // Depends: every library the binary links against, through the package that has it;
    // pcscd and vpcd only recommended.
    let depends = c.ok("dpkg-query -W -f '${Depends}' simpool");
    let needed = c.ok("ldd /usr/bin/simpool | awk '$3 ~ /^\\// {print $3}' | \
         while read -r l; do dpkg -S \"$l\" 2>/dev/null || dpkg -S \"$(realpath \"$l\")\"; done");
    let owners: Vec<&str> = needed
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert!(owners.contains(&"libpcsclite1"), "{needed}");
    for p in &owners {
        assert!(
            depends.split(", ").any(|d| d.split(' ').next() == Some(p)),
            "links against {p}, not in Depends: {depends}"
        );
    }
    assert!(depends.contains("adduser"), "{depends}");
    assert_eq!(
        c.ok("dpkg-query -W -f '${Recommends}' simpool").trim(),
        "pcscd, vsmartcard-vpcd"
    );

    assert_eq!(
        c.ok("simpool --version").trim(),
        format!("simpool {}", cargo_version())
    );
    // The installed units, as systemd reads them (the man pages they name included).
    let verify = c.ok(
        "systemd-analyze verify /lib/systemd/system/simpool.service \
         /lib/systemd/system/simpool@pool-a.service 2>&1",
    );
    assert!(
        verify.trim().is_empty(),
        "systemd-analyze verify:\n{verify}"
    );

    // The system user and group, and the state directory theirs.
    let user = c.ok("getent passwd simpool");
    let f: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = f[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system uid: {user}");
    assert_eq!(
        (f[5], f[6]),
        ("/var/lib/simpool", "/usr/sbin/nologin"),
        "{user}"
    );
    let group = c.ok("id -gn simpool");
    assert_eq!(group.trim(), "simpool");
    assert_eq!(
        c.ok("stat -c '%U %G %a' /var/lib/simpool").trim(),
        "simpool simpool 750"
    );
    // Nothing in /etc but its own configuration: pcscd's (reader config, unit) is left alone.
    assert_eq!(
        c.ok("dpkg -L simpool | grep '^/etc'"),
        "/etc\n/etc/simpool\n/etc/simpool/simpool.toml\n"
    );
    // The firewall rules load as README.Debian says (in the container's own network).
    c.ok("nft -f /usr/share/simpool/nftables/simpool-vpcd.nft && nft list table inet simpool");
    // and at boot, included in Debian's /etc/nftables.conf
    c.ok(
        "echo 'include \"/usr/share/simpool/nftables/simpool-vpcd.nft\"' >>/etc/nftables.conf && \
          nft -c -f /etc/nftables.conf",
    );
}

/// The unit's own command line, run as the unit runs it (its user, no network but loopback):
/// the packaged configuration names no pool, so it refuses, at once and dialling nothing.
fn refusal_by_hand(c: &Container) {
    let unit = c.ok("cat /lib/systemd/system/simpool.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .replace("${STATE_DIRECTORY}", "/var/lib/simpool");
    let (code, out, err) = c.sh(&format!(
        "timeout 10 setpriv --reuid simpool --regid simpool --init-groups {exec}"
    ));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(REFUSAL), "{err}");
}

#[test]
fn packaged_config_refuses_to_start_without_a_pool_and_dials_nothing() {
    let conf = repo().join("driver/debian/simpool.toml");
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        // In a network namespace of loopback only: nothing could be dialled anyway; and
        // bounded, for a build that would serve instead of refusing.
        let mut c = Command::new("unshare");
        c.args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec timeout -s INT 5 \"$@\"",
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_simpool"))
        .args(["serve", "--config"])
        .arg(&conf)
        .args(args)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        let t0 = Instant::now();
        let out = run(&mut c);
        (
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            t0.elapsed(),
        )
    };
    let want = format!("pool not configured: set pool in {}", conf.display());
    for args in [&[][..], &["--check"][..]] {
        let (code, out, err, took) = serve(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(&want), "{args:?}: {err}");
        // refused before anything starts: no log line of a start-up
        assert!(!err.contains("INFO"), "{err}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The rest of the packaged configuration is valid: named by flag or environment, the
    // same file goes on to the start-up checks.
    for (args, env) in [
        (&["--check", "--pool", "sim"][..], &[][..]),
        (&["--check"][..], &[("SIMPOOL_POOL", "sim")][..]),
    ] {
        let (code, out, err, _) = serve(args, env);
        assert!(matches!(code, Some(0 | 1)), "{args:?} {env:?}: {out}{err}");
        assert!(out.contains("reader 1 vpcd 127.0.0.1:35964"), "{out}{err}");
        assert!(!err.contains("pool not configured"), "{err}");
    }
}

#[test]
fn package_installs_runs_under_systemd_upgrades_removes_and_purges() {
    let d = debs();
    let c = Container::boot(true);
    // A lab server has no policy-rc.d forbidding service starts (this image may, as
    // Docker's do): the upgrade must restart what runs.
    c.ok("rm -f /usr/sbin/policy-rc.d");
    install_and_check(&c);
    // Installed: nothing enabled, nothing started.
    assert_eq!(c.value("simpool", "UnitFileState"), "disabled");
    assert_eq!(c.value("simpool", "ActiveState"), "inactive");
    refusal_by_hand(&c);

    // Started without a pool: refused, not restarted, the reason in the journal.
    c.ok("systemctl start simpool");
    c.until(
        "simpool.service failed",
        "systemctl is-failed --quiet simpool",
        Duration::from_secs(10),
    );
    assert_eq!(c.value("simpool", "ExecMainStatus"), "2");
    assert_eq!(c.value("simpool", "NRestarts"), "0");
    let journal = c.until(
        "the refusal in the journal",
        &format!("journalctl -u simpool -o cat --no-pager | grep -F '{REFUSAL}'"),
        Duration::from_secs(10),
    );
    assert!(!journal.contains("192.168.1.199"), "{journal}");

    // The admin sets a pool (here the simulated one) and enables the service.
    c.ok(
        "sed -i 's/^#pool = \"sim\"/pool = \"sim\"/' /etc/simpool/simpool.toml && \
          grep -q '^pool = \"sim\"' /etc/simpool/simpool.toml",
    );
    c.ok("systemctl reset-failed simpool && systemctl enable --now simpool");
    c.until(
        "the control API of simpool.service",
        "simpool readers",
        Duration::from_secs(10),
    );
    let pid = c.value("simpool", "MainPID");
    assert_eq!(c.ok(&format!("stat -c %U /proc/{pid}")).trim(), "simpool");
    assert_eq!(
        c.ok("stat -c '%U %G %a' /run/simpool").trim(),
        "simpool simpool 750"
    );
    // Through Debian's own pcscd and vpcd reader config (pcscd.service pulled in by the unit).
    c.ok("simpool bind 0 --card 18");
    let read = c.ok("simpool read --wait 10 --json --reader 'Virtual PCD 00 00'");
    assert!(read.contains(CARD_18_ICCID), "{read}");
    c.until(
        "the state file",
        "test -s /var/lib/simpool/state.json && \
         [ \"$(stat -c %U /var/lib/simpool/state.json)\" = simpool ]",
        Duration::from_secs(5),
    );
    // The history in the state directory, under the hardening: the read's lease is recorded.
    c.ok("simpool unbind 0 >/dev/null");
    let h = c.until(
        "card 18's lease in the service's history",
        "simpool history --card 18 --json | grep -Eq '\"why\": ?\"released\"' && \
         stat -c %U /var/lib/simpool/history.sqlite",
        Duration::from_secs(10),
    );
    assert!(h.contains("simpool"), "{h}");
    c.ok("simpool bind 0 --card 18 >/dev/null");

    // A second pool on the same host: simpool@pool-a, from the example instance config.
    c.ok(
        "sed 's/^pool = .*/pool = \"sim\"/' /usr/share/doc/simpool/examples/instance.toml \
          >/etc/simpool/pool-a.toml && systemctl enable --now simpool@pool-a",
    );
    c.until(
        "the control API of simpool@pool-a",
        "simpool readers --control 127.0.0.1:6681",
        Duration::from_secs(10),
    );
    c.ok(
        "simpool bind 1 --card 256 --control 127.0.0.1:6681 >/dev/null; \
          test -d /run/simpool/pool-a",
    );
    c.until(
        "pool-a's state file",
        "grep -q 256 /var/lib/simpool/pool-a/state.json",
        Duration::from_secs(5),
    );
    assert_ne!(c.value("simpool@pool-a", "MainPID"), "0");
    // Stopping simpool.service leaves the instance's runtime directory alone.
    c.ok("systemctl stop simpool && test -d /run/simpool/pool-a && systemctl start simpool");
    c.until("simpool back", "simpool readers", Duration::from_secs(10));

    // Upgrade: both running daemons restart on the new package; the edited conffile stays,
    // the bindings come back from the state.
    let before = (
        c.value("simpool", "MainPID"),
        c.value("simpool@pool-a", "MainPID"),
    );
    c.apt(&format!("install /srv/share/{}", d.upgrade));
    let after = (
        c.value("simpool", "MainPID"),
        c.value("simpool@pool-a", "MainPID"),
    );
    assert!(
        before.0 != after.0 && before.1 != after.1 && after.0 != "0" && after.1 != "0",
        "MainPIDs before {before:?}, after {after:?}"
    );
    c.ok("grep -q '^pool = \"sim\"' /etc/simpool/simpool.toml");
    let readers = c.until(
        "reader 0 bound again",
        "simpool readers | grep -E '^ +0 .*card +18 '",
        Duration::from_secs(10),
    );
    assert!(readers.contains(CARD_18_ICCID), "{readers}");

    // Remove: the daemons stop; configuration and state stay.
    c.apt("remove simpool");
    assert_eq!(c.value("simpool", "ActiveState"), "inactive");
    assert_eq!(c.value("simpool@pool-a", "ActiveState"), "inactive");
    c.ok(
        "test ! -e /usr/bin/simpool && grep -q '^pool = \"sim\"' /etc/simpool/simpool.toml && \
          test -s /var/lib/simpool/state.json && test -s /var/lib/simpool/pool-a/state.json",
    );
    assert_eq!(
        c.ok("dpkg-query -W -f '${db:Status-Abbrev}' simpool")
            .trim(),
        "rc"
    );

    // Purge: the state and the history go, and the enable links; the admin's own files and
    // the user stay.
    c.apt("purge simpool");
    c.ok(
        "test ! -e /etc/simpool/simpool.toml && test ! -e /var/lib/simpool && \
          test ! -e /run/simpool && test -e /etc/simpool/pool-a.toml && getent passwd simpool",
    );
    let links = c.ok("ls /etc/systemd/system/*.wants/ | grep simpool || true");
    assert!(links.trim().is_empty(), "{links}");
}

#[test]
fn package_installs_and_purges_where_systemd_does_not_run() {
    // A chroot or an image build: the maintainer scripts must not need a running systemd.
    let d = debs();
    let c = Container::boot(false);
    c.ok("test ! -d /run/systemd/system");
    install_and_check(&c);
    refusal_by_hand(&c);
    c.apt("remove simpool");
    c.ok("test -e /etc/simpool/simpool.toml && test -d /var/lib/simpool");
    c.apt(&format!("install /srv/share/{}", d.upgrade));
    c.apt("purge simpool");
    c.ok("test ! -e /etc/simpool && test ! -e /var/lib/simpool");
}
