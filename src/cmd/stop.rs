//! `simpool stop`: power down a card, or every running card.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use simpool::control::client::ControlClientError;
use simpool::pool::{Link, Slot, SlotState};

use super::{cell, out, out_json, CliError, PoolArgs, Via, EXIT_PARTIAL};

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// Card number 1-256 as on the front panel.
    #[arg(long)]
    card: Option<u16>,
    /// Every running card nobody holds (with --force: held ones too).
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    which: Which,
    /// Through the daemon: also stop cards a reader or request holds (its session breaks;
    /// a reader shows the card removed and starts it again).
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text: [{"card","state","stopped","holder","error"}, ...].
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

pub async fn run(a: StopArgs) -> Result<ExitCode, CliError> {
    if let Some(n) = a.which.card {
        if Slot::from_card(n).is_none() {
            return Err(CliError::Usage(format!(
                "card {n} does not exist: cards are 1-256"
            )));
        }
    }
    let rows: Vec<Value> = match a.pool.via().await? {
        Via::Daemon(c) => {
            let body = json!({ "force": a.force });
            let t = Duration::from_secs(30);
            match a.which.card {
                Some(n) => {
                    let path = format!("/api/v1/cards/{n}/stop");
                    match c.call(Method::POST, &path, Some(&body), t).await {
                        Ok(v) => vec![v],
                        Err(ControlClientError::Refused {
                            status: 409,
                            message,
                            ..
                        }) => {
                            return Err(CliError::Card(format!(
                                "{message} (--force stops it anyway)"
                            )))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let v = c
                        .call(Method::POST, "/api/v1/stop-all", Some(&body), t)
                        .await?;
                    v.as_array().cloned().unwrap_or_default()
                }
            }
        }
        Via::Pool(p) => stop_own(&p.link, a.which.card).await?,
    };
    if a.json {
        out_json(&Value::Array(rows.clone()))?;
    } else if rows.is_empty() {
        out("no card running")?;
    } else {
        for r in &rows {
            let what = match (
                r["stopped"].as_bool(),
                r["holder"].as_str(),
                r["error"].as_str(),
            ) {
                (Some(true), _, _) => "stopped".to_string(),
                (_, Some(h), _) => format!("left running: held by {h} (--force stops it)"),
                (_, _, Some(e)) => format!("not stopped: {e}"),
                _ => "not stopped".to_string(),
            };
            out(format!("card {:>3}  {what}", cell(&r["card"])))?;
        }
    }
    // Held cards left alone are what `--all` without `--force` means, not failures.
    let failed = rows
        .iter()
        .filter(|r| r["stopped"] != true && (a.which.card.is_some() || r["holder"].is_null()))
        .count();
    Ok(match (failed, a.which.card) {
        (0, _) => ExitCode::SUCCESS,
        // One card asked for and not stopped: the command failed.
        (_, Some(n)) => {
            return Err(CliError::Card(format!(
                "card {n}: {}",
                rows.first()
                    .and_then(|r| r["error"].as_str())
                    .unwrap_or("not stopped")
            )))
        }
        _ => ExitCode::from(EXIT_PARTIAL),
    })
}

/// Over a connection of this command's own nobody else's holders are known: a card is simply
/// stopped (`--all`: every card the pool reports working).
async fn stop_own(link: &Link, card: Option<u16>) -> Result<Vec<Value>, CliError> {
    let states = link.states().await?;
    let targets: Vec<(u16, SlotState)> = match card {
        Some(n) => vec![(n, states[usize::from(n - 1)])],
        None => states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == SlotState::Working)
            .map(|(i, s)| (i as u16 + 1, *s))
            .collect(),
    };
    let mut set = JoinSet::new();
    for (n, state) in targets {
        let c = link.card(Slot::from_card(n).expect("checked 1..=256"));
        set.spawn(async move {
            let r = c.stop().await;
            json!({
                "card": n,
                "state": state,
                "stopped": r.is_ok(),
                "holder": null,
                "error": r.err().map(|e| e.to_string()),
            })
        });
    }
    let mut rows = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            rows.push(v);
        }
    }
    super::settle(link).await;
    rows.sort_by_key(|r| r["card"].as_u64());
    Ok(rows)
}
