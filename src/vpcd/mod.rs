//! The PC/SC side: vsmartcard's vpcd virtual reader driver, loaded by pcscd.

pub mod frame;
pub mod link;

pub use frame::Event;
pub use link::Connection;

/// vpcd's default first port (0x8C7B); one config line gives readers on P and P+1.
pub const DEFAULT_PORT: u16 = 35963;
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:35963";
