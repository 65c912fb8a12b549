//! `simpool history`: what happened to the cards, from the running daemon's history database
//! (`GET /api/v1/history`): leases newest first, then the card events.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::history::{LeaseRow, Since, Timestamp};
use simpool::rows::HistoryReply;
use simpool::values::CardNo;

use super::{cell, out, out_json, CliError, ControlArgs};

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only this card (1-256).
    #[arg(long)]
    pub card: Option<CardNo>,
    /// Only the card with this ICCID (at the time).
    #[arg(long)]
    pub iccid: Option<String>,
    /// Only leases and events of this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only what happened since then: a duration back from now (90s, 15m, 2h, 7d, 1w) or a
    /// time (2026-12-01T10:00:00Z, 2026-12-01).
    #[arg(long, value_name = "DUR|TIME")]
    pub since: Option<Since>,
    /// At most this many leases and this many events (1-10000) [default: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print JSON: {"leases": [{"id","card","iccid","imsi","holder_kind","front_end","user",
    /// "reservation","note","start","end","why","exchanges","errors","authentications",
    /// "pin_failures"}, ...], "events": [{"id","card","time","kind","iccid","imsi","user",
    /// "lease","detail"}, ...]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `%`-escapes a query value.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(args: &HistoryArgs) -> String {
    let mut q = Vec::new();
    if let Some(c) = args.card {
        q.push(format!("card={c}"));
    }
    if let Some(i) = &args.iccid {
        q.push(format!("iccid={}", escape(i)));
    }
    if let Some(u) = &args.user {
        q.push(format!("user={}", escape(u)));
    }
    if let Some(s) = &args.since {
        q.push(format!("since={}", escape(&s.to_string())));
    }
    if let Some(l) = args.limit {
        q.push(format!("limit={l}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// `2026-12-02 06:41:13` (UTC, as the history keeps it, to the second).
fn when(t: Option<Timestamp>) -> String {
    match t {
        Some(t) => {
            let s = t.to_string();
            s.get(..19).unwrap_or(&s).replace('T', " ")
        }
        None => "-".into(),
    }
}

fn lease_line(l: &LeaseRow) -> String {
    let why = l.why.map_or("(held)", |w| w.word());
    let mut who = l.began.front_end.clone();
    if let Some(u) = &l.began.user {
        who.push_str(&format!(" ({u})"));
    }
    if let Some(r) = l.began.reservation {
        who.push_str(&format!(" reservation {r}"));
        if let Some(n) = &l.began.note {
            who.push_str(&format!(": {n}"));
        }
    }
    format!(
        "{:>6} {:>4}  {:<19}  {:<19}  {:<16} {:>7} {:>4} {:>4} {:>3}  {:<20} {who}",
        l.id,
        l.began.card,
        when(Some(l.began.start)),
        when(l.end),
        why,
        l.counters.exchanges,
        l.counters.errors,
        l.counters.authentications,
        l.counters.pin_failures,
        cell(l.began.iccid.as_ref()),
    )
}

pub async fn run(args: HistoryArgs) -> Result<ExitCode, CliError> {
    if let Some(l) = args.limit {
        if !(1..=simpool::history::MAX_LIMIT).contains(&l) {
            return Err(CliError::Usage(format!("--limit {l}: say 1-10000")));
        }
    }
    let c = args.control.client()?;
    let reply: HistoryReply = c
        .call(
            Method::GET,
            &format!("/api/v1/history{}", query(&args)),
            None::<&()>,
            CALL_TIMEOUT,
        )
        .await?;
    if args.json {
        out_json(&reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    out(format!(
        "{:>6} {:>4}  {:<19}  {:<19}  {:<16} {:>7} {:>4} {:>4} {:>3}  {:<20} holder",
        "lease", "card", "start (UTC)", "end", "why", "exch", "err", "auth", "pin", "ICCID"
    ))?;
    for l in &reply.leases {
        out(lease_line(l))?;
    }
    if !reply.events.is_empty() {
        out("")?;
        out(format!(
            "{:>6} {:>4}  {:<19}  {:<22} {:<20} detail",
            "event", "card", "time (UTC)", "what", "ICCID"
        ))?;
        for e in &reply.events {
            // During which lease, for whom: a refusal names whose command it was.
            let during = match (e.event.lease, e.event.user.as_deref()) {
                (Some(l), Some(u)) => format!(" (lease {l}, {u})"),
                (Some(l), None) => format!(" (lease {l})"),
                (None, Some(u)) => format!(" ({u})"),
                (None, None) => String::new(),
            };
            out(format!(
                "{:>6} {:>4}  {:<19}  {:<22} {:<20} {}{during}",
                e.id,
                e.event.card,
                when(Some(e.event.time)),
                e.event.kind.to_string(),
                cell(e.event.iccid.as_ref()),
                e.event.detail.as_deref().unwrap_or(""),
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_escape_their_values() {
        let args = HistoryArgs {
            card: Some(CardNo::of(18)),
            iccid: None,
            user: Some("a b&c".into()),
            since: Some("2026-12-01T10:00:00+02:00".parse().unwrap()),
            limit: Some(3),
            json: false,
            control: ControlArgs {
                control: Some("x".into()),
                instance: None,
                control_token: None,
                control_socket: None,
            },
        };
        assert_eq!(
            query(&args),
            "?card=18&user=a%20b%26c&since=2026-12-01T08:00:00.000Z&limit=3"
        );
    }
}
