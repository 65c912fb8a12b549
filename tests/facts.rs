//! What each card is (issue 20 §2) and binding by EID (issue 24 §3): type, SPN, MSISDN,
//! PIN1/PUK1, EID as scan, the API and `status` show them, read without using a PIN try and
//! leaving no logical channel open; a reader bound by `--eid` through pcscd + vpcd.
//! Needs pcscd and vsmartcard-vpcd (`driver/pcscd-private install`); run inside `unshare -n`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{call, get_json};
use common::stack::{self, Serve};
use pcsc::{Protocols, ShareMode};
use serde_json::{json, Value};
use simpool::cards::{Cards, Front, Holder};
use simpool::pool::{Link, LinkOptions};
use simpool::sim::profile::{decode_iccid, CardsFile};
use simpool::sim::Faults;
use simpool::values::CardNo;

const BASE_PORT: u16 = 29300;
const EID_33: &str = "89049032000000000000000003300006";
const EID_34: &str = "89049032000000000000000003400013";

fn row(rows: &Value, n: u64) -> &Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["card"] == n)
        .unwrap_or_else(|| panic!("card {n} in {rows}"))
}

#[test]
fn scan_the_api_and_status_say_what_each_card_is_and_a_reader_binds_by_eid() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pcscd = stack::pcscd(BASE_PORT);
    let control = format!("127.0.0.1:{}", common::free_port());
    let pool = sim.addr().to_string();
    let serve = Serve::start(
        &[
            "--pool",
            &pool,
            "--vpcd",
            &pcscd.vpcd_addr(0),
            "--eid",
            EID_34,
            "--control",
            &control,
        ],
        "facts",
    );
    let ctx = stack::context();
    let name = pcscd.reader_name(0);
    assert!(
        stack::wait_card(&ctx, &name, true, Duration::from_secs(15)),
        "{name:?} shows no card; simpool log:\n{}",
        serve.log_text()
    );
    // Reader 0 shows the eUICC with that EID: its enabled profile's ICCID through PC/SC.
    let card = ctx
        .connect(&name, ShareMode::Shared, Protocols::T0)
        .expect("connect");
    assert_eq!(stack::tx(&card, "A0A40000022FE2")[0], 0x9F);
    let iccid = stack::tx(&card, "A0B000000A");
    assert_eq!(decode_iccid(&iccid[..10]), "89494490003400000006");
    drop(card);
    let reader = get_json(&control, "/api/v1/readers/0");
    assert_eq!(reader["card"], 34, "{reader}");
    assert_eq!(reader["binding"], json!({"eid": EID_34}), "{reader}");

    // A scan through the daemon, three times over: nothing it reads uses a PIN try.
    let body = r#"{"cards":[4,28,30,31,33,34]}"#;
    for _ in 0..3 {
        let (status, b) = call(&control, "POST", "/api/v1/scan", Some(body));
        assert_eq!(status, 200, "{b}");
        let rows: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(row(&rows, 30)["pin1"]["tries"], 3, "{rows}");
    }
    // A first read leaves SPN, MSISDN and EID out; the daemon reads them after the scan.
    common::wait_for(
        "the details read after the scans",
        Duration::from_secs(10),
        || {
            let c = |n: u16| get_json(&control, &format!("/api/v1/cards/{n}"));
            c(30)["spn"] == "simpool 30" && c(33)["eid"] == EID_33 && c(28)["msisdn"].is_string()
        },
    );
    // Taken over by the next scan: the cards are known and untouched.
    let (status, b) = call(&control, "POST", "/api/v1/scan", Some(body));
    assert_eq!(status, 200, "{b}");
    let rows: Value = serde_json::from_str(&b).unwrap();
    // PIN1 enabled: the ICCID shown, the IMSI null, and why.
    let usim = row(&rows, 30);
    assert_eq!(
        (&usim["type"], &usim["iccid"], &usim["imsi"], &usim["error"]),
        (
            &json!("usim"),
            &json!("89494400000000000302"),
            &Value::Null,
            &Value::Null
        ),
        "{usim}"
    );
    assert_eq!(usim["hidden"], json!(["imsi", "msisdn"]), "{usim}");
    assert_eq!(
        usim["pin1"],
        json!({"enabled": true, "verified": false, "tries": 3})
    );
    assert_eq!(usim["puk1"], json!({"tries": 10}));
    assert_eq!(usim["spn"], "simpool 30");
    let sim2g = row(&rows, 31);
    assert_eq!(sim2g["type"], "sim", "{sim2g}");
    assert_eq!(sim2g["iccid"], "89494400000000000310", "{sim2g}");
    assert_eq!(sim2g["imsi"], Value::Null);
    assert_eq!(
        sim2g["pin1"],
        json!({"enabled": true, "verified": false, "tries": 3})
    );
    assert_eq!(sim2g["hidden"], json!(["imsi", "msisdn"]));
    // PIN1 disabled: the MSISDN read too.
    let open = row(&rows, 28);
    assert_eq!(open["msisdn"], "+491700000028", "{open}");
    assert_eq!(open["pin1"]["enabled"], false);
    assert_eq!(open["imsi"], "001010000000028");
    assert_eq!(open["hidden"], json!([]));
    assert_eq!(row(&rows, 4)["type"], "usim");
    // eUICCs: type and EID; the one reader 0 holds from what was read when it was bound.
    assert_eq!(
        (&row(&rows, 33)["type"], &row(&rows, 33)["eid"]),
        (&json!("euicc"), &json!(EID_33))
    );
    let held = row(&rows, 34);
    assert_eq!(held["holder"], "reader 0", "{held}");
    assert_eq!(
        (&held["type"], &held["eid"]),
        (&json!("euicc"), &json!(EID_34))
    );

    // The API's card entries and `status` know it too.
    let c33 = get_json(&control, "/api/v1/cards/33");
    assert_eq!(
        (&c33["type"], &c33["eid"]),
        (&json!("euicc"), &json!(EID_33))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["status", "--control", &control])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = |start: &str| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("{start} in\n{text}"))
    };
    assert!(
        lines[at("33  euicc") + 1].contains(&format!("EID {EID_33}")),
        "{text}"
    );
    assert!(
        lines[at("30  usim")].contains("hidden by PIN1: IMSI, MSISDN"),
        "{text}"
    );
    let json_out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["status", "--control", &control, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v[29]["pin1"]["tries"], 3, "{}", v[29]);

    // The tries are all there: VERIFY and UNBLOCK without data through the API.
    let (status, b) = call(
        &control,
        "POST",
        "/api/v1/cards/30/apdu",
        Some(r#"{"tpdus":["00A4040C07A0000000871002","00200001","002C0001"]}"#),
    );
    assert_eq!(status, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["responses"], json!(["9000", "63C3", "63CA"]), "{v}");

    // Someone writes card 28's SPN (ADM1, UPDATE BINARY through the API): the next scan reads
    // it afresh instead of reusing what it knew.
    let spn = format!("014E4557{}", "FF".repeat(13));
    let (status, b) = call(
        &control,
        "POST",
        "/api/v1/cards/28/apdu",
        Some(&format!(
            r#"{{"tpdus":["002000 0A083838383838383838","00A4040C07A0000000871002","00A4000C026F46","00D6000011{spn}"]}}"#
        )),
    );
    assert_eq!(status, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["responses"],
        json!(["9000", "9000", "9000", "9000"]),
        "{v}"
    );
    let (_, b) = call(&control, "POST", "/api/v1/scan", Some(r#"{"cards":[28]}"#));
    let rows: Value = serde_json::from_str(&b).unwrap();
    // The scan's first read says what it is; the SPN follows with the details.
    assert_eq!(
        (&rows[0]["type"], &rows[0]["spn"]),
        (&json!("usim"), &Value::Null),
        "{rows}"
    );
    common::wait_for("card 28's new SPN", Duration::from_secs(10), || {
        get_json(&control, "/api/v1/cards/28")["spn"] == "NEW"
    });

    // A wrong EID binding is refused; one that no card has waits.
    let (status, b) = call(
        &control,
        "PUT",
        "/api/v1/readers/0",
        Some(r#"{"eid":"89049032000000000000000003300007"}"#),
    );
    assert_eq!(status, 422, "check digits: {b}");
}

/// Card level, over the simulated pool: the EID read leaves no logical channel open, the PIN
/// state read is the card's real counter, and reading never changes it.
#[test]
fn reading_facts_leaves_no_channel_open_and_uses_no_try() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let link = Link::connect(&sim.addr().to_string(), LinkOptions::default())
            .await
            .unwrap();
        let cards = Cards::new(link, Vec::new());
        let t = Duration::from_secs(5);
        let mut lease = cards.lease(CardNo::of(33), Holder::Scan).unwrap();
        let id = lease.read_identity(t).await.unwrap();
        assert_eq!(id.facts.kind.map(|k| k.name()), Some("euicc"));
        // The EID is one of the details, read in the same session here.
        lease.read_details(t).await.unwrap();
        assert_eq!(
            cards.known(CardNo::of(33)).facts.eid.as_deref(),
            Some(EID_33)
        );
        // Channel 1 is free again: the read closed the one it opened.
        let r = lease
            .transmit(&common::h("0070000001"), t, Front::Api)
            .await;
        assert_eq!(r.unwrap(), common::h("019000"));
        lease.release().await;

        let mut lease = cards.lease(CardNo::of(30), Holder::Scan).unwrap();
        lease.start().await.unwrap();
        let wrong = common::h("00A4040C07A0000000871002");
        assert_eq!(
            lease.transmit(&wrong, t, Front::Api).await.unwrap(),
            common::h("9000")
        );
        let verify = common::h("002000010839393939FFFFFFFF");
        assert_eq!(
            lease.transmit(&verify, t, Front::Api).await.unwrap(),
            common::h("63C2"),
            "one wrong PIN"
        );
        let t0 = Instant::now();
        for _ in 0..5 {
            let id = lease.read_identity(t).await.unwrap();
            assert_eq!(id.facts.pin1.tries, Some(2), "the card's own counter");
            assert_eq!(id.facts.puk1.tries, Some(10));
            lease.read_details(t).await.unwrap();
        }
        assert_eq!(
            cards.known(CardNo::of(30)).facts.spn.as_deref(),
            Some("simpool 30")
        );
        assert!(t0.elapsed() < Duration::from_secs(30));
        lease.release().await;
    });
}

/// Issue 20 §2, "nor slow `scan` by more than one round trip per card": a card's facts read
/// for the first time cost at most one exchange more than the identity read of before (ATR,
/// ICCID, IMSI: `identity::Reading`), card by card, for every SIM, USIM and eUICC of the
/// built-in set. An exchange is one command to the card and its answer, over the pool (a
/// GET RESPONSE is one; the counter is the card layer's, `card_stats(n).exchanges`).
#[test]
fn a_first_read_costs_at_most_one_exchange_more_than_the_identity_read_of_before() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let link = Link::connect(&sim.addr().to_string(), LinkOptions::default())
            .await
            .unwrap();
        let states = link.states().await.unwrap();
        let t = Duration::from_secs(5);
        let old = Cards::new(link.clone(), Vec::new());
        let new = Cards::new(link.clone(), Vec::new());
        let count = |c: &Cards, n: CardNo| {
            c.card_stats(n)
                .exchanges
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let frames = || {
            link.stats()
                .frames_out
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut kinds = std::collections::BTreeSet::new();
        let mut table = Vec::new();
        let mut over = Vec::new();
        for n in CardNo::all().filter(|n| states[n.index()].has_card()) {
            let f0 = frames();
            let mut lease = old.lease(n, Holder::Scan).unwrap();
            lease.start().await.unwrap();
            let mut r = simpool::identity::Reading::new();
            while let Some((_, cmd)) = r.command() {
                let resp = lease.transmit(&cmd, t, Front::Scan).await.unwrap();
                // Cards 30 and 31 end in PIN1's error: the row of before.
                if r.answer::<std::io::Error>(&resp).is_err() {
                    break;
                }
            }
            lease.release().await;
            let (f1, before) = (frames(), count(&old, n));
            let mut lease = new.lease(n, Holder::Scan).unwrap();
            let id = lease.read_identity(t).await.unwrap();
            lease.release().await;
            let after = count(&new, n);
            let kind = id.facts.kind.expect("a type").name();
            kinds.insert(kind);
            table.push(format!(
                "card {n:>3} {kind:<5} before {before:>2} exchanges ({:>2} frames), first read {after:>2} ({:>2})",
                f1 - f0,
                frames() - f1
            ));
            if after > before + 1 {
                over.push(n.get());
            }
        }
        eprintln!("{}", table.join("\n"));
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(over.is_empty(), "cards {over:?} cost more:\n{}", table.join("\n"));
        // The details (SPN, MSISDN, EID) afterwards, once per card, off the scan's path.
        let inserted: Vec<CardNo> = CardNo::all()
            .filter(|n| states[n.index()].has_card())
            .collect();
        let before: Vec<u64> = inserted.iter().map(|&n| count(&new, n)).collect();
        assert_eq!(new.read_details(t).await, inserted.len());
        assert_eq!(new.read_details(t).await, 0, "once per card");
        let mut per_kind = std::collections::BTreeMap::<&str, Vec<u64>>::new();
        for (&n, b) in inserted.iter().zip(before) {
            let k = new.known(n);
            assert!(k.facts.spn.is_some(), "card {n}: {k:?}");
            let kind = k.facts.kind.unwrap().name();
            assert_eq!(k.facts.eid.is_some(), kind == "euicc", "card {n}: {k:?}");
            per_kind.entry(kind).or_default().push(count(&new, n) - b);
        }
        for n in [28, 29] {
            let msisdn = new.known(CardNo::of(n)).facts.msisdn;
            assert_eq!(msisdn, Some(format!("+4917000000{n}")));
        }
        eprintln!("details, exchanges per card: {per_kind:?}");
    });
}
