//! How a run holds its card and reader: the one seam between `exec` and the daemon's
//! ownership rules.
//!
//! A run's hold is a reservation (issue 19 §2) of its card for exec's user, with the reader
//! the run was given bound to it: `POST /api/v1/reservations` with the card, `reader: true`
//! and `readers: [N]`. The daemon settles every race: it binds that reader only if it is
//! bound to nothing at that moment (checked and bound under the reader's own lock), and only a
//! free card can be reserved; a loser gets a 409 naming who has it. While the run lasts the
//! card and reader are exec's user's: other users' `apdu`, `bind`, `reserve`, `exec` on them
//! are refused.
//!
//! The reservations are short ([`HOLD_FOR`]) and renewed while exec lives ([`Hold::renew`]
//! every [`RENEW_EVERY`]). Ending one (`DELETE`) unbinds its reader — back to no binding,
//! which is what exec found, since it only takes free readers — and stops and frees the card.
//! If exec is killed, nobody renews them: the daemon ends them by itself within `HOLD_FOR`
//! and a second, the same way. (The runs' programs live on in their own process groups;
//! killing those is [`super::guard`]'s job.)

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use tokio::sync::Mutex;

use crate::bridge::{Binding, Presence, ReaderRow};
use crate::control::client::{Control, ControlClientError};
use crate::reservations::ReservationId;
use crate::rows::{RenewRequest, ReservationRow, ReserveRequest};
use crate::selection::Selection;

/// A reservation taken for a run now lasts this long unless renewed; a killed exec's cards
/// and readers are free again at most this (and the daemon's 1 s) later.
pub const HOLD_FOR: Duration = Duration::from_secs(8);
/// How often exec renews its reservations: a few chances before they run out.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// The note on exec's reservations.
pub const NOTE: &str = "simpool exec";

/// The daemon waits up to 5 s for the card to show in the reader, and a little more.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a run could not hold its card on a reader.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HoldError {
    /// The card cannot be had or shown (held or reserved elsewhere, an empty slot, marked bad):
    /// it costs this card.
    #[error("{0}")]
    Card(String),
    /// The reader cannot be used (taken by someone else meanwhile, gone, stopped): it costs
    /// the reader.
    #[error("{0}")]
    Reader(String),
}

/// The reservations exec holds, by reader.
pub struct Hold {
    control: Control,
    held: Mutex<BTreeMap<u16, ReservationId>>,
}

impl Hold {
    pub fn new(control: Control) -> Hold {
        Hold {
            control,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The daemon's readers.
    pub async fn readers(&self) -> Result<Vec<ReaderRow>, ControlClientError> {
        self.control
            .call(Method::GET, "/api/v1/readers", None::<&()>, CALL_TIMEOUT)
            .await
    }

    /// The readers a run may take: those bound to nothing (the daemon checks it again when it
    /// binds one).
    pub fn free(readers: &[ReaderRow]) -> Vec<ReaderRow> {
        readers
            .iter()
            .filter(|r| r.binding.is_none())
            .cloned()
            .collect()
    }

    /// Reserves `target` with daemon reader `reader` bound to it, and answers the reader once
    /// it shows the card (the daemon waits up to 5 s).
    pub async fn take(&self, reader: u16, target: &Binding) -> Result<ReaderRow, HoldError> {
        let req = ReserveRequest {
            selection: selection(target),
            for_s: Some(HOLD_FOR.as_secs()),
            wait_s: None,
            reader: true,
            readers: Some(vec![reader]),
            note: Some(NOTE.into()),
        };
        let r: ReservationRow = self
            .control
            .call(
                Method::POST,
                "/api/v1/reservations",
                Some(&req),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| classify(reader, e))?;
        self.held.lock().await.insert(reader, r.id);
        let row: Result<ReaderRow, _> = self
            .control
            .call(
                Method::GET,
                &format!("/api/v1/readers/{reader}"),
                None::<&()>,
                CALL_TIMEOUT,
            )
            .await;
        let shown = match row {
            Ok(row) if row.state == Presence::Present => return Ok(row),
            Ok(row) => HoldError::Card(format!(
                "{target} does not show in reader {reader}: {}",
                row.detail.as_deref().unwrap_or("it did not start in time")
            )),
            Err(e) => HoldError::Reader(format!("reader {reader}: {e}")),
        };
        // Not used: the card and the reader are free again at once.
        if let Err(e) = self.give_back(reader).await {
            log::warn!("reader {reader}: {e}");
        }
        Err(shown)
    }

    /// Renews every reservation exec holds for another [`HOLD_FOR`].
    pub async fn renew(&self) {
        let held: Vec<(u16, ReservationId)> = self
            .held
            .lock()
            .await
            .iter()
            .map(|(r, i)| (*r, *i))
            .collect();
        let body = RenewRequest {
            for_s: HOLD_FOR.as_secs(),
        };
        for (reader, id) in held {
            let r: Result<ReservationRow, _> = self
                .control
                .call(
                    Method::POST,
                    &format!("/api/v1/reservations/{id}/renew"),
                    Some(&body),
                    CALL_TIMEOUT,
                )
                .await;
            if let Err(e) = r {
                log::warn!("reader {reader}: reservation {id} not renewed: {e}");
            }
        }
    }

    /// Ends every reservation exec holds; answers the readers whose reservation could not be
    /// ended and why (it expires by itself within [`HOLD_FOR`]). Their readers go back to no
    /// binding, their cards are stopped and freed.
    pub async fn restore(&self) -> Vec<(u16, String)> {
        let held = std::mem::take(&mut *self.held.lock().await);
        let mut failed = Vec::new();
        for (reader, id) in held {
            if let Err(e) = self.end(id).await {
                failed.push((reader, e));
            }
        }
        failed
    }

    /// Ends the reservation of reader `reader` now (its run is over): the reader and the card
    /// are free for the next run.
    pub async fn give_back(&self, reader: u16) -> Result<(), String> {
        let Some(id) = self.held.lock().await.remove(&reader) else {
            return Ok(());
        };
        self.end(id).await
    }

    async fn end(&self, id: ReservationId) -> Result<(), String> {
        let r: Result<ReservationRow, _> = self
            .control
            .call(
                Method::DELETE,
                &format!("/api/v1/reservations/{id}"),
                None::<&()>,
                CALL_TIMEOUT,
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            // Already over (it expired, an admin ended it): nothing left to end.
            Err(ControlClientError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(format!("reservation {id} not ended: {e}")),
        }
    }
}

/// The selection that names `target`.
fn selection(target: &Binding) -> Selection {
    match target {
        Binding::Card(n) => Selection::card(*n),
        Binding::Iccid(s) => Selection {
            iccids: vec![s.clone()],
            ..Selection::default()
        },
        Binding::Imsi(s) => Selection {
            imsis: vec![s.clone()],
            ..Selection::default()
        },
        Binding::Eid(s) => Selection {
            eid: Some(s.clone()),
            ..Selection::default()
        },
    }
}

/// A refused reservation: a 409 that names no card (the reader is bound to something else
/// now, or to nothing the daemon can use) and a 503 (the reader stopped, the pool is gone)
/// cost the reader; anything else (the card held or reserved by someone, an empty slot, a
/// card marked bad) costs the card.
fn classify(reader: u16, e: ControlClientError) -> HoldError {
    match &e {
        ControlClientError::Refused {
            status: 409, body, ..
        } if body["card"].is_null() => HoldError::Reader(format!("reader {reader}: {e}")),
        ControlClientError::Refused { status: 503, .. } => {
            HoldError::Reader(format!("reader {reader}: {e}"))
        }
        _ => HoldError::Card(e.to_string()),
    }
}
