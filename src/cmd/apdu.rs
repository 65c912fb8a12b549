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
    /// Print JSON instead of one response per line: {"card","atr","responses","errors"}.
    #[arg(long)]
    json: bool,
    /// Commands in hex (spaces and colons allowed inside one argument).
    #[arg(required = true)]
    commands: Vec<String>,
    #[command(flatten)]
    pool: PoolArgs,
}

pub async fn run(a: ApduArgs) -> Result<ExitCode, CliError> {
    let card = a.card;
    let usage = |e: ops::BadCommand| CliError::Usage(e.to_string());
    let cmds = ops::parse_commands(&a.commands).map_err(usage)?;
    ops::refuse_unsendable(&cmds).map_err(usage)?;
    let mut interrupt = Interrupt::new();
    let reply: ApduReply = match a.pool.via().await? {
        Via::Daemon(c) => {
            // The daemon runs the commands under a lease of this request; an interrupted
            // request ends the lease and the daemon stops the card (unless --keep).
            let body = ApduRequest {
                tpdus: cmds.iter().map(hex::encode_upper).collect(),
                keep: a.keep,
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
            let run = ops::apdu(
                &p.cards,
                card,
                Holder::Command("apdu"),
                &cmds,
                a.keep,
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
                out(r)?;
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
