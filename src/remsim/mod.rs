//! simpool as an osmo-remsim bank: remote modems, phones and hosts use the pool's cards over
//! RSPRO (see docs/rspro.md). `ipa` and `rspro` are the sans-IO codecs, `maps` and `session` the
//! sans-IO cores (slot maps, a client's session), `bank` the tasks around them.

pub mod bank;
pub mod ipa;
pub mod maps;
pub mod probe;
pub mod reach;
pub mod rspro;
pub mod session;

pub use bank::{Bank, BankConfig};
