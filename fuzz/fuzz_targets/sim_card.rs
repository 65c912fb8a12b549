//! `simpool::sim::card::SimCard` (the simulated SIM, `generated(1)`) facing arbitrary terminal
//! bytes.
//!
//! Input layout: 1 byte of T=0 quirks (bit 0 single_byte_out, bit 1 trailing_garbage, bit 2
//! set → NULL count from the next byte, else 0; bit 3 → card 2 (Milenage) instead of card 1
//! (XOR-2G)), then the terminal's bytes cut into pieces as in `common.rs`, each fed to
//! `receive` of a reset card. Bit 4 of the quirks byte power-cycles the card (reset) before
//! every piece whose first byte is `FF`.
//!
//! Asserts:
//! - never panics;
//! - the output of one `receive` is bounded: per command the card sends at most 389 bytes
//!   at its header (INS + 256 data sent as `~INS b` pairs for the first half + NULL INS +
//!   rest + SW + junk) and at most 255 + 3 when its incoming data are complete (NULLs + SW +
//!   junk);
//!   a piece of c bytes completes at most H = 1 + (c - 1) / 5 headers and H + 1 data phases,
//!   so `out <= H * 389 + (H + 1) * 258`; for pieces of at most 5 bytes that is <= 1163,
//!   i.e. within 2048;
//! - a powered-off card (before reset) says nothing; `reset()` returns the profile's ATR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::sim::card::SimCard;
use simpool::sim::profile::{generated, T0Quirks};

#[path = "common.rs"]
mod common;

const MAX_AT_HEADER: usize = 1 + 256 + 128 + 2 + 2;
const MAX_AT_DATA: usize = 255 + 3;

fn bound(c: usize) -> usize {
    if c == 0 {
        return 0;
    }
    let h = 1 + (c - 1) / 5;
    h * MAX_AT_HEADER + (h + 1) * MAX_AT_DATA
}

fuzz_target!(|data: &[u8]| {
    let Some((&q, mut rest)) = data.split_first() else {
        return;
    };
    let nulls = if q & 4 != 0 {
        let Some((&n, r)) = rest.split_first() else {
            return;
        };
        rest = r;
        n
    } else {
        0
    };
    let mut profile = generated(if q & 8 != 0 { 2 } else { 1 });
    profile.t0 = T0Quirks {
        nulls,
        single_byte_out: q & 1 != 0,
        trailing_garbage: q & 2 != 0,
    };
    let atr = profile.atr.clone();
    let mut card = SimCard::new(profile);
    assert!(
        card.receive(&[0xA0, 0xF2, 0, 0, 0x16]).is_empty(),
        "powered-off card answered"
    );
    assert_eq!(card.reset(), atr);

    let sp = common::split(rest);
    for p in &sp.pieces {
        if q & 16 != 0 && p.first() == Some(&0xFF) {
            assert_eq!(card.reset(), atr);
        }
        let out = card.receive(p);
        assert!(
            out.len() <= bound(p.len()),
            "{} bytes out for a piece of {} bytes",
            out.len(),
            p.len()
        );
        if p.len() <= 5 {
            assert!(out.len() <= 2048);
        }
    }
});
