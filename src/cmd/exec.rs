//! `simpool exec SELECTION [--parallel K] [--timeout DUR] [--output-dir DIR] [--json] --
//! PROGRAM [ARGS…]`: the program once per selected card, each on a free reader of the running
//! daemon (the work is [`simpool::exec`]; this file parses, chooses the cards and prints).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::control::client::Control;
use simpool::exec::guard::Guard;
use simpool::exec::hold::Hold;
use simpool::exec::schedule::Verdict;
use simpool::exec::{self, Event, Options};
use simpool::rows::{CardRow, ExecRow, ScanRow};
use simpool::selection::{Candidate, SelectionArgs};

use super::{out, out_json, CliError, ControlArgs, Interrupt, EXIT_INTERRUPTED, EXIT_PARTIAL};

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// At most K runs at once [default: every free reader of the daemon].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: Option<u16>,
    /// Longest run of the program per card (90s, 15m, 1h30m); then its whole process group is
    /// killed and the run counts as failed.
    #[arg(long, value_name = "DUR", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Write each run's output to DIR/card-018.out and DIR/card-018.err.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<std::path::PathBuf>,
    /// Print JSON instead of the outputs and the summary: [{"card","iccid","imsi","reader",
    /// "reader_name","exit","seconds","stdout","stderr","error"}, ...], sorted by card.
    #[arg(long)]
    pub json: bool,
    /// The program and its arguments, after `--`. {reader} (index in pcscd's reader list, for
    /// pySim -p), {reader_name}, {card}, {iccid} and {imsi} are replaced, and set in the
    /// environment as SIMPOOL_READER, SIMPOOL_READER_NAME, SIMPOOL_CARD, SIMPOOL_ICCID,
    /// SIMPOOL_IMSI.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// A scan of every free card through the daemon.
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);

async fn card_rows(control: &Control) -> Result<Vec<CardRow>, CliError> {
    Ok(control
        .call(
            Method::GET,
            "/api/v1/cards",
            None::<&()>,
            Duration::from_secs(15),
        )
        .await?)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = simpool::history::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("a timeout of 0 would kill every run at once".into());
    }
    Ok(d)
}

/// The progress line on a terminal's stderr.
struct Line {
    on: bool,
    shown: bool,
}

impl Line {
    fn show(&mut self, text: &str) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[K{text}");
            self.shown = true;
        }
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

/// A run's output as the terminal shows it (without --output-dir and --json).
fn block(r: &ExecRow) -> Result<(), CliError> {
    let what = match (r.exit, &r.error) {
        (_, Some(e)) => e.clone(),
        (Some(c), None) => format!("exit {c}"),
        (None, None) => "-".into(),
    };
    out(format!(
        "=== card {} ({}, reader {}): {what}",
        super::cell(r.card),
        r.iccid.as_deref().unwrap_or("ICCID unknown"),
        super::cell(r.reader),
    ))?;
    for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if text.is_empty() {
            continue;
        }
        if name == "stderr" {
            out("--- stderr")?;
        }
        out(text.strip_suffix('\n').unwrap_or(text))?;
    }
    Ok(())
}

pub async fn run(args: ExecArgs) -> Result<ExitCode, CliError> {
    // First: an interruption at any later point is seen (and the reservations ended).
    let mut interrupt = Interrupt::new();
    let control = args.control.client()?;
    let sel = args
        .selection
        .selection()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut cards = card_rows(&control).await?;
    if exec::needs_scan(&sel, &cards) {
        // An ICCID or IMSI of a card never read: the daemon's scan reads the free cards.
        let _: Vec<ScanRow> = control
            .call(Method::POST, "/api/v1/scan", None::<&()>, SCAN_TIMEOUT)
            .await?;
        cards = card_rows(&control).await?;
    }
    let plan = exec::plan(&sel, &cards);
    if plan.run.is_empty() && plan.refused.is_empty() {
        let why = sel.resolve(cards.iter().map(Candidate::from)).blocked_by();
        return Err(CliError::Card(format!("no card matches {sel}: {why}")));
    }
    let opts = Options {
        parallel: args.parallel.map(usize::from),
        timeout: args.timeout,
        output_dir: args.output_dir.clone(),
        program: args.program.clone(),
    };
    let mut line = Line {
        on: std::io::stderr().is_terminal(),
        shown: false,
    };
    let blocks = !args.json && args.output_dir.is_none();
    let mut write_failed: Option<CliError> = None;
    let guard = match std::env::current_exe() {
        Ok(me) => {
            let mut cmd = std::process::Command::new(me);
            cmd.arg("exec-guard");
            Guard::start(cmd).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let guard = guard
        .map_err(|e| {
            log::warn!("no exec guard ({e}): a killed exec would leave its programs running")
        })
        .ok();
    let outcome = exec::exec(
        Hold::new(control),
        plan,
        opts,
        guard,
        interrupt.recv(),
        |ev| match ev {
            Event::Progress(p, t) => line.show(&p.line(t)),
            Event::Finished(r) => {
                if blocks && write_failed.is_none() {
                    line.clear();
                    if let Err(e) = block(r) {
                        write_failed = Some(e);
                    }
                }
            }
        },
    )
    .await
    .map_err(|e| CliError::Failed(e.to_string()))?;
    line.clear();
    for (reader, why) in &outcome.unrestored {
        eprintln!(
            "simpool: warning: reader {reader}: {why} (it expires within {} s)",
            simpool::exec::hold::HOLD_FOR.as_secs() + 1
        );
    }
    if let Some(e) = write_failed {
        return Err(e);
    }
    if args.json {
        out_json(&outcome.rows)?;
    } else {
        for l in exec::summary(&outcome.rows) {
            out(l)?;
        }
        let failed = outcome.rows.iter().filter(|r| !exec::row_ok(r)).count();
        let mut tail = format!(
            "{} cards, {} failed, {}",
            outcome.rows.len(),
            failed,
            exec::secs_text(Duration::from_millis(
                outcome.elapsed.as_millis() as u64 / 100 * 100
            ))
        );
        if let Some(d) = &args.output_dir {
            tail.push_str(&format!("; outputs in {}", d.display()));
        }
        out(tail)?;
    }
    Ok(match outcome.verdict {
        Verdict::AllOk => ExitCode::SUCCESS,
        Verdict::SomeFailed => ExitCode::from(EXIT_PARTIAL),
        Verdict::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
    })
}
