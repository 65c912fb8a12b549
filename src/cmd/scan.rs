//! `simpool scan`: number, state, ATR, ICCID and IMSI of every inserted card.
//!
//! Over a connection of its own the scan prints each card's row as soon as it is read (text
//! mode; JSON stays one document, printed at the end) and, on a terminal, progress on stderr.
//! Ctrl-C, SIGTERM or a closed output stop it: the cards it started that were idle before are
//! stopped again, and what was read so far is printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use simpool::inventory::{self, Identity, ReadError};
use simpool::pool::{Link, Slot, SlotState};

use super::{
    cell, out, out_json, CliError, Interrupt, PoolArgs, Via, EXIT_INTERRUPTED, EXIT_PARTIAL,
};

/// The keys of a scan row, always all present (`null` where unknown).
pub const ROW_KEYS: [&str; 7] = ["card", "state", "atr", "iccid", "imsi", "holder", "error"];

/// A row with exactly [`ROW_KEYS`], from whatever the daemon or the reader produced.
fn row(v: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for k in ROW_KEYS {
        m.insert(k.into(), v.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// Prints rows as they come (text) or collects them (JSON), with progress on a terminal.
struct View {
    json: bool,
    rows: Vec<Value>,
    total: usize,
    progress: bool,
}

impl View {
    fn new(json: bool) -> View {
        View {
            json,
            rows: Vec::new(),
            total: 0,
            progress: std::io::stderr().is_terminal(),
        }
    }

    fn start(&mut self, total: usize) -> Result<(), CliError> {
        self.total = total;
        if !self.json {
            out(format!(
                "{:>4}  {:<9} {:<20} {:<15}  ATR",
                "card", "state", "ICCID", "IMSI"
            ))?;
        }
        self.show_progress();
        Ok(())
    }

    fn show_progress(&self) {
        if self.progress && self.total > 0 {
            let _ = write!(
                std::io::stderr(),
                "\r{}/{} cards",
                self.rows.len(),
                self.total
            );
        }
    }

    fn clear_progress(&self) {
        if self.progress {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }

    fn add(&mut self, r: Value) -> Result<(), CliError> {
        let r = row(&r);
        if !self.json {
            self.clear_progress();
            out(text_row(&r))?;
        }
        self.rows.push(r);
        self.show_progress();
        Ok(())
    }

    /// The JSON document (sorted by card), or nothing more in text mode; the exit code.
    fn finish(mut self, interrupted: bool) -> Result<ExitCode, CliError> {
        self.clear_progress();
        self.rows.sort_by_key(|r| r["card"].as_u64());
        if self.json {
            out_json(&Value::Array(self.rows.clone()))?;
        }
        Ok(if interrupted {
            ExitCode::from(EXIT_INTERRUPTED)
        } else if self.rows.iter().any(|r| !r["error"].is_null()) {
            ExitCode::from(EXIT_PARTIAL)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn text_row(r: &Value) -> String {
    let state = cell(&r["state"]);
    if let Some(e) = r["error"].as_str() {
        return format!("{:>4}  {state:<9} error: {e}", cell(&r["card"]));
    }
    let held = match r["holder"].as_str() {
        Some(h) => format!("  (held by {h}; as last read)"),
        None => String::new(),
    };
    format!(
        "{:>4}  {state:<9} {:<20} {:<15}  {}{held}",
        cell(&r["card"]),
        cell(&r["iccid"]),
        cell(&r["imsi"]),
        cell(&r["atr"]),
    )
}

pub async fn run(pool: PoolArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let mut view = View::new(json_out);
    let mut interrupt = Interrupt::new();
    match pool.via().await? {
        Via::Daemon(c) => {
            // The daemon reads each card under a lease and stops it again itself; an
            // interrupted request changes nothing there, so there is nothing to clean up here.
            let call = c.call(Method::POST, "/api/v1/scan", None, Duration::from_secs(300));
            let v = tokio::select! {
                v = call => v?,
                _ = interrupt.recv() => {
                    eprintln!(
                        "simpool: interrupted; the daemon finishes the scan and stops the cards \
                         it started"
                    );
                    return Ok(ExitCode::from(EXIT_INTERRUPTED));
                }
            };
            let rows = v.as_array().cloned().unwrap_or_default();
            view.start(rows.len())?;
            for r in rows {
                view.add(r)?;
            }
            view.finish(false)
        }
        Via::Pool(p) => {
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            let interrupted = scan_own(&p.link, deadline, &mut view, &mut interrupt).await?;
            view.finish(interrupted)
        }
    }
}

/// Why a scan ended early.
enum Cut {
    Interrupted,
    Output(CliError),
}

/// Scans over this command's own connection; answers whether it was interrupted.
async fn scan_own(
    link: &Link,
    deadline: Duration,
    view: &mut View,
    interrupt: &mut Interrupt,
) -> Result<bool, CliError> {
    let states = link.states().await?;
    // Cards not yet read, with their state before the scan.
    let mut pending: BTreeMap<u16, SlotState> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.has_card())
        .map(|(i, s)| (i as u16 + 1, *s))
        .collect();
    view.start(pending.len())?;
    let mut tasks = JoinSet::new();
    for (&n, &state) in &pending {
        let card = link.card(Slot::from_card(n).expect("1..=256"));
        tasks.spawn(async move {
            let r = inventory::read_identity(&card, deadline).await;
            if state != SlotState::Working {
                let _ = card.stop().await;
            }
            (n, state, r)
        });
    }
    let mut cut = None;
    while !tasks.is_empty() {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok((n, state, r))) => {
                    pending.remove(&n);
                    if let Err(e) = view.add(report(n, state, r)) {
                        cut = Some(Cut::Output(e));
                        break;
                    }
                }
                Some(Err(e)) => log::error!("scan task failed: {e}"),
                None => break,
            },
            _ = interrupt.recv() => {
                cut = Some(Cut::Interrupted);
                break;
            }
        }
    }
    let Some(cut) = cut else {
        super::settle(link).await;
        return Ok(false);
    };
    // Abandon the reads still going on, then stop the cards they may have started.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let idle: Vec<u16> = pending
        .iter()
        .filter(|(_, s)| **s != SlotState::Working)
        .map(|(n, _)| *n)
        .collect();
    let mut stops = JoinSet::new();
    for &n in &idle {
        let card = link.card(Slot::from_card(n).expect("1..=256"));
        stops.spawn(async move { (n, card.stop().await) });
    }
    let mut failed = Vec::new();
    while let Some(r) = stops.join_next().await {
        if let Ok((n, Err(e))) = r {
            failed.push(format!("card {n}: {e}"));
        }
    }
    super::settle(link).await;
    view.clear_progress();
    if matches!(cut, Cut::Interrupted) {
        eprintln!(
            "simpool: interrupted: {} of {} cards read; stopped the {} it had started{}",
            view.rows.len(),
            view.total,
            idle.len() - failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" (could not stop {})", failed.join(", "))
            }
        );
    }
    match cut {
        Cut::Interrupted => Ok(true),
        Cut::Output(e) => Err(e),
    }
}

fn report(n: u16, state: SlotState, r: Result<Identity, ReadError>) -> Value {
    match r {
        Ok(id) => json!({
            "card": n,
            "state": state,
            "atr": hex::encode_upper(&id.atr),
            "iccid": id.iccid,
            "imsi": id.imsi,
        }),
        Err(e) => json!({ "card": n, "state": state, "error": e.to_string() }),
    }
}
