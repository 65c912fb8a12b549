//! `simpool scan`: number, state, ATR, ICCID and IMSI of every inserted card.
//!
//! The scan is the card layer's ([`simpool::cards::ops::scan`]): the daemon runs it on its
//! cards, or this command on a pool connection of its own. Over its own connection each card's
//! row is printed as soon as it is read (text mode; JSON stays one document, printed at the
//! end) and, on a terminal, progress goes to stderr. Ctrl-C, SIGTERM or a closed output stop
//! it: the cards it started that were idle before are stopped again, and what was read so far
//! is printed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;

use simpool::cards::ops;
use simpool::rows::{ScanRequest, ScanRow};
use simpool::values::CardNo;

use super::{
    cell, fit, interruptible, out, out_json, wrap, CliError, Interrupt, OwnPool, PoolArgs, Via,
    EXIT_INTERRUPTED, EXIT_PARTIAL,
};

/// Prints rows as they come (text) or collects them (JSON), with progress on a terminal.
struct View {
    json: bool,
    rows: Vec<ScanRow>,
    total: usize,
    progress: bool,
    /// The terminal's width, when the rows go to one.
    width: Option<usize>,
}

impl View {
    fn new(json: bool) -> View {
        View {
            json,
            rows: Vec::new(),
            total: 0,
            progress: std::io::stderr().is_terminal(),
            width: super::terminal_width(),
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

    fn add(&mut self, r: ScanRow) -> Result<(), CliError> {
        let lines = (!self.json).then(|| text_rows(&r, self.width));
        self.rows.push(r);
        if let Some(lines) = lines {
            self.clear_progress();
            for l in lines {
                out(l)?;
            }
        }
        self.show_progress();
        Ok(())
    }

    /// The JSON document (sorted by card), or nothing more in text mode; the exit code.
    fn finish(mut self, interrupted: bool) -> Result<ExitCode, CliError> {
        self.clear_progress();
        self.rows.sort_by_key(|r| r.card);
        if self.json {
            out_json(&self.rows)?;
        }
        Ok(if interrupted {
            ExitCode::from(EXIT_INTERRUPTED)
        } else if self.rows.iter().any(|r| r.error.is_some()) {
            ExitCode::from(EXIT_PARTIAL)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// A card's lines: its row (cut on a terminal, with a marker, when longer than the terminal:
/// only a long ATR makes it pass 100 characters), then for a held card a note with its holder;
/// an error is wrapped on a terminal instead of cut.
fn text_rows(r: &ScanRow, width: Option<usize>) -> Vec<String> {
    let state = serde_json::to_value(r.state)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{:?}", r.state));
    if let Some(e) = &r.error {
        let mut lines = wrap("                ", &format!("error: {e}"), width);
        lines[0] = format!("{:>4}  {state:<9} {}", r.card, lines[0].trim_start());
        return lines;
    }
    let mut lines = vec![fit(
        &format!(
            "{:>4}  {state:<9} {:<20} {:<15}  {}{}",
            r.card,
            cell(r.iccid.as_ref()),
            match &r.imsi {
                None if r.facts.hides("imsi") => "hidden by PIN1".into(),
                imsi => cell(imsi.as_ref()),
            },
            cell(r.atr.as_ref()),
            super::label::suffix(&r.labels),
        ),
        width,
    )];
    if r.facts.kind.is_some() {
        for l in facts_lines(&r.facts) {
            lines.extend(wrap("      ", &l, Some(width.unwrap_or(100))));
        }
    }
    if let Some(h) = &r.holder {
        lines.extend(wrap(
            "      ",
            &format!("(held by {h}: as last read, not touched)"),
            width,
        ));
    }
    lines
}

/// What a card is, in at most two lines that fit 100 columns with a 6-column indent: type,
/// PIN1, PUK1 and what PIN1 hides (`usim  PIN1 enabled, not verified, 3 tries  PUK1 10 tries
/// hidden by PIN1: IMSI, MSISDN`), then SPN, MSISDN and EID when the card has any.
pub fn facts_lines(f: &simpool::rows::Facts) -> Vec<String> {
    let mut first = vec![f.kind.map_or("?", |k| k.name()).to_string()];
    let p = f.pin1;
    let tries = p.tries.map(|t| format!(", {t} tries")).unwrap_or_default();
    first.push(match (p.enabled, p.verified) {
        (Some(true), Some(true)) => format!("PIN1 enabled, verified{tries}"),
        (Some(true), _) if p.tries == Some(0) => "PIN1 blocked".into(),
        (Some(true), _) => format!("PIN1 enabled, not verified{tries}"),
        (Some(false), _) => format!("PIN1 disabled{tries}"),
        (None, _) => "PIN1 ?".into(),
    });
    if let Some(t) = f.puk1.tries {
        first.push(format!("PUK1 {t} tries"));
    }
    if !f.hidden.is_empty() {
        let names: Vec<String> = f.hidden.iter().map(|h| h.to_uppercase()).collect();
        first.push(format!("hidden by PIN1: {}", names.join(", ")));
    }
    let mut second = Vec::new();
    if let Some(s) = &f.spn {
        second.push(format!("SPN {s:?}"));
    }
    if let Some(m) = &f.msisdn {
        second.push(format!("MSISDN {m}"));
    }
    if let Some(e) = &f.eid {
        second.push(format!("EID {e}"));
    }
    let mut lines = vec![first.join("  ")];
    if !second.is_empty() {
        lines.push(second.join("  "));
    }
    lines
}

/// The cards of `--card LIST`.
fn card_list(list: &str) -> Result<Vec<CardNo>, CliError> {
    let set = simpool::gsmtap::CardFilter::parse(list)
        .map_err(|e| CliError::Usage(format!("--card {list}: {e}")))?;
    Ok(CardNo::all().filter(|n| set.contains(n.get())).collect())
}

pub async fn run(
    pool: PoolArgs,
    json_out: bool,
    card: Option<String>,
    free: bool,
) -> Result<ExitCode, CliError> {
    let scope = ops::ScanScope {
        cards: card.as_deref().map(card_list).transpose()?,
        free,
        // Over a pool connection of its own, nothing reads the details afterwards.
        details: true,
    };
    let mut view = View::new(json_out);
    let mut interrupt = Interrupt::new();
    match pool.via().await? {
        Via::Daemon(c) => {
            // The daemon reads each card under a lease and stops it again itself; an
            // interrupted request changes nothing there, so there is nothing to clean up here.
            let body = ScanRequest {
                cards: scope.cards,
                free: scope.free,
            };
            let call = c.call::<Vec<ScanRow>>(
                Method::POST,
                "/api/v1/scan",
                Some(&body),
                Duration::from_secs(300),
            );
            let Some(rows) = interruptible(&mut interrupt, call).await else {
                eprintln!(
                    "simpool: interrupted; the daemon finishes the scan and stops the cards it \
                     started"
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            };
            let rows = rows?;
            view.start(rows.len())?;
            for r in rows {
                view.add(r)?;
            }
            view.finish(false)
        }
        Via::Pool(p) => {
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            let interrupted = scan_own(&p, scope, deadline, &mut view, &mut interrupt).await?;
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
    p: &OwnPool,
    scope: ops::ScanScope,
    deadline: Duration,
    view: &mut View,
    interrupt: &mut Interrupt,
) -> Result<bool, CliError> {
    let mut scan = ops::scan_scoped(&p.cards, scope, deadline).await?;
    view.start(scan.total())?;
    let cut = loop {
        tokio::select! {
            row = scan.next() => match row {
                Some(r) => {
                    if let Err(e) = view.add(r) {
                        break Some(Cut::Output(e));
                    }
                }
                None => break None,
            },
            _ = interrupt.recv() => break Some(Cut::Interrupted),
        }
    };
    let Some(cut) = cut else {
        p.finish().await;
        return Ok(false);
    };
    // Abandon the reads still going on; the cards they started are stopped again.
    let cancelled = scan.cancel().await;
    p.finish().await;
    match cut {
        Cut::Output(e) => Err(e),
        Cut::Interrupted => {
            for r in cancelled.rows {
                // What was read meanwhile is printed too (the output may be gone: no matter).
                let _ = view.add(r);
            }
            view.clear_progress();
            eprintln!(
                "simpool: interrupted: {} of {} cards read; stopped the {} it had started{}",
                view.rows.len(),
                view.total,
                cancelled.stopped,
                if cancelled.failed.is_empty() {
                    String::new()
                } else {
                    format!(" (could not stop {})", cancelled.failed.join(", "))
                }
            );
            Ok(true)
        }
    }
}
