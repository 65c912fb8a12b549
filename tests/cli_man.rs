//! The man pages and `--help` as a reader sees them: `simpool man --dir` rendered by nroff (as
//! `man` does): the synopsis shows each option with its value and no option name is hyphenated
//! across lines; the exit codes are a list and the notes after them paragraphs of their own
//! (not "…the command had started A closed standard output…"); under a command's `--help`, -v and
//! -q come after the command's own options, under "Global options".

use std::path::{Path, PathBuf};
use std::process::Command;

fn simpool(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn pages(test: &str) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("simpool-cli-man-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    simpool(&["man", "--dir", dir.to_str().unwrap()]);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (dir, names)
}

/// The page as `man` shows it, 100 columns, plain text; `None` without nroff.
fn rendered(page: &Path) -> Option<String> {
    let out = Command::new("nroff")
        .args(["-man", "-rLL=100n", "-Tascii"])
        .arg(page)
        .output()
        .ok()?;
    assert!(out.status.success(), "nroff {}", page.display());
    // Overstrike (bold) and underline sequences out.
    let mut text = String::new();
    let raw = String::from_utf8_lossy(&out.stdout);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        text.push(c);
    }
    Some(text)
}

/// The lines of section `name` (up to the next heading), with single spaces between words
/// (nroff justifies lines with extra spaces).
fn section(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim_end() != name)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn man_pages_read_right() {
    let (dir, names) = pages("read");
    assert!(names.len() >= 10, "{names:?}");
    let Some(_) = rendered(&dir.join("simpool.1")) else {
        eprintln!("\n*** SKIPPED rendering the man pages: no nroff (Debian groff-base) ***\n");
        return;
    };
    for name in &names {
        let text = rendered(&dir.join(name)).unwrap();
        let what = format!("{name}:\n{text}");
        // The exit codes as a list, each on a line of its own; the notes after them apart.
        let exit = section(&text, "EXIT STATUS");
        for code in ["0", "1", "2", "3", "130"] {
            assert!(
                exit.iter().any(|l| l.starts_with(&format!("{code} "))),
                "exit code {code}: {what}"
            );
        }
        let closed = exit
            .iter()
            .position(|l| l.starts_with("A closed standard output"))
            .unwrap_or_else(|| panic!("the closed-output note starts no line: {what}"));
        assert!(exit[closed - 1].is_empty(), "no paragraph break: {what}");
        assert!(!text.contains("started A closed"), "{what}");
        assert!(
            section(&text, "SETTINGS")
                .first()
                .is_some_and(|l| l.starts_with("Flag > environment")),
            "{what}"
        );
        // Option names read as typed: nothing hyphenated at a line end in the synopsis.
        let synopsis = section(&text, "SYNOPSIS");
        assert!(
            synopsis.iter().all(|l| !l.ends_with('-')),
            "hyphenated synopsis: {synopsis:#?}"
        );
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synopsis_shows_the_values() {
    let (dir, _) = pages("synopsis");
    let Some(_) = rendered(&dir.join("simpool.1")) else {
        eprintln!("\n*** SKIPPED rendering the man pages: no nroff (Debian groff-base) ***\n");
        return;
    };
    let synopsis = |page: &str| {
        section(&rendered(&dir.join(page)).unwrap(), "SYNOPSIS")
            .join(" ")
            .trim()
            .to_string()
    };
    let apdu = synopsis("simpool-apdu.1");
    for want in [
        "simpool apdu ",
        "[--pool POOL]",
        "[--reply-timeout-ms REPLY_TIMEOUT_MS]",
        "[--control HOST:PORT]",
        "[--instance NAME]",
        "[-v|--verbose]...",
        // Optional with --file FILE.
        "--card CARD [COMMANDS...]",
    ] {
        assert!(apdu.contains(want), "{want}: {apdu}");
    }
    assert!(!apdu.contains("[--pool]"), "{apdu}");
    let stop = synopsis("simpool-stop.1");
    assert!(
        stop.contains("[--pool POOL]") && stop.ends_with("(--card N | --all)"),
        "{stop}"
    );
    assert!(!stop.contains("[OPTIONS]"), "{stop}");
    let serve = synopsis("simpool-serve.1");
    assert!(
        serve.contains("[--gsmtap-cards LIST]") && serve.contains("[--config CONFIG]"),
        "{serve}"
    );
    let trace = synopsis("simpool-trace.1");
    assert!(trace.contains("[--card LIST] [--pcap FILE]"), "{trace}");
    let top = synopsis("simpool.1");
    assert!(top.ends_with("COMMAND"), "{top}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn global_options_come_after_a_commands_own() {
    for sub in [
        "info", "status", "scan", "serve", "trace", "read", "apdu", "stop", "readers", "bind",
        "history", "label", "unbind", "sim", "man",
    ] {
        let help = simpool(&[sub, "--help"]);
        let own = help
            .split("\n\n")
            .find(|p| p.starts_with("Options:"))
            .unwrap_or_else(|| panic!("{sub}: no Options:\n{help}"));
        assert!(
            !own.contains("--verbose") && !own.contains("--quiet"),
            "{sub}: -v/-q among its own options:\n{help}"
        );
        let (before, global) = help
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{sub}: no Global options:\n{help}"));
        assert!(before.contains("Options:"), "{sub}:\n{help}");
        assert!(
            global.contains("-v, --verbose") && global.contains("-q, --quiet"),
            "{sub}:\n{help}"
        );
        // Nothing of the command's own after the global options but the notes.
        let global = global.split("\n\n").next().unwrap();
        assert_eq!(
            global
                .lines()
                .filter(|l| l.trim_start().starts_with('-'))
                .count(),
            2,
            "{sub}:\n{help}"
        );
    }
}
