//! The T=0 terminal as a pure state machine: the manual's exchanges and the edge cases of
//! docs/t0-and-sim.md §3.8, with the card's bytes split at every point.

mod common;

use common::h;

use simpool::t0::{Exchange, Limits, Refusal, Response, Step, T0Error, Tpdu};

/// Runs `cmd` against a scripted card: `script[i]` is what the card sends after the terminal's
/// i-th transmission (header, then data). Each answer is fed in the given pieces.
fn run(cmd: &str, script: &[&[&str]]) -> (Result<Response, T0Error>, Vec<Vec<u8>>) {
    let tpdu = Tpdu::parse(&h(cmd)).expect("accepted at intake");
    let (mut ex, header) = Exchange::new(tpdu, Limits::default());
    let mut sent = vec![header];
    for answer in script {
        for piece in answer.iter() {
            match ex.feed(&h(piece)) {
                Err(e) => return (Err(e), sent),
                Ok(Step::Wait) => {}
                Ok(Step::Send(d)) => sent.push(d),
                Ok(Step::Done(r)) => return (Ok(r), sent),
            }
        }
    }
    panic!("script ended before the exchange: sent {sent:?}");
}

/// Feeds `answer` (all the card's bytes after the header, for an Out command) cut at every
/// point and as single bytes; all must give the same response.
fn out_at_every_split(cmd: &str, answer: &str) -> Response {
    let bytes = h(answer);
    let whole = run(cmd, &[&[answer]]).0.unwrap();
    for cut in 1..bytes.len() {
        let (a, b) = bytes.split_at(cut);
        let (ha, hb) = (hex::encode(a), hex::encode(b));
        assert_eq!(run(cmd, &[&[&ha, &hb]]).0.unwrap(), whole, "cut at {cut}");
    }
    let singles: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    let refs: Vec<&str> = singles.iter().map(String::as_str).collect();
    assert_eq!(run(cmd, &[&refs]).0.unwrap(), whole, "byte by byte");
    whole
}

#[test]
fn manual_session_1_select_and_read_iccid() {
    let (r, sent) = run("A0A40000023F00", &[&["A4"], &["9F17"]]);
    assert_eq!(r.unwrap().bytes, h("9F17"));
    assert_eq!(sent, vec![h("A0A4000002"), h("3F00")]);
    let r = out_at_every_split("A0B000000A", "B0 98680034914128916063 9000");
    assert_eq!(r.bytes, h("98680034914128916063 9000"));
}

#[test]
fn manual_session_3_run_gsm_algorithm() {
    let (r, sent) = run(
        "A088000010 12305263415263524195637485967463",
        &[&["88"], &["9F0C"]],
    );
    assert_eq!(r.unwrap().bytes, h("9F0C"));
    assert_eq!(sent[1], h("12305263415263524195637485967463"));
    let r = out_at_every_split("A0C000000C", "C0 508906FE24ECFE3A2290BD8C 9000");
    assert_eq!(r.bytes, h("508906FE24ECFE3A2290BD8C9000"));
}

#[test]
fn nulls_in_separate_frames() {
    let (r, _) = run("A0A40000023F00", &[&["A4"], &["60", "6060", "9F", "17"]]);
    assert_eq!(r.unwrap().bytes, h("9F17"));
    let (r, _) = run("A0A40000023F00", &[&["60", "60A4"], &["9F17"]]);
    assert_eq!(r.unwrap().bytes, h("9F17"));
}

#[test]
fn data_that_look_like_procedure_bytes_are_data() {
    let r = out_at_every_split("A0B0000004", "B0 60 9F 61 6C 9000");
    assert_eq!(r.bytes, h("609F616C9000"));
}

#[test]
fn le_00_means_256_bytes() {
    let answer = format!("C0{}9000", "60".repeat(256));
    let r = run("A0C0000000", &[&[&answer]]).0.unwrap();
    assert_eq!(r.data(), vec![0x60; 256].as_slice());
    assert_eq!(r.sw(), [0x90, 0x00]);
}

#[test]
fn single_byte_mode_then_ack_for_the_rest() {
    // ~INS one byte at a time, a NULL, then INS for the remaining bytes.
    let r = out_at_every_split("A0B0000004", "4F 11 4F 22 60 B0 33 44 9000");
    assert_eq!(r.bytes, h("112233449000"));
}

#[test]
fn single_byte_during_incoming_transfer_aborts() {
    let (r, sent) = run("A0D6000002 AABB", &[&["29"]]);
    assert_eq!(r, Err(T0Error::OneByteRequested));
    assert_eq!(sent.len(), 1, "no data byte may reach the pool");
}

#[test]
fn case_1_and_immediate_status() {
    let tpdu = Tpdu::parse(&h("A0040000")).unwrap();
    assert_eq!(tpdu.header, [0xA0, 0x04, 0, 0, 0]);
    let (r, _) = run("A0040000", &[&["9000"]]);
    assert_eq!(r.unwrap().bytes, h("9000"));
}

#[test]
fn status_words_pass_through_unchanged() {
    for sw in [
        "6C20", "6120", "9F0F", "6700", "6D00", "6E00", "9404", "9804",
    ] {
        let (r, _) = run("80F2000000", &[&[sw]]);
        assert_eq!(r.unwrap().bytes, h(sw));
    }
    // the application re-issues with the corrected P3
    let r = out_at_every_split("80F2000020", &format!("F2{}9000", "01".repeat(32)));
    assert_eq!(r.data().len(), 32);
}

#[test]
fn trailing_byte_after_sw2_is_flagged() {
    let (r, _) = run("A0A40000023F00", &[&["A4"], &["9F17FF"]]);
    let r = r.unwrap();
    assert_eq!((r.bytes, r.trailing), (h("9F17"), 1));
}

#[test]
fn ack_with_nothing_left_is_an_error() {
    let (r, _) = run("A0A40000023F00", &[&["A4"], &["A4"]]);
    assert_eq!(r, Err(T0Error::NothingLeft(0xA4)));
    let (r, _) = run("A0B0000002", &[&["B0 1122 B0"]]);
    assert_eq!(r, Err(T0Error::NothingLeft(0xB0)));
}

#[test]
fn unknown_procedure_byte_is_an_error() {
    let (r, _) = run("A0A40000023F00", &[&["42"]]);
    assert_eq!(r, Err(T0Error::UnexpectedProcedure(0x42)));
    // ISO 7816-3:1989 VPP variants are refused too
    let (r, _) = run("A0A40000023F00", &[&["A5"]]);
    assert_eq!(r, Err(T0Error::UnexpectedProcedure(0xA5)));
}

#[test]
fn bytes_before_the_data_were_sent_is_an_error() {
    let (r, _) = run("A0A40000023F00", &[&["A49F"]]);
    assert_eq!(r, Err(T0Error::BytesBeforeData(1)));
}

#[test]
fn null_cap() {
    let tpdu = Tpdu::parse(&h("A088000010 00112233445566778899AABBCCDDEEFF")).unwrap();
    let (mut ex, _) = Exchange::new(tpdu, Limits { max_nulls: 10 });
    assert!(matches!(ex.feed(&h("88")), Ok(Step::Send(_))));
    assert_eq!(ex.feed(&[0x60; 10]), Ok(Step::Wait));
    assert_eq!(ex.feed(&[0x60]), Err(T0Error::TooManyNulls(11)));
}

#[test]
fn intake_refusals_and_their_status_words() {
    let cases: &[(&str, Refusal, [u8; 2])] = &[
        ("A0", Refusal::Malformed(1), [0x67, 0x00]),
        ("A0A400", Refusal::Malformed(3), [0x67, 0x00]),
        ("A0A40000033F00", Refusal::Malformed(7), [0x67, 0x00]),
        ("00A4000000000102", Refusal::Extended(8), [0x67, 0x00]),
        ("A0600000", Refusal::InvalidIns(0x60), [0x6D, 0x00]),
        ("A0610000 00", Refusal::InvalidIns(0x61), [0x6D, 0x00]),
        ("A09F0000 00", Refusal::InvalidIns(0x9F), [0x6D, 0x00]),
        ("A0D6000001 AA", Refusal::OneDataByte, [0x6F, 0x00]),
    ];
    for (cmd, refusal, sw) in cases {
        let got = Tpdu::parse(&h(cmd)).unwrap_err();
        assert_eq!(&got, refusal, "{cmd}");
        assert_eq!(got.status(), *sw, "{cmd}");
    }
}

#[test]
fn case_4_apdu_le_is_stripped() {
    // pySim strips Le itself; other applications may not.
    let t = Tpdu::parse(&h("00A40004023F00 00")).unwrap();
    assert_eq!(t.header, [0x00, 0xA4, 0x00, 0x04, 0x02]);
    assert_eq!(t.body, h("3F00"));
    assert_eq!(t.stripped_le, Some(0));
    let (r, _) = run("00A40004023F0000", &[&["A4"], &["6120"]]);
    assert_eq!(r.unwrap().bytes, h("6120"));
}

/// Issue 24: nothing in the terminal depends on CLA. Every class a logical channel or a
/// proprietary command uses (basic channels 1-3, extended 4-19 as `4X`/`CX`, `8X` STORE DATA,
/// even classes no card would accept) runs procedure bytes, data, NULLs and `61xx` alike.
#[test]
fn any_class_byte_every_channel() {
    for cla in [
        0x00u8, 0x01, 0x02, 0x03, 0x40, 0x45, 0x4F, 0x60, 0x80, 0x81, 0x83, 0xC0, 0xCF, 0xE3, 0xA0,
        0xFF,
    ] {
        // MANAGE CHANNEL open (case 2, Le = 1): ACK, the channel number, 90 00.
        let r = out_at_every_split(&format!("{cla:02X}70000001"), "70 01 9000");
        assert_eq!(r.bytes, h("01 9000"), "CLA {cla:02X}");
        // SELECT by AID (case 3): header, ACK, body, NULLs, 61 21 passed through untouched.
        let cmd = format!("{cla:02X}A4040410A0000005591010FFFFFFFF8900000100");
        let (r, sent) = run(&cmd, &[&["A4"], &["60", "6061", "21"]]);
        assert_eq!(r.unwrap().bytes, h("6121"), "CLA {cla:02X}");
        assert_eq!(sent[0], h(&cmd[..10]));
        assert_eq!(sent[1], h(&cmd[10..]));
        // GET RESPONSE on the channel: data that look like procedure bytes stay data.
        let r = out_at_every_split(&format!("{cla:02X}C0000004"), "C0 6061 9F6C 9000");
        assert_eq!(r.bytes, h("6061 9F6C 9000"), "CLA {cla:02X}");
        // STORE DATA with a case-4 Le the application left on: stripped, data sent after ACK.
        let t = Tpdu::parse(&h(&format!("{cla:02X}E2910003BF2D0000"))).unwrap();
        assert_eq!((t.header[0], t.body.clone()), (cla, h("BF2D00")));
    }
}

/// Issue 24: a card working for seconds sends a NULL now and then (a profile enable); each one
/// keeps the exchange going, the SW ends it.
#[test]
fn nulls_while_an_euicc_enables_a_profile() {
    let nulls: Vec<&str> = std::iter::repeat_n("60", 15).collect();
    let (r, sent) = run(
        "81E2910014BF3111A00C5A0A98944409000500000031810100",
        &[&["E2"], &nulls, &["6106"]],
    );
    assert_eq!(r.unwrap().bytes, h("6106"));
    assert_eq!(sent.len(), 2);
}
