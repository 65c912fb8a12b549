//! `/api/v1/reservations`: take, list, renew and end reservations. The rules are the card
//! layer's ([`crate::reservations`]); the daemon moves readers ([`crate::daemon`]); this
//! translates to HTTP.
//!
//! - `POST /api/v1/reservations` — a selection (`card`, `iccid`, `imsi`, `label`, `eid`,
//!   `all`) and `for_s`, `wait_s`, `reader`, `note`, and `readers` (with `reader`: the
//!   daemon readers it may take, default any free one): 201 with the reservation; 409 naming
//!   who has the card (or what the readers are bound to); 408 when `wait_s` ran out; 404 when
//!   no inserted card matches
//! - `GET /api/v1/reservations`, `GET /api/v1/reservations/{id}`
//! - `DELETE /api/v1/reservations/{id}` — ends it (its user or an admin)
//! - `POST /api/v1/reservations/{id}/renew` — `{"for_s": N}`

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::api::{bind_error, parse_json, read_body, ApiError, ApiResult};
use crate::daemon::{Daemon, ReserveFailure};
use crate::reservations::{BookError, ReservationId};
use crate::rows::{RenewRequest, ReservationRow, ReserveRequest};
use crate::users::Who;

const RESERVE_SHAPE: &str = "{\"card\":\"1-32\"|N|[N,…], \"iccid\", \"imsi\", \"label\", \"eid\", \"all\", \"for_s\":N, \"wait_s\":N, \"reader\":bool, \"readers\":[N,…], \"note\":\"…\"}";

fn reservation_id(s: &str) -> Result<ReservationId, ApiError> {
    s.parse()
        .map_err(|e: String| ApiError::new(StatusCode::NOT_FOUND, e))
}

fn book_error(e: BookError) -> ApiError {
    match e {
        BookError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e),
        BookError::NotYours { ref user, .. } => {
            let user = user.clone();
            ApiError::new(StatusCode::CONFLICT, e).with_holder(None, Some(user))
        }
        BookError::Reserved(ref r) => {
            let (card, holder) = (
                r.card,
                format!("{} (reservation {}) until {}", r.user, r.id, r.expires),
            );
            ApiError::new(StatusCode::CONFLICT, e).with_holder(Some(card), Some(holder))
        }
        BookError::Duration | BookError::Note => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

fn reserve_error(e: ReserveFailure) -> ApiError {
    match e {
        ReserveFailure::Bad(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e),
        ReserveFailure::LinkDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e),
        ReserveFailure::NoCard(_) => ApiError::new(StatusCode::NOT_FOUND, e),
        ReserveFailure::Blocked {
            ref card,
            ref holder,
            ..
        } => {
            let (card, holder) = (*card, holder.clone());
            ApiError::new(StatusCode::CONFLICT, e).with_holder(card, holder)
        }
        ReserveFailure::Timeout { .. } => ApiError::new(StatusCode::REQUEST_TIMEOUT, e),
        ReserveFailure::NoReader { .. } => ApiError::new(StatusCode::CONFLICT, e),
        ReserveFailure::Bind(b) => bind_error(b),
    }
}

pub async fn list(State(d): State<Arc<Daemon>>) -> Json<Vec<ReservationRow>> {
    Json(
        d.cards
            .reservations()
            .iter()
            .map(|r| d.reservation_row(r))
            .collect(),
    )
}

pub async fn one(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> ApiResult<ReservationRow> {
    let id = reservation_id(&id)?;
    d.cards
        .reservation(id)
        .map(|r| Json(d.reservation_row(&r)))
        .ok_or_else(|| book_error(BookError::NotFound(id)))
}

pub async fn reserve(
    State(d): State<Arc<Daemon>>,
    Extension(who): Extension<Who>,
    req: Request,
) -> Result<Response, ApiError> {
    let body: ReserveRequest = parse_json(&read_body(req).await?, RESERVE_SHAPE)?;
    let row = d.reserve(body, &who).await.map_err(reserve_error)?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

pub async fn renew(
    State(d): State<Arc<Daemon>>,
    Extension(who): Extension<Who>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<ReservationRow> {
    let id = reservation_id(&id)?;
    let body: RenewRequest = parse_json(&read_body(req).await?, "{\"for_s\":N}")?;
    d.renew(id, &who, Duration::from_secs(body.for_s))
        .await
        .map(Json)
        .map_err(book_error)
}

pub async fn release(
    State(d): State<Arc<Daemon>>,
    Extension(who): Extension<Who>,
    Path(id): Path<String>,
) -> ApiResult<ReservationRow> {
    let id = reservation_id(&id)?;
    d.release(id, &who).await.map(Json).map_err(book_error)
}
