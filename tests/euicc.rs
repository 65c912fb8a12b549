//! Logical channels and the simulated eUICC at card level, driven through simpool's own T=0
//! terminal (`t0::Exchange`) with the TPDUs pySim and lpac send (GET RESPONSE with the
//! command's class, `61 00` for 256 bytes and more): MANAGE CHANNEL, basic channels 1–3 and
//! extended 4–19, per-channel selection and GET RESPONSE, ISD-R on any channel, every ES10
//! function with its results and errors, STORE DATA chaining, the enabled profile after a
//! reset (ICCID, IMSI and keys), NULL bytes while a profile is enabled, and the cards file.

use std::time::Duration;

use simpool::sim::ber;
use simpool::sim::card::{SimCard, NULL, NULL_EVERY};
use simpool::sim::euicc::{eid_digits, eid_valid};
use simpool::sim::profile::{
    decode_iccid, decode_imsi, generated_euicc, generated_euicc_profile, CardKind, CardProfile,
    CardsFile, EUICC_ATR,
};
use simpool::sim::uicc::{ECASD_AID, ISDR_AID, USIM_AID};
use simpool::t0::{Exchange, Limits, Step, Tpdu};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn hx(b: &[u8]) -> String {
    hex::encode_upper(b)
}

/// A card behind simpool's T=0 terminal.
struct Session {
    card: SimCard,
}

impl Session {
    fn new(p: CardProfile) -> Session {
        let mut card = SimCard::new(p);
        card.reset();
        Session { card }
    }

    /// One TPDU; data ‖ SW as the application sees it.
    fn tx(&mut self, apdu: &str) -> Vec<u8> {
        let tpdu = Tpdu::parse(&h(apdu)).expect("accepted at intake");
        let (mut ex, header) = Exchange::new(tpdu, Limits::default());
        let mut to_card = header;
        loop {
            let from = self.card.receive(&to_card);
            match ex.feed(&from).expect("a valid T=0 exchange") {
                Step::Wait => panic!("{apdu}: the card stopped mid-exchange"),
                Step::Send(d) => to_card = d,
                Step::Done(r) => return r.bytes,
            }
        }
    }

    fn sw(&mut self, apdu: &str) -> String {
        let r = self.tx(apdu);
        hx(&r[r.len() - 2..])
    }

    /// As pySim and lpac: `6Cxx` re-issued, GET RESPONSE with the command's CLA on `61xx`
    /// (`61 00`: 256 bytes, then more). Returns (data, final SW).
    fn apdu(&mut self, apdu: &str) -> (Vec<u8>, String) {
        let cmd = h(apdu);
        let mut r = self.tx(apdu);
        let sw = |r: &[u8]| (r[r.len() - 2], r[r.len() - 1]);
        if sw(&r).0 == 0x6C {
            r = self.tx(&format!("{}{:02X}", hx(&cmd[..4]), sw(&r).1));
        }
        let mut data = Vec::new();
        while sw(&r).0 == 0x61 {
            r = self.tx(&format!("{:02X}C00000{:02X}", cmd[0], sw(&r).1));
            data.extend_from_slice(&r[..r.len() - 2]);
        }
        if data.is_empty() {
            data = r[..r.len() - 2].to_vec();
        }
        (data, hx(&r[r.len() - 2..]))
    }

    fn ok(&mut self, apdu: &str) -> Vec<u8> {
        let (d, sw) = self.apdu(apdu);
        assert_eq!(sw, "9000", "{apdu}");
        d
    }

    /// One ES10 request on channel `ch` in one STORE DATA block; the decoded outer TLV.
    fn es10(&mut self, ch: u8, req: &str) -> Vec<u8> {
        let r = h(req);
        self.ok(&format!("{:02X}E29100{:02X}{}", 0x80 | ch, r.len(), hx(&r)))
    }

    fn select_isdr(&mut self, cla: u8) -> Vec<u8> {
        self.ok(&format!("{cla:02X}A4040410{}", hx(&ISDR_AID)))
    }
}

/// The value of `tag` inside the TLVs of `d` (one level).
fn get(d: &[u8], tag: u32) -> Option<Vec<u8>> {
    let l = ber::parse(d).ok()?;
    ber::find(&l, tag).map(<[u8]>::to_vec)
}

/// The result code of an ES10 response `BFxx { 80 code }`.
fn result_code(resp: &[u8], tag: u32) -> u8 {
    let inner = get(resp, tag).unwrap_or_else(|| panic!("{tag:X} in {}", hx(resp)));
    get(&inner, 0x80).expect("result")[0]
}

/// The ProfileInfo entries of a GetProfilesInfo response.
fn profiles(resp: &[u8]) -> Vec<Vec<u8>> {
    let inner = get(resp, 0xBF2D).unwrap();
    let seq = get(&inner, 0xA0).unwrap();
    ber::parse(&seq)
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t.tag, 0xE3);
            t.value.to_vec()
        })
        .collect()
}

fn iccid_tlv(iccid: &str) -> String {
    hx(&ber::tlv(0x5A, &simpool::sim::profile::encode_iccid(iccid)))
}

fn euicc(slot: u16) -> CardProfile {
    CardsFile::default_set().get(slot).unwrap().profile.clone()
}

// ---------------------------------------------------------------- logical channels (USIM)

#[test]
fn manage_channel_open_close_and_per_channel_selection() {
    let u = CardsFile::default_set().get(4).unwrap().profile.clone();
    let mut s4 = Session::new(u);
    // Card chooses: channel 1, then 2, 3, then the extended 4.. (lpac's `00 70 00 00 01`).
    for want in [1u8, 2, 3, 4] {
        assert_eq!(s4.tx("0070000001"), vec![want, 0x90, 0x00]);
    }
    // Channel 1 selects ADF.USIM and EF.IMSI, channel 0 stays at the MF.
    s4.ok(&format!("01A4040410{}", hx(&USIM_AID)));
    s4.ok("01A4000402 6F07");
    let imsi = s4.ok("01B0000009");
    assert_eq!(decode_imsi(&imsi).unwrap(), "001010000000004");
    assert_eq!(s4.card.uicc().unwrap().current_on(0), Some((0x3F00, None)));
    assert_eq!(
        s4.card.uicc().unwrap().current_on(1),
        Some((0x7FF0, Some(0x6F07)))
    );
    // The basic channel has no EF selected: READ BINARY fails there, works on 1.
    assert_eq!(s4.sw("00B0000009"), "6986");
    // Extended channel 4 (CLA 40 / C0): its own selection; STATUS (80 F2 → C0 F2) works there.
    s4.ok("40A4000402 2FE2");
    assert_eq!(s4.ok("40B000000A"), s4.card.profile().iccid_bytes());
    let st = s4.ok("C0F2000000");
    assert_eq!(st[0], 0x62);
    // Close 4; its CLA is refused afterwards, as is one never opened (channel 19).
    s4.ok("0070800400");
    assert_eq!(s4.sw("40B000000A"), "6881");
    assert_eq!(s4.sw("4FA4000402 3F00"), "6881");
    // Open 19 explicitly (pySim `open_channel 19`), use it, close it from itself (P2 = 00).
    assert_eq!(s4.sw("0070001300"), "9000");
    s4.ok("4FA4000402 2FE2");
    assert_eq!(s4.sw("4F70800000"), "9000");
    assert_eq!(s4.sw("4FA4000402 3F00"), "6881");
    // Opening an open channel, closing the basic one or a closed one: refused.
    assert_eq!(s4.sw("0070000100"), "6881");
    assert_eq!(s4.sw("0070800000"), "6881");
    assert_eq!(s4.sw("0070800500"), "6881");
    // A channel opened from channel 1 takes over its current DF (ADF.USIM): EF.IMSI by FID.
    assert_eq!(s4.tx("0170000001"), vec![4, 0x90, 0x00]);
    s4.ok("40A4000402 6F07");
    // Every channel but 0 is gone after a reset.
    s4.card.reset();
    assert_eq!(s4.card.uicc().unwrap().open_channels(), vec![0]);
    assert_eq!(s4.sw("01B0000009"), "6881");
}

#[test]
fn all_twenty_channels_then_none_free() {
    let mut s = Session::new(CardsFile::default_set().get(4).unwrap().profile.clone());
    for want in 1u8..=19 {
        assert_eq!(s.tx("0070000001"), vec![want, 0x90, 0x00]);
    }
    assert_eq!(s.sw("0070000001"), "6A81");
    // Each extended channel answers on its own class.
    for ch in 4u8..=19 {
        let cla = 0x40 | (ch - 4);
        s.ok(&format!("{cla:02X}A4000402 2FE2"));
    }
    // Basic channels 1-3 with secure-messaging bits are not channels 5-7 (lpac's mistake).
    assert_eq!(s.sw("04A4000402 3F00"), "6882");
    // Chaining bit: refused.
    assert_eq!(s.sw("10A4000402 3F00"), "6884");
}

#[test]
fn get_response_belongs_to_its_channel() {
    let mut s = Session::new(CardsFile::default_set().get(4).unwrap().profile.clone());
    assert_eq!(s.tx("0070000001"), vec![1, 0x90, 0x00]);
    let r = s.tx("01A4000402 3F00");
    assert_eq!(r[0], 0x61);
    // Fetching the FCP on another channel: nothing pending there.
    assert_eq!(s.sw(&format!("00C00000{:02X}", r[1])), "6985");
    // A case-4 answer is discarded by any other command, on any channel.
    let r = s.tx("01A4000402 3F00");
    s.ok("00A4000C02 3F00");
    assert_eq!(s.sw(&format!("01C00000{:02X}", r[1])), "6985");
    // On its own channel it comes, with the proprietary class too (`81 C0`, as after STORE DATA).
    let r = s.tx("01A4000402 3F00");
    let d = s.tx(&format!("81C00000{:02X}", r[1]));
    assert_eq!((d[0], hx(&d[d.len() - 2..])), (0x62, "9000".into()));
}

// ---------------------------------------------------------------- ISD-R and ES10

#[test]
fn isdr_select_on_basic_and_logical_channels_and_ecasd() {
    let mut s = Session::new(euicc(33));
    assert_eq!(s.card.atr(), &EUICC_ATR[..]);
    let fci = s.select_isdr(0x00);
    assert_eq!(
        hx(&fci),
        "6F1F8410A0000005591010FFFFFFFF8900000100A5049F6501FFE00582030202029000"[..66]
    );
    // lpac: P2 = 00 on a channel it opened, and never fetches the FCI.
    assert_eq!(s.tx("0070000001"), vec![1, 0x90, 0x00]);
    assert_eq!(
        s.sw(&format!("01A4040010{}", hx(&ISDR_AID))),
        format!("61{:02X}", fci.len())
    );
    // P2 = 0C: no data.
    assert_eq!(s.sw(&format!("02A4040C10{}", hx(&ISDR_AID))), "6881");
    assert_eq!(s.tx("0070000001"), vec![2, 0x90, 0x00]);
    assert_eq!(s.sw(&format!("02A4040C10{}", hx(&ISDR_AID))), "9000");
    let ecasd = s.ok(&format!("00A4040410{}", hx(&ECASD_AID)));
    assert_eq!(hx(&ecasd), format!("6F128410{}", hx(&ECASD_AID)));
    // An AID nobody has.
    assert_eq!(s.sw("00A4040410A0000005591010FFFFFFFF8900000300"), "6A82");
    // The eUICC's UICC face: MF, EF.DIR with the USIM, EF.ICCID = the enabled profile's.
    s.ok("00A4000402 3F00");
    s.ok("00A4000402 2FE2");
    let iccid = s.ok("00B000000A");
    assert_eq!(
        decode_iccid(&iccid),
        generated_euicc_profile(33, 0).card.iccid
    );
}

#[test]
fn es10_on_channel_two_with_chaining_and_every_function() {
    let mut s = Session::new(euicc(34));
    assert_eq!(s.tx("0070000001"), vec![1, 0x90, 0x00]);
    assert_eq!(s.tx("0070000001"), vec![2, 0x90, 0x00]);
    s.select_isdr(0x02);
    // STORE DATA where no ISD-R is selected (channel 1): refused.
    assert_eq!(s.sw("81E2910003BF2D00"), "6985");
    // GetEID.
    let r = s.es10(2, "BF3E035C015A");
    let eid: [u8; 16] = get(&get(&r, 0xBF3E).unwrap(), 0x5A)
        .unwrap()
        .try_into()
        .unwrap();
    assert!(eid_valid(&eid_digits(&eid)), "{}", eid_digits(&eid));
    assert_eq!(eid_digits(&eid), hx(&s.card.euicc().unwrap().eid()));
    // The same request in 3 chained blocks (lpac with a small MSS): 90 00, 90 00, 61 xx.
    assert_eq!(s.sw("82E2110002BF3E"), "9000");
    assert_eq!(s.sw("82E2110102035C"), "9000");
    let (d, sw) = s.apdu("82E2910202015A");
    assert_eq!((d, sw), (r.clone(), "9000".into()));
    // A block out of order drops the request.
    assert_eq!(s.sw("82E2110002BF3E"), "9000");
    assert_eq!(s.sw("82E2910202015A"), "6A86");
    assert_eq!(s.sw("82E2910102035C"), "6A86");
    // EUICCInfo1 and 2, challenge (16 bytes, fresh each time), addresses, RAT.
    let i1 = s.es10(2, "BF2000");
    assert_eq!(
        get(&get(&i1, 0xBF20).unwrap(), 0x82).unwrap(),
        vec![2, 2, 2]
    );
    let i2 = get(&s.es10(2, "BF2200"), 0xBF22).unwrap();
    assert_eq!(get(&i2, 0x81).unwrap(), vec![2, 3, 1]);
    assert_eq!(get(&i2, 0x85).unwrap(), vec![0x05, 0x60]);
    let c1 = get(&get(&s.es10(2, "BF2E00"), 0xBF2E).unwrap(), 0x80).unwrap();
    let c2 = get(&get(&s.es10(2, "BF2E00"), 0xBF2E).unwrap(), 0x80).unwrap();
    assert_eq!((c1.len(), c2.len()), (16, 16));
    assert_ne!(c1, c2);
    let a = get(&s.es10(2, "BF3C00"), 0xBF3C).unwrap();
    assert_eq!(get(&a, 0x80), None);
    assert_eq!(get(&a, 0x81).unwrap(), b"lpa.ds.gsma.com");
    let r = s.es10(2, "BF3F1280 10 736D64702E6578616D706C652E636F6D");
    assert_eq!(result_code(&r, 0xBF3F), 0);
    let a = get(&s.es10(2, "BF3C00"), 0xBF3C).unwrap();
    assert_eq!(get(&a, 0x80).unwrap(), b"smdp.example.com");
    assert_eq!(hx(&s.es10(2, "BF4300")), "BF4302A000");
    // Unknown tags (GetCerts, pySim's SGP.32 probe) and garbage fail.
    assert_eq!(s.sw("82E2910003BF5600"), "6A88");
    assert_eq!(s.sw("82E2910002BF56"), "6A80");
    assert_eq!(s.sw("80E2910003BF2D00"), "6985");
}

#[test]
fn profiles_enable_disable_delete_nickname_notifications() {
    let mut s = Session::new(euicc(34));
    s.select_isdr(0x00);
    let p: Vec<CardProfile> = (0..3)
        .map(|k| generated_euicc_profile(34, k).card)
        .collect();
    let list = profiles(&s.es10(0, "BF2D00"));
    assert_eq!(list.len(), 3);
    for (k, e) in list.iter().enumerate() {
        assert_eq!(decode_iccid(&get(e, 0x5A).unwrap()), p[k].iccid);
        assert_eq!(get(e, 0x9F70).unwrap(), vec![u8::from(k == 0)]);
        assert_eq!(get(e, 0x4F).unwrap()[14], 0x10 + k as u8);
        assert_eq!(get(e, 0x95).unwrap(), vec![2]);
        assert_eq!(
            get(e, 0x92).unwrap(),
            format!("simpool 34/{}", k + 1).as_bytes()
        );
    }
    // A tag list returns only those tags (pySim --all sends it); a search by ICCID one entry.
    let only = profiles(&s.es10(0, "BF2D065C045A9F7095"));
    assert_eq!(ber::parse(&only[1]).unwrap().len(), 3);
    let one = profiles(&s.es10(0, &format!("BF2D0EA00C{}", iccid_tlv(&p[2].iccid))));
    assert_eq!(one.len(), 1);
    // Enable: unknown ICCID 1, the enabled one 2, another one 0.
    let req = |tag: &str, iccid: &str| format!("{tag}11A00C{}810100", iccid_tlv(iccid));
    let r = s.es10(0, &req("BF31", "89000000000000000000"));
    assert_eq!(result_code(&r, 0xBF31), 1);
    assert_eq!(
        result_code(&s.es10(0, &req("BF31", &p[0].iccid)), 0xBF31),
        2
    );
    assert_eq!(
        result_code(&s.es10(0, &req("BF31", &p[1].iccid)), 0xBF31),
        0
    );
    let states: Vec<Vec<u8>> = profiles(&s.es10(0, "BF2D00"))
        .iter()
        .map(|e| get(e, 0x9F70).unwrap())
        .collect();
    assert_eq!(states, vec![vec![0], vec![1], vec![0]]);
    // The files stay the old profile's until the reset.
    s.ok("00A4000402 3F00");
    s.ok("00A4000402 2FE2");
    assert_eq!(decode_iccid(&s.ok("00B000000A")), p[0].iccid);
    // Enable by ISD-P AID (lpac's 32-digit argument) of profile 3, refresh flag FF.
    let aid = hx(&simpool::sim::euicc::isdp_aid(2));
    s.select_isdr(0x00);
    let r = s.es10(0, &format!("BF3117A0124F10{aid}8101FF"));
    assert_eq!(result_code(&r, 0xBF31), 0);
    // Disable: not enabled 2, enabled 0; then nothing is enabled.
    assert_eq!(
        result_code(&s.es10(0, &req("BF32", &p[0].iccid)), 0xBF32),
        2
    );
    assert_eq!(
        result_code(&s.es10(0, &req("BF32", &p[2].iccid)), 0xBF32),
        0
    );
    // Delete (a bare CHOICE): the enabled one is refused, a disabled one goes.
    assert_eq!(
        result_code(&s.es10(0, &req("BF31", &p[1].iccid)), 0xBF31),
        0
    );
    let del = |iccid: &str| format!("BF330C{}", iccid_tlv(iccid));
    assert_eq!(result_code(&s.es10(0, &del(&p[1].iccid)), 0xBF33), 2);
    assert_eq!(result_code(&s.es10(0, &del(&p[0].iccid)), 0xBF33), 0);
    assert_eq!(result_code(&s.es10(0, &del(&p[0].iccid)), 0xBF33), 1);
    assert_eq!(profiles(&s.es10(0, "BF2D00")).len(), 2);
    // SetNickname (lpac's bytes), shown in the list; unknown ICCID 1; empty name clears it.
    let r = s.es10(
        0,
        &format!("BF2913{}9005 68656C6C6F", iccid_tlv(&p[2].iccid)),
    );
    assert_eq!(result_code(&r, 0xBF29), 0);
    let e = profiles(&s.es10(0, "BF2D00"));
    assert_eq!(get(&e[1], 0x90).unwrap(), b"hello");
    let r = s.es10(
        0,
        &format!("BF290E{}9000", iccid_tlv("8900000000000000000")),
    );
    assert_eq!(result_code(&r, 0xBF29), 1);
    // Notifications: enable 1 + disable 0, enable 2 + disable 1, disable 2, enable 1, delete 0.
    let n = get(&get(&s.es10(0, "BF2800"), 0xBF28).unwrap(), 0xA0).unwrap();
    let meta = ber::parse(&n).unwrap();
    assert_eq!(meta.len(), 7);
    let seqs: Vec<u64> = meta
        .iter()
        .map(|m| ber::read_uint(&get(m.value, 0x80).unwrap()).unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(
        get(meta[1].value, 0x81).unwrap(),
        vec![0x06, 0x40],
        "enable"
    );
    assert_eq!(
        get(meta[6].value, 0x81).unwrap(),
        vec![0x04, 0x10],
        "delete"
    );
    assert_eq!(
        get(meta[0].value, 0x0C).unwrap(),
        b"testsmdpplus1.example.com"
    );
    // Filtered by operation (delete only).
    let f = get(&get(&s.es10(0, "BF2804810204 10"), 0xBF28).unwrap(), 0xA0).unwrap();
    assert_eq!(ber::parse(&f).unwrap().len(), 1);
    // RemoveNotificationFromList: seq 3 goes, then nothing to delete.
    assert_eq!(result_code(&s.es10(0, "BF3003800103"), 0xBF30), 0);
    assert_eq!(result_code(&s.es10(0, "BF3003800103"), 0xBF30), 1);
    assert_eq!(
        s.card.euicc().unwrap().notifications(),
        vec![1, 2, 4, 5, 6, 7]
    );
}

#[test]
fn after_a_reset_the_card_is_its_enabled_profile() {
    let mut s = Session::new(euicc(33));
    let p1 = generated_euicc_profile(33, 1).card;
    s.select_isdr(0x00);
    let r = s.es10(0, &format!("BF3111A00C{}810100", iccid_tlv(&p1.iccid)));
    assert_eq!(result_code(&r, 0xBF31), 0);
    s.card.reset();
    // ICCID on both faces, IMSI, and the new K/OPc in AUTHENTICATE.
    s.ok("00A4000402 2FE2");
    assert_eq!(decode_iccid(&s.ok("00B000000A")), p1.iccid);
    s.ok(&format!("00A4040410{}", hx(&USIM_AID)));
    s.ok("00A4000402 6F07");
    assert_eq!(decode_imsi(&s.ok("00B0000009")).unwrap(), p1.imsi);
    assert_eq!(s.sw("A0A40000027F20"), "9F17");
    assert_eq!(s.sw("A0A40000026F07"), "9F0F");
    assert_eq!(decode_imsi(&s.tx("A0B0000009")[..9]).unwrap(), p1.imsi);
    let simpool::sim::algo::Algo::Milenage { opc } = p1.algo else {
        panic!("milenage")
    };
    let rand = [0x42u8; 16];
    let mut mm = milenage::Milenage::new_with_opc(p1.ki, opc);
    let sqn = [0, 0, 0, 0, 0, 0x21];
    let amf = [0x80, 0x00];
    let (res, _, _, ak) = mm.f2345(&rand);
    let mac = mm.f1(&rand, &sqn, &amf);
    let sqn_ak: Vec<u8> = sqn.iter().zip(ak).map(|(a, b)| a ^ b).collect();
    let autn = format!("{}{}{}", hx(&sqn_ak), hx(&amf), hx(&mac));
    let d = s.ok(&format!("0088008122 10{} 10{autn}", hx(&rand)));
    assert_eq!(d[0], 0xDB);
    assert_eq!(&d[2..10], &res[..], "RES of the new profile's keys");
    // Disable everything: after the reset there is no USIM and no GSM face.
    s.select_isdr(0x00);
    let r = s.es10(0, &format!("BF3211A00C{}810100", iccid_tlv(&p1.iccid)));
    assert_eq!(result_code(&r, 0xBF32), 0);
    s.card.reset();
    s.ok("00A4000402 2FE2");
    assert_eq!(s.ok("00B000000A"), vec![0xFF; 10]);
    assert_eq!(
        s.sw(&format!("00A4040410{}", hx(&USIM_AID))),
        "6A82",
        "no USIM without a profile"
    );
    assert_eq!(s.sw("A0A40000023F00"), "6E00");
    // The ISD-R is still there, and enabling works again.
    s.select_isdr(0x00);
    let r = s.es10(0, &format!("BF3111A00C{}810100", iccid_tlv(&p1.iccid)));
    assert_eq!(result_code(&r, 0xBF31), 0);
}

#[test]
fn long_responses_come_in_256_byte_pieces() {
    // Twelve profiles with long names: the list is well over 256 bytes.
    let mut text = String::from("[[card]]\nslot = 50\nprofile = \"euicc\"\n");
    for k in 0..12 {
        text.push_str(&format!(
            "[[card.profiles]]\nname = \"{}\"\nenabled = {}\n",
            "N".repeat(40),
            k == 0
        ));
    }
    let f = CardsFile::from_toml(&text).unwrap();
    let mut s = Session::new(f.get(50).unwrap().profile.clone());
    s.select_isdr(0x00);
    let r = s.tx("80E2910003BF2D00");
    assert_eq!(hx(&r), "6100");
    // 256 bytes at a time while `61 00` says "256 or more", then the rest.
    let mut all = Vec::new();
    let mut le = 0u8;
    loop {
        let piece = s.tx(&format!("80C00000{le:02X}"));
        let (data, sw) = piece.split_at(piece.len() - 2);
        all.extend_from_slice(data);
        if sw == [0x90, 0x00] {
            break;
        }
        assert_eq!(data.len(), 256);
        assert_eq!(sw[0], 0x61);
        le = sw[1];
    }
    assert!(all.len() > 512, "{}", all.len());
    assert_eq!(profiles(&all).len(), 12);
    assert_eq!(&all[..3], &[0xBF, 0x2D, 0x82]);
}

#[test]
fn a_profile_enable_takes_its_time_with_null_bytes() {
    let text = "[[card]]\nslot = 50\nprofile = \"euicc\"\nenable_ms = 3000\n\
                [[card.profiles]]\nenabled = true\n[[card.profiles]]\n";
    let f = CardsFile::from_toml(text).unwrap();
    let mut card = SimCard::new(f.get(50).unwrap().profile.clone());
    card.reset();
    let p1 = generated_euicc_profile(50, 1).card;
    let sel = h(&format!("00A4040410{}", hx(&ISDR_AID)));
    assert_eq!(card.receive(&sel[..5]), vec![0xA4]);
    assert_eq!(card.receive(&sel[5..])[0], 0x61);
    let req = h(&format!("BF3111A00C{}810100", iccid_tlv(&p1.iccid)));
    let mut cmd = h("80E29100");
    cmd.push(req.len() as u8);
    assert_eq!(card.receive(&cmd), vec![0xE2]);
    let bursts = card.receive_paced(&req);
    let total: Duration = bursts.iter().map(|b| b.after).sum();
    assert_eq!(total, Duration::from_millis(3000));
    assert!(bursts.iter().all(|b| b.after <= NULL_EVERY));
    let (last, nulls) = bursts.split_last().unwrap();
    assert!(nulls.len() >= 10);
    assert!(nulls.iter().all(|b| b.bytes == vec![NULL]));
    assert_eq!(last.bytes[0], 0x61);
    // A disable takes half; an enable that fails answers at once.
    let again = card.receive_paced(&[]);
    assert!(again.is_empty());
    assert_eq!(card.receive(&cmd), vec![0xE2]);
    let fail = card.receive_paced(&req);
    assert_eq!(fail.len(), 1);
    assert_eq!(fail[0].after, Duration::ZERO);
}

// ---------------------------------------------------------------- cards file

#[test]
fn cards_file_euicc_and_its_errors() {
    let text = r#"
[[card]]
slot = 60
profile = "euicc"
eid = "89049032000000000000000012345644"
enable_ms = 1000
default_smdp = "smdp.example.com"

[[card.profiles]]
iccid = "89000123456789012341"
imsi = "001010123456781"
ki = "465b5ce8b199b49faa5f0a2ee238a6bc"
opc = "cd63cb71954a9f4e48a5994e37a02baf"
name = "Profile A"
provider = "SP"
class = "test"
enabled = true

[[card.profiles]]
iccid = "89000123456789012358"
imsi = "001010123456782"
nickname = "spare"
"#;
    let f = CardsFile::from_toml(text).unwrap();
    let p = &f.get(60).unwrap().profile;
    assert_eq!(p.kind, CardKind::Euicc);
    assert_eq!(
        p.iccid, "89000123456789012341",
        "card-wide = the enabled profile"
    );
    let e = p.euicc.as_ref().unwrap();
    assert_eq!(eid_digits(&e.eid), "89049032000000000000000012345644");
    assert_eq!(e.profiles.len(), 2);
    assert_eq!(e.profiles[1].nickname.as_deref(), Some("spare"));
    let mut s = Session::new(p.clone());
    s.select_isdr(0x00);
    let list = profiles(&s.es10(0, "BF2D00"));
    assert_eq!(get(&list[0], 0x95).unwrap(), vec![0]);
    assert_eq!(get(&list[0], 0x91).unwrap(), b"SP");
    assert_eq!(get(&list[1], 0x90).unwrap(), b"spare");
    // Built-in eUICCs are valid and unique.
    let set = CardsFile::default_set();
    let mut eids = Vec::new();
    for slot in [33, 34, 35] {
        let p = &set.get(slot).unwrap().profile;
        assert_eq!(p.kind, CardKind::Euicc);
        eids.push(p.euicc.as_ref().unwrap().eid);
    }
    eids.dedup();
    assert_eq!(eids.len(), 3);
    assert_eq!(generated_euicc(33), set.get(33).unwrap().profile);
    for bad in [
        "eid = \"89049032000000000000000012345645\"",
        "eid = \"123\"",
        "iccid = \"8949440000000000001\"",
        "enable_ms = 999999",
        "[[card.profiles]]\nenabled = true\n[[card.profiles]]\nenabled = true",
        "[[card.profiles]]\niccid = \"1\"\n[[card.profiles]]\niccid = \"1\"",
        "[[card.profiles]]\nclass = \"bogus\"",
        "[[card.profiles]]\nbogus = 1",
        "[[card.profiles]]\nalgo = \"xor2g\"",
    ] {
        let text = format!("[[card]]\nslot = 61\nprofile = \"euicc\"\n{bad}");
        assert!(CardsFile::from_toml(&text).is_err(), "{bad}");
    }
}

/// Its own ICCID as EF.ICCID holds it.
trait IccidBytes {
    fn iccid_bytes(&self) -> Vec<u8>;
}

impl IccidBytes for CardProfile {
    fn iccid_bytes(&self) -> Vec<u8> {
        simpool::sim::profile::encode_iccid(&self.iccid).to_vec()
    }
}
