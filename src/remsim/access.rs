//! How the bank takes cards: one lease per card, named after its holder.
//!
//! Interim: the daemon-wide lease registry (`crate::cards`, the lead's module) is not merged
//! yet. This keeps the same shape (lease → start/restart/stop/transmit → release; a card held
//! by someone else is refused naming the holder) over the pool [`Link`], so switching the bank
//! to the registry is a change of types, not of logic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pool::{Card, ExchangeError, Link, PoolError, Slot};

/// Why a card cannot be leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("card {card} is held by {holder}")]
    Held { card: u16, holder: String },
    #[error("no card {0} (cards are 1..=256)")]
    NoSuchCard(u16),
}

/// The cards of one pool link and who holds them.
#[derive(Clone)]
pub struct CardAccess {
    link: Link,
    holders: Arc<Mutex<HashMap<u16, String>>>,
}

impl CardAccess {
    pub fn new(link: Link) -> CardAccess {
        CardAccess {
            link,
            holders: Arc::default(),
        }
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Takes card `n` (1..=256) for `holder`.
    pub fn lease(&self, n: u16, holder: String) -> Result<Lease, LeaseError> {
        let slot = Slot::from_card(n).ok_or(LeaseError::NoSuchCard(n))?;
        let mut h = self.holders.lock().unwrap();
        if let Some(other) = h.get(&n) {
            return Err(LeaseError::Held {
                card: n,
                holder: other.clone(),
            });
        }
        h.insert(n, holder);
        Ok(Lease {
            card: self.link.card(slot),
            n,
            holders: self.holders.clone(),
            started: false,
        })
    }

    /// Who holds card `n`, if anyone.
    pub fn holder(&self, n: u16) -> Option<String> {
        self.holders.lock().unwrap().get(&n).cloned()
    }
}

/// A card taken for one holder. Dropping it stops the card if this lease started it and frees
/// it; [`Lease::release`] does the same and waits for the stop.
pub struct Lease {
    card: Card,
    n: u16,
    holders: Arc<Mutex<HashMap<u16, String>>>,
    started: bool,
}

impl Lease {
    pub fn card(&self) -> u16 {
        self.n
    }

    /// Powers the card up; answers its ATR.
    pub async fn start(&mut self) -> Result<Vec<u8>, PoolError> {
        self.started = true;
        self.card.start().await
    }

    /// Stop, then start: a cold reset.
    pub async fn restart(&mut self) -> Result<Vec<u8>, PoolError> {
        if self.started {
            self.card.stop().await?;
        }
        self.start().await
    }

    pub async fn stop(&mut self) -> Result<(), PoolError> {
        self.started = false;
        self.card.stop().await
    }

    /// One T=0 command as the application sent it; answers `data ‖ SW1 SW2`.
    pub async fn transmit(&self, cmd: &[u8], deadline: Duration) -> Result<Vec<u8>, ExchangeError> {
        self.card.transmit(cmd, deadline).await
    }

    /// Stops the card (if started here) and frees it.
    pub async fn release(mut self) {
        if self.started {
            self.started = false;
            if let Err(e) = self.card.stop().await {
                log::debug!("card {}: stop on release: {e}", self.n);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let n = self.n;
        let holders = self.holders.clone();
        if self.started {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Free the card only once it is stopped, so a next holder's start cannot be
                // overtaken by this stop.
                let card = self.card.clone();
                rt.spawn(async move {
                    let _ = card.stop().await;
                    holders.lock().unwrap().remove(&n);
                });
                return;
            }
        }
        holders.lock().unwrap().remove(&n);
    }
}
