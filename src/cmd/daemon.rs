//! `simpool readers`, `bind`, `unbind`: the running daemon's readers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::bridge::{Binding, Presence};
use simpool::rows::ReaderRow;
use simpool::values::{check_iccid, check_imsi, CardNo};

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
    out(format!(
        "{:>6}  {:<20} {:<16} {:<8} {:<28} {:<20} IMSI",
        "reader", "PC/SC name", "vpcd", "state", "binding", "ICCID"
    ))?;
    for r in &rows {
        print_reader(r)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn binding_text(r: &ReaderRow) -> String {
    match (&r.binding, r.card) {
        (None, _) => "-".into(),
        (Some(b @ Binding::Card(_)), _) | (Some(b), None) => b.to_string(),
        (Some(b), Some(n)) => format!("{b} (card {n})"),
    }
}

fn state_word(p: Presence) -> &'static str {
    match p {
        Presence::Present => "present",
        Presence::Absent => "absent",
        Presence::Waiting => "waiting",
    }
}

fn print_reader(r: &ReaderRow) -> Result<(), CliError> {
    out(format!(
        "{:>6}  {:<20} {:<16} {:<8} {:<28} {:<20} {}",
        r.reader,
        r.name,
        r.vpcd,
        state_word(r.state),
        binding_text(r),
        cell(r.iccid.as_ref()),
        cell(r.imsi.as_ref()),
    ))?;
    if let Some(d) = &r.detail {
        out(format!("{:>6}  ({d})", ""))?;
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
    let binding = match (target.card, target.iccid, target.imsi) {
        (Some(n), _, _) => Binding::Card(n),
        (_, Some(s), _) => Binding::Iccid(s),
        (_, _, Some(s)) => Binding::Imsi(s),
        _ => return Err(CliError::Usage("give --card, --iccid or --imsi".into())),
    };
    let c = control.client()?;
    let row: ReaderRow = c
        .call(
            Method::PUT,
            &format!("/api/v1/readers/{reader}"),
            Some(&binding),
            CALL_TIMEOUT,
        )
        .await?;
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

fn show(r: &ReaderRow, json_out: bool) -> Result<(), CliError> {
    if json_out {
        out_json(r)
    } else {
        print_reader(r)
    }
}
