//! `simpool apdu`: start a card, run commands through the T=0 terminal, stop it again — the
//! card layer's run ([`simpool::cards::ops::apdu`]), by the daemon or over a connection of
//! this command's own. Commands the T=0 terminal would refuse are refused before the card is
//! started.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::cards::{ops, Holder};
use simpool::rows::{ApduReply, ApduRequest};
use simpool::values::CardNo;

use super::{interruptible, out, out_json, CliError, Interrupt, PoolArgs, Via, EXIT_INTERRUPTED};

#[derive(Args)]
pub struct ApduArgs {
    /// Card number, 1–256 as on the front panel.
    #[arg(long)]
    card: CardNo,
    /// Leave the card running afterwards (default: stop it, also after an error or Ctrl-C).
    #[arg(long)]
    keep: bool,
    /// Let this run use the last try of a PIN, PUK or ADM key (the last-try guard refuses it
    /// otherwise, with 69 85).
    #[arg(long)]
    allow_last_try: bool,
    /// Print JSON instead of one response per line: {"card","atr","responses","errors"}.
    #[arg(long)]
    json: bool,
    /// Do what a T=0 reader's application does: GET RESPONSE on 61xx/9Fxx, the command
    /// again with Le=xx on 6Cxx; one final response per command.
    #[arg(long)]
    auto: bool,
    /// Commands from FILE (`-`: standard input), one per line; `#` starts a comment. They
    /// run before the commands given as arguments.
    #[arg(long, value_name = "FILE")]
    file: Option<std::path::PathBuf>,
    /// Commands in hex (spaces and colons allowed inside one argument).
    #[arg(required_unless_present = "file")]
    commands: Vec<String>,
    #[command(flatten)]
    pool: PoolArgs,
}

pub async fn run(a: ApduArgs) -> Result<ExitCode, CliError> {
    let card = a.card;
    let usage = |e: ops::BadCommand| CliError::Usage(e.to_string());
    let mut cmds = match &a.file {
        Some(f) => commands_of_file(f)?,
        None => Vec::new(),
    };
    if !a.commands.is_empty() {
        cmds.extend(ops::parse_commands(&a.commands).map_err(usage)?);
    }
    if cmds.is_empty() {
        return Err(CliError::Usage("no commands to send".into()));
    }
    if cmds.len() > ops::MAX_COMMANDS {
        return Err(CliError::Usage(format!(
            "{} commands: at most {} in one run",
            cmds.len(),
            ops::MAX_COMMANDS
        )));
    }
    ops::refuse_unsendable(&cmds).map_err(usage)?;
    let mut interrupt = Interrupt::new();
    let reply: ApduReply = match a.pool.via().await? {
        Via::Daemon(c) => {
            // The daemon runs the commands under a lease of this request; an interrupted
            // request ends the lease and the daemon stops the card (unless --keep).
            let body = ApduRequest {
                tpdus: cmds.iter().map(hex::encode_upper).collect(),
                keep: a.keep,
                auto: a.auto,
                allow_last_try: a.allow_last_try,
            };
            let path = format!("/api/v1/cards/{card}/apdu");
            let call = c.call(Method::POST, &path, Some(&body), Duration::from_secs(60));
            match interruptible(&mut interrupt, call).await {
                Some(r) => r?,
                None => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
            }
        }
        Via::Pool(p) => {
            let deadline = Duration::from_millis(a.pool.reply_timeout_ms * 5);
            let mode = ops::ApduMode {
                keep: a.keep,
                auto: a.auto,
                allow_last_try: a.allow_last_try,
            };
            let run = ops::apdu_with(
                &p.cards,
                card,
                Holder::Command("apdu"),
                &cmds,
                mode,
                deadline,
            );
            let r = interruptible(&mut interrupt, run).await;
            p.finish().await;
            match r {
                Some(r) => r.map_err(|e| CliError::Card(e.to_string()))?,
                None => {
                    eprintln!(
                        "simpool: interrupted{}",
                        if a.keep { "" } else { "; card stopped" }
                    );
                    return Ok(ExitCode::from(EXIT_INTERRUPTED));
                }
            }
        }
    };
    if a.json {
        out_json(&reply)?;
    } else {
        eprintln!("ATR {}", reply.atr);
        for (i, r) in reply.responses.iter().enumerate() {
            if reply.errors.get(i).is_none_or(Option::is_none) {
                out(spaced(r))?;
            }
        }
    }
    if let Some((i, e)) = reply
        .errors
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    {
        return Err(CliError::Card(format!(
            "card {card}: {} failed: {e}",
            hex::encode_upper(&cmds[i])
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// A response as the text output shows it: the data, a space, the status word (`9000`
/// alone when there is no data).
fn spaced(r: &[u8]) -> String {
    match r.len() {
        0..=2 => hex::encode_upper(r),
        n => format!(
            "{} {}",
            hex::encode_upper(&r[..n - 2]),
            hex::encode_upper(&r[n - 2..])
        ),
    }
}

/// The commands of a file: one per line (spaces and colons allowed inside), `#` to the end of
/// the line a comment, blank lines ignored. A bad line is named by its number.
fn commands_of_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut cmds = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut c = ops::parse_commands(&[line])
            .map_err(|e| CliError::Usage(format!("{}:{}: {e}", path.display(), i + 1)))?;
        cmds.append(&mut c);
    }
    Ok(cmds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_show_a_gap_before_the_status_word() {
        assert_eq!(spaced(&[0x90, 0x00]), "9000");
        assert_eq!(spaced(&[0x01, 0x02, 0x90, 0x00]), "0102 9000");
        assert_eq!(spaced(&[]), "");
    }

    #[test]
    fn a_command_file_has_one_command_per_line_and_comments() {
        let dir = std::env::temp_dir().join(format!("simpool-apdu-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cmds");
        std::fs::write(
            &f,
            "# select EF.IMSI\nA0A40000023F00\n\n  A0 A4 00 00 02 7F20   # DF.GSM\nA0:A4:00:00:02:6F07\n",
        )
        .unwrap();
        let cmds = commands_of_file(&f).unwrap();
        assert_eq!(
            cmds.iter().map(hex::encode_upper).collect::<Vec<_>>(),
            ["A0A40000023F00", "A0A40000027F20", "A0A40000026F07"]
        );
        std::fs::write(&f, "A0A40000023F00\nA0A4zz\n").unwrap();
        let e = commands_of_file(&f).unwrap_err().to_string();
        assert!(e.contains("cmds:2:"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
