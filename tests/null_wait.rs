//! Issue 24 §6 (terminal side): a NULL procedure byte (`60`) means "keep waiting". A command
//! whose card keeps sending NULLs goes on past its deadline, up to the link's NULL wait cap;
//! a card that falls silent still ends in bounded time (`6F 00`).

mod common;

use std::time::{Duration, Instant};

use simpool::cards::{Cards, Front, Holder};
use simpool::pool::{ExchangeError, Link, LinkOptions};
use simpool::sim::profile::{encode_iccid, generated_euicc_profile, CardsFile};
use simpool::sim::uicc::ISDR_AID;
use simpool::sim::{Faults, SimPool};
use simpool::values::CardNo;

const EUICC: &str = "[[card]]\nslot = 50\nprofile = \"euicc\"\nenable_ms = 3000\n\
                     [[card.profiles]]\nenabled = true\n[[card.profiles]]\n\
                     [[card]]\nslot = 9\n";

async fn setup(cap: Duration) -> (SimPool, Cards) {
    let sim = SimPool::start(
        "127.0.0.1:0",
        CardsFile::from_toml(EUICC).unwrap(),
        Faults::default(),
    )
    .await
    .unwrap();
    let link = Link::connect(
        &sim.addr().to_string(),
        LinkOptions {
            reply_timeout: Duration::from_millis(400),
            null_wait_cap: cap,
            ..LinkOptions::default()
        },
    )
    .await
    .unwrap();
    (sim, Cards::new(link, Vec::new()))
}

fn hx(b: &[u8]) -> String {
    hex::encode_upper(b)
}

/// ENABLE PROFILE of the eUICC's second profile, 3 s of NULL bytes every 200 ms, with a
/// command deadline of 1.5 s (the daemon's default): answers, after the 3 s.
#[tokio::test]
async fn a_3_s_profile_enable_succeeds_within_the_default_command_timeout() {
    let (_sim, cards) = setup(Duration::from_secs(30)).await;
    let mut l = cards.lease(CardNo::of(50), Holder::Scan).unwrap();
    l.start().await.unwrap();
    let deadline = Duration::from_millis(1500);
    let t = |cmd: String| {
        let l = &l;
        async move { l.transmit(&common::hex(&cmd), deadline, Front::Scan).await }
    };
    let r = t(format!("00A4040410{}", hx(&ISDR_AID))).await.unwrap();
    assert_eq!(r[0], 0x61, "{r:02X?}");
    let iccid = hx(&encode_iccid(&generated_euicc_profile(50, 1).card.iccid));
    let began = Instant::now();
    let r = t(format!("80E2910014BF3111A00C5A0A{iccid}810100")).await;
    let took = began.elapsed();
    assert_eq!(r.as_deref(), Ok(&[0x61, 0x06][..]), "after {took:?}");
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    let r = t("00C0000006".into()).await.unwrap();
    assert_eq!(hx(&r), "BF31038001009000");
    l.release().await;
}

/// The same enable with a cap of 2 s: cut at the cap, `6F 00`.
#[tokio::test]
async fn a_card_that_keeps_sending_nulls_ends_at_the_cap() {
    let cap = Duration::from_millis(2000);
    let (_sim, cards) = setup(cap).await;
    let mut l = cards.lease(CardNo::of(50), Holder::Scan).unwrap();
    l.start().await.unwrap();
    let deadline = Duration::from_millis(500);
    let r = l
        .transmit(
            &common::hex(&format!("00A4040410{}", hx(&ISDR_AID))),
            deadline,
            Front::Scan,
        )
        .await
        .unwrap();
    assert_eq!(r[0], 0x61);
    let iccid = hx(&encode_iccid(&generated_euicc_profile(50, 1).card.iccid));
    let began = Instant::now();
    let r = l
        .transmit(
            &common::hex(&format!("80E2910014BF3111A00C5A0A{iccid}810100")),
            deadline,
            Front::Scan,
        )
        .await;
    let took = began.elapsed();
    let e = r.expect_err("cut at the cap");
    assert!(matches!(e, ExchangeError::Deadline { .. }), "{e}");
    assert_eq!(e.status(), [0x6F, 0x00]);
    assert!(
        took >= cap - Duration::from_millis(50) && took < cap + Duration::from_millis(600),
        "took {took:?}"
    );
    l.release().await;
}

/// A card that falls silent (no NULLs): the deadline as before.
#[tokio::test]
async fn a_silent_card_still_ends_at_the_deadline() {
    let (sim, cards) = setup(Duration::from_secs(30)).await;
    let mut l = cards.lease(CardNo::of(9), Holder::Scan).unwrap();
    l.start().await.unwrap();
    sim.update_faults(|f| {
        f.mute.insert(9);
    });
    let began = Instant::now();
    let r = l
        .transmit(
            &common::hex("A0A40000023F00"),
            Duration::from_millis(300),
            Front::Scan,
        )
        .await;
    let took = began.elapsed();
    assert_eq!(r.expect_err("silent").status(), [0x6F, 0x00]);
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
