//! Man pages from the command line's definition (clap), through clap_mangen for the title, name,
//! description, options and subcommands, with two sections of simpool's own where clap_mangen
//! 0.3 falls short:
//! - SYNOPSIS shows every option with its value (`[--pool POOL]`, `--card CARD`), and an
//!   overridden usage line (`stop`, `bind`) with `[OPTIONS]` spelled out;
//! - the notes under every command's help (exit status, settings) become sections of their own
//!   with real paragraphs and a list, instead of lines that roff runs together.

use std::io::{self, Write};
use std::path::Path;

use clap::{Arg, ArgAction, Command};

/// Escapes text for roff: backslashes, hyphens (so `--pool` stays ASCII and is not hyphenated),
/// and a control character at the start of a line.
fn esc(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

fn bold(s: &str) -> String {
    format!("\\fB{}\\fR", esc(s))
}

fn italic(s: &str) -> String {
    format!("\\fI{}\\fR", esc(s))
}

/// The value an option takes, as `POOL`; `None` for a flag.
fn value_name(a: &Arg) -> Option<String> {
    if !a.get_num_args().is_some_and(|n| n.takes_values()) {
        return None;
    }
    Some(match a.get_value_names() {
        Some(v) => v
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        None => a.get_id().as_str().to_uppercase(),
    })
}

/// One option as the synopsis shows it: `-v|--verbose`, `--pool POOL`.
fn option(a: &Arg) -> Option<String> {
    let name = match (a.get_short(), a.get_long()) {
        (Some(s), Some(l)) => format!("{}|{}", bold(&format!("-{s}")), bold(&format!("--{l}"))),
        (None, Some(l)) => bold(&format!("--{l}")),
        (Some(s), None) => bold(&format!("-{s}")),
        (None, None) => return None,
    };
    // A no-break space: an option and its value stay on one line.
    Some(match value_name(a) {
        Some(v) => format!("{name}\\ {}", italic(&v)),
        None => name,
    })
}

/// An optional option: `[--pool POOL]`, `[-v|--verbose]...` for one that may repeat.
fn optional(a: &Arg) -> Option<String> {
    let o = option(a)?;
    Some(if matches!(a.get_action(), ArgAction::Count) {
        format!("[{o}]...")
    } else {
        format!("[{o}]")
    })
}

fn positional(a: &Arg) -> String {
    let v = value_name(a).unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
    let v = format!("{}{}", italic(&v), if many { "..." } else { "" });
    if a.is_required_set() {
        v
    } else {
        format!("[{v}]")
    }
}

/// The SYNOPSIS: name, optional options in brackets, required ones, positionals, subcommand.
fn synopsis(cmd: &Command) -> String {
    let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
    let opts: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
        .collect();
    if let Some(usage) = cmd.get_overridden_usage() {
        // "simpool stop [OPTIONS] (--card <N> | --all)": [OPTIONS] becomes the options the line
        // does not name itself.
        let usage = usage.to_string().replace(['<', '>'], "");
        let others: Vec<String> = opts
            .iter()
            .filter(|a| a.get_long().is_none_or(|l| !mentions(&usage, l)))
            .filter_map(|a| optional(a))
            .collect();
        let (head, tail) = usage.split_once("[OPTIONS]").unwrap_or((&usage, ""));
        let head = head.trim();
        let head = head.strip_prefix(name.as_str()).unwrap_or(head);
        let parts = [
            bold(&name),
            esc(head.trim()),
            others.join(" "),
            esc(tail.trim()),
        ];
        return parts
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut parts = vec![bold(&name)];
    for a in opts.iter().filter(|a| !a.is_required_set()) {
        parts.extend(optional(a));
    }
    for a in opts.iter().filter(|a| a.is_required_set()) {
        if let Some(o) = option(a) {
            parts.push(o);
        }
    }
    for a in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        parts.push(positional(a));
    }
    if cmd.has_subcommands() {
        parts.push(italic("COMMAND"));
    }
    parts.join(" ")
}

/// Whether `usage` names the option `--long` (not just an option it is the start of).
fn mentions(usage: &str, long: &str) -> bool {
    let flag = format!("--{long}");
    usage.match_indices(&flag).any(|(i, _)| {
        !usage[i + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

/// A line of a notes list: `  130  interrupted (…)` → ("130", "interrupted (…)").
fn list_entry(line: &str) -> Option<(&str, &str)> {
    if !line.starts_with(' ') {
        return None;
    }
    let t = line.trim_start();
    let (tag, rest) = t.split_once("  ")?;
    Some((tag.trim(), rest.trim()))
}

/// A paragraph's title: `Exit status (every command):` → "EXIT STATUS", `Settings: …` →
/// "SETTINGS" and the rest of the line.
fn title(line: &str) -> Option<(String, &str)> {
    let (head, rest) = line.split_once(':')?;
    let name = head.split(" (").next().unwrap().trim();
    let short = !name.is_empty()
        && name.split_whitespace().count() <= 3
        && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_alphabetic() || c == ' ');
    short.then(|| (name.to_uppercase(), rest.trim_start()))
}

/// The notes (after-help text) as roff: a section per titled paragraph, indented `TAG  text`
/// lines as a tagged list, other lines joined into paragraphs (a line after a list starts one).
fn notes(text: &str) -> String {
    let mut out = String::new();
    let mut para: Vec<String> = Vec::new();
    // The list entry being read: its tag and its text so far (continuation lines join it).
    let mut item: Option<(String, String)> = None;
    let flush = |para: &mut Vec<String>, item: &mut Option<(String, String)>, out: &mut String| {
        if let Some((tag, body)) = item.take() {
            out.push_str(&format!(".TP\n{}\n{}\n", bold(&tag), esc(&body)));
        }
        if !para.is_empty() {
            out.push_str(&format!(".PP\n{}\n", esc(&para.join(" "))));
            para.clear();
        }
    };
    // Whether the next line starts a paragraph.
    let mut fresh = true;
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut para, &mut item, &mut out);
            fresh = true;
            continue;
        }
        // An indented line under an entry whose text has no tag of its own: more of that entry.
        if let Some((_, body)) = item.as_mut() {
            let indent = line.len() - line.trim_start().len();
            if indent > 2 && list_entry(line).is_none_or(|(tag, _)| tag.contains(' ')) {
                body.push(' ');
                body.push_str(line.trim());
                continue;
            }
        }
        if let Some((tag, body)) = list_entry(line) {
            flush(&mut para, &mut item, &mut out);
            item = Some((tag.to_string(), body.to_string()));
            fresh = true;
            continue;
        }
        if fresh {
            flush(&mut para, &mut item, &mut out);
            if let Some((name, rest)) = title(line) {
                out.push_str(&format!(".SH \"{name}\"\n"));
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    para.push(c.to_uppercase().chain(chars).collect());
                }
                fresh = false;
                continue;
            }
        }
        para.push(line.trim().to_string());
        fresh = false;
    }
    flush(&mut para, &mut item, &mut out);
    out
}

/// The page of one (built) command.
fn page(cmd: &Command, w: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    // Left-adjusted and never hyphenated: option names must read as typed.
    writeln!(w, ".SH SYNOPSIS\n.nh\n.ad l\n{}\n.ad\n.hy", synopsis(cmd))?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    if let Some(text) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        w.write_all(notes(&text.to_string()).as_bytes())?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

fn built(mut cmd: Command) -> Command {
    cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The top-level page (`simpool.1`).
pub fn render(cmd: Command, w: &mut dyn Write) -> io::Result<()> {
    page(&built(cmd), w)
}

/// `simpool.1` and one `simpool-COMMAND.1` per visible subcommand into `dir`.
pub fn generate_to(cmd: Command, dir: &Path) -> io::Result<()> {
    fn each(cmd: &Command, dir: &Path) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            each(sub, dir)?;
        }
        let name = cmd.get_display_name().unwrap_or(cmd.get_name());
        let mut f = io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.1")))?);
        page(cmd, &mut f)?;
        f.flush()
    }
    each(&built(cmd), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES: &str = "\
Exit status (every command):
  0    done
  130  interrupted (Ctrl-C, SIGTERM) after stopping the cards the command had started;
       the daemons end with 0
A closed standard output (e.g. `| head`) ends a command quietly with 0.

Settings: flag > environment (SIMPOOL_POOL) > configuration
file (serve --config) > default.";

    #[test]
    fn notes_become_sections_a_list_and_paragraphs() {
        let roff = notes(NOTES);
        assert_eq!(
            roff,
            ".SH \"EXIT STATUS\"\n\
             .TP\n\\fB0\\fR\ndone\n\
             .TP\n\\fB130\\fR\ninterrupted (Ctrl\\-C, SIGTERM) after stopping the cards the command had started; the daemons end with 0\n\
             .PP\nA closed standard output (e.g. `| head`) ends a command quietly with 0.\n\
             .SH \"SETTINGS\"\n\
             .PP\nFlag > environment (SIMPOOL_POOL) > configuration file (serve \\-\\-config) > default.\n"
        );
    }

    #[test]
    fn the_synopsis_shows_values() {
        let cmd = built(
            Command::new("x")
                .bin_name("x")
                .arg(Arg::new("pool").long("pool").value_name("POOL"))
                .arg(Arg::new("card").long("card").required(true))
                .arg(
                    Arg::new("v")
                        .short('v')
                        .long("verbose")
                        .action(ArgAction::Count),
                )
                .arg(Arg::new("keep").long("keep").action(ArgAction::SetTrue))
                .arg(Arg::new("commands").num_args(1..).required(true)),
        );
        let s = synopsis(&cmd);
        assert!(s.contains("[\\fB\\-\\-pool\\fR\\ \\fIPOOL\\fR]"), "{s}");
        assert!(s.contains(" \\fB\\-\\-card\\fR\\ \\fICARD\\fR "), "{s}");
        assert!(s.contains("[\\fB\\-v\\fR|\\fB\\-\\-verbose\\fR]..."), "{s}");
        assert!(s.contains("[\\fB\\-\\-keep\\fR]"), "{s}");
        assert!(s.ends_with("\\fICOMMANDS\\fR..."), "{s}");
    }
}
