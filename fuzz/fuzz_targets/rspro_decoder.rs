//! `simpool::remsim::{ipa, rspro}` (what a remote client or the server sends the bank) against
//! hostile bytes.
//!
//! Asserts, for any input cut into two pieces:
//! - no panic in the IPA decoder or the RSPRO decoder;
//! - bounded buffer: the IPA decoder never holds more than one frame plus the last push;
//! - the frames do not depend on where the stream was cut;
//! - every PDU that decodes re-encodes (DER) to bytes that decode to the same PDU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::remsim::ipa::{Decoder, Frame, MAX_PAYLOAD};
use simpool::remsim::rspro::Pdu;

fn frames(pieces: &[&[u8]]) -> Vec<Result<Frame, simpool::remsim::ipa::IpaError>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for p in pieces {
        d.push(p);
        assert!(d.buffered() <= 3 + MAX_PAYLOAD + p.len());
        while let Some(f) = d.next_frame() {
            let failed = f.is_err();
            out.push(f);
            if failed {
                return out;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Pdu::decode(data) {
        assert_eq!(Pdu::decode(&p.encode()), Ok(p));
    }
    let whole = frames(&[data]);
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (a, b) = data.split_at(cut);
    assert_eq!(frames(&[a, b]), whole);
    for f in whole.into_iter().flatten() {
        if let Frame::Rspro(pdu) = f {
            if let Ok(p) = Pdu::decode(&pdu) {
                assert_eq!(Pdu::decode(&p.encode()), Ok(p));
            }
        }
    }
});
