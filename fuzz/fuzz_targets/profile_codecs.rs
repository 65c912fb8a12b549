//! `simpool::sim::profile::{decode_iccid, decode_imsi}` on arbitrary EF contents (what a real
//! card may return), plus the encode/decode round trip.
//!
//! Asserts: never panics; `decode_iccid` yields only `0-9` and `A-E` (never `F`) and at
//! most 2 characters per byte; `decode_imsi` yields `None` or 1..=15 ASCII digits;
//! `decode_imsi(encode_imsi(d))` and `decode_iccid(encode_iccid(d))` give back the digits of
//! `d` (at most 15 resp. 20; IMSI with at least one digit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::sim::profile::{decode_iccid, decode_imsi, encode_iccid, encode_imsi};

fuzz_target!(|data: &[u8]| {
    let s = decode_iccid(data);
    assert!(s.chars().count() <= 2 * data.len());
    assert!(s
        .chars()
        .all(|c| c.is_ascii_digit() || ('A'..='E').contains(&c)));
    if let Some(i) = decode_imsi(data) {
        assert!(
            !i.is_empty() && i.len() <= 15 && i.bytes().all(|b| b.is_ascii_digit()),
            "{i:?}"
        );
    }

    let text = String::from_utf8_lossy(data);
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    let iccid: String = digits.chars().take(20).collect();
    assert_eq!(decode_iccid(&encode_iccid(&text)), iccid);
    let imsi: String = digits.chars().take(15).collect();
    let got = decode_imsi(&encode_imsi(&text));
    if imsi.is_empty() {
        assert_eq!(got, None);
    } else {
        assert_eq!(got.as_deref(), Some(imsi.as_str()));
    }
});
