//! The IPA and RSPRO codecs against the messages captured between the real osmo-remsim 1.0.0
//! binaries (docs/rspro.md §4), split at every point, and against hostile bytes.

mod common;

use proptest::prelude::*;
use simpool::remsim::ipa::{self, Ccm, Decoder, Frame, IpaError};
use simpool::remsim::rspro::{
    BankSlot, ClientSlot, ComponentType, IpAddress, Msg, Pdu, ResultCode, RsproError,
    SlotPhysStatus, TpduFlags,
};

use common::remsim::{bytes, captured};

fn frames_in_pieces(pieces: &[&[u8]]) -> Vec<Result<Frame, IpaError>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for p in pieces {
        d.push(p);
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

fn rspro_of(frame: &[u8]) -> Vec<u8> {
    match frames_in_pieces(&[frame]).as_slice() {
        [Ok(Frame::Rspro(pdu))] => pdu.clone(),
        other => panic!("not one RSPRO frame: {other:?}"),
    }
}

#[test]
fn every_captured_vector_roundtrips_byte_for_byte() {
    for (name, frame) in captured() {
        let pdu = rspro_of(&frame);
        let decoded = Pdu::decode(&pdu).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded.msg.name(), name);
        assert_eq!(decoded.version, 2, "{name}");
        assert_eq!(decoded.encode(), pdu, "{name}: DER re-encoding");
        assert_eq!(
            ipa::encode_rspro(&decoded.encode()).unwrap(),
            frame,
            "{name}: IPA framing"
        );
    }
}

#[test]
fn captured_vectors_carry_the_expected_fields() {
    let client = ClientSlot {
        client_id: 23,
        slot_nr: 0,
    };
    let bank = BankSlot {
        bank_id: 1,
        slot_nr: 0,
    };
    let v = captured();
    let msg = |i: usize| Pdu::decode(&rspro_of(&v[i].1)).unwrap();
    match msg(0).msg {
        Msg::ConnectClientReq {
            identity,
            client_slot,
        } => {
            assert_eq!(identity.kind, ComponentType::Client);
            assert_eq!(identity.name, "vm");
            assert_eq!(identity.software, "remsim-client");
            assert_eq!(identity.sw_version, "1.0.0");
            assert_eq!(client_slot, Some(client));
        }
        m => panic!("{m:?}"),
    }
    let res = msg(1);
    assert_eq!(res.tag, 2342);
    match res.msg {
        Msg::ConnectClientRes { identity, result } => {
            assert_eq!(identity.kind, ComponentType::Bankd);
            assert_eq!(identity.name, "fixme-name");
            assert_eq!(result, ResultCode::Ok);
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(
        msg(2).msg,
        Msg::SetAtrReq {
            slot: client,
            atr: bytes("3B9F95801FC38031E073FE21135786810286984418A8"),
        }
    );
    assert_eq!(
        msg(4).msg,
        Msg::TpduModemToCard {
            from_client: client,
            to_bank: bank,
            flags: TpduFlags::default(),
            data: bytes("A0A40000023F00"),
        }
    );
    assert_eq!(
        msg(5).msg,
        Msg::TpduCardToModem {
            from_bank: bank,
            to_client: client,
            flags: TpduFlags::default(),
            data: bytes("9F17"),
        }
    );
    match msg(6).msg {
        Msg::ConfigClientBankReq { bank_slot, bankd } => {
            assert_eq!(bank_slot, bank);
            assert_eq!(bankd.ip, IpAddress::V4([127, 0, 0, 1]));
            assert_eq!(bankd.port, 9999);
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn the_captured_stream_splits_anywhere() {
    let mut stream = ipa::encode_ccm(Ccm::Ping).to_vec();
    let mut want = vec![Frame::Ccm(Ccm::Ping)];
    for (_, f) in captured() {
        want.push(Frame::Rspro(rspro_of(&f)));
        stream.extend(f);
    }
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let got: Vec<Frame> = frames_in_pieces(&[a, b])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, want, "cut at {cut}");
    }
}

#[test]
fn every_message_a_bank_meets_roundtrips() {
    let identity = simpool::remsim::rspro::ComponentIdentity::bank("simpool");
    let client = ClientSlot {
        client_id: 1023,
        slot_nr: 7,
    };
    let bank = BankSlot {
        bank_id: 1,
        slot_nr: 255,
    };
    let msgs = vec![
        Msg::ConnectBankReq {
            identity: identity.clone(),
            bank_id: 1,
            number_of_slots: 256,
        },
        Msg::ConnectBankRes {
            identity: identity.clone(),
            result: ResultCode::Other(77),
        },
        Msg::ConnectClientReq {
            identity: identity.clone(),
            client_slot: None,
        },
        Msg::CreateMappingReq { client, bank },
        Msg::CreateMappingRes {
            result: ResultCode::IllegalSlotId,
        },
        Msg::RemoveMappingReq { client, bank },
        Msg::RemoveMappingRes {
            result: ResultCode::UnknownSlotmap,
        },
        Msg::ConfigClientIdReq {
            client_slot: client,
        },
        Msg::ClientSlotStatusInd {
            from_client: client,
            to_bank: bank,
            status: SlotPhysStatus {
                reset_active: true,
                vcc_present: Some(false),
                clk_active: None,
                card_present: Some(true),
            },
        },
        Msg::BankSlotStatusInd {
            from_bank: bank,
            to_client: client,
            status: SlotPhysStatus::default(),
        },
        Msg::TpduModemToCard {
            from_client: client,
            to_bank: bank,
            flags: TpduFlags {
                header_present: true,
                final_part: false,
                proc_byte_continue_tx: true,
                proc_byte_continue_rx: false,
            },
            data: vec![0xA5; 260],
        },
        Msg::ErrorInd(simpool::remsim::rspro::ErrorInd {
            sender: ComponentType::Bankd,
            severity: 2,
            code: 1,
            bank_slot: Some(bank),
            client_slot: Some(client),
            error_string: Some("x".repeat(200)),
        }),
        Msg::ResetStateReq,
        Msg::ResetStateRes {
            result: ResultCode::Ok,
        },
        Msg::Unknown {
            choice: 21,
            constructed: true,
            body: vec![0x02, 0x01, 0x05],
        },
        Msg::Unknown {
            choice: 400,
            constructed: false,
            body: vec![1, 2, 3],
        },
    ];
    for m in msgs {
        let pdu = Pdu {
            version: 2,
            tag: 0x7FFF_FFFF,
            msg: m,
        };
        let der = pdu.encode();
        assert_eq!(Pdu::decode(&der).as_ref(), Ok(&pdu), "{}", pdu.msg.name());
        let framed = ipa::encode_rspro(&der).unwrap();
        assert_eq!(rspro_of(&framed), der);
    }
}

#[test]
fn extensions_and_ber_forms_are_tolerated() {
    // setAtrRes with an unknown trailing element in the message, a long-form length and a
    // non-minimal integer (BER allows both), and bytes after the PDU.
    let pdu = bytes("30 81 13 80 02 00 02 81 01 00 A2 0A AB 08 0A 01 00 9F 40 02 AB CD FF FF");
    let got = Pdu::decode(&pdu).unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(
        got.msg,
        Msg::SetAtrRes {
            result: ResultCode::Ok
        }
    );
    // ComponentIdentity with hwModel and an extension after fwVersion.
    let mut id = simpool::remsim::rspro::ComponentIdentity::bank("b");
    id.hw_model = Some("K13e".into());
    id.fw_version = Some("5.3".into());
    let der = Pdu::new(Msg::ConnectBankRes {
        identity: id.clone(),
        result: ResultCode::Ok,
    })
    .encode();
    // Append `87 01 41` to the identity: 30 L 80 01 02 81 01 00 A2 L A3 L 30 L ...
    let mut ext = der.clone();
    assert_eq!((ext[8], ext[10], ext[12]), (0xA2, 0xA1, 0x30));
    let end = 14 + usize::from(ext[13]);
    ext.splice(end..end, [0x87, 1, 0x41]);
    for pos in [1, 9, 11, 13] {
        ext[pos] += 3;
    }
    match Pdu::decode(&ext).unwrap().msg {
        Msg::ConnectBankRes { identity, .. } => assert_eq!(identity, id),
        m => panic!("{m:?}"),
    }
}

#[test]
fn malformed_pdus_are_typed_errors() {
    let good = rspro_of(&captured()[4].1);
    // Every truncation fails with an error, none panics.
    for n in 0..good.len() {
        assert!(Pdu::decode(&good[..n]).is_err(), "truncated to {n}");
    }
    assert_eq!(Pdu::decode(&[]), Err(RsproError::Empty));
    assert_eq!(
        Pdu::decode(&bytes("30 80 80 01 02 00 00")),
        Err(RsproError::IndefiniteLength)
    );
    assert_eq!(
        Pdu::decode(&bytes("30 85 00 00 00 00 01 00")),
        Err(RsproError::LengthTooLong(5))
    );
    assert!(matches!(
        Pdu::decode(&bytes("31 00")),
        Err(RsproError::UnexpectedTag {
            field: "RsproPDU",
            ..
        })
    ));
    // clientId 1024 is out of ClientId's range.
    let mut bad = good.clone();
    let at = bad
        .windows(3)
        .position(|w| w == [0x02, 0x01, 0x17])
        .unwrap();
    bad.splice(at..at + 3, [0x02, 0x01, 0xFF]);
    assert_eq!(
        Pdu::decode(&bad),
        Err(RsproError::OutOfRange {
            field: "clientId",
            value: -1
        })
    );
    // A boolean of two bytes.
    let mut bad = good.clone();
    let at = bad
        .windows(3)
        .position(|w| w == [0x01, 0x01, 0x00])
        .unwrap();
    bad[at + 1] = 2;
    assert!(Pdu::decode(&bad).is_err());
    // Name with a non-ASCII byte.
    let mut bad = rspro_of(&captured()[0].1);
    let at = bad.windows(2).position(|w| w == b"vm").unwrap();
    bad[at] = 0xF6;
    assert_eq!(
        Pdu::decode(&bad),
        Err(RsproError::NotAscii("identity.name"))
    );
    // ATR longer than 55 bytes.
    let long = Pdu::new(Msg::SetAtrReq {
        slot: ClientSlot {
            client_id: 1,
            slot_nr: 0,
        },
        atr: vec![0x3B; 56],
    })
    .encode();
    assert!(matches!(
        Pdu::decode(&long),
        Err(RsproError::BadSize { field: "atr", .. })
    ));
    // Missing mandatory element.
    assert_eq!(
        Pdu::decode(&bytes("30 0B 80 01 02 81 01 00 A2 03 AB 01 00")),
        Err(RsproError::Truncated { need: 1, have: 0 })
    );
    assert_eq!(
        Pdu::decode(&bytes("30 0A 80 01 02 81 01 00 A2 02 AB 00")),
        Err(RsproError::Missing("result"))
    );
}

#[test]
fn oversized_and_garbage_ipa_fail_the_link() {
    let got = frames_in_pieces(&[&[0xFF, 0xFF, 0xEE, 0x07], &[0u8; 64]]);
    assert_eq!(got, vec![Err(IpaError::Oversized(0xFFFF))]);
    let got = frames_in_pieces(&[b"GET / HTTP/1.1\r\n"]);
    // "GE" = 0x4745 bytes announced: over the limit.
    assert_eq!(got, vec![Err(IpaError::Oversized(0x4745))]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Pdu::decode(&data);
        let mut d = Decoder::new();
        d.push(&data);
        let mut n = 0;
        while let Some(f) = d.next_frame() {
            n += 1;
            if let Ok(Frame::Rspro(p)) = &f {
                let _ = Pdu::decode(p);
            }
            if f.is_err() || n > 200 {
                break;
            }
        }
        prop_assert!(d.buffered() <= 3 + ipa::MAX_PAYLOAD + data.len());
    }

    #[test]
    fn mutated_vectors_never_panic_and_decoded_ones_reencode(
        which in 0usize..8,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut pdu = rspro_of(&captured()[which].1);
        for (at, x) in flips {
            let i = at % pdu.len();
            pdu[i] ^= x;
        }
        if let Ok(p) = Pdu::decode(&pdu) {
            // Whatever decodes must encode to something that decodes to the same message.
            prop_assert_eq!(Pdu::decode(&p.encode()), Ok(p));
        }
    }
}
