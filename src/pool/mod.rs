//! Talking to the pool: the frame codec, the one shared TCP link, the reply-integrity rules,
//! and per-card handles.

pub mod card;
pub mod frame;
pub mod integrity;
pub mod link;

pub use card::{Card, ExchangeError};
pub use frame::{Reply, Request, Slot, SlotState};
pub use link::{HealthOptions, Link, LinkOptions, LinkState, PoolError};

/// The factory address of a Lit-K13e-V53 pool.
pub const FACTORY_ADDRESS: &str = "192.168.1.199:6666";
