//! `simpool stop`: power down a card, or every running card — the card layer's stop
//! ([`simpool::cards::ops::stop`]), run by the daemon or over a connection of this command's
//! own.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::cards::{ops, Holder};
use simpool::control::client::ControlClientError;
use simpool::rows::{StopRequest, StopRow};
use simpool::values::CardNo;

use super::{out, out_json, CliError, PoolArgs, Via, EXIT_PARTIAL};

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// Card number 1-256 as on the front panel.
    #[arg(long)]
    card: Option<CardNo>,
    /// Every running card nobody holds (with --force: held ones too).
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    which: Which,
    /// Print JSON instead of text: [{"card","state","stopped","holder","error"}, ...].
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

pub async fn run(a: StopArgs) -> Result<ExitCode, CliError> {
    let force = a.pool.force;
    let rows: Vec<StopRow> = match a.pool.via().await? {
        Via::Daemon(c) => {
            let body = StopRequest { force };
            let t = Duration::from_secs(30);
            match a.which.card {
                Some(n) => {
                    let path = format!("/api/v1/cards/{n}/stop");
                    match c.call(Method::POST, &path, Some(&body), t).await {
                        Ok(row) => vec![row],
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
                    c.call(Method::POST, "/api/v1/stop-all", Some(&body), t)
                        .await?
                }
            }
        }
        Via::Pool(p) => {
            let by = Holder::Command("stop");
            let rows = match a.which.card {
                Some(n) => {
                    let state = p.link().states().await?[n.index()];
                    vec![ops::stop(&p.cards, n, Some(state), force, &by).await]
                }
                None => ops::stop_all(&p.cards, force, &by).await?,
            };
            p.finish().await;
            rows
        }
    };
    if a.json {
        out_json(&rows)?;
    } else if rows.is_empty() {
        out("no card running")?;
    } else {
        for r in &rows {
            let what = match (r.stopped, &r.holder, &r.error) {
                (true, _, _) => "stopped".to_string(),
                (_, Some(h), _) => format!("left running: held by {h} (--force stops it)"),
                (_, _, Some(e)) => format!("not stopped: {e}"),
                _ => "not stopped".to_string(),
            };
            out(format!("card {:>3}  {what}", r.card))?;
        }
    }
    // Held cards left alone are what `--all` without `--force` means, not failures.
    let failed = rows
        .iter()
        .filter(|r| !r.stopped && (a.which.card.is_some() || r.holder.is_none()))
        .count();
    Ok(match (failed, a.which.card) {
        (0, _) => ExitCode::SUCCESS,
        // One card asked for and not stopped: the command failed.
        (_, Some(n)) => {
            return Err(CliError::Card(format!(
                "card {n}: {}",
                rows.first()
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or("not stopped")
            )))
        }
        _ => ExitCode::from(EXIT_PARTIAL),
    })
}
