//! Logical channels and the simulated eUICC end to end: the `pcsc` crate → pcsc-lite's pcscd →
//! vpcd → `simpool serve` → the simulated pool, and the control API's `apdu` path. MANAGE
//! CHANNEL, CLA with channel bits (1–3, 4–19), GET RESPONSE on a channel, ISD-R and ES10 on a
//! channel, a 3 s profile enable (NULL bytes all along), and the new profile after a reset.
//! Needs pcscd and vsmartcard-vpcd (`driver/pcscd-private install`); run inside `unshare -n`.

mod common;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::stack::{self, Serve};
use pcsc::{Context, Disposition, Protocols, ShareMode};
use simpool::sim::profile::{decode_iccid, decode_imsi, generated_euicc_profile, CardsFile};
use simpool::sim::uicc::{ISDR_AID, USIM_AID};
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 28500;

fn h(s: &str) -> Vec<u8> {
    common::hex(&s.replace(' ', ""))
}

fn hx(b: &[u8]) -> String {
    hex::encode_upper(b)
}

fn tx(card: &pcsc::Card, cmd: &str) -> Vec<u8> {
    let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
    card.transmit(&h(cmd), &mut buf).expect("transmit").to_vec()
}

fn sw(r: &[u8]) -> String {
    hx(&r[r.len() - 2..])
}

/// A case-4 command the way pySim sends it: `61xx` → GET RESPONSE with the command's CLA.
fn tx4(card: &pcsc::Card, cmd: &str) -> Vec<u8> {
    let r = tx(card, cmd);
    assert_eq!((r.len(), r[0]), (2, 0x61), "{cmd}: {r:02X?}");
    let gr = tx(card, &format!("{}C00000{:02X}", &cmd[..2], r[1]));
    assert_eq!(sw(&gr), "9000", "{cmd}");
    gr[..gr.len() - 2].to_vec()
}

fn serve(sim: &SimPool, reader: u16, card: u16, extra: &[&str]) -> (Serve, Context, CString) {
    stack::serve_card(
        BASE_PORT,
        &sim.addr().to_string(),
        reader,
        card,
        extra,
        "euicc",
    )
}

fn connect(ctx: &Context, name: &CString) -> pcsc::Card {
    ctx.connect(name, ShareMode::Exclusive, Protocols::T0)
        .expect("connect")
}

#[test]
fn logical_channels_on_a_usim_through_pcscd_and_vpcd() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (_serve, ctx, name) = serve(&sim, 0, 4, &[]);
    let card = connect(&ctx, &name);
    // Open: the card picks 1; then channel 5 by number (pySim `open_channel 5`).
    assert_eq!(tx(&card, "0070000001"), h("019000"));
    assert_eq!(sw(&tx(&card, "0070000500")), "9000");
    // Channel 1: ADF.USIM by AID, FCP fetched with CLA 01, EF.IMSI read there.
    let fcp = tx4(&card, &format!("01A4040410{}", hx(&USIM_AID)));
    assert_eq!(fcp[0], 0x62);
    tx4(&card, "01A40004026F07");
    let imsi = tx(&card, "01B0000009");
    assert_eq!(decode_imsi(&imsi[..9]).as_deref(), Some("001010000000004"));
    // Extended channel 5 (CLA 41): EF.ICCID from the MF, STATUS with the proprietary C1.
    tx4(&card, "41A40004022FE2");
    let iccid = tx(&card, "41B000000A");
    let want = sim.with_card(4, |c| c.profile().iccid.clone()).unwrap();
    assert_eq!(decode_iccid(&iccid[..10]), want);
    let st = tx(&card, "C1F2000000");
    assert_eq!(st[0], 0x6C, "{st:02X?}");
    assert_eq!(tx(&card, &format!("C1F20000{:02X}", st[1]))[0], 0x62);
    // The basic channel is still at the MF with no EF: READ BINARY has nothing to read.
    assert_eq!(sw(&tx(&card, "00B0000009")), "6986");
    // Close both; the classes are refused afterwards.
    assert_eq!(sw(&tx(&card, "0070800100")), "9000");
    assert_eq!(sw(&tx(&card, "0070800500")), "9000");
    assert_eq!(sw(&tx(&card, "01B0000009")), "6881");
    assert_eq!(sw(&tx(&card, "41B000000A")), "6881");
}

#[test]
fn isdr_and_es10_on_a_logical_channel_through_pcscd_and_vpcd() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (_serve, ctx, name) = serve(&sim, 1, 34, &[]);
    let card = connect(&ctx, &name);
    // lpac's sequence: TERMINAL CAPABILITY, MANAGE CHANNEL, SELECT ISD-R (P2 00), STORE DATA.
    assert_eq!(sw(&tx(&card, "80AA00000AA9088100820101830107")), "9000");
    assert_eq!(tx(&card, "0070000001"), h("019000"));
    assert_eq!(
        sw(&tx(&card, &format!("01A4040010{}", hx(&ISDR_AID)))),
        "6121"
    );
    let eid = tx4(&card, "81E2910006BF3E035C015A");
    let want = sim
        .with_card(34, |c| hx(&c.euicc().unwrap().eid()))
        .unwrap();
    assert_eq!(hx(&eid[5..]), want);
    let list = tx4(&card, "81E2910003BF2D00");
    assert_eq!(&list[..2], &[0xBF, 0x2D]);
    assert_eq!(sw(&tx(&card, "0070800100")), "9000");
}

/// The body of an HTTP/1.1 request on a fresh connection (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("control API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

#[test]
fn channels_and_es10_through_the_api_apdu() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let control = "127.0.0.1:28580";
    let serve = Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--control",
            control,
            "--readers",
            "1",
        ],
        "euicc-api",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(control).is_err() {
        assert!(
            Instant::now() < deadline,
            "no control API: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tpdus = [
        "0070000001".to_string(),
        format!("01A4040410{}", hx(&ISDR_AID)),
        "01C0000021".into(),
        "81E2910006BF3E035C015A".into(),
        "81C0000015".into(),
        "4FA40004022FE2".into(),
        "0070000001".into(),
        "0070800100".into(),
        "0070800200".into(),
    ];
    let body = serde_json::json!({ "tpdus": tpdus }).to_string();
    let (status, out) = http(control, "POST", "/api/v1/cards/33/apdu", &body);
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r: Vec<String> = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(r[0], "019000");
    assert_eq!(r[1], "6121");
    assert!(
        r[2].starts_with("6F1F8410A0000005591010FFFFFFFF8900000100"),
        "{r:?}"
    );
    assert_eq!(r[3], "6115");
    let eid = sim
        .with_card(33, |c| hx(&c.euicc().unwrap().eid()))
        .unwrap();
    assert_eq!(r[4], format!("BF3E125A10{eid}9000"));
    assert_eq!(r[5], "6881", "channel 19 was never opened");
    assert_eq!(r[6], "029000");
    assert_eq!((r[7].as_str(), r[8].as_str()), ("9000", "9000"));
    drop(serve);
}

#[test]
fn a_3_s_profile_enable_through_pcscd_and_vpcd_succeeds_and_a_reset_shows_the_new_profile() {
    let text = "[[card]]\nslot = 50\nprofile = \"euicc\"\nenable_ms = 3000\n\
                [[card.profiles]]\nenabled = true\n[[card.profiles]]\n";
    let sim = common::sim_pool(CardsFile::from_toml(text).unwrap(), Faults::default());
    // The default command timeout (1.5 s): the card's NULL bytes extend the wait.
    let control = "127.0.0.1:28581";
    let (serve, ctx, name) = serve(&sim, 2, 50, &["--control", control]);
    let known = |key: &str| {
        let (status, out) = http(control, "GET", "/api/v1/cards/50", "");
        assert_eq!(status, 200, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[key].as_str().map(String::from)
    };
    let p0 = generated_euicc_profile(50, 0).card;
    assert_eq!(known("iccid").as_deref(), Some(p0.iccid.as_str()));
    let mut card = connect(&ctx, &name);
    let p1 = generated_euicc_profile(50, 1).card;
    let iccid = hx(&simpool::sim::profile::encode_iccid(&p1.iccid));
    tx4(&card, &format!("00A4040410{}", hx(&ISDR_AID)));
    let t = Instant::now();
    let r = tx4(&card, &format!("80E2910014BF3111A00C5A0A{iccid}810100"));
    let took = t.elapsed();
    assert_eq!(
        hx(&r),
        "BF3103800100",
        "enable ok; simpool log:\n{}",
        serve.log_text()
    );
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // Until the reset the card still shows the old profile; after it, the new one.
    tx4(&card, "00A40004022FE2");
    let old = tx(&card, "00B000000A");
    assert_eq!(
        decode_iccid(&old[..10]),
        generated_euicc_profile(50, 0).card.iccid
    );
    card.reconnect(ShareMode::Exclusive, Protocols::T0, Disposition::ResetCard)
        .expect("reset");
    tx4(&card, "00A40004022FE2");
    let new = tx(&card, "00B000000A");
    assert_eq!(decode_iccid(&new[..10]), p1.iccid);
    tx4(&card, &format!("00A4040410{}", hx(&USIM_AID)));
    tx4(&card, "00A40004026F07");
    let imsi = tx(&card, "00B0000009");
    assert_eq!(decode_imsi(&imsi[..9]).as_deref(), Some(p1.imsi.as_str()));
    // What the daemon knows of the card (the API, status, scan of a held card) followed the
    // switch: read again at the start the reset caused.
    assert_eq!(known("iccid").as_deref(), Some(p1.iccid.as_str()));
    assert_eq!(known("imsi").as_deref(), Some(p1.imsi.as_str()));
    // The reset reached the pool as stop + start.
    let log = serve.log_text();
    assert!(
        sim.stats()
            .card_starts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "{log}"
    );
    card.disconnect(Disposition::LeaveCard).ok();
}
