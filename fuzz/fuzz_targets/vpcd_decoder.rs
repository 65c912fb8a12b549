//! `simpool::vpcd::frame::Decoder` (vpcd's socket stream) against hostile bytes.
//!
//! Asserts, for any input cut into any pieces:
//! - no panic;
//! - bounded buffer: after each push `buffered() <= 2 + MAX_COMMAND + piece length`, and after
//!   each drain `buffered() < 2 + MAX_COMMAND` (an oversized payload is counted off, never
//!   stored);
//! - the events equal those of a straightforward reference parser of the whole stream
//!   (split invariance and correctness in one): `len16 payload`, length 0 → `Invalid{0}`,
//!   length > 261 → `Invalid{len}` with the payload skipped, 1-byte payloads → controls,
//!   2..=261 → `Command`;
//! - every `Command` holds 2..=MAX_COMMAND bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::vpcd::frame::{encode, Decoder, Event, MAX_COMMAND};

#[path = "common.rs"]
mod common;

fn reference(s: &[u8]) -> Vec<Event> {
    let mut ev = Vec::new();
    let mut pos = 0usize;
    while pos + 2 <= s.len() {
        let len = usize::from(u16::from_be_bytes([s[pos], s[pos + 1]]));
        if len == 0 {
            ev.push(Event::Invalid { len: 0 });
            pos += 2;
        } else if len > MAX_COMMAND {
            ev.push(Event::Invalid { len });
            pos += 2 + len;
        } else if pos + 2 + len <= s.len() {
            let p = &s[pos + 2..pos + 2 + len];
            ev.push(if len == 1 {
                match p[0] {
                    0 => Event::PowerOff,
                    1 => Event::PowerOn,
                    2 => Event::Reset,
                    4 => Event::GetAtr,
                    c => Event::UnknownControl(c),
                }
            } else {
                Event::Command(p.to_vec())
            });
            pos += 2 + len;
        } else {
            break;
        }
    }
    ev
}

fuzz_target!(|data: &[u8]| {
    let sp = common::split(data);
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for p in &sp.pieces {
        d.push(p);
        assert!(
            d.buffered() <= 2 + MAX_COMMAND + p.len(),
            "buffered {} after a push of {}",
            d.buffered(),
            p.len()
        );
        while let Some(e) = d.next_event() {
            if let Event::Command(c) = &e {
                assert!((2..=MAX_COMMAND).contains(&c.len()));
                assert_eq!(encode(c)[2..], c[..]);
            }
            got.push(e);
            assert!(got.len() < 1_000_000, "decoder does not make progress");
        }
        assert!(
            d.buffered() < 2 + MAX_COMMAND,
            "buffered {} after drain",
            d.buffered()
        );
    }
    assert_eq!(got, reference(sp.stream));
});
