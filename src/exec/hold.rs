//! How a run holds its card and reader: the one seam between `exec` and the daemon's
//! ownership rules.
//!
//! Today (before reservations, issue 19 §2) a run's hold is a plain binding through the control
//! API: exec takes readers that have no binding, binds one to the run's card
//! (`PUT /api/v1/readers/{i}`, which leases the card to the reader, so nothing else can start
//! it), and when it is done puts back what each reader was bound to before (`DELETE` or `PUT`
//! of the old binding), which releases and stops the card.
//!
//! What reservations will change, here only: [`Hold::take`] becomes `POST
//! /api/v1/reservations` with the card, `reader: true` and a short `for_s` that the driver
//! renews while the run lasts, and [`Hold::restore`] becomes `DELETE` of the reservations. Then
//! the daemon also ends a hold by itself when exec is killed (the reservation expires); with
//! bindings, a killed exec leaves its readers bound to the last cards until someone unbinds
//! them, unless [`super::guard`] does it — that is why the command restores on every way out
//! it can see (end, error, Ctrl-C, SIGTERM) and leaves a guard for the others. Two users racing for the same unbound reader is also only settled by
//! reservations: a bind replaces whatever another user bound there a moment before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio::sync::Mutex;

use crate::bridge::{Binding, Presence, ReaderRow};
use crate::control::client::{Control, ControlClientError};

use super::guard::Guard;

/// A bind waits in the daemon up to 5 s for the card to show, and a little more.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a run could not hold its card on a reader.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HoldError {
    /// The card cannot be had or shown (held elsewhere, an empty slot, marked bad, no card with
    /// that ICCID): it costs this card.
    #[error("{0}")]
    Card(String),
    /// The reader cannot be used (gone from the daemon, stopped): it costs the reader.
    #[error("{0}")]
    Reader(String),
}

/// The readers exec holds, and what each was bound to before it took it.
pub struct Hold {
    control: Control,
    before: Mutex<BTreeMap<u16, Option<Binding>>>,
    guard: Option<Arc<Guard>>,
}

impl Hold {
    pub fn new(control: Control) -> Hold {
        Hold {
            control,
            before: Mutex::new(BTreeMap::new()),
            guard: None,
        }
    }

    /// Tells `guard` each reader taken, before it is bound.
    pub fn set_guard(&mut self, guard: Arc<Guard>) {
        self.guard = Some(guard);
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

    /// The readers a run may take: those bound to nothing.
    pub fn free(readers: &[ReaderRow]) -> Vec<ReaderRow> {
        readers
            .iter()
            .filter(|r| r.binding.is_none())
            .cloned()
            .collect()
    }

    /// Binds daemon reader `reader` to `target` and answers the reader once it shows the card
    /// (the daemon waits up to 5 s). Remembers the reader's binding before exec first took it.
    pub async fn take(&self, reader: u16, target: &Binding) -> Result<ReaderRow, HoldError> {
        self.remember(reader).await?;
        let row: ReaderRow = self
            .control
            .call(
                Method::PUT,
                &format!("/api/v1/readers/{reader}"),
                Some(target),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| classify(reader, e))?;
        if row.state != Presence::Present {
            return Err(HoldError::Card(format!(
                "{target} does not show in reader {reader}: {}",
                row.detail.as_deref().unwrap_or("it did not start in time")
            )));
        }
        Ok(row)
    }

    async fn remember(&self, reader: u16) -> Result<(), HoldError> {
        let mut before = self.before.lock().await;
        if before.contains_key(&reader) {
            return Ok(());
        }
        let row: ReaderRow = self
            .control
            .call(
                Method::GET,
                &format!("/api/v1/readers/{reader}"),
                None::<&()>,
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| classify(reader, e))?;
        if let Some(g) = &self.guard {
            g.reader(reader, &row.binding);
        }
        before.insert(reader, row.binding);
        Ok(())
    }

    /// Puts every reader exec took back to what it was bound to before; answers the readers
    /// that could not be restored and why. The cards exec's runs had are released (and
    /// stopped) by that.
    pub async fn restore(&self) -> Vec<(u16, String)> {
        let before = std::mem::take(&mut *self.before.lock().await);
        let mut failed = Vec::new();
        for (reader, binding) in before {
            if let Err(e) = self.put_back(reader, &binding).await {
                failed.push((reader, e));
            }
        }
        failed
    }

    /// Puts one reader back now (exec no longer uses it): its card is free for another reader.
    pub async fn give_back(&self, reader: u16) -> Result<(), String> {
        let Some(binding) = self.before.lock().await.remove(&reader) else {
            return Ok(());
        };
        self.put_back(reader, &binding).await
    }

    async fn put_back(&self, reader: u16, binding: &Option<Binding>) -> Result<(), String> {
        let path = format!("/api/v1/readers/{reader}");
        let r: Result<ReaderRow, _> = match binding {
            None => {
                self.control
                    .call(Method::DELETE, &path, None::<&()>, CALL_TIMEOUT)
                    .await
            }
            Some(b) => {
                self.control
                    .call(Method::PUT, &path, Some(b), CALL_TIMEOUT)
                    .await
            }
        };
        match r {
            Ok(_) => {
                log::debug!(
                    "reader {reader}: restored to {}",
                    binding
                        .as_ref()
                        .map_or("no binding".into(), |b| b.to_string())
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A refused bind: a 404 or 503 is the reader's fault; a daemon that went away ends every run
/// the same way; anything else (a card held elsewhere, 409) is the card's.
fn classify(reader: u16, e: ControlClientError) -> HoldError {
    match &e {
        ControlClientError::Refused {
            status: 404 | 503, ..
        } => HoldError::Reader(format!("reader {reader}: {e}")),
        _ => HoldError::Card(e.to_string()),
    }
}
