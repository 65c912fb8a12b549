//! simpool: the SIM cards of a networked Lit-K13e-V53 SIM pool as PC/SC readers.

pub mod backoff;
pub mod bridge;
pub mod cards;
pub mod check;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gsmtap;
pub mod history;
pub mod identity;
pub mod log_once;
pub mod man;
pub mod metrics;
pub mod pcap;
pub mod pool;
pub mod remsim;
pub mod rows;
pub mod serve;
pub mod sim;
pub mod t0;
pub mod trace;
pub mod values;
pub mod vpcd;
