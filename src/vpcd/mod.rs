//! The PC/SC side: vsmartcard's vpcd virtual reader driver, loaded by pcscd.

pub mod frame;
pub mod link;

pub use frame::Event;
pub use link::{Closed, Connection};

/// vpcd's default first port (0x8C7B); one config line gives readers on P and P+1.
pub const DEFAULT_PORT: u16 = 35963;
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:35963";

/// PC/SC name of reader `index` (0-based) under the config `driver/vpcd-readers` writes: one
/// config line per two readers, the first named "Virtual PCD", line k ≥ 2 "Virtual PCD k";
/// pcscd appends the line's number (00) and the slot (00/01). Its port is first port + index.
pub fn reader_name(index: u16) -> String {
    match index / 2 {
        0 => format!("Virtual PCD 00 {:02}", index % 2),
        line => format!("Virtual PCD {} 00 {:02}", line + 1, index % 2),
    }
}
