//! `simpool::pool::frame::RequestDecoder` (host → pool stream, the simulator's side).
//!
//! Asserts, for any input cut into any pieces:
//! - no panic;
//! - after every drain, `buffered() < 4 + MAX_REQUEST_DATA` (one incomplete maximal frame);
//! - byte accounting: `Garbage(n)` skips n > 0 bytes none of which starts a header,
//!   `EmptyRequest` consumes a 4-byte `AA 66 slot 00`, `UnknownCommand(c)` a 5-byte control
//!   frame carrying c, an `Ok(request)` the bytes it re-encodes to (the slot byte of the
//!   slot-less commands ReadId/ReadVersion/ReadStates excepted); consumed + `buffered()` ==
//!   bytes pushed;
//! - split invariance (consecutive `Garbage` merged);
//! - resynchronisation: after the junk, 300 zero bytes and a known good frame, the good
//!   frame is the last result and nothing stays buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::pool::frame::{FrameError, Request, RequestDecoder, Slot, MAX_REQUEST_DATA};

#[path = "common.rs"]
mod common;

type Item = Result<Request, FrameError>;

fn drain(d: &mut RequestDecoder, out: &mut Vec<Item>) {
    while let Some(r) = d.next_request() {
        out.push(r);
        assert!(out.len() < 1_000_000, "decoder does not make progress");
    }
    assert!(
        d.buffered() < 4 + MAX_REQUEST_DATA,
        "buffered {} after drain",
        d.buffered()
    );
}

fn merged(items: &[Item]) -> Vec<Item> {
    let mut v: Vec<Item> = Vec::new();
    for it in items {
        if let (Some(Err(FrameError::Garbage(a))), Err(FrameError::Garbage(b))) = (v.last_mut(), it)
        {
            *a += b;
            continue;
        }
        v.push(it.clone());
    }
    v
}

fn is_header_start(s: &[u8], i: usize) -> bool {
    s[i] == 0xAA && (i + 1 == s.len() || s[i + 1] == 0x66)
}

fuzz_target!(|data: &[u8]| {
    let sp = common::split(data);
    let stream = sp.stream;

    let mut d = RequestDecoder::new();
    let mut got = Vec::new();
    for p in &sp.pieces {
        let before = d.buffered();
        d.push(p);
        assert_eq!(d.buffered(), before + p.len());
        drain(&mut d, &mut got);
    }

    let mut pos = 0usize;
    for r in &got {
        match r {
            Err(FrameError::Garbage(n)) => {
                assert!(*n > 0);
                for i in pos..pos + n {
                    assert!(!is_header_start(stream, i), "skipped a header start at {i}");
                }
                pos += n;
            }
            Err(FrameError::EmptyRequest) => {
                assert_eq!(&stream[pos..pos + 2], &[0xAA, 0x66]);
                assert_eq!(stream[pos + 3], 0);
                pos += 4;
            }
            Err(FrameError::UnknownCommand(c)) => {
                assert_eq!(&stream[pos..pos + 2], &[0xAA, 0x66]);
                assert_eq!(stream[pos + 3], 1);
                assert_eq!(stream[pos + 4], *c);
                pos += 5;
            }
            Ok(req) => {
                let enc = req.to_bytes().expect("a decoded request re-encodes");
                let raw = &stream[pos..pos + enc.len()];
                if matches!(
                    req,
                    Request::ReadId | Request::ReadVersion | Request::ReadStates
                ) {
                    assert_eq!(
                        (&raw[..2], &raw[3..]),
                        (&enc[..2], &enc[3..]),
                        "{req:?} at {pos}"
                    );
                } else {
                    assert_eq!(raw, &enc[..], "{req:?} at {pos}");
                }
                if let Request::Data(_, d) = req {
                    assert!((2..=MAX_REQUEST_DATA).contains(&d.len()));
                }
                pos += enc.len();
            }
            Err(e) => panic!("unexpected error from request decoder: {e:?}"),
        }
    }
    assert_eq!(pos + d.buffered(), stream.len(), "bytes lost or duplicated");

    let mut one = RequestDecoder::new();
    let mut whole = Vec::new();
    one.push(stream);
    drain(&mut one, &mut whole);
    assert_eq!(
        merged(&got),
        merged(&whole),
        "result depends on how the stream was cut"
    );
    assert_eq!(one.buffered(), d.buffered());

    let good = Request::Data(Slot(0x2A), vec![0xA0, 0xAA, 0x66, 0x00, 0x02]);
    let n_before = got.len();
    d.push(&[0u8; 300]);
    drain(&mut d, &mut got);
    d.push(&good.to_bytes().unwrap());
    drain(&mut d, &mut got);
    assert!(got.len() > n_before);
    assert_eq!(
        got.last(),
        Some(&Ok(good)),
        "good frame not found after junk + zeros"
    );
    assert_eq!(d.buffered(), 0);
});
