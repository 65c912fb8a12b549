//! The simulated GSM SIM at card level: the manual's sessions byte for byte, every command,
//! CHV flows, record modes, T=0 quirks. Every script is also replayed byte by byte, as one
//! piece and at random split points, and must give identical output.

mod common;

use common::h;

use simpool::sim::algo::{run_gsm, Algo};
use simpool::sim::card::{SimCard, JUNK};
use simpool::sim::profile::{generated, CardProfile, CardsFile, T0Quirks};

fn manual(slot: u16) -> CardProfile {
    CardsFile::default_set().get(slot).unwrap().profile.clone()
}

type Script = Vec<(Vec<u8>, Vec<u8>)>;

fn script(steps: &[(&str, &str)]) -> Script {
    steps.iter().map(|(a, b)| (h(a), h(b))).collect()
}

/// Runs `s` on a fresh, reset card: step by step (asserting each answer), then byte by byte,
/// then as one piece, then with pseudo-random chunking; all must agree.
fn run(p: &CardProfile, s: &Script) -> SimCard {
    let mut c = SimCard::new(p.clone());
    c.reset();
    for (i, (cmd, want)) in s.iter().enumerate() {
        let got = c.receive(cmd);
        assert_eq!(
            hex::encode_upper(&got),
            hex::encode_upper(want),
            "step {i}: {}",
            hex::encode_upper(cmd)
        );
    }
    let all_in: Vec<u8> = s.iter().flat_map(|(a, _)| a.clone()).collect();
    let all_out: Vec<u8> = s.iter().flat_map(|(_, b)| b.clone()).collect();

    let mut b = SimCard::new(p.clone());
    b.reset();
    let bytewise: Vec<u8> = all_in.iter().flat_map(|x| b.receive(&[*x])).collect();
    assert_eq!(bytewise, all_out, "byte by byte");

    let mut o = SimCard::new(p.clone());
    o.reset();
    assert_eq!(o.receive(&all_in), all_out, "one piece");

    let mut r = SimCard::new(p.clone());
    r.reset();
    let mut seed = 0x2545_F491u32;
    let mut got = Vec::new();
    let mut rest = &all_in[..];
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed as usize % 7 + 1).min(rest.len());
        got.extend(r.receive(&rest[..n]));
        rest = &rest[n..];
    }
    assert_eq!(got, all_out, "random chunks");
    c
}

const SEL: &str = "A0A4000002";

// ---------------------------------------------------------------- the manual's sessions

#[test]
fn manual_session_1_iccid_card_18() {
    let p = manual(18);
    let mut c = SimCard::new(p.clone());
    assert_eq!(
        c.reset(),
        h("3B 9F 95 80 1F C3 80 31 E0 73 FE 21 13 57 86 81 02 86 98 44 18 A8")
    );
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("3F00", "9F17"),
            (SEL, "A4"),
            ("2FE2", "9F0F"),
            ("A0B000000A", "B0 98 68 00 34 91 41 28 91 60 63 90 00"),
        ]),
    );
}

#[test]
fn manual_session_2_imsi_card_256() {
    let p = manual(256);
    let mut c = SimCard::new(p.clone());
    assert_eq!(
        c.reset(),
        h("3B 9E 94 80 1F 47 80 31 A0 73 BE 21 11 66 44 4D 54 22 01 00 26")
    );
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F20", "9F17"),
            (
                "A0C0000017",
                "C0 00 00 00 00 7F 20 02 00 00 00 00 00 0A 93 00 30 04 00 83 8A 83 8A 00 90 00",
            ),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A0B0000009", "B0 08 49 06 10 89 49 10 63 51 90 00"),
        ]),
    );
}

#[test]
fn manual_session_3_gsm_auth_card_2() {
    let p = manual(2);
    let mut c = SimCard::new(p.clone());
    assert_eq!(
        c.reset(),
        h("3B 9D 95 80 1F C7 80 31 E0 73 FE 21 13 65 15 09 63 86 83 A1")
    );
    let rand: [u8; 16] = h("12305263415263524195637485967463").try_into().unwrap();
    let (sres, kc) = run_gsm(&p.algo, &p.ki, &rand);
    let mut gr = vec![0xC0];
    gr.extend_from_slice(&sres);
    gr.extend_from_slice(&kc);
    gr.extend_from_slice(&[0x90, 0x00]);
    assert_eq!(gr.len(), 15); // the manual's reply length 00 0F
    let mut s = script(&[
        (SEL, "A4"),
        ("3F00", "9F17"),
        (SEL, "A4"),
        ("7F20", "9F17"),
        ("A0 88 00 00 10", "88"),
        ("12 30 52 63 41 52 63 52 41 95 63 74 85 96 74 63", "9F0C"),
    ]);
    s.push((h("A0C000000C"), gr));
    run(&p, &s);
}

#[test]
fn manual_header_to_card_102_and_atr_101() {
    let p = manual(102);
    run(&p, &script(&[(SEL, "A4")]));
    assert_eq!(
        SimCard::new(manual(101)).reset(),
        h("3B 3D 94 00 32 06 01 12 00 00 86 60 61 10 80 00 07")
    );
}

// ---------------------------------------------------------------- header handling

#[test]
fn class_ins_and_p3_errors() {
    let p = generated(5);
    run(
        &p,
        &script(&[
            // pySim's UICC probe: rejected at the header, before any data
            ("00A4000402", "6E00"),
            ("A0F2000000", "6717"),
            ("A0 6D 00 00 00", "6D00"),
            ("A0 10 00 00 05", "6D00"), // TERMINAL PROFILE: no SAT
            ("A0 C2 00 00 10", "6D00"),
            ("A0 12 00 00 10", "6D00"),
            ("A0 14 00 00 0C", "6D00"),
            ("A0A4000003", "6702"),
            ("A0 20 00 01 04", "6708"),
            ("A0 88 00 00 08", "6710"),
            ("A0 32 00 00 04", "6703"),
            ("A0 2C 00 00 08", "6710"),
            ("A0 D6 00 00 00", "6700"),
            ("A0 04 00 00 01", "6700"),
            ("A0 FA 00 00 00", "9000"), // SLEEP
            ("A0A4010002", "A4"),
            ("3F00", "6B00"),
            (SEL, "A4"),
            ("1234", "9404"),
        ]),
    );
}

#[test]
fn powered_off_card_is_silent_and_reset_clears_state() {
    let p = generated(6);
    let mut c = SimCard::new(p);
    assert!(!c.is_powered());
    assert!(c.receive(&h("A0A4000002")).is_empty());
    c.reset();
    // partial header, then reset: the card starts a fresh header
    assert!(c.receive(&h("A0A4")).is_empty());
    c.reset();
    assert_eq!(c.receive(&h("A0A4000002")), h("A4"));
    assert_eq!(c.receive(&h("2FE2")), h("9F0F"));
    c.reset();
    assert_eq!(c.receive(&h("A0B000000A")), h("9400")); // no EF after reset
    assert_eq!(c.receive(&h("A0C000000F")), h("6F00")); // nothing pending
    c.power_off();
    assert!(c.receive(&h("A0F2000017")).is_empty());
}

// ---------------------------------------------------------------- SELECT / STATUS / GET RESPONSE

#[test]
fn get_response_rules() {
    let p = generated(7);
    let c = run(
        &p,
        &script(&[
            ("A0C0000017", "6F00"),
            (SEL, "A4"),
            ("7F20", "9F17"),
            ("A0C0000018", "6717"),
            ("A0C0000000", "6717"),
            ("A0C0010017", "6B00"),
            // failed GET RESPONSEs keep the response
            ("A0C0000004", "C0 00000000 9000"),
            // a successful one consumes it
            ("A0C0000004", "6F00"),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A0C000000F", "C0 000000096F07040014FF1401020000 9000"),
            (SEL, "A4"),
            ("6FAD", "9F0F"),
            // any other command discards it
            ("A0B0000004", "B0 00000002 9000"),
            ("A0C000000F", "6F00"),
        ]),
    );
    assert_eq!(c.sim().current_df(), 0x7F20);
    assert_eq!(c.sim().current_ef(), Some(0x6FAD));
}

#[test]
fn status_returns_current_df() {
    let p = generated(8);
    let body_gsm = "0000 0000 7F20 02 0000000000 0A 93 00 16 04 00 838A838A 00";
    run(
        &p,
        &script(&[
            (
                "A0F2000017",
                "F2 0000 0000 3F00 01 0000000000 0A 93 02 01 04 00 838A838A 00 9000",
            ),
            (SEL, "A4"),
            ("7F20", "9F17"),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A0F2000017", &format!("F2 {body_gsm} 9000")),
            ("A0F2000005", "F2 0000 0000 7F 9000"),
            ("A0F2000000", "6717"),
            ("A0F2000018", "6717"),
            ("A0F2000100", "6B00"),
        ]),
    );
}

#[test]
fn selection_rules_and_alias() {
    let p = generated(9);
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            (
                "A0C000000F",
                "C0 0000 012C 6F3A 04 00 11 FF 22 05 02 01 1E 9000",
            ),
            (SEL, "A4"),
            ("7F21", "9F17"), // sibling, via the DCS1800 alias
            (SEL, "A4"),
            ("6F3A", "9404"), // EF of the sibling: not reachable
            (SEL, "A4"),
            ("2FE2", "9404"), // EF of the MF from a DF: not reachable
            ("A0F2000006", "F2 0000 0000 7F20 9000"),
            (SEL, "A4"),
            ("3F00", "9F17"),
            (SEL, "A4"),
            ("6F07", "9404"), // not a child of the MF
        ]),
    );
}

// ---------------------------------------------------------------- binary

#[test]
fn read_update_binary() {
    let mut p = generated(10);
    p.t0.nulls = 2;
    let c = run(
        &p,
        &script(&[
            ("A0B0000001", "9400"),
            (SEL, "A4"),
            ("2FE2", "9F0F"),
            ("A0D6000002", "D6"),
            ("1234", "6060 9804"), // ICCID: update NEV
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            ("A0B0000001", "9408"), // record EF
            (SEL, "A4"),
            ("6F43", "9F0F"),
            ("A0D6000002", "D6"),
            ("6099", "6060 9000"),
            ("A0B0000002", "B0 6099 9000"),
            ("A0D6000102", "D6"),
            ("1122", "6060 6701"), // offset + length beyond the end
            ("A0D6000201", "D6"),
            ("11", "6060 6B00"), // offset beyond the end
            ("A0D6000101", "D6"),
            ("77", "6060 9000"),
            ("A0B0000102", "6701"),
            ("A0B0000101", "B0 77 9000"),
        ]),
    );
    assert_eq!(c.sim().read_ef("3F00/7F10/6F43"), Some(h("6077")));
    assert_eq!(
        c.sim().read_ef("3F00/2FE2"),
        Some(simpool::sim::profile::encode_iccid(&p.iccid).to_vec())
    );
}

// ---------------------------------------------------------------- records

fn adn(tag: u8) -> String {
    let mut r = vec![0xFF; 30];
    r[0] = tag;
    r[1] = tag;
    hex::encode_upper(r)
}

#[test]
fn linear_fixed_record_modes() {
    let p = generated(11);
    let (a1, a2, a3) = (adn(0x41), adn(0x42), adn(0x43));
    let last = hex::encode_upper(vec![0xFF; 30]);
    let out = |r: &str| format!("B2 {r} 9000");
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            ("A0B200041E", "9402"), // rec 00 = current: pointer unset after SELECT
            ("A0B20B041E", "9402"), // no record 11
            ("A0B201041D", "671E"), // wrong length
            ("A0B201011E", "6B00"), // bad mode
            ("A0DC01041E", "DC"),
            (&a1, "9000"),
            ("A0DC02041E", "DC"),
            (&a2, "9000"),
            ("A0DC03041E", "DC"),
            (&a3, "9000"),
            ("A0DC00041E", "DC"),
            (&a1, "9402"),             // absolute mode does not set the pointer
            ("A0B200021E", &out(&a1)), // next from unset = record 1
            ("A0B200021E", &out(&a2)),
            ("A0B200041E", &out(&a2)), // current
            ("A0B200031E", &out(&a1)),
            ("A0B200031E", "9402"),    // previous before record 1
            ("A0B200041E", &out(&a1)), // pointer unchanged
            ("A0B20A041E", &out(&last)),
            ("A0B200021E", &out(&a2)), // absolute did not move the pointer
            ("A0DC00021E", "DC"),
            (&a1, "9000"), // update next = record 3
            ("A0B203041E", &out(&a1)),
            ("A0DC00041E", "DC"),
            (&a2, "9000"), // update current (record 3)
            ("A0B203041E", &out(&a2)),
        ]),
    );
}

#[test]
fn linear_fixed_end_and_previous_from_unset() {
    let p = generated(12);
    let last = hex::encode_upper(vec![0xFF; 30]);
    let mut s = script(&[
        (SEL, "A4"),
        ("7F10", "9F17"),
        (SEL, "A4"),
        ("6F3A", "9F0F"),
        ("A0B200031E", &format!("B2 {last} 9000")), // previous from unset = last record
        ("A0B200021E", "9402"),                     // next after the last
    ]);
    s.extend(script(&[("A0B200041E", &format!("B2 {last} 9000"))]));
    run(&p, &s);
}

#[test]
fn cyclic_records() {
    let p = generated(13);
    let (a, b, c) = (adn(0xA1), adn(0xB2), adn(0xC3));
    let ff = hex::encode_upper(vec![0xFF; 30]);
    let out = |r: &str| format!("B2 {r} 9000");
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F44", "9F0F"),
            (
                "A0C000000F",
                "C0 0000 0096 6F44 04 00 11 FF 14 01 02 03 1E 9000",
            ),
            ("A0DC01041E", "DC"),
            (&a, "6B00"), // cyclic: only PREVIOUS
            ("A0DC00031E", "DC"),
            (&a, "9000"),
            ("A0DC00031E", "DC"),
            (&b, "9000"),
            ("A0DC00031E", "DC"),
            (&c, "9000"),
            // record 1 = the most recent
            ("A0B201041E", &out(&c)),
            ("A0B202041E", &out(&b)),
            ("A0B203041E", &out(&a)),
            ("A0B204041E", &out(&ff)),
            ("A0B206041E", "9402"),
            // pointer is at record 1 after the update; NEXT goes to 2, PREVIOUS wraps
            ("A0B200031E", &out(&ff)),
            ("A0B200021E", &out(&c)),
            ("A0B200021E", &out(&b)),
        ]),
    );
}

#[test]
fn seek_type_1_and_2() {
    let p = generated(14);
    let (a1, a2) = (adn(0x41), adn(0x42));
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            ("A0DC02041E", "DC"),
            (&a1, "9000"),
            ("A0DC05041E", "DC"),
            (&a2, "9000"),
            ("A0DC07041E", "DC"),
            (&a1, "9000"),
            ("A0A2001002", "A2"),
            ("4141", "9F01"),
            ("A0C0000001", "C0 02 9000"),
            ("A0A2000202", "A2"),
            ("4141", "9000"), // from next: record 7
            ("A0B200041E", &format!("B2 {a1} 9000")),
            ("A0A2001302", "A2"),
            ("4141", "9F01"), // from previous, backward: record 2
            ("A0C0000001", "C0 02 9000"),
            ("A0A2001102", "A2"),
            ("4242", "9F01"), // from the end backward: record 5
            ("A0C0000001", "C0 05 9000"),
            ("A0A2000002", "A2"),
            ("4343", "9404"),
            ("A0A200001F", "A2"),
            (&format!("{a1}00"), "671E"),
            ("A0A2002002", "A2"),
            ("4141", "6B00"),
            (SEL, "A4"),
            ("6F44", "9F0F"),
            ("A0A2000002", "A2"),
            ("4141", "9408"), // cyclic EF
        ]),
    );
}

#[test]
fn increase_on_acm() {
    let p = generated(15);
    run(
        &p,
        &script(&[
            ("A0 32 00 00 03", "32"),
            ("000001", "9400"),
            (SEL, "A4"),
            ("7F20", "9F17"),
            (SEL, "A4"),
            ("6F39", "9F0F"),
            (
                "A0C000000F",
                "C0 0000 000F 6F39 04 40 12 1F 14 01 02 03 03 9000",
            ),
            ("A0 32 00 00 03", "32"),
            ("000010", "9F06"),
            ("A0C0000006", "C0 000010 000010 9000"),
            ("A0 32 00 00 03", "32"),
            ("000005", "9F06"),
            ("A0C0000006", "C0 000015 000005 9000"),
            ("A0B2010403", "B2 000015 9000"),
            ("A0B2020403", "B2 000010 9000"),
            ("A0 32 00 00 03", "32"),
            ("FFFFFF", "9850"),
            ("A0B2010403", "B2 000015 9000"),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A0 32 00 00 03", "32"),
            ("000001", "9408"),
        ]),
    );
}

// ---------------------------------------------------------------- CHV

fn imsi_hex(p: &CardProfile) -> String {
    hex::encode_upper(simpool::sim::profile::encode_imsi(&p.imsi))
}

const PIN_1234: &str = "31323334FFFFFFFF";
const PIN_4321: &str = "34333231FFFFFFFF";
const PIN_9999: &str = "39393939FFFFFFFF";
const PUK: &str = "3132333435363738";

#[test]
fn chv1_disabled_by_default() {
    let p = generated(16);
    run(
        &p,
        &script(&[
            ("A020000108", "20"),
            (PIN_1234, "9808"),
            ("A024000110", "24"),
            (&format!("{PIN_1234}{PIN_9999}"), "9808"),
            ("A026000108", "26"),
            (PIN_1234, "9808"),
            (SEL, "A4"),
            ("7F20", "9F17"),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            (
                "A0B0000009",
                &format!(
                    "B0 {} 9000",
                    "080910100000000000".replace(
                        "080910100000000000",
                        &hex::encode_upper(simpool::sim::profile::encode_imsi(&p.imsi))
                    )
                ),
            ),
            // enable with the (default) PIN, then IMSI needs a verification
            ("A028000108", "28"),
            (PIN_4321, "9804"),
            ("A028000108", "28"),
            (PIN_1234, "9000"),
            ("A028000108", "28"),
            (PIN_1234, "9808"),
        ]),
    );
}

#[test]
fn chv1_verify_block_unblock() {
    let mut p = generated(17);
    p.chv1 = Some("4321".into());
    let c = run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F20", "9F17"),
            (
                "A0C0000017",
                "C0 0000 0000 7F20 02 0000000000 0A 13 00 16 04 00 838A838A 00 9000",
            ),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A0B0000009", "9804"),
            ("A088000010", "88"),
            ("00000000000000000000000000000000", "9804"),
            ("A020000108", "20"),
            (PIN_1234, "9804"),
            (
                "A0F2000017",
                "F2 0000 0000 7F20 02 0000000000 0A 13 00 16 04 00 828A838A 00 9000",
            ),
            ("A020000108", "20"),
            (PIN_1234, "9804"),
            ("A020000108", "20"),
            (PIN_1234, "9840"),
            ("A020000108", "20"),
            (PIN_4321, "9840"), // blocked: even the right PIN fails
            (
                "A0F2000017",
                "F2 0000 0000 7F20 02 0000000000 0A 13 00 16 04 00 808A838A 00 9000",
            ),
            ("A02C000110", "2C"),
            (&format!("3132333435363700{PIN_9999}"), "9804"),
            (
                "A0F2000017",
                "F2 0000 0000 7F20 02 0000000000 0A 13 00 16 04 00 8089838A 00 9000",
            ),
            // pySim's P2 = 01
            ("A02C000110", "2C"),
            (&format!("{PUK}{PIN_9999}"), "9000"),
            (
                "A0F2000017",
                "F2 0000 0000 7F20 02 0000000000 0A 13 00 16 04 00 838A838A 00 9000",
            ),
            (
                "A0B0000009",
                &format!(
                    "B0 {} 9000",
                    hex::encode_upper(simpool::sim::profile::encode_imsi(&p.imsi))
                ),
            ),
            // change, then verify with the new one
            ("A024000110", "24"),
            (&format!("{PIN_9999}{PIN_1234}"), "9000"),
            ("A020000108", "20"),
            (PIN_9999, "9804"),
            ("A020000108", "20"),
            (PIN_1234, "9000"),
            // disable; VERIFY now contradicts
            ("A026000108", "26"),
            (PIN_1234, "9000"),
            ("A020000108", "20"),
            (PIN_1234, "9808"),
            (
                "A0F2000017",
                "F2 0000 0000 7F20 02 0000000000 0A 93 00 16 04 00 838A838A 00 9000",
            ),
            ("A026000208", "26"),
            (PIN_1234, "6B00"),
            ("A020000308", "20"),
            (PIN_1234, "6B00"),
        ]),
    );
    assert!(!c.sim().chv1_enabled());
}

#[test]
fn unblock_p2_00_and_reset_forgets_verification() {
    let mut p = generated(18);
    p.chv1 = Some("1234".into());
    let mut c = SimCard::new(p.clone());
    c.reset();
    let read_imsi = format!("B0 {} 9000", imsi_hex(&p));
    for (a, b) in script(&[
        ("A02C000010", "2C"),
        (&format!("{PUK}{PIN_4321}"), "9000"),
        (SEL, "A4"),
        ("7F20", "9F17"),
        (SEL, "A4"),
        ("6F07", "9F0F"),
        ("A0B0000009", &read_imsi),
    ]) {
        assert_eq!(c.receive(&a), b);
    }
    c.reset();
    for (a, b) in script(&[
        (SEL, "A4"),
        ("7F20", "9F17"),
        (SEL, "A4"),
        ("6F07", "9F0F"),
        ("A0B0000009", "9804"),
        ("A020000108", "20"),
        (PIN_4321, "9000"), // the new PIN survived the reset
    ]) {
        assert_eq!(c.receive(&a), b);
    }
}

#[test]
fn unblock_chv1_blocks_after_ten() {
    let p = generated(19);
    let mut s = Script::new();
    for i in 0..10 {
        s.extend(script(&[
            ("A02C000010", "2C"),
            (
                &format!("0000000000000000{PIN_1234}"),
                if i < 9 { "9804" } else { "9840" },
            ),
        ]));
    }
    s.extend(script(&[
        ("A02C000010", "2C"),
        (&format!("{PUK}{PIN_1234}"), "9840"),
        (
            "A0F2000017",
            "F2 0000 0000 3F00 01 0000000000 0A 93 02 01 04 00 8380838A 00 9000",
        ),
    ]));
    run(&p, &s);
}

#[test]
fn chv2_invalidate_rehabilitate() {
    let p = generated(20);
    let c = run(
        &p,
        &script(&[
            ("A004000000", "9400"),
            (SEL, "A4"),
            ("7F10", "9F17"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            ("A004000000", "9804"), // ADN: invalidate needs CHV2
            ("A020000208", "20"),
            (PIN_4321, "9804"),
            ("A020000208", "20"),
            (PIN_1234, "9000"),
            ("A004000000", "9000"),
            ("A004000000", "9810"),
            ("A0C000000F", "6F00"),
            (SEL, "A4"),
            ("6F3A", "9F0F"),
            // invalidated, but ADN stays readable (status b3)
            (
                "A0C000000F",
                "C0 0000 012C 6F3A 04 00 11 FF 22 04 02 01 1E 9000",
            ),
            (
                "A0B201041E",
                &format!("B2 {} 9000", hex::encode_upper(vec![0xFF; 30])),
            ),
            ("A044000000", "9000"),
            ("A044000000", "9810"),
            ("A044000001", "6700"),
            (SEL, "A4"),
            ("6F3B", "9F0F"),
            ("A004000000", "9804"), // FDN: ADM
        ]),
    );
    assert_eq!(
        c.sim().read_ef("3F00/7F10/6F3A").map(|v| v.len()),
        Some(300)
    );
}

#[test]
fn rehabilitate_valid_file_and_adm() {
    // EF.LOCI: REHABILITATE is CHV1 (contradiction on a valid file), INVALIDATE is ADM.
    let p = generated(21);
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F20", "9F17"),
            (SEL, "A4"),
            ("6F7E", "9F0F"),
            ("A044000000", "9810"),
            ("A004000000", "9804"),
            ("A0B000000B", "B0 FFFFFFFF 00F110 FFFE FF 01 9000"),
        ]),
    );
}

// ---------------------------------------------------------------- RUN GSM ALGORITHM

#[test]
fn run_gsm_algorithm_rules_and_nulls() {
    let mut p = generated(22);
    p.t0.nulls = 3;
    let rand = "000102030405060708090A0B0C0D0E0F";
    let r: [u8; 16] = h(rand).try_into().unwrap();
    let (sres, kc) = run_gsm(&p.algo, &p.ki, &r);
    let gr = format!(
        "C0 {}{} 9000",
        hex::encode_upper(sres),
        hex::encode_upper(kc)
    );
    run(
        &p,
        &script(&[
            ("A088000010", "88"),
            (rand, "606060 9400"), // MF current: documented choice 94 00
            (SEL, "A4"),
            ("7F10", "9F17"),
            ("A088000010", "88"),
            (rand, "606060 9400"),
            (SEL, "A4"),
            ("7F21", "9F17"),
            ("A088000010", "88"),
            (rand, "606060 9F0C"),
            ("A0C000000D", "670C"),
            ("A0C000000C", &gr),
            (SEL, "A4"),
            ("6F07", "9F0F"),
            ("A088010010", "88"),
            (rand, "606060 6B00"),
            ("A088000010", "88"), // an EF selected under DF.GSM is fine
            (rand, "606060 9F0C"),
            (
                "A0C0000004",
                &format!("C0 {} 9000", hex::encode_upper(sres)),
            ),
        ]),
    );
}

#[test]
fn run_gsm_both_algorithms() {
    for slot in [23u16, 24] {
        let p = generated(slot);
        let r = [0x5Au8; 16];
        let (sres, kc) = run_gsm(&p.algo, &p.ki, &r);
        if slot % 2 == 1 {
            assert_eq!(p.algo, Algo::Xor2g);
            assert_eq!(sres[0], p.ki[0] ^ 0x5A);
        } else {
            assert!(matches!(p.algo, Algo::Milenage { .. }));
        }
        run(
            &p,
            &script(&[
                (SEL, "A4"),
                ("7F20", "9F17"),
                ("A088000010", "88"),
                (&hex::encode(r), "9F0C"),
                (
                    "A0C000000C",
                    &format!("C0 {}{} 9000", hex::encode(sres), hex::encode(kc)),
                ),
            ]),
        );
    }
}

// ---------------------------------------------------------------- T=0 quirks

#[test]
fn single_byte_out_session_1() {
    let mut p = manual(18);
    p.t0.single_byte_out = true;
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("2FE2", "9F0F"),
            // ⌈10/2⌉ bytes with ~INS (4F), then NULL, INS and the rest
            (
                "A0B000000A",
                "4F98 4F68 4F00 4F34 4F91 60 B0 4128916063 9000",
            ),
            ("A0B0000001", "4F98 9000"),
            ("A0B0000002", "4F98 60 B0 68 9000"),
            ("A0B0000020", "670A"), // errors: SW only
        ]),
    );
}

#[test]
fn trailing_garbage_after_every_sw2() {
    let mut p = generated(25);
    p.t0.trailing_garbage = true;
    let j = format!("{JUNK:02X}");
    run(
        &p,
        &script(&[
            ("00A4000402", &format!("6E00{j}")),
            (SEL, "A4"),
            ("2FE2", &format!("9F0F{j}")),
            (
                "A0B0000002",
                &format!(
                    "B0 {} 9000{j}",
                    &hex::encode_upper(simpool::sim::profile::encode_iccid(&p.iccid))[..4]
                ),
            ),
            ("A0FA000000", &format!("9000{j}")),
        ]),
    );
}

#[test]
fn quirks_combined_and_set_quirks() {
    let mut c = SimCard::new(generated(26));
    c.set_quirks(T0Quirks {
        nulls: 1,
        single_byte_out: true,
        trailing_garbage: true,
    });
    c.reset();
    assert_eq!(c.receive(&h("A0A4000002")), h("A4"));
    assert_eq!(c.receive(&h("7F20")), h("9F17EE"));
    assert_eq!(c.receive(&h("A0A4000002")), h("A4"));
    assert_eq!(c.receive(&h("6F46")), h("9F0FEE"));
    assert_eq!(c.receive(&h("A0B0000001")), h("4F01 9000 EE"));
    assert_eq!(c.receive(&h("A0D6000002")), h("D6"));
    assert_eq!(c.receive(&h("0102")), h("60 9804 EE"));
}

#[test]
fn data_with_procedure_like_bytes() {
    let mut p = generated(27);
    p.files
        .insert("3F00/7F20/6F3E".into(), h("60 9F 61 6C 90 00 A0 C0"));
    run(
        &p,
        &script(&[
            (SEL, "A4"),
            ("7F20", "9F17"),
            (SEL, "A4"),
            ("6F3E", "9F0F"),
            ("A0B0000008", "B0 609F616C9000A0C0 9000"),
        ]),
    );
}

#[test]
fn le_00_means_256() {
    let mut p = generated(28);
    p.files.insert("3F00/7F20/6F3E".into(), vec![0x60; 256]);
    let mut want = vec![0xB0];
    want.extend(vec![0x60; 256]);
    want.extend([0x90, 0x00]);
    let mut s = script(&[(SEL, "A4"), ("7F20", "9F17"), (SEL, "A4"), ("6F3E", "9F0F")]);
    s.push((h("A0B0000000"), want));
    s.extend(script(&[("A0C0000000", "6F00")]));
    run(&p, &s);
}

// ---------------------------------------------------------------- cards file

#[test]
fn cards_file_example() {
    let text = r#"
        [pool]
        latency_ms = 3
        split = 4
        nulls = 1

        [[card]]
        slot = 200
        atr = "3B 9F 95 80 1F C3 80 31 E0 73 FE 21 13 57 86 81 02 86 98 44 18 A8"
        iccid = "89860043191482190636"
        imsi = "460019894013615"
        ki = "00112233445566778899aabbccddeeff"
        algo = "milenage"
        opc = "000102030405060708090a0b0c0d0e0f"
        spn = "Example"
        msisdn = "+491701234567"
        chv1 = "0000"
        df_gsm_ef_count = 48
        t0 = { nulls = 2, trailing_garbage = true }

        [card.files]
        "3f00/7f20/6fad" = "00 00 00 03"
        "3F00/7F10/6F42" = "SMSP"

        [[card]]
        slot = 1
        state = "mute"
    "#;
    let smsp = format!("{}00", "FF".repeat(39));
    let f = CardsFile::from_toml(&text.replace("SMSP", &smsp)).unwrap();
    assert_eq!(f.pool.split, 4);
    assert_eq!(f.card[0].slot, 1);
    assert_eq!(f.card[0].state, simpool::sim::profile::SlotState::Mute);
    assert_eq!(f.card[0].profile, generated(1));
    let e = f.get(200).unwrap();
    assert_eq!(e.profile.chv1.as_deref(), Some("0000"));
    assert_eq!(e.profile.t0.nulls, 2);
    let c = SimCard::new(e.profile.clone());
    let s = c.sim();
    assert_eq!(s.read_ef("3F00/7F20/6FAD"), Some(h("00000003")));
    assert_eq!(s.read_ef("3F00/2FE2"), Some(h("98680034914128916063")));
    assert_eq!(s.read_ef("3F00/7F20/6F07"), Some(h("084906108949106351")));
    assert_eq!(
        s.read_ef("3F00/7F20/6F46"),
        Some(h("01 4578616D706C65 FFFFFFFFFFFFFFFFFF"))
    );
    let msisdn = s.read_ef("3F00/7F10/6F40").unwrap();
    assert_eq!(&msisdn[16..28], &h("07 91 9471 1032 5476 FFFFFFFF")[..]);
    assert_eq!(s.read_ef("3F00/7F10/6F42").unwrap()[39], 0x00);
    assert!(s.chv1_enabled());
}

#[test]
fn default_set_cards_unique_and_answer() {
    let set = CardsFile::default_set();
    let mut iccids = Vec::new();
    for e in &set.card {
        let mut c = SimCard::new(e.profile.clone());
        assert_eq!(c.reset(), e.profile.atr);
        assert_eq!(c.receive(&h("A0A4000002")), h("A4"));
        assert_eq!(c.receive(&h("2FE2")), h("9F0F"));
        let r = c.receive(&h("A0B000000A"));
        assert_eq!(r.len(), 13);
        iccids.push(simpool::sim::profile::decode_iccid(&r[1..11]));
    }
    let n = iccids.len();
    iccids.sort();
    iccids.dedup();
    assert_eq!(iccids.len(), n);
}
