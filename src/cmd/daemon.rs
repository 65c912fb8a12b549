//! `simpool readers`, `bind`, `unbind`: the running daemon's readers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::bridge::{Binding, Presence};
use simpool::control::client::{Control, ControlClientError};
use simpool::history::Label;
use simpool::rows::{CardRow, ReaderRow};
use simpool::values::{check_eid, check_iccid, check_imsi, CardNo};

use super::{cell, out, out_json, CliError, ControlArgs};

/// A bind or unbind waits for the card to show (up to 5 s in the daemon) and a little more.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Card number 1-256 as on the front panel.
    #[arg(long)]
    pub card: Option<CardNo>,
    /// The card with this ICCID (wherever it is inserted).
    #[arg(long, value_parser = check_iccid)]
    pub iccid: Option<String>,
    /// The card with this IMSI.
    #[arg(long, value_parser = check_imsi)]
    pub imsi: Option<String>,
    /// A free inserted card with this label (repeatable: all of them); it is bound by its
    /// number. Labels are set with `simpool label`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<Label>,
    /// The eUICC with this EID (32 digits), whatever profile it has enabled.
    #[arg(long, value_parser = check_eid)]
    pub eid: Option<String>,
}

pub async fn readers(control: ControlArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let rows: Vec<ReaderRow> = c
        .call(Method::GET, "/api/v1/readers", None::<&()>, CALL_TIMEOUT)
        .await?;
    if json_out {
        out_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = super::terminal_width();
    header(width)?;
    for r in &rows {
        print_reader(r, width)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The table's columns: they fit 100 characters with vpcd's names and loopback addresses (a longer
/// row is cut on a terminal, with a marker). The binding is its kind; its value is in the
/// card, ICCID or IMSI column.
fn row_text(cols: [&str; 8]) -> String {
    let [reader, name, vpcd, state, bound, card, iccid, imsi] = cols;
    // "Virtual PCD 8 00 01" is the longest name pcsc-lite gives vpcd's 16 readers.
    format!(
        "{reader:>6}  {name:<19} {vpcd:<15} {state:<7} {bound:<5} {card:>4}  {iccid:<20} {imsi}"
    )
}

fn header(width: Option<usize>) -> Result<(), CliError> {
    let h = row_text([
        "reader",
        "PC/SC name",
        "vpcd",
        "state",
        "bound",
        "card",
        "ICCID",
        "IMSI",
    ]);
    out(super::fit(&h, width))
}

fn state_word(p: Presence) -> &'static str {
    match p {
        Presence::Present => "present",
        Presence::Absent => "absent",
        Presence::Waiting => "waiting",
    }
}

fn print_reader(r: &ReaderRow, width: Option<usize>) -> Result<(), CliError> {
    // The bound identity shows in its column also while no card has it.
    let (bound, card, iccid, imsi) = match &r.binding {
        None => ("-", r.card, r.iccid.clone(), r.imsi.clone()),
        Some(Binding::Card(n)) => ("card", r.card.or(Some(*n)), r.iccid.clone(), r.imsi.clone()),
        Some(Binding::Iccid(s)) => (
            "ICCID",
            r.card,
            r.iccid.clone().or(Some(s.clone())),
            r.imsi.clone(),
        ),
        Some(Binding::Imsi(s)) => (
            "IMSI",
            r.card,
            r.iccid.clone(),
            r.imsi.clone().or(Some(s.clone())),
        ),
        Some(Binding::Eid(_)) => ("EID", r.card, r.iccid.clone(), r.imsi.clone()),
    };
    let reader = r.reader.to_string();
    let state = state_word(r.state);
    let (card, iccid, imsi) = (cell(card), cell(iccid), cell(imsi));
    let line = row_text([
        &reader, &r.name, &r.vpcd, state, bound, &card, &iccid, &imsi,
    ]);
    out(super::fit(&line, width))?;
    if let Some(d) = &r.detail {
        // A note, not a column: wrapped to the terminal, or to 100 columns in a pipe.
        for l in super::wrap("        ", &format!("({d})"), Some(width.unwrap_or(100))) {
            out(l)?;
        }
    }
    match (&r.user, r.reservation) {
        (Some(u), Some(id)) => out(format!("{:>6}  (for {u}, reservation {id})", ""))?,
        (Some(u), None) => out(format!("{:>6}  (for {u})", ""))?,
        _ => {}
    }
    Ok(())
}

pub async fn bind(
    control: ControlArgs,
    reader: String,
    target: Target,
    json_out: bool,
) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let (binding, row) = match (target.card, target.iccid, target.imsi, target.eid) {
        (Some(n), _, _, _) => bind_to(&c, &reader, Binding::Card(n)).await?,
        (_, Some(s), _, _) => bind_to(&c, &reader, Binding::Iccid(s)).await?,
        (_, _, Some(s), _) => bind_to(&c, &reader, Binding::Imsi(s)).await?,
        (_, _, _, Some(s)) => bind_to(&c, &reader, Binding::Eid(s)).await?,
        _ if !target.label.is_empty() => bind_labelled(&c, &reader, &target.label).await?,
        _ => {
            return Err(CliError::Usage(
                "give --card, --iccid, --imsi, --eid or --label".into(),
            ))
        }
    };
    show(&row, json_out)?;
    if row.state != Presence::Present {
        // The binding stays: the reader shows the card once it can.
        return Err(CliError::Waiting(format!(
            "reader {}: bound to {binding}, waiting: {}",
            row.reader,
            row.detail
                .as_deref()
                .unwrap_or("the card does not show yet")
        )));
    }
    Ok(ExitCode::SUCCESS)
}

async fn bind_to(
    c: &Control,
    reader: &str,
    binding: Binding,
) -> Result<(Binding, ReaderRow), ControlClientError> {
    let row = c
        .call(
            Method::PUT,
            &format!("/api/v1/readers/{reader}"),
            Some(&binding),
            CALL_TIMEOUT,
        )
        .await?;
    Ok((binding, row))
}

/// Binds `reader` to the first free inserted card carrying every one of `labels`; a card taken
/// meanwhile (409) makes it try the next.
async fn bind_labelled(
    c: &Control,
    reader: &str,
    labels: &[Label],
) -> Result<(Binding, ReaderRow), CliError> {
    let cards: Vec<CardRow> = c
        .call(Method::GET, "/api/v1/cards", None::<&()>, CALL_TIMEOUT)
        .await?;
    let wanted = |r: &CardRow| {
        labels
            .iter()
            .all(|l| r.labels.get(l.key()).is_some_and(|v| v == l.value()))
    };
    let named: Vec<String> = labels.iter().map(Label::to_string).collect();
    let matching: Vec<&CardRow> = cards.iter().filter(|r| wanted(r)).collect();
    if matching.is_empty() {
        return Err(CliError::Card(format!(
            "no card has the labels {}",
            named.join(", ")
        )));
    }
    let mut busy = Vec::new();
    for r in &matching {
        let inserted = r.state.is_some_and(|s| s.has_card());
        if !inserted || r.holder.is_some() {
            busy.push(match &r.holder {
                Some(h) => format!("card {} held by {h}", r.card),
                None => format!("card {} not inserted", r.card),
            });
            continue;
        }
        match bind_to(c, reader, Binding::Card(r.card)).await {
            Ok(done) => return Ok(done),
            Err(ControlClientError::Refused {
                status: 409,
                message,
                ..
            }) => busy.push(message),
            Err(e) => return Err(e.into()),
        }
    }
    Err(CliError::Card(format!(
        "no free inserted card has the labels {}: {}",
        named.join(", "),
        busy.join("; ")
    )))
}

pub async fn unbind(
    control: ControlArgs,
    reader: String,
    json_out: bool,
) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let row: ReaderRow = c
        .call(
            Method::DELETE,
            &format!("/api/v1/readers/{reader}"),
            None::<&()>,
            CALL_TIMEOUT,
        )
        .await?;
    show(&row, json_out)?;
    Ok(ExitCode::SUCCESS)
}

/// A reader after a bind or unbind: as one row of `readers`, with its header.
fn show(r: &ReaderRow, json_out: bool) -> Result<(), CliError> {
    if json_out {
        out_json(r)
    } else {
        let width = super::terminal_width();
        header(width)?;
        print_reader(r, width)
    }
}
