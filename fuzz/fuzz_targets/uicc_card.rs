//! The UICC command parser of a simulated USIM (`simpool::sim::uicc`), two ways:
//!
//! 1. Through `SimCard` (T=0 card side) with `profile::generated_usim(4)`: byte 0 selects the
//!    T=0 quirks as in `sim_card.rs` (bit 0 single_byte_out, bit 1 trailing_garbage, bit 2 NULL
//!    count from the next byte) and bit 3 enables PIN1; the rest is the terminal's bytes in
//!    pieces (`common.rs`). Nothing panics; the output of one `receive` is bounded as in
//!    `sim_card.rs` (the UICC face sends no more per command than the GSM face).
//! 2. Directly on `Uicc::execute`, with the same bytes read as commands: 5 header bytes, one
//!    byte n, then n data bytes (any n, whatever P3 says). Nothing panics; data come only with
//!    `90 00` or `61 xx` and never exceed 256 bytes; SW1 is `6X` or `9X` (never the NULL `60`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::sim::card::SimCard;
use simpool::sim::profile::{generated_usim, T0Quirks};
use simpool::sim::uicc::Uicc;

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
    let mut profile = generated_usim(4);
    if q & 8 != 0 {
        profile.chv1 = Some("1234".into());
    }
    profile.t0 = T0Quirks {
        nulls,
        single_byte_out: q & 1 != 0,
        trailing_garbage: q & 2 != 0,
    };
    let mut card = SimCard::new(profile.clone());
    card.reset();
    let sp = common::split(rest);
    for p in &sp.pieces {
        let out = card.receive(p);
        assert!(
            out.len() <= bound(p.len()),
            "{} bytes out for {}",
            out.len(),
            p.len()
        );
    }

    let mut u = Uicc::new(&profile);
    let mut b = rest;
    while b.len() >= 6 {
        let hdr: [u8; 5] = b[..5].try_into().unwrap();
        let n = usize::from(b[5]).min(b.len() - 6);
        let a = u.execute(&hdr, &b[6..6 + n]);
        b = &b[6 + n..];
        assert!(a.data.len() <= 256);
        assert!(
            matches!(a.sw[0] & 0xF0, 0x60 | 0x90) && a.sw[0] != 0x60,
            "{:02X?}",
            a.sw
        );
        if !a.data.is_empty() {
            assert!(a.sw == [0x90, 0x00] || a.sw[0] == 0x61, "{:02X?}", a.sw);
        }
    }
});
