//! The simulated pool: a TCP server speaking the pool protocol, with simulated GSM SIMs and USIMs
//! behind its transparent byte pipe, and fault knobs for tests.

pub mod algo;
pub mod auth;
pub mod ber;
pub mod card;
pub mod euicc;
pub mod fs;
pub mod layout;
pub mod profile;
pub mod server;
pub mod uicc;

pub use server::{Faults, SimPool};

use serde::Deserialize;

/// Pool-wide knobs of the simulator (the `[pool]` table of a cards file; CLI flags override).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolKnobs {
    /// Delay before every reply frame, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Split every card answer into frames of at most this many bytes (0 = one frame).
    #[serde(default)]
    pub split: usize,
    /// NULL procedure bytes (`60`) a card sends before answering a slow command
    /// (overrides each card's own `t0.nulls` when non-zero).
    #[serde(default)]
    pub nulls: u8,
    /// Wire time per byte between pool and card, in µs (1040 ≈ 9600 baud; 0 = none).
    #[serde(default)]
    pub byte_time_us: u64,
}
