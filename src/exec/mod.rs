//! `simpool exec`: one unmodified PC/SC program per card, across many cards, on the running
//! daemon's free readers.
//!
//! - [`schedule`]: which card runs on which reader, the counts and the verdict (sans-IO);
//! - [`hold`]: how a run holds its card and reader: a reservation of exec's user, renewed
//!   while exec lives, with the run's reader bound to the card;
//! - [`presence`]: pcscd's view, through the `pcsc` crate;
//! - [`program`]: one run of the program (placeholders, its process group, output, timeout);
//! - [`guard`]: the process that kills the runs of an exec killed before it could.
//!
//! [`exec`] ties them together: tokio only spawns runs and waits for them.

pub mod guard;
pub mod hold;
pub mod presence;
pub mod program;
pub mod schedule;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bridge::{Binding, ReaderRow};
use crate::control::client::ControlClientError;
use crate::rows::{CardRow, ExecRow};
use crate::selection::{Candidate, Selection};
use crate::values::CardNo;

use guard::Guard;
use hold::{Hold, HoldError};
use presence::NotShown;
use schedule::{JobId, Progress, Schedule, SlotId, Verdict};

/// How long pcscd may take to show a card the daemon shows (a poll or two of vpcd).
pub const PCSC_SHOW: Duration = Duration::from_secs(5);
/// How often the progress line is refreshed.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// `12 s`, `1.5 s`.
pub fn secs_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many runs at once (default: every free reader).
    pub parallel: Option<usize>,
    /// Per run.
    pub timeout: Option<Duration>,
    /// Where `card-018.out` and `card-018.err` go.
    pub output_dir: Option<PathBuf>,
    /// PROGRAM and ARGS, placeholders unexpanded.
    pub program: Vec<String>,
}

/// A reader exec may use.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The daemon's index (`simpool readers`).
    pub daemon: u16,
    /// Its index in pcscd's list (`{reader}`).
    pub pcsc: usize,
    pub name: String,
}

/// What the driver tells its caller as it goes.
pub enum Event<'a> {
    /// The counts, refreshed every [`PROGRESS_EVERY`] and at each end.
    Progress(Progress, Duration),
    /// A run ended (also a card that could not run).
    Finished(&'a ExecRow),
}

/// Why exec could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Control(#[from] ControlClientError),
    #[error("PC/SC: {0} (is pcscd running with the daemon's vpcd readers? for a private one set PCSCLITE_CSOCK_NAME)")]
    Pcsc(String),
    #[error("{0}")]
    NoReader(String),
    #[error("{0}")]
    OutputDir(String),
}

/// The end of an exec.
#[derive(Debug)]
pub struct Outcome {
    /// One per card of the selection, sorted by card.
    pub rows: Vec<ExecRow>,
    pub verdict: Verdict,
    /// Readers whose reservation could not be ended (it expires by itself), and why.
    pub unrestored: Vec<(u16, String)>,
    pub elapsed: Duration,
}

/// The readers exec may use: the daemon's free ones that pcscd lists, with pcscd's index.
/// Answers them, or why there is none.
pub fn slots(readers: &[ReaderRow], pcsc: &[String]) -> Result<Vec<Slot>, ExecError> {
    let free = Hold::free(readers);
    let slots: Vec<Slot> = free
        .iter()
        .filter_map(|r| {
            let pcsc = pcsc.iter().position(|n| *n == r.name)?;
            Some(Slot {
                daemon: r.reader,
                pcsc,
                name: r.name.clone(),
            })
        })
        .collect();
    for r in &free {
        if !slots.iter().any(|s| s.daemon == r.reader) {
            log::warn!(
                "reader {} ({}) is free but pcscd does not list it: not used",
                r.reader,
                r.name
            );
        }
    }
    if !slots.is_empty() {
        return Ok(slots);
    }
    let why = if readers.is_empty() {
        "the daemon has no readers (serve --readers N)".to_string()
    } else if free.is_empty() {
        let bound: Vec<String> = readers
            .iter()
            .map(|r| {
                format!(
                    "reader {} to {}",
                    r.reader,
                    r.binding.as_ref().map_or("-".into(), |b| b.to_string())
                )
            })
            .collect();
        format!(
            "every reader of the daemon is bound ({}): unbind one, or serve more readers",
            bound.join(", ")
        )
    } else {
        format!(
            "pcscd lists none of the daemon's free readers ({}); it lists {:?}",
            free.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            pcsc
        )
    };
    Err(ExecError::NoReader(format!("no free reader: {why}")))
}

/// What an exec is to do: the cards to run on, and the selected cards that cannot run (held
/// by someone, an empty slot named, an identity no inserted card has), each with why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub run: Vec<Binding>,
    pub refused: Vec<ExecRow>,
}

/// The plan for `sel` over the daemon's card rows. A card named (by number, ICCID, IMSI, EID)
/// that someone holds is refused, naming the holder; `--all` means the free ones, so there a
/// held card is simply not selected, nor one simpool marked bad.
pub fn plan(sel: &Selection, cards: &[CardRow]) -> Plan {
    let r = sel.resolve(cards.iter().map(Candidate::from));
    let bad = |n: CardNo| cards.iter().any(|c| c.card == n && c.bad.is_some());
    let mut p = Plan::default();
    for n in r.free {
        if sel.all && bad(n) {
            log::info!("card {n} is marked bad: not selected by --all");
            continue;
        }
        p.run.push(Binding::Card(n));
    }
    if !sel.all {
        for (n, holder) in r.held {
            p.refused.push(not_run(
                &Binding::Card(n),
                format!("card {n} is held by {holder}"),
            ));
        }
    }
    for n in r.missing {
        p.refused
            .push(not_run(&Binding::Card(n), format!("no card in slot {n}")));
    }
    // An ICCID or IMSI asked for that no inserted card is known to have.
    let known = |f: &dyn Fn(&CardRow) -> Option<&str>, want: &str| {
        cards
            .iter()
            .any(|c| c.state.is_some_and(|s| s.has_card()) && f(c) == Some(want))
    };
    for i in &sel.iccids {
        if !known(&|c| c.iccid.as_deref(), i) {
            p.refused.push(not_run(
                &Binding::Iccid(i.clone()),
                format!("no inserted card is known to have ICCID {i}"),
            ));
        }
    }
    for i in &sel.imsis {
        if !known(&|c| c.imsi.as_deref(), i) {
            p.refused.push(not_run(
                &Binding::Imsi(i.clone()),
                format!("no inserted card is known to have IMSI {i}"),
            ));
        }
    }
    p
}

/// Whether `sel` asks for an ICCID or IMSI the daemon does not know of any card yet (then a
/// scan reads the free cards first).
pub fn needs_scan(sel: &Selection, cards: &[CardRow]) -> bool {
    let unknown = |want: &[String], f: &dyn Fn(&CardRow) -> Option<&str>| {
        want.iter()
            .any(|w| !cards.iter().any(|c| f(c) == Some(w.as_str())))
    };
    unknown(&sel.iccids, &|c| c.iccid.as_deref()) || unknown(&sel.imsis, &|c| c.imsi.as_deref())
}

/// A row for a card whose program did not run.
fn not_run(target: &Binding, error: String) -> ExecRow {
    let (card, iccid, imsi) = match target {
        Binding::Card(n) => (Some(*n), None, None),
        Binding::Iccid(s) => (None, Some(s.clone()), None),
        Binding::Imsi(s) => (None, None, Some(s.clone())),
        Binding::Eid(_) => (None, None, None),
    };
    ExecRow {
        card,
        iccid,
        imsi,
        reader: None,
        reader_name: None,
        exit: None,
        seconds: None,
        stdout: String::new(),
        stderr: String::new(),
        error: Some(error),
    }
}

/// How one run ended.
enum RunEnd {
    Ran(Box<ExecRow>),
    /// The reader could not be used: the card goes back to the queue.
    ReaderFault(String),
}

/// One card on one reader: hold, wait for pcscd to show it, run the program.
async fn run_one(
    hold: Arc<Hold>,
    slot: Slot,
    target: Binding,
    opts: Arc<Options>,
    cancel: watch::Receiver<bool>,
    guard: Option<Arc<Guard>>,
) -> RunEnd {
    if *cancel.borrow() {
        return RunEnd::Ran(Box::new(not_run(&target, "interrupted".into())));
    }
    let row = match hold.take(slot.daemon, &target).await {
        Ok(r) => r,
        Err(HoldError::Reader(e)) => return RunEnd::ReaderFault(e),
        Err(HoldError::Card(e)) => {
            let mut r = not_run(&target, e);
            r.reader = Some(slot.pcsc);
            r.reader_name = Some(slot.name.clone());
            return RunEnd::Ran(Box::new(r));
        }
    };
    let Some(card) = row.card else {
        give_back(&hold, &slot).await;
        let mut r = not_run(
            &target,
            format!("reader {} shows no card number", slot.daemon),
        );
        r.reader = Some(slot.pcsc);
        return RunEnd::Ran(Box::new(r));
    };
    let mut out = ExecRow {
        card: Some(card),
        iccid: row.iccid.clone(),
        imsi: row.imsi.clone(),
        reader: Some(slot.pcsc),
        reader_name: Some(slot.name.clone()),
        exit: None,
        seconds: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
    };
    let want = presence::Expect {
        atr: row.atr.as_ref().map(|a| a.as_bytes().to_vec()),
        iccid: row.iccid.clone(),
    };
    let (name, c) = (slot.name.clone(), cancel.clone());
    let shown =
        tokio::task::spawn_blocking(move || presence::wait_present(&name, &want, PCSC_SHOW, &c))
            .await
            .unwrap_or_else(|e| Err(NotShown::Reader(format!("waiting for pcscd: {e}"))));
    match shown {
        Ok(()) => {}
        Err(NotShown::Cancelled) => {
            out.error = Some("interrupted".into());
            return RunEnd::Ran(Box::new(out));
        }
        Err(NotShown::Reader(e)) => {
            // Not used again: its card goes back to the pool for another reader.
            give_back(&hold, &slot).await;
            return RunEnd::ReaderFault(format!("card {card} on reader {}: {e}", slot.daemon));
        }
    }
    let vars = program::Vars {
        reader: slot.pcsc,
        reader_name: slot.name.clone(),
        card,
        iccid: row.iccid,
        imsi: row.imsi,
    };
    let files = opts
        .output_dir
        .as_deref()
        .map(|d| program::output_files(d, card));
    let ran = program::run(
        &opts.program,
        &vars,
        opts.timeout,
        files,
        cancel,
        guard.as_deref(),
    )
    .await;
    out.exit = ran.exit;
    out.seconds = Some((ran.seconds * 1000.0).round() / 1000.0);
    out.stdout = ran.stdout;
    out.stderr = ran.stderr;
    out.error = ran.error;
    // The reader and the card are free for the next run (the card stopped).
    give_back(&hold, &slot).await;
    RunEnd::Ran(Box::new(out))
}

/// Ends the reservation of the run on `slot`.
async fn give_back(hold: &Hold, slot: &Slot) {
    if let Err(why) = hold.give_back(slot.daemon).await {
        log::warn!("reader {}: {why}", slot.daemon);
    }
}

/// Whether a row counts as a success.
pub fn row_ok(r: &ExecRow) -> bool {
    r.exit == Some(0) && r.error.is_none()
}

/// Runs the program once per target on the daemon's free readers, until every target ran or
/// `interrupt` resolves (then the runs are killed). Every reservation exec took is ended,
/// whichever way it ends: its reader is free again, its card stopped and free.
pub async fn exec(
    hold: Hold,
    plan: Plan,
    opts: Options,
    guard: Option<Guard>,
    interrupt: impl Future<Output = ()>,
    mut on: impl FnMut(Event<'_>),
) -> Result<Outcome, ExecError> {
    let started = Instant::now();
    let Plan {
        run: targets,
        refused,
    } = plan;
    for r in &refused {
        on(Event::Finished(r));
    }
    if targets.is_empty() {
        return Ok(Outcome {
            verdict: if refused.is_empty() {
                Verdict::AllOk
            } else {
                Verdict::SomeFailed
            },
            rows: refused,
            unrestored: Vec::new(),
            elapsed: started.elapsed(),
        });
    }
    if let Some(d) = &opts.output_dir {
        std::fs::create_dir_all(d)
            .map_err(|e| ExecError::OutputDir(format!("{}: {e}", d.display())))?;
    }
    let readers = hold.readers().await?;
    let pcsc = tokio::task::spawn_blocking(presence::readers)
        .await
        .map_err(|e| ExecError::Pcsc(e.to_string()))?
        .map_err(ExecError::Pcsc)?;
    let slots = slots(&readers, &pcsc)?;
    let parallel = opts.parallel.unwrap_or(slots.len()).min(slots.len());
    log::info!(
        "{} cards on readers {} ({} at once)",
        targets.len(),
        slots
            .iter()
            .map(|s| s.daemon.to_string())
            .collect::<Vec<_>>()
            .join(","),
        parallel
    );
    let guard = guard.map(Arc::new);
    let hold = Arc::new(hold);
    // Keeps the reservations going while exec lives; a killed exec's run out.
    let renewer = tokio::spawn({
        let hold = hold.clone();
        async move {
            let mut every = tokio::time::interval(hold::RENEW_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                hold.renew().await;
            }
        }
    });
    let opts = Arc::new(opts);
    let mut sched = Schedule::new(targets.len(), slots.len(), parallel);
    let mut rows: Vec<Option<ExecRow>> = vec![None; targets.len()];
    let (cancel_tx, cancel) = watch::channel(false);
    let mut set = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, JobId> = HashMap::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tokio::pin!(interrupt);
    loop {
        for (job, SlotId(s)) in sched.next_all() {
            let h = set.spawn(run_one(
                hold.clone(),
                slots[s].clone(),
                targets[job.0].clone(),
                opts.clone(),
                cancel.clone(),
                guard.clone(),
            ));
            running.insert(h.id(), job);
        }
        if sched.is_over() {
            break;
        }
        tokio::select! {
            Some(done) = set.join_next_with_id() => {
                let (id, end) = match done {
                    Ok((id, end)) => (id, Ok(end)),
                    Err(e) => (e.id(), Err(e)),
                };
                let Some(job) = running.remove(&id) else { continue };
                let end = end.unwrap_or_else(|e| {
                    RunEnd::Ran(Box::new(not_run(&targets[job.0], format!("the run failed: {e}"))))
                });
                match end {
                    RunEnd::Ran(row) => {
                        sched.finished(job, row_ok(&row));
                        on(Event::Finished(&row));
                        rows[job.0] = Some(*row);
                    }
                    RunEnd::ReaderFault(e) => {
                        log::warn!("{e}: reader not used again");
                        for j in sched.reader_failed(job) {
                            let row = not_run(&targets[j.0], format!("no reader left to run it ({e})"));
                            on(Event::Finished(&row));
                            rows[j.0] = Some(row);
                        }
                    }
                }
                on(Event::Progress(sched.progress(), started.elapsed()));
            }
            () = &mut interrupt, if !sched.is_interrupted() => {
                for j in sched.interrupt() {
                    rows[j.0] = Some(not_run(&targets[j.0], "not run: interrupted".into()));
                }
                let _ = cancel_tx.send(true);
                on(Event::Progress(sched.progress(), started.elapsed()));
            }
            _ = tick.tick() => on(Event::Progress(sched.progress(), started.elapsed())),
        }
    }
    renewer.abort();
    let unrestored = hold.restore().await;
    if let Some(g) = &guard {
        g.done();
    }
    let mut rows: Vec<ExecRow> = rows
        .into_iter()
        .zip(&targets)
        .map(|(r, t)| r.unwrap_or_else(|| not_run(t, "not run".into())))
        .collect();
    let verdict = match sched.verdict() {
        Verdict::AllOk if !refused.is_empty() => Verdict::SomeFailed,
        v => v,
    };
    rows.extend(refused);
    rows.sort_by(|a, b| (a.card, &a.iccid, &a.imsi).cmp(&(b.card, &b.iccid, &b.imsi)));
    Ok(Outcome {
        rows,
        verdict,
        unrestored,
        elapsed: started.elapsed(),
    })
}

/// The summary table: card, ICCID, reader, exit, seconds, and why a run failed.
pub fn summary(rows: &[ExecRow]) -> Vec<String> {
    let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut lines = vec![format!(
        "{:>4}  {:<20}  {:>6}  {:>4}  {:>7}  note",
        "card", "ICCID", "reader", "exit", "seconds"
    )];
    for r in rows {
        let line = format!(
            "{:>4}  {:<20}  {:>6}  {:>4}  {:>7}  {}",
            cell(r.card.map(|c| c.to_string())),
            cell(r.iccid.clone()),
            cell(r.reader.map(|i| i.to_string())),
            cell(r.exit.map(|e| e.to_string())),
            cell(r.seconds.map(|s| format!("{s:.2}"))),
            r.error.as_deref().unwrap_or(""),
        );
        lines.push(line.trim_end().to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::{Presence, ReaderCounts};
    use crate::pool::SlotState;
    use crate::values::CardNo;

    fn reader(i: u16, binding: Option<Binding>) -> ReaderRow {
        ReaderRow {
            reader: i,
            name: crate::vpcd::reader_name(i),
            vpcd: format!("127.0.0.1:{}", 35963 + i),
            binding,
            card: None,
            state: Presence::Absent,
            detail: None,
            atr: None,
            iccid: None,
            imsi: None,
            stats: ReaderCounts::default(),
            user: None,
            reservation: None,
        }
    }

    fn card_row(n: u16, state: SlotState, holder: Option<&str>) -> CardRow {
        CardRow {
            card: CardNo::of(n),
            state: Some(state),
            holder: holder.map(String::from),
            atr: None,
            iccid: Some(format!("8949440000000000{n:03}1")),
            imsi: None,
            exchanges: 0,
            errors: 0,
            bad: None,
            refused: None,
            facts: Default::default(),
            labels: Default::default(),
        }
    }

    fn sel(args: &[&str]) -> Selection {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sel: crate::selection::SelectionArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().sel.selection().unwrap()
    }

    #[test]
    fn the_plan_runs_free_cards_and_refuses_the_others_saying_why() {
        let mut rows: Vec<CardRow> = (1..=6)
            .map(|n| card_row(n, SlotState::Inserted, None))
            .collect();
        rows[1].holder = Some("reader 0".into());
        rows[2].state = Some(SlotState::Empty);
        rows[3].bad = Some("no ATR".into());
        rows[4].state = Some(SlotState::Working);
        let p = plan(&sel(&["--card", "1-5"]), &rows);
        let run: Vec<Binding> = [1, 4, 5].map(|n| Binding::Card(CardNo::of(n))).into();
        assert_eq!(
            p.run, run,
            "a bad card named is tried (and fails, saying why)"
        );
        let why: Vec<(Option<CardNo>, &str)> = p
            .refused
            .iter()
            .map(|r| (r.card, r.error.as_deref().unwrap()))
            .collect();
        assert_eq!(
            why,
            [
                (Some(CardNo::of(2)), "card 2 is held by reader 0"),
                (Some(CardNo::of(3)), "no card in slot 3")
            ]
        );
        // --all: the free ones only; held, empty and bad cards are not selected.
        let p = plan(&sel(&["--all"]), &rows);
        let run: Vec<Binding> = [1, 5, 6].map(|n| Binding::Card(CardNo::of(n))).into();
        assert_eq!(p.run, run);
        assert!(p.refused.is_empty());
        // An ICCID nobody is known to have: refused, and a scan is due first.
        let s = sel(&[
            "--iccid",
            "89494400000000000061",
            "--iccid",
            "89494400000000000999",
        ]);
        assert!(needs_scan(&s, &rows));
        let p = plan(&s, &rows);
        assert_eq!(p.run, [Binding::Card(CardNo::of(6))]);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].iccid.as_deref(), Some("89494400000000000999"));
        assert!(!needs_scan(
            &sel(&["--iccid", "89494400000000000061"]),
            &rows
        ));
    }

    #[test]
    fn free_readers_that_pcscd_lists_with_pcscds_index() {
        let readers = [
            reader(0, Some(Binding::Card(CardNo::of(18)))),
            reader(1, None),
            reader(2, None),
            reader(3, None),
        ];
        // pcscd lists another reader first, and not the daemon's reader 3.
        let pcsc = [
            "Some USB Reader 00 00".to_string(),
            crate::vpcd::reader_name(0),
            crate::vpcd::reader_name(1),
            crate::vpcd::reader_name(2),
        ];
        let s = slots(&readers, &pcsc).unwrap();
        let got: Vec<(u16, usize)> = s.iter().map(|s| (s.daemon, s.pcsc)).collect();
        assert_eq!(got, [(1, 2), (2, 3)]);
    }

    #[test]
    fn no_free_reader_says_which_are_bound() {
        let readers = [
            reader(0, Some(Binding::Card(CardNo::of(18)))),
            reader(1, Some(Binding::Iccid("89860043191482190636".into()))),
        ];
        let e = slots(&readers, &[]).unwrap_err().to_string();
        assert!(e.contains("reader 0 to card 18"), "{e}");
        assert!(e.contains("reader 1 to ICCID 89860043191482190636"), "{e}");
        let e = slots(&[reader(0, None)], &["Other 00 00".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pcscd lists none"), "{e}");
        assert!(slots(&[], &[])
            .unwrap_err()
            .to_string()
            .contains("no readers"));
    }

    #[test]
    fn the_summary_has_a_row_per_card_with_why_it_failed() {
        let mut ok = not_run(&Binding::Card(CardNo::of(18)), String::new());
        ok.error = None;
        ok.iccid = Some("89860043191482190636".into());
        ok.reader = Some(2);
        ok.exit = Some(0);
        ok.seconds = Some(0.4123);
        let bad = not_run(
            &Binding::Card(CardNo::of(7)),
            "card 7 is held by reader 0".into(),
        );
        let lines = summary(&[bad, ok]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("card  ICCID"), "{lines:?}");
        assert_eq!(
            lines[1],
            "   7  -                          -     -        -  card 7 is held by reader 0"
        );
        assert_eq!(
            lines[2],
            "  18  89860043191482190636       2     0     0.41"
        );
    }

    #[test]
    fn seconds_read_well() {
        assert_eq!(secs_text(Duration::from_secs(5)), "5 s");
        assert_eq!(secs_text(Duration::from_millis(1500)), "1.5 s");
    }
}
