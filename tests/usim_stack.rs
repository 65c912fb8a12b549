//! A simulated USIM end to end: the `pcsc` crate → pcsc-lite's pcscd → vpcd → `simpool serve`
//! → the simulated pool. SELECT ADF.USIM by AID, EF.IMSI, AUTHENTICATE with TS 35.208 test set
//! 1 (default set's card 20), SQN replay → AUTS → resync, PIN1 counter and PUK1. Needs pcscd
//! and vsmartcard-vpcd (`driver/pcscd-private install`); run inside `unshare -n`.

mod common;

use common::h;
use common::vectors::SET1 as S1;
use std::ffi::CString;

use common::stack::{self, tx, Serve};
use pcsc::{Context, Protocols, ShareMode};
use simpool::sim::profile::{decode_imsi, CardsFile, USIM_ATR};
use simpool::sim::uicc::USIM_AID;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 27700;

/// A case-4 command as pySim sends it (no Le): `61xx` → GET RESPONSE xx. Returns data ‖ SW.
fn tx4(card: &pcsc::Card, cmd: &str) -> Vec<u8> {
    let r = tx(card, cmd);
    assert_eq!(
        r.len(),
        2,
        "{cmd}: only a status word at first, got {r:02X?}"
    );
    assert_eq!(r[0], 0x61, "{cmd}: {r:02X?}");
    let gr = tx(card, &format!("00C00000{:02X}", r[1]));
    assert_eq!(gr.len(), usize::from(r[1]) + 2);
    gr
}

fn serve(sim: &SimPool, reader: u16, card: u16) -> (Serve, Context, CString) {
    serve_with(sim, reader, card, &[])
}

fn serve_with(sim: &SimPool, reader: u16, card: u16, extra: &[&str]) -> (Serve, Context, CString) {
    stack::serve_card(
        BASE_PORT,
        &sim.addr().to_string(),
        reader,
        card,
        extra,
        "usim",
    )
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().unwrap()
}

#[test]
fn select_usim_read_imsi_authenticate_and_resync() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (mut serve, ctx, name) = serve(&sim, 0, 20);
    let card = ctx
        .connect(&name, ShareMode::Shared, Protocols::ANY)
        .expect("connect");
    assert_eq!(card.status2_owned().unwrap().atr(), &USIM_ATR[..]);

    // SELECT ADF.USIM by AID: a well-formed FCP naming the AID.
    let fcp = tx4(&card, &format!("00A4040410{}", hex::encode(USIM_AID)));
    assert_eq!(fcp[0], 0x62);
    assert_eq!(usize::from(fcp[1]), fcp.len() - 4);
    assert_eq!(fcp[2..6], h("82027821"));
    assert_eq!(fcp[6..10], h("83027FF0"));
    assert_eq!(fcp[10..12], [0x84, 0x10]);
    assert_eq!(fcp[12..28], USIM_AID);
    assert_eq!(fcp[fcp.len() - 2..], [0x90, 0x00]);

    // EF.IMSI there.
    let fcp = tx4(&card, "00A40004026F07");
    assert_eq!(fcp[2..8], h("8202412183 02"));
    let imsi = tx(&card, "00B0000009");
    assert_eq!(imsi[9..], [0x90, 0x00]);
    let want = sim.with_card(20, |c| c.profile().imsi.clone()).unwrap();
    assert_eq!(decode_imsi(&imsi[..9]).unwrap(), want);

    // AUTHENTICATE (3G context) with the spec's AUTN: RES, CK, IK of TS 35.208.
    let autn = format!(
        "{}{}{}",
        hex::encode(xor(&h(&S1.sqn), &h(&S1.ak))),
        S1.amf,
        S1.mac_a
    );
    let auth = format!("0088008122 10{} 10{autn}", S1.rand);
    let r = tx4(&card, &auth);
    assert_eq!(r[..2], [0xDB, 0x08]);
    assert_eq!(hex::encode(&r[2..10]), S1.res);
    assert_eq!(r[10], 0x10);
    assert_eq!(hex::encode(&r[11..27]), S1.ck);
    assert_eq!(r[27], 0x10);
    assert_eq!(hex::encode(&r[28..44]), S1.ik);
    assert_eq!(r[44], 0x08, "Kc follows (service 27)");

    // The same AUTN again: SQN replay → AUTS carrying the SQN just accepted.
    let r = tx4(&card, &auth);
    assert_eq!(r[..2], [0xDC, 0x0E]);
    let mut m = milenage::Milenage::new_with_opc(arr(&S1.k), arr(&S1.opc));
    let rand: [u8; 16] = arr(&S1.rand);
    let sqn_ms: [u8; 6] = xor(&r[2..8], &m.f5star(&rand)).try_into().unwrap();
    assert_eq!(hex::encode(sqn_ms), S1.sqn);
    assert_eq!(r[8..16], m.f1star(&rand, &sqn_ms, &[0, 0]), "MAC-S");

    // Resynchronised: the HLR's next SQN (SEQ + 1) is accepted; RES/CK/IK as Milenage says.
    let next = simpool::sim::auth::sqn_to_bytes(simpool::sim::auth::sqn_from_bytes(&sqn_ms) + 32);
    let rand2: [u8; 16] = arr("000102030405060708090a0b0c0d0e0f");
    let (res, ck, ik, ak) = m.f2345(&rand2);
    let mac = m.f1(&rand2, &next, &arr(&S1.amf));
    let autn2 = format!(
        "{}{}{}",
        hex::encode(xor(&next, &ak)),
        S1.amf,
        hex::encode(mac)
    );
    let r = tx4(
        &card,
        &format!("0088008122 10{} 10{autn2}", hex::encode(rand2)),
    );
    assert_eq!(r[..2], [0xDB, 0x08]);
    assert_eq!(r[2..10], res);
    assert_eq!(r[11..27], ck);
    assert_eq!(r[28..44], ik);

    // A forged MAC: 98 62.
    let mut bad = h(&autn2);
    bad[12] ^= 0x40;
    assert_eq!(
        tx(
            &card,
            &format!(
                "0088008122 10{} 10{}",
                hex::encode(rand2),
                hex::encode(&bad)
            )
        ),
        h("9862")
    );
    assert!(serve.is_running());
}

#[test]
fn pin1_counter_to_zero_and_puk1_through_pcscd() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    // The simulator's counters down to zero: the last-try guard (tests/guard.rs) is off for
    // this card.
    let config = std::env::temp_dir().join(format!("simpool-usim-{}.toml", std::process::id()));
    std::fs::write(&config, "[[card_settings]]\ncard = 22\nguard = \"off\"\n").unwrap();
    let config = config.display().to_string();
    let (_serve, ctx, name) = serve_with(&sim, 2, 22, &["--config", &config]);
    let card = ctx
        .connect(&name, ShareMode::Shared, Protocols::ANY)
        .expect("connect");
    assert_eq!(
        tx(&card, "0028000108 31323334FFFFFFFF"),
        h("9000"),
        "enable PIN1"
    );
    tx4(&card, &format!("00A4040410{}", hex::encode(USIM_AID)));
    tx4(&card, "00A40004026F07");
    assert_eq!(tx(&card, "0020000100"), h("9000"), "verified by ENABLE");
    for left in [2u8, 1, 0] {
        assert_eq!(
            tx(&card, "0020000108 30303030FFFFFFFF"),
            vec![0x63, 0xC0 | left]
        );
    }
    assert_eq!(tx(&card, "00B0000009"), h("6982"));
    assert_eq!(tx(&card, "0020000100"), h("6983"));
    assert_eq!(tx(&card, "002C000100"), h("63CA"));
    assert_eq!(
        tx(&card, "002C000110 3132333435363738 39383736FFFFFFFF"),
        h("9000")
    );
    assert_eq!(tx(&card, "00B0000009")[9..], [0x90, 0x00]);
    assert_eq!(
        sim.with_card(22, |c| c.uicc().unwrap().retries()).unwrap(),
        (3, 10, 10)
    );
}
