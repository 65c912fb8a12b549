//! `simpool reserve`, `renew`, `release`, `reservations`: cards that belong to a user until a
//! time, through the running daemon (`/api/v1/reservations`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::bridge::Presence;
use simpool::history::parse_duration;
use simpool::reservations::ReservationId;
use simpool::rows::{ReaderRow, RenewRequest, ReservationRow, ReserveRequest};
use simpool::selection::SelectionArgs;

use super::{cell, out, out_json, CliError, ControlArgs};

/// The daemon answers within the wait, binding a reader takes up to 5 s more.
const SLACK: Duration = Duration::from_secs(15);

/// A duration as `--for` and `--wait` take it: 90s, 15m, 2h, 1d, 1h30m.
pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// How long the card is yours (90s, 15m, 2h, 1d; at most 7d) [default: 1h].
    #[arg(long = "for", value_name = "DUR", value_parser = duration)]
    pub for_: Option<Duration>,
    /// Wait up to this long for a matching card to be free (first come, first served)
    /// [default: answer at once].
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub wait: Option<Duration>,
    /// Also bind a free reader to the card (for PC/SC programs).
    #[arg(long)]
    pub reader: bool,
    /// What it is for, shown beside it.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Print JSON: {"id","card","iccid","imsi","reader","reader_name","user","note","since","expires"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn reserve(a: ReserveArgs) -> Result<ExitCode, CliError> {
    let selection = a
        .selection
        .selection()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let wait = a.wait.unwrap_or_default();
    let req = ReserveRequest {
        selection,
        for_s: a.for_.map(|d| d.as_secs()),
        wait_s: a.wait.map(|d| d.as_secs()),
        reader: a.reader,
        readers: None,
        note: a.note,
    };
    let c = a.control.client()?;
    let row: ReservationRow = c
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(&req),
            wait + SLACK,
        )
        .await?;
    if a.json {
        out_json(&row)?;
    } else {
        print_header()?;
        print_row(&row)?;
    }
    // With a reader: the card must show in it for a PC/SC program to use it.
    if let Some(i) = row.reader {
        let r: ReaderRow = c
            .call(
                Method::GET,
                &format!("/api/v1/readers/{i}"),
                None::<&()>,
                SLACK,
            )
            .await?;
        if r.state != Presence::Present {
            return Err(CliError::Waiting(format!(
                "reservation {}: card {} bound to reader {i}, waiting: {}",
                row.id,
                row.card,
                r.detail.as_deref().unwrap_or("the card does not show yet")
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_header() -> Result<(), CliError> {
    out(format!(
        "{:>5} {:>4}  {:<20} {:<6} {:<12} {:<24} note",
        "id", "card", "ICCID", "reader", "user", "expires"
    ))
}

fn print_row(r: &ReservationRow) -> Result<(), CliError> {
    out(format!(
        "{:>5} {:>4}  {:<20} {:<6} {:<12} {:<24} {}",
        r.id,
        r.card,
        cell(r.iccid.as_ref()),
        cell(r.reader),
        r.user,
        r.expires.to_string(),
        r.note.as_deref().unwrap_or("")
    ))
}

pub async fn renew(
    control: ControlArgs,
    id: ReservationId,
    for_: Duration,
    json: bool,
) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let row: ReservationRow = c
        .call(
            Method::POST,
            &format!("/api/v1/reservations/{id}/renew"),
            Some(&RenewRequest {
                for_s: for_.as_secs(),
            }),
            SLACK,
        )
        .await?;
    show(&row, json)
}

pub async fn release(
    control: ControlArgs,
    id: ReservationId,
    json: bool,
) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let row: ReservationRow = c
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{id}"),
            None::<&()>,
            SLACK,
        )
        .await?;
    if json {
        out_json(&row)?;
    } else {
        out(format!(
            "reservation {} of card {} released",
            row.id, row.card
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(control: ControlArgs, json: bool) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let rows: Vec<ReservationRow> = c
        .call(Method::GET, "/api/v1/reservations", None::<&()>, SLACK)
        .await?;
    if json {
        out_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_header()?;
    for r in &rows {
        print_row(r)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(row: &ReservationRow, json: bool) -> Result<ExitCode, CliError> {
    if json {
        out_json(row)?;
    } else {
        print_header()?;
        print_row(row)?;
    }
    Ok(ExitCode::SUCCESS)
}
