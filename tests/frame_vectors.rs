//! The pool frame codec against every example of the manual, split at every point.

mod common;

use proptest::prelude::*;
use simpool::pool::frame::{FrameError, Reply, ReplyDecoder, Request, RequestDecoder, Slot};

fn decode_requests(bytes: &[u8]) -> Vec<Result<Request, FrameError>> {
    let mut d = RequestDecoder::new();
    d.push(bytes);
    std::iter::from_fn(|| d.next_request()).collect()
}

fn decode_replies_in_pieces(pieces: &[&[u8]]) -> Vec<Result<Reply, FrameError>> {
    let mut d = ReplyDecoder::new();
    let mut out = Vec::new();
    for p in pieces {
        d.push(p);
        while let Some(r) = d.next_reply() {
            out.push(r);
        }
    }
    out
}

#[test]
fn every_manual_request_roundtrips() {
    let mut n = 0;
    for case in common::manual_cases() {
        for step in &case.steps {
            let got = decode_requests(&step.request);
            assert_eq!(got.len(), 1, "{}: {:?}", case.name, got);
            let req = got[0].clone().unwrap();
            assert_eq!(req.to_bytes().unwrap(), step.request, "{}", case.name);
            n += 1;
        }
    }
    assert_eq!(n, 27, "requests in the vectors");
}

#[test]
fn manual_requests_mean_what_the_manual_says() {
    let one = |name: &str| {
        decode_requests(&common::case(name).steps[0].request)
            .remove(0)
            .unwrap()
    };
    assert_eq!(one("read-id"), Request::ReadId);
    assert_eq!(one("read-version"), Request::ReadVersion);
    assert_eq!(
        one("card-38-abnormal"),
        Request::ErrorIndication(Slot::from_card(38).unwrap())
    );
    assert_eq!(
        one("start-card-101"),
        Request::Start(Slot::from_card(101).unwrap())
    );
    assert_eq!(
        one("stop-card-100"),
        Request::Stop(Slot::from_card(100).unwrap())
    );
    assert_eq!(
        one("header-to-card-102"),
        Request::Data(
            Slot::from_card(102).unwrap(),
            vec![0xA0, 0xA4, 0x00, 0x00, 0x02]
        )
    );
    assert!(!Request::Stop(Slot(0)).expects_reply());
}

#[test]
fn every_manual_reply_decodes_whole_bytewise_and_at_every_split() {
    for case in common::manual_cases() {
        for step in case.steps.iter().filter(|s| s.reply.is_some()) {
            let bytes = step.reply.as_ref().unwrap();
            let whole = decode_replies_in_pieces(&[bytes]);
            assert_eq!(whole.len(), 1, "{}", case.name);
            let reply = whole[0].clone().unwrap();
            assert_eq!(reply.to_bytes(), *bytes, "{}", case.name);
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                decode_replies_in_pieces(&bytewise),
                whole,
                "{} bytewise",
                case.name
            );
            for cut in 1..bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(
                    decode_replies_in_pieces(&[a, b]),
                    whole,
                    "{} cut at {cut}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn manual_reply_contents() {
    let id = common::case("read-id").steps[0].reply.clone().unwrap();
    let r = decode_replies_in_pieces(&[&id]).remove(0).unwrap();
    assert_eq!(
        r,
        Reply::Pool {
            slot: 0,
            data: common::hex("FF 75 06 71 82 55 54 33 39 20 67 00")
        }
    );
    let s1 = common::case("session-1-iccid-card-18");
    let last = s1.steps.last().unwrap().reply.clone().unwrap();
    match decode_replies_in_pieces(&[&last]).remove(0).unwrap() {
        Reply::Card { slot, data } => {
            assert_eq!(slot.card(), 18);
            assert_eq!(data, common::hex("B0 98 68 00 34 91 41 28 91 60 63 90 00"));
        }
        other => panic!("{other:?}"),
    }
}

/// What the tests expect of the manual's cards (`tests/vectors/cards.txt`) is what the manual
/// shows: each ATR is the answer to that card's start, EF.ICCID and EF.IMSI the data of the READ
/// BINARY that ends sessions 1 and 2, and the digits decode from those bytes.
#[test]
fn card_facts_are_the_manuals() {
    // Every card reply of the manual, by card: (request data, reply data).
    let mut replies: Vec<(u16, Vec<u8>, Vec<u8>)> = Vec::new();
    for case in common::manual_cases() {
        for step in &case.steps {
            let Some(reply) = &step.reply else { continue };
            // A start is keyed by its control byte `FF`.
            let (slot, req) = match decode_requests(&step.request).remove(0) {
                Ok(Request::Data(slot, req)) => (slot, req),
                Ok(Request::Start(slot)) => (slot, vec![0xFF]),
                _ => continue,
            };
            if let Ok(Reply::Card { data, .. }) = decode_replies_in_pieces(&[reply]).remove(0) {
                replies.push((slot.card(), req, data));
            }
        }
    }
    let answer = |card: u16, req: &[u8]| -> Vec<u8> {
        replies
            .iter()
            .find(|(c, r, _)| *c == card && r == req)
            .map(|(_, _, d)| d.clone())
            .unwrap_or_else(|| panic!("the manual sends card {card} no {req:02X?}"))
    };
    let facts = common::vectors::manual_cards();
    assert!(facts.len() >= 8, "{facts:?}");
    for (card, field, value) in facts {
        match field.as_str() {
            "atr" => assert_eq!(common::upper(&answer(card, &[0xFF])), value, "card {card}"),
            "ef-iccid" => {
                let r = answer(card, &common::hex("A0B000000A"));
                assert_eq!(
                    r,
                    [&[0xB0][..], &common::hex(&value), &[0x90, 0x00]].concat()
                );
            }
            "ef-imsi" => {
                let r = answer(card, &common::hex("A0B0000009"));
                assert_eq!(
                    r,
                    [&[0xB0][..], &common::hex(&value), &[0x90, 0x00]].concat()
                );
            }
            "iccid" => assert_eq!(
                simpool::sim::profile::decode_iccid(&common::vectors::ef_iccid(card)),
                value
            ),
            "imsi" => assert_eq!(
                simpool::sim::profile::decode_imsi(&common::vectors::ef_imsi(card)),
                Some(value)
            ),
            other => panic!("cards.txt: unknown field {other}"),
        }
    }
}

#[test]
fn a_whole_session_in_one_stream_decodes_in_order() {
    let case = common::case("session-2-imsi-card-256");
    let stream: Vec<u8> = case
        .steps
        .iter()
        .filter_map(|s| s.reply.clone())
        .flatten()
        .collect();
    let got = decode_replies_in_pieces(&[&stream]);
    assert_eq!(got.len(), case.steps.len());
    assert!(got
        .iter()
        .all(|r| matches!(r, Ok(Reply::Card { slot, .. }) if slot.card() == 256)));
}

#[test]
fn garbage_between_frames_is_skipped_and_reported() {
    let good = common::case("read-version").steps[0].reply.clone().unwrap();
    let mut stream = vec![0x00, 0x13, 0x37];
    stream.extend(&good);
    stream.extend([0xAA, 0x66, 0x01]); // a request header is no reply header
    stream.extend(&good);
    let got = decode_replies_in_pieces(&[&stream]);
    let frames: Vec<_> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(frames.len(), 2);
    assert!(got.iter().any(|r| matches!(r, Err(FrameError::Garbage(3)))));
}

#[test]
fn requests_that_the_pool_would_misread_are_refused() {
    assert_eq!(
        Request::Data(Slot(5), vec![0xFF]).to_bytes(),
        Err(FrameError::DataLength(1))
    );
    assert_eq!(
        Request::Data(Slot(5), vec![]).to_bytes(),
        Err(FrameError::DataLength(0))
    );
    assert!(Request::Data(Slot(5), vec![0; 255]).to_bytes().is_ok());
}

proptest! {
    // Hostile bytes: the decoders never panic, never hold more than one maximal frame, and
    // find a good frame again after any garbage.
    #[test]
    fn reply_decoder_survives_anything(junk in proptest::collection::vec(any::<u8>(), 0..2048),
                                       cuts in proptest::collection::vec(1usize..64, 1..32)) {
        let good = Reply::Card { slot: Slot(7), data: vec![0x90, 0x00] }.to_bytes();
        let mut stream = junk.clone();
        // An AA at the end of the junk could swallow the good frame's first bytes as a header;
        // a few filler bytes with no AA and a length-consuming tail keep the check meaningful.
        stream.extend(std::iter::repeat_n(0u8, 1030));
        stream.extend(&good);
        let mut d = ReplyDecoder::new();
        let mut pos = 0;
        let mut found = false;
        let mut ci = 0;
        while pos < stream.len() {
            let n = cuts[ci % cuts.len()].min(stream.len() - pos);
            ci += 1;
            d.push(&stream[pos..pos + n]);
            pos += n;
            while let Some(r) = d.next_reply() {
                if r == Ok(Reply::Card { slot: Slot(7), data: vec![0x90, 0x00] }) { found = true; }
            }
            prop_assert!(d.buffered() <= 5 + simpool::pool::frame::MAX_REPLY_DATA);
        }
        prop_assert!(found);
    }

    #[test]
    fn request_decoder_survives_anything(junk in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut d = RequestDecoder::new();
        d.push(&junk);
        while d.next_request().is_some() {}
        prop_assert!(d.buffered() <= 4 + 255);
    }

    #[test]
    fn requests_roundtrip(slot in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 2..=255)) {
        let req = Request::Data(Slot(slot), data);
        let bytes = req.to_bytes().unwrap();
        prop_assert_eq!(decode_requests(&bytes), vec![Ok(req)]);
    }
}
