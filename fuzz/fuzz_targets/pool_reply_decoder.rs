//! `simpool::pool::frame::ReplyDecoder` (pool → host stream) against hostile bytes.
//!
//! Asserts, for any input cut into any pieces:
//! - no panic;
//! - after every drain, `buffered() < 5 + MAX_REPLY_DATA` (at most one incomplete maximal
//!   frame is held; this implies the `<= 5 + MAX_REPLY_DATA` bound);
//! - byte accounting: every result maps onto the stream in order — `Garbage(n)` and
//!   `Trailing { skipped: n }` skip n > 0 bytes none of which starts a known header (`AA 55`,
//!   `AA 44`), `Oversized { len }` drops exactly one byte of a header
//!   really claiming `len > MAX_REPLY_DATA`, an `Ok(reply)` re-encodes to exactly the bytes it
//!   consumed; consumed + `buffered()` == bytes pushed;
//! - split invariance: the results equal those of the unsplit stream (`Trailing` read as
//!   `Garbage`, since junk is only blamed on a frame in the same read, and consecutive `Garbage`
//!   merged, since how much garbage is reported at once depends on the pieces);
//! - resynchronisation: after the junk, 1030 zero bytes and then a known good frame, the good
//!   frame is the last result and nothing stays buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::pool::frame::{FrameError, Reply, ReplyDecoder, Slot, MAX_REPLY_DATA};

#[path = "common.rs"]
mod common;

type Item = Result<Reply, FrameError>;

fn drain(d: &mut ReplyDecoder, out: &mut Vec<Item>) {
    while let Some(r) = d.next_reply() {
        out.push(r);
        assert!(out.len() < 1_000_000, "decoder does not make progress");
    }
    assert!(
        d.buffered() < 5 + MAX_REPLY_DATA,
        "buffered {} after drain",
        d.buffered()
    );
}

fn merged(items: &[Item]) -> Vec<Item> {
    let mut v: Vec<Item> = Vec::new();
    for it in items {
        let it = match it {
            Err(FrameError::Trailing { skipped, .. }) => Err(FrameError::Garbage(*skipped)),
            other => other.clone(),
        };
        if let (Some(Err(FrameError::Garbage(a))), Err(FrameError::Garbage(b))) =
            (v.last_mut(), &it)
        {
            *a += b;
            continue;
        }
        v.push(it);
    }
    v
}

fn is_header_start(s: &[u8], i: usize) -> bool {
    s[i] == 0xAA && (i + 1 == s.len() || s[i + 1] == 0x55 || s[i + 1] == 0x44)
}

fuzz_target!(|data: &[u8]| {
    let sp = common::split(data);
    let stream = sp.stream;

    // Piecewise.
    let mut d = ReplyDecoder::new();
    let mut got = Vec::new();
    let mut pushed = 0usize;
    for p in &sp.pieces {
        let before = d.buffered();
        d.push(p);
        pushed += p.len();
        assert_eq!(d.buffered(), before + p.len());
        drain(&mut d, &mut got);
    }
    assert_eq!(pushed, stream.len());

    // Byte accounting against the stream.
    let mut pos = 0usize;
    for r in &got {
        match r {
            Err(FrameError::Garbage(n)) | Err(FrameError::Trailing { skipped: n, .. }) => {
                assert!(*n > 0);
                for i in pos..pos + n {
                    assert!(!is_header_start(stream, i), "skipped a header start at {i}");
                }
                pos += n;
            }
            Err(FrameError::Oversized { len, .. }) => {
                assert!(*len > MAX_REPLY_DATA);
                assert_eq!(stream[pos], 0xAA);
                assert!(matches!(stream[pos + 1], 0x55 | 0x44));
                assert_eq!(
                    usize::from(u16::from_be_bytes([stream[pos + 3], stream[pos + 4]])),
                    *len
                );
                pos += 1;
            }
            Ok(reply) => {
                let enc = reply.to_bytes();
                assert_eq!(
                    &stream[pos..pos + enc.len()],
                    &enc[..],
                    "reply {reply:?} at {pos}"
                );
                pos += enc.len();
            }
            Err(e) => panic!("unexpected error from reply decoder: {e:?}"),
        }
    }
    assert_eq!(pos + d.buffered(), stream.len(), "bytes lost or duplicated");

    // Split invariance.
    let mut one = ReplyDecoder::new();
    let mut whole = Vec::new();
    one.push(stream);
    drain(&mut one, &mut whole);
    assert_eq!(
        merged(&got),
        merged(&whole),
        "result depends on how the stream was cut"
    );
    assert_eq!(one.buffered(), d.buffered());

    // Resynchronisation on a known good frame.
    let good = Reply::Card {
        slot: Slot(0x2A),
        data: vec![0xAA, 0x55, 0x01, 0x90, 0x00],
    };
    let n_before = got.len();
    d.push(&[0u8; 1030]);
    drain(&mut d, &mut got);
    d.push(&good.to_bytes());
    drain(&mut d, &mut got);
    assert!(got.len() > n_before);
    assert_eq!(
        got.last(),
        Some(&Ok(good)),
        "good frame not found after junk + zeros"
    );
    assert_eq!(d.buffered(), 0);
});
