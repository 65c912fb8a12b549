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
//!   `Misframed`/`Overlong` give up a frame whose length is shown wrong by junk right behind it,
//!   and a card or pool frame is passed on only when a header byte follows it, or the read
//!   ended there (junk in a later read cannot be blamed on it: the results depend on how the
//!   stream was cut, by design, so there is no split invariance to check);
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

fn is_header_start(s: &[u8], i: usize) -> bool {
    s[i] == 0xAA && (i + 1 == s.len() || s[i + 1] == 0x55 || s[i + 1] == 0x44)
}

fn header_len(stream: &[u8], pos: usize) -> usize {
    usize::from(u16::from_be_bytes([stream[pos + 3], stream[pos + 4]]))
}

fn skipped_clean(stream: &[u8], pos: usize, n: usize) {
    for i in pos..pos + n {
        assert!(!is_header_start(stream, i), "skipped a header start at {i}");
    }
}

/// Every result maps onto the stream in order; `ends`: where the reads ended (a frame followed
/// by junk is passed on only when the junk came in a later read).
fn account(stream: &[u8], got: &[Item], buffered: usize, ends: &std::collections::BTreeSet<usize>) {
    let mut pos = 0usize;
    for r in got {
        match r {
            Err(FrameError::Garbage(n)) | Err(FrameError::Trailing { skipped: n, .. }) => {
                assert!(*n > 0);
                skipped_clean(stream, pos, *n);
                pos += n;
            }
            Err(FrameError::Oversized { len, .. }) => {
                assert!(*len > MAX_REPLY_DATA);
                assert_eq!(stream[pos], 0xAA);
                assert!(matches!(stream[pos + 1], 0x55 | 0x44));
                assert_eq!(header_len(stream, pos), *len);
                pos += 1;
            }
            Err(FrameError::Misframed { skipped, .. }) => {
                assert!(is_header_start(stream, pos));
                let end = pos + 5 + header_len(stream, pos);
                assert_ne!(stream[end], 0xAA, "misframed, yet a header follows");
                assert!(*skipped > 0);
                skipped_clean(stream, end, *skipped);
                pos = end + skipped;
            }
            Err(FrameError::Overlong { by, .. }) => {
                assert!(is_header_start(stream, pos));
                assert!((1..=8).contains(by));
                let next = pos + 5 + header_len(stream, pos) - by;
                assert!(is_header_start(stream, next), "no header {by} bytes back");
                pos = next;
            }
            Ok(reply) => {
                let enc = reply.to_bytes();
                assert_eq!(
                    &stream[pos..pos + enc.len()],
                    &enc[..],
                    "reply {reply:?} at {pos}"
                );
                pos += enc.len();
                if !matches!(reply, Reply::Unknown { .. }) && pos < stream.len() {
                    assert!(
                        stream[pos] == 0xAA || ends.contains(&pos),
                        "a frame followed by junk in the same read was passed on: {reply:?}"
                    );
                }
            }
            Err(e) => panic!("unexpected error from reply decoder: {e:?}"),
        }
    }
    assert_eq!(pos + buffered, stream.len(), "bytes lost or duplicated");
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

    // Byte accounting against the stream, for the pieces and for the whole stream at once.
    let mut ends = std::collections::BTreeSet::new();
    let mut at = 0;
    for p in &sp.pieces {
        at += p.len();
        ends.insert(at);
    }
    account(stream, &got, d.buffered(), &ends);
    let mut one = ReplyDecoder::new();
    let mut whole = Vec::new();
    one.push(stream);
    drain(&mut one, &mut whole);
    account(stream, &whole, one.buffered(), &[stream.len()].into());

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
