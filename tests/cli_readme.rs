//! README.md's examples, run verbatim: every `sh` block of the README runs as one shell script
//! in a private network namespace (only loopback: nothing can be dialled off this machine, and
//! the default ports cannot clash with anything), with the `simpool` just built first in
//! `PATH`. What a line's comment promises is checked: text in double quotes appears in its
//! output, "refused" means a non-zero exit, hex lines under a command are its output lines.
//! Examples that cannot run here are listed in [`SKIP`] with the reason; a new example must be
//! runnable or listed.

mod common;

use common::proc::Tied;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Examples that cannot run here: (the line as in the README, why, what runs instead if
/// anything).
const SKIP: &[(&str, &str, Option<&str>)] = &[
    (
        "driver/demo",
        "installs packages, builds a release and starts a pcscd: needs root and minutes; its \
         --keep/--stop/--help are tested in cli_first_hour",
        None,
    ),
    (
        "driver/test",
        "the whole test suite, this test among it",
        None,
    ),
    (
        "simpool scan --pool 10.1.2.3:6666 --json",
        "needs the real pool at 10.1.2.3",
        None,
    ),
    (
        "simpool serve --pool 10.1.2.3:6666 --card 18 --card 256",
        "needs the real pool at 10.1.2.3",
        None,
    ),
    (
        "simpool serve --config /etc/simpool/simpool.toml",
        "needs the installed configuration; the README's configuration example is checked \
         by readme_config_example_is_valid_and_binds_no_card_twice",
        None,
    ),
    (
        "simpool serve --pool 10.1.2.3:6666 --readers 16 --state /var/lib/simpool/state.json &",
        "the lab's real pool; the rest of the lab workflow runs against this daemon on the \
         simulated pool instead (no state file: nothing written outside the test)",
        Some("simpool serve --pool sim --readers 16 &"),
    ),
    (
        "simpool serve --pool 10.1.2.3:6666 --card 18 --gsmtap 127.0.0.1",
        "needs the real pool at 10.1.2.3",
        None,
    ),
    (
        "tshark -i lo -f \"udp port 4729\" -Y gsm_sim",
        "a live capture that runs until stopped; tests/gsmtap_tshark.rs runs tshark on simpool's GSMTAP",
        None,
    ),
    (
        "tshark -i lo -f \"udp port 4729\" -w sim.pcapng",
        "a live capture that runs until stopped; tests/gsmtap_tshark.rs runs tshark on simpool's GSMTAP",
        None,
    ),
    (
        "tshark -r sim.pcapng -Y gsm_sim -T fields -e frame.time -e gsm_sim.apdu.ins \
         -e gsm_sim.file_id -e gsm_sim.apdu.data -e gsm_sim.apdu.sw",
        "reads the capture of the line above, which is not made here",
        None,
    ),
    (
        "/opt/osmo-remsim/src/osmo-remsim-1.0.0/src/server/osmo-remsim-server",
        REMSIM,
        None,
    ),
    (
        "simpool serve --pool 10.1.2.3:6666 --remsim 10.0.0.5 --bank-id 1",
        REMSIM,
        None,
    ),
    (
        "simpool serve --pool 10.1.2.3:6666 --card 2 --remsim 10.0.0.5:9998 --bank-id 1 --remsim-listen 0.0.0.0:9999",
        REMSIM,
        None,
    ),
    (
        "S=http://10.0.0.5:9997/api/backend/v1",
        REMSIM,
        None,
    ),
    (
        "curl -f -X POST -H 'Content-Type: application/json' $S/slotmaps \
         -d '{\"bank\":{\"bankId\":1,\"slotNr\":17},\"client\":{\"clientId\":23,\"slotNr\":0}}'",
        REMSIM_REST,
        None,
    ),
    (
        "curl -f $S/slotmaps ; curl -f $S/banks ; curl -f $S/clients",
        REMSIM_REST,
        None,
    ),
    (
        "curl -f -X DELETE $S/slotmaps/$((1*65536+17))",
        REMSIM_REST,
        None,
    ),
    (
        "apt install ./simpool_*.deb",
        PACKAGE,
        None,
    ),
    ("editor /etc/simpool/simpool.toml", PACKAGE, None),
    (
        "simpool exec --all --parallel 4 --output-dir runs -- pySim-read.py -p {reader}",
        EXEC,
        None,
    ),
    (
        "simpool exec --card 1-32,40 --timeout 2m --json -- pySim-read.py -p {reader} > runs.json",
        EXEC,
        None,
    ),
    (
        "simpool exec --imsi 001010000000018 -- sh -c 'scriptor -r \"$SIMPOOL_READER_NAME\" < cmds.txt'",
        EXEC,
        None,
    ),
    (
        "simpool serve --config /etc/simpool/simpool.toml --check",
        PACKAGE,
        None,
    ),
    ("systemctl enable --now simpool", PACKAGE, None),
    ("journalctl -u simpool -f", PACKAGE, None),
    ("systemctl status simpool", PACKAGE, None),
    (
        "nft -f /usr/share/simpool/nftables/simpool-vpcd.nft",
        PACKAGE,
        None,
    ),
];

const EXEC: &str = "needs a pcscd with the daemon's vpcd readers (and pySim, scriptor): tests/exec.rs runs exec through the real pcscd with scriptor reading each card's ICCID, and with pySim-read -p {reader}";

const PACKAGE: &str = "installs the Debian package and runs its service: tests/package.rs does these steps in a container under a real systemd";

const REMSIM: &str = "needs osmo-remsim built and a server at 10.0.0.5 beside the real pool; tests/remsim_interop.rs runs the real osmo-remsim with simpool in a private network";

const REMSIM_REST: &str = "needs a server at 10.0.0.5; tests/remsim_interop.rs runs this line verbatim (S pointed at 127.0.0.1) against the real osmo-remsim-server, with curl failing on an HTTP error";

/// Commands a block needs before its first line (the README shows them elsewhere): (a line of
/// the block, the commands, why).
const PRELUDE: &[(&str, &[&str], &str)] = &[
    (
        "curl -s localhost:6680/api/v1/readers",
        &["simpool serve --pool sim --readers 2 &"],
        "the control API examples talk to a running daemon",
    ),
    (
        "simpool status --all-instances",
        &[
            "export SIMPOOL_CONFIG_DIR=$PWD/etc-simpool",
            "mkdir -p etc-simpool && printf 'pool = \"10.1.2.3:6666\"\\ncontrol = \"127.0.0.1:6681\"\\n[remsim]\\nserver = \"10.0.0.5\"\\nbank_id = 1\\n' >etc-simpool/pool-a.toml && printf 'pool = \"sim\"\\ncontrol = \"127.0.0.1:6680\"\\nvpcd = \"127.0.0.1:35971\"\\nreaders = 1\\n' >etc-simpool/pool-b.toml",
            "simpool serve --config etc-simpool/pool-b.toml &",
        ],
        "the instances' configurations in a directory of the test's own (SIMPOOL_CONFIG_DIR \
         instead of /etc/simpool): pool-a's daemon is not running, pool-b's runs on the \
         simulated pool",
    ),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The fenced blocks of one language, as lines.
fn blocks(text: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in text.lines() {
        if let Some(c) = cur.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(cur.take().unwrap());
            } else {
                c.push(line.to_string());
            }
        } else if line.trim() == format!("```{lang}") {
            cur = Some(Vec::new());
        }
    }
    out
}

/// One example: a command, its inline comment, the output lines listed under it.
#[derive(Debug, Default)]
struct Example {
    command: String,
    comment: String,
    output: Vec<String>,
}

/// Splits `line` into command and comment at the first `#` outside quotes that follows a space.
fn split_comment(line: &str) -> (String, String) {
    let (mut single, mut double) = (false, false);
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || b[i - 1] == b' ') => {
                return (
                    line[..i].trim().to_string(),
                    line[i + 1..].trim().to_string(),
                )
            }
            _ => {}
        }
    }
    (line.trim().to_string(), String::new())
}

fn examples(block: &[String]) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut pending = String::new();
    for line in block {
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        let (command, comment) = split_comment(&full);
        if command.is_empty() {
            // A comment line: output of the command above it when it looks like output: hex
            // (`…` leaves a middle part open; words after it annotate), or `<…>` placeholders.
            // Hex words in a row make one line: `data SW` (`apdu` puts a gap before the SW).
            let spec = if comment.starts_with('<') {
                comment.clone()
            } else {
                comment
                    .split_whitespace()
                    .take_while(|w| w.chars().all(|c| c.is_ascii_hexdigit() || c == '…'))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let looks_like_output = !spec.is_empty()
                && (spec.starts_with('<')
                    || spec
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == '…' || c == ' '));
            match out.last_mut() {
                Some(e) if looks_like_output => e.output.push(spec),
                _ => {}
            }
            continue;
        }
        out.push(Example {
            command,
            comment,
            ..Default::default()
        });
    }
    out
}

/// Words separated by single spaces (continued lines keep their indentation otherwise).
fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn skip_entry(cmd: &str) -> Option<&'static (&'static str, &'static str, Option<&'static str>)> {
    SKIP.iter().find(|(c, _, _)| words(c) == words(cmd))
}

/// A `serve` or `trace` that runs until stopped (not backgrounded, not `--check`).
fn long_running(cmd: &str) -> bool {
    (cmd.starts_with("simpool serve") || cmd.starts_with("simpool trace"))
        && !cmd.contains("--check")
        && !cmd.ends_with('&')
}

/// Quoted texts of a comment (up to an ellipsis: what follows it is left open).
fn promises(comment: &str) -> Vec<String> {
    comment
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|q| {
            q.split('…')
                .next()
                .unwrap()
                .trim_end_matches([',', ' '])
                .to_string()
        })
        .filter(|q| !q.is_empty())
        .collect()
}

/// The exit status a comment promises: "(exit 4, …)".
fn promised_exit(comment: &str) -> Option<i32> {
    let rest = &comment[comment.find("exit ")? + 5..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Checks one output line against a README line like `<SRES 4 bytes><Kc 8 bytes>9000`.
fn output_matches(want: &str, got: &str) -> bool {
    if let Some((head, tail)) = want.split_once('…') {
        return got.len() > head.len() + tail.len() && got.starts_with(head) && got.ends_with(tail);
    }
    if !want.starts_with('<') {
        return want == got;
    }
    let bytes: usize = want
        .split('<')
        .filter_map(|p| p.split('>').next())
        .filter_map(|p| p.split_whitespace().rev().nth(1)?.parse::<usize>().ok())
        .sum();
    let tail = want.rsplit('>').next().unwrap_or("");
    got.len() == bytes * 2 + tail.len()
        && got.ends_with(tail)
        && got[..bytes * 2].bytes().all(|c| c.is_ascii_hexdigit())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A `curl` first in `PATH` that fails (exit 22) on an HTTP error status, as the README's own
/// `curl -f` lines do: a 400 or 415 answer is a broken example, not "exit 0 with an error body"
/// (osmo-remsim-server's 400 for a body without `Content-Type` passed unnoticed that way).
fn curl_failing_on_http_errors(dir: &Path) -> PathBuf {
    let real = Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .expect("sh");
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    assert!(!real.is_empty(), "curl is not installed");
    let bin = dir.join("curl-wrapper");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("curl");
    // `-f` given twice is still `-f`; `--fail-with-body` would clash with the README's `-f`.
    std::fs::write(&script, format!("#!/bin/sh\nexec {real} -f \"$@\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Runs the block's lines as one script in a private network namespace, in `dir`.
fn run_block(lines: &[String], dir: &Path) -> Vec<Ran> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_simpool"));
    let mut script = String::from("ip link set lo up || exit 99\npids=\n");
    for (i, l) in lines.iter().enumerate() {
        if let Some(bg) = l.strip_suffix('&') {
            // A daemon: start it, wait (bounded) for its control API.
            // A simple command: `$!` is simpool itself, stopped at the end.
            script.push_str(&format!(
                "{bg} >o{i} 2>e{i} &\npids=\"$pids $!\"\necho 0 >r{i}\n\
                 for n in $(seq 100); do simpool readers >/dev/null 2>&1 && break; sleep 0.1; done\n"
            ));
        } else if long_running(l) {
            script.push_str(&format!(
                "timeout -s INT 3 {l} >o{i} 2>e{i}; echo $? >r{i}\n"
            ));
        } else if l.starts_with("export ") {
            script.push_str(&format!("{l}; echo $? >r{i}; : >o{i}; : >e{i}\n"));
        } else {
            // Bounded: a command that hangs fails the test (exit 124) instead of blocking it.
            script.push_str(&format!(
                "timeout 60 sh -c {} >o{i} 2>e{i}; echo $? >r{i}\n",
                shell_quote(l)
            ));
        }
    }
    script.push_str("[ -z \"$pids\" ] || { kill $pids; wait; }\nexit 0\n");
    let path = format!(
        "{}:{}:{}",
        bin.parent().unwrap().display(),
        curl_failing_on_http_errors(dir).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A PID namespace too: the block's daemons die with the test, however it ends.
    let st = Command::new("unshare")
        .args(common::proc::OWN_PIDS)
        .args(["-n", "sh", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .env_remove("SIMPOOL_CONTROL_TOKEN")
        .env_remove("SIMPOOL_INSTANCE")
        .env_remove("SIMPOOL_CONFIG_DIR")
        .env_remove("RUST_LOG")
        .status_tied()
        .expect("unshare");
    assert!(
        st.success(),
        "the block's script failed ({st}); this test needs root for `unshare -n`:\n{script}"
    );
    let read = |p: String| std::fs::read_to_string(dir.join(p)).unwrap_or_default();
    (0..lines.len())
        .map(|i| Ran {
            code: read(format!("r{i}")).trim().parse().unwrap_or(-1),
            stdout: read(format!("o{i}")),
            stderr: read(format!("e{i}")),
        })
        .collect()
}

#[test]
fn readme_examples_run_verbatim_and_do_what_they_say() {
    let text = readme();
    let sh = blocks(&text, "sh");
    assert!(sh.len() >= 4, "README's sh blocks: {}", sh.len());
    let mut ran = 0;
    let mut skipped = Vec::new();
    for (b, block) in sh.iter().enumerate() {
        let exs = examples(block);
        let mut lines = Vec::new();
        let mut checked = Vec::new();
        if let Some((_, pre, _)) = PRELUDE
            .iter()
            .find(|(first, _, _)| exs.iter().any(|e| e.command == *first))
        {
            lines.extend(pre.iter().map(|l| l.to_string()));
        }
        for e in &exs {
            match skip_entry(&e.command) {
                Some((_, why, instead)) => {
                    skipped.push(format!("{}: {why}", e.command));
                    if let Some(i) = instead {
                        lines.push(i.to_string());
                    }
                }
                None => {
                    checked.push((lines.len(), e));
                    lines.push(e.command.clone());
                }
            }
        }
        if checked.is_empty() {
            continue;
        }
        let dir = std::env::temp_dir().join(format!("simpool-readme-{}-{b}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let results = run_block(&lines, &dir);
        for (i, e) in checked {
            let r = &results[i];
            let both = format!("{}{}", r.stdout, r.stderr);
            let what = format!(
                "README example `{}` (# {})\nexit {}\nstdout:\n{}\nstderr:\n{}",
                e.command, e.comment, r.code, r.stdout, r.stderr
            );
            assert!(!both.contains("panicked"), "{what}");
            if long_running(&e.command) {
                assert_eq!(r.code, 124, "still serving after 3 s: {what}");
            } else if e.comment.contains("refused") {
                assert!(r.code != 0, "refused: {what}");
            } else if let Some(code) = promised_exit(&e.comment) {
                assert_eq!(r.code, code, "{what}");
            } else {
                assert_eq!(r.code, 0, "{what}");
            }
            for p in promises(&e.comment) {
                assert!(both.contains(&p), "promised {p:?}: {what}");
            }
            if !e.output.is_empty() {
                let got: Vec<&str> = r.stdout.lines().collect();
                assert_eq!(got.len(), e.output.len(), "{what}");
                for (w, g) in e.output.iter().zip(&got) {
                    assert!(output_matches(w, g), "want {w}, got {g}: {what}");
                }
            }
            ran += 1;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{ran} README examples ran; skipped:\n  {}",
        skipped.join("\n  ")
    );
    assert!(ran >= 20, "only {ran} examples ran");
    // Every SKIP entry is still in the README (no stale reasons).
    let all: Vec<String> = sh
        .iter()
        .flat_map(|b| examples(b))
        .map(|e| words(&e.command))
        .collect();
    for (c, _, _) in SKIP {
        assert!(
            all.contains(&words(c)),
            "SKIP lists {c:?}, which the README no longer has"
        );
    }
}

/// The README's configuration example: valid, and no card bound twice (it once bound card 18
/// and then card 18's own ICCID). Checked against the simulated pool, whose cards are known.
#[test]
fn readme_config_example_is_valid_and_binds_no_card_twice() {
    let text = readme();
    let toml = blocks(&text, "toml")
        .into_iter()
        .find(|b| b.iter().any(|l| l.starts_with("[[reader]]")))
        .expect("the config example")
        .join("\n");
    let dir = std::env::temp_dir().join(format!("simpool-readme-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("simpool.toml");
    std::fs::write(&file, &toml).unwrap();
    // `--check` dials what the file names (vpcd ports, control address): in a private network.
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" serve --check --pool sim --config \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_simpool"))
        .arg(&file)
        .env_remove("SIMPOOL_POOL")
        .env_remove("SIMPOOL_CONTROL")
        .output_tied()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // No clash (exit 2); the vpcd ports have no pcscd here, so the check itself may fail (1).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stdout}{stderr}");
    assert!(stdout.contains("ok     reader 0 card 18"), "{stdout}");
    assert!(
        stdout.contains("ok     reader 1 IMSI 460019894013615: found: card 256"),
        "{stdout}"
    );
    // `readers = 4`: readers 2 and 3 run too, without a card.
    assert!(stdout.contains("reader 3 vpcd 127.0.0.1:35966"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README's cards file example loads, and its card shows as the README says (mute).
#[test]
fn readme_cards_file_example_loads() {
    let text = readme();
    let toml = blocks(&text, "toml")
        .into_iter()
        .find(|b| b.iter().any(|l| l.starts_with("[[card]]")))
        .expect("the cards file example")
        .join("\n");
    let dir = std::env::temp_dir().join(format!("simpool-readme-cards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cards.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args([
            "scan",
            "--pool",
            "sim",
            "--reply-timeout-ms",
            "200",
            "--json",
            "--cards",
        ])
        .arg(&file)
        .env_remove("SIMPOOL_CONTROL")
        .output_tied()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["card"], 7);
    assert!(rows[0]["error"].is_string(), "a mute card: {rows:?}");
    assert_eq!(out.status.code(), Some(3));
    std::fs::remove_dir_all(&dir).unwrap();
}
