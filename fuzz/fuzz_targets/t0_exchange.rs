//! `simpool::t0::{Tpdu, Exchange}`: the host (terminal) side of T=0 facing a hostile card.
//!
//! Input layout: 2 bytes (big-endian, mod 262) = command length L, then L bytes of command
//! given to `Tpdu::parse` (refusals are fine and end the run: their status must be 2 bytes);
//! the rest is the card's byte stream, cut into pieces as in `common.rs`, fed to
//! `Exchange::feed` with `Limits::default()` until `Done` or an error.
//!
//! Asserts:
//! - never panics (parse, new, feed, and feeding after `Done`);
//! - the header sent first is the TPDU's 5-byte header;
//! - `Send` happens only for an In command, once, with exactly the command body;
//! - a `Done` response has >= 2 bytes; its data length never exceeds Ne (P3, 00 = 256) for an
//!   Out command and is 0 for an In command; `trailing` <= the rest of that piece;
//! - after `Done`, `is_done()` holds and further pieces give `Wait`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simpool::t0::{Direction, Exchange, Limits, Step, Tpdu};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let l = usize::from(u16::from_be_bytes([data[0], data[1]])) % 262;
    let rest = &data[2..];
    let (cmd, card) = rest.split_at(l.min(rest.len()));
    let tpdu = match Tpdu::parse(cmd) {
        Ok(t) => t,
        Err(refusal) => {
            assert_eq!(refusal.status().len(), 2);
            return;
        }
    };
    let ins = tpdu.ins();
    assert!(ins & 0xF0 != 0x60 && ins & 0xF0 != 0x90);
    let dir = tpdu.direction();
    let ne = tpdu.ne();
    let body = tpdu.body.clone();
    if dir == Direction::In {
        assert!(body.len() >= 2 && body.len() <= 255);
        assert_eq!(body.len(), usize::from(tpdu.header[4]));
    }
    let hdr = tpdu.header;
    let (mut ex, header) = Exchange::new(tpdu, Limits::default());
    assert_eq!(header, hdr.to_vec());

    let sp = common::split(card);
    let mut sent = 0;
    let mut done = false;
    for p in &sp.pieces {
        if done {
            assert_eq!(
                ex.feed(p),
                Ok(Step::Wait),
                "bytes after Done must be ignored"
            );
            continue;
        }
        match ex.feed(p) {
            Ok(Step::Wait) => {
                // No data beyond Ne accumulates even while waiting.
                assert!(ex.received().len() <= ne);
            }
            Ok(Step::Send(d)) => {
                assert_eq!(dir, Direction::In, "Send for an Out command");
                sent += 1;
                assert_eq!(sent, 1, "body sent twice");
                assert_eq!(d, body);
            }
            Ok(Step::Done(r)) => {
                assert!(r.bytes.len() >= 2, "response without SW: {r:?}");
                let sw1 = r.sw()[0];
                assert!(sw1 & 0xF0 == 0x60 || sw1 & 0xF0 == 0x90, "SW1 {sw1:02X}");
                assert_ne!(sw1, 0x60, "NULL taken as SW1");
                match dir {
                    Direction::Out => {
                        assert!(r.data().len() <= ne, "{} data > Ne {ne}", r.data().len())
                    }
                    Direction::In => assert!(r.data().is_empty(), "data for an In command"),
                }
                assert!(r.trailing < p.len().max(1));
                assert!(ex.is_done());
                done = true;
            }
            Err(_) => return,
        }
    }
});
