//! `simpool apdu`: start a card, run commands through the T=0 terminal, stop it again.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use serde_json::{json, Value};

use simpool::pool::{Card, Slot};

use super::{out, out_json, parse_hex, CliError, Interrupt, PoolArgs, Via, EXIT_INTERRUPTED};

#[derive(Args)]
pub struct ApduArgs {
    /// Card number, 1–256 as on the front panel.
    #[arg(long)]
    card: u16,
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

/// What the card answered.
struct Outcome {
    atr: String,
    responses: Vec<String>,
    /// One per response; the first error ends the run.
    errors: Vec<Value>,
}

pub async fn run(a: ApduArgs) -> Result<ExitCode, CliError> {
    let card = a.card;
    let slot = Slot::from_card(card)
        .ok_or_else(|| CliError::Usage(format!("card {card} does not exist: cards are 1-256")))?;
    let cmds = a
        .commands
        .iter()
        .map(|c| parse_hex(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut interrupt = Interrupt::new();
    let outcome = match a.pool.via().await? {
        Via::Daemon(c) => {
            // The daemon runs the commands under a lease of this request; an interrupted
            // request ends the lease and the daemon stops the card (unless --keep).
            let body = json!({
                "tpdus": cmds.iter().map(hex::encode_upper).collect::<Vec<_>>(),
                "keep": a.keep,
            });
            let path = format!("/api/v1/cards/{card}/apdu");
            let call = c.call(Method::POST, &path, Some(&body), Duration::from_secs(60));
            let v = tokio::select! {
                v = call => v?,
                _ = interrupt.recv() => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
            };
            Outcome {
                atr: super::cell(&v["atr"]),
                responses: strings(&v["responses"]),
                errors: v["errors"].as_array().cloned().unwrap_or_default(),
            }
        }
        Via::Pool(p) => {
            let handle = p.link.card(slot);
            let deadline = Duration::from_millis(a.pool.reply_timeout_ms * 5);
            let r = tokio::select! {
                r = exchange(&handle, &cmds, deadline) => Some(r),
                _ = interrupt.recv() => None,
            };
            if !a.keep {
                if let Err(e) = handle.stop().await {
                    log::warn!("card {card}: stop: {e}");
                }
                super::settle(&p.link).await;
            }
            match r {
                Some(r) => r?,
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
        out_json(&json!({
            "card": card,
            "atr": outcome.atr,
            "responses": outcome.responses,
            "errors": outcome.errors,
        }))?;
    } else {
        eprintln!("ATR {}", outcome.atr);
        for (i, r) in outcome.responses.iter().enumerate() {
            if outcome.errors.get(i).is_none_or(Value::is_null) {
                out(r)?;
            }
        }
    }
    if let Some((i, e)) = outcome
        .errors
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.as_str().map(|e| (i, e)))
    {
        return Err(CliError::Card(format!(
            "card {card}: {} failed: {e}",
            hex::encode_upper(&cmds[i])
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(super::cell)
        .collect()
}

/// Starts the card and runs the commands; the first failure ends the run.
async fn exchange(card: &Card, cmds: &[Vec<u8>], deadline: Duration) -> Result<Outcome, CliError> {
    let n = card.slot().card();
    let atr = card
        .start()
        .await
        .map_err(|e| CliError::Card(format!("card {n} did not start (empty or mute?): {e}")))?;
    let mut o = Outcome {
        atr: hex::encode_upper(&atr),
        responses: Vec::new(),
        errors: Vec::new(),
    };
    for cmd in cmds {
        match card.transmit(cmd, deadline).await {
            Ok(r) => {
                o.responses.push(hex::encode_upper(r));
                o.errors.push(Value::Null);
            }
            Err(e) => {
                o.responses.push(hex::encode_upper(e.status()));
                o.errors.push(json!(e.to_string()));
                break;
            }
        }
    }
    Ok(o)
}
