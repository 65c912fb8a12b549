//! The control API's history and labels (issue 19 §4, §5):
//!
//! - `GET /api/v1/history?card=&iccid=&user=&since=&limit=` — [`HistoryReply`]: the leases and
//!   the card events that match, newest first (`since`: `2h`, `7d`, `2026-12-01T10:00:00Z`);
//! - `GET /api/v1/cards/{n}/labels` — the card's labels, `{"KEY": "VALUE", …}`;
//! - `PUT /api/v1/cards/{n}/labels` — [`LabelsRequest`]; answers the labels after it.
//!
//! A daemon without a history answers 409 saying so (labels are kept in the history).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;

use crate::cards::LabelsError;
use crate::daemon::Daemon;
use crate::history::{HistoryError, Label, Labels, Query};
use crate::rows::{HistoryReply, LabelsRequest};

use super::api::{card_number, parse_json, read_body, ApiError};

const NO_HISTORY: &str =
    "this daemon keeps no history (serve --history FILE, or `history` in its configuration)";

/// `%XX` and `+` of a URL query.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

/// A history query from a URL's query string; empty values count as absent.
pub fn parse_query(q: Option<&str>) -> Result<Query, String> {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        if v.is_empty() {
            continue;
        }
        let number = |what: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{what} {v:?}: want a number"))
        };
        match k.as_str() {
            "card" => {
                out.card = Some(
                    u16::try_from(number("card", &v)?)
                        .map_err(|_| format!("card {v}: cards are 1-256"))?,
                )
            }
            "iccid" => out.iccid = Some(v),
            "user" => out.user = Some(v),
            "since" => out.since = Some(v.parse().map_err(|e| format!("since: {e}"))?),
            "limit" => out.limit = Some(number("limit", &v)?),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: say card, iccid, user, since or limit"
                ))
            }
        }
    }
    out.check().map_err(|e| e.to_string())?;
    Ok(out)
}

fn history_error(e: HistoryError) -> ApiError {
    match e {
        e @ (HistoryError::Query(_) | HistoryError::NoSuchCard(_)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)
        }
        e => {
            log::warn!("{e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

pub async fn history(
    State(d): State<Arc<Daemon>>,
    req: Request,
) -> Result<Json<HistoryReply>, ApiError> {
    let q =
        parse_query(req.uri().query()).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let h = d
        .cards
        .history()
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, NO_HISTORY))?;
    // What was recorded before the request is in the answer.
    h.flush().await;
    let leases = h.leases(q.clone()).await.map_err(history_error)?;
    let events = h.events(q).await.map_err(history_error)?;
    Ok(Json(HistoryReply { leases, events }))
}

fn labels_error(e: LabelsError) -> ApiError {
    match e {
        e @ LabelsError::NoHistory => ApiError::new(StatusCode::CONFLICT, e),
        e @ LabelsError::Label(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e),
        LabelsError::History(e) => history_error(e),
    }
}

pub async fn get_labels(
    State(d): State<Arc<Daemon>>,
    Path(n): Path<String>,
) -> Result<Json<Labels>, ApiError> {
    let n = card_number(&n)?;
    d.cards.labels_checked(n).map(Json).map_err(labels_error)
}

const LABELS_SHAPE: &str =
    "{\"set\":{\"KEY\":\"VALUE\",…},\"remove\":[\"KEY\",…],\"replace\":false}";

pub async fn put_labels(
    State(d): State<Arc<Daemon>>,
    Path(n): Path<String>,
    req: Request,
) -> Result<Json<Labels>, ApiError> {
    let n = card_number(&n)?;
    let body: LabelsRequest = parse_json(&read_body(req).await?, LABELS_SHAPE)?;
    let set = body
        .set
        .into_iter()
        .map(|(k, v)| Label::new(k, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let labels = d
        .cards
        .change_labels(n, set, body.remove, body.replace)
        .await
        .map_err(labels_error)?;
    log::info!("card {n}: labels now {labels:?}");
    Ok(Json(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Since;
    use std::time::Duration;

    #[test]
    fn query_strings() {
        let q = parse_query(Some("card=18&user=al%20ice&since=2h&limit=5&iccid=")).unwrap();
        assert_eq!(q.card, Some(18));
        assert_eq!(q.user.as_deref(), Some("al ice"));
        assert_eq!(q.since, Some(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.iccid, None);
        let t = parse_query(Some("since=2026-12-01T10:00:00%2B02:00")).unwrap();
        assert!(matches!(t.since, Some(Since::At(_))));
        assert_eq!(parse_query(None).unwrap(), Query::default());
        for bad in [
            "card=0",
            "card=x",
            "card=70000",
            "limit=0",
            "since=soon",
            "cards=1",
            "user=%zz",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
