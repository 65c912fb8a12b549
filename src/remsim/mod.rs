//! simpool as an osmo-remsim bank: remote modems, phones and hosts use the pool's cards over
//! RSPRO (see docs/rspro.md). `ipa` and `rspro` are the sans-IO codecs.

pub mod bank;
pub mod ipa;
pub mod maps;
pub mod probe;
pub mod reach;
pub mod rspro;

pub use bank::{Bank, BankConfig};
