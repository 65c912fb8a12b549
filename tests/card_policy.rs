//! The card layer's rules, as every front end gets them (issue 18 item 3): a card marked bad
//! is refused at once, naming why, by a vpcd reader, an API request and the remsim bank; a
//! forced stop goes through the lease and ends its holder's session; a session ends when the
//! pool connection changes.
//!
//! Each test marks a mute card bad through a session (the way a reader or a bank client does),
//! then lets the card answer again: a front end that did not refuse it would start it, and the
//! simulator counts that.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::remsim::{bs, cs, map, Client, Server};
use simpool::bridge::{Binding, Presence, Reader, ReaderConfig, ResetPolicy};
use simpool::cards::{Cards, Ended, Holder, StartError};
use simpool::pool::{Link, LinkOptions, SlotState};
use simpool::remsim::rspro::ResultCode;
use simpool::remsim::{Bank, BankConfig};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};
use simpool::values::CardNo;

const MUTE: CardNo = CardNo::of(7);
const REPLY_TIMEOUT: Duration = Duration::from_millis(300);

async fn pool(faults: Faults) -> (SimPool, Cards) {
    let sim = SimPool::start("127.0.0.1:0", CardsFile::default_set(), faults)
        .await
        .unwrap();
    let link = Link::spawn(
        &sim.addr().to_string(),
        LinkOptions {
            reply_timeout: REPLY_TIMEOUT,
            ..LinkOptions::default()
        },
    );
    assert!(link.wait_up(Duration::from_secs(5)).await);
    (sim, Cards::new(link, Vec::new()))
}

/// Card 7 does not start twice in a row in a session: marked bad (the pool's slot turns
/// abnormal); then it answers again, so only a refusal keeps it from being started.
async fn marked_bad() -> (SimPool, Cards) {
    let (sim, cards) = pool(Faults {
        mute: [MUTE.get()].into(),
        ..Faults::default()
    })
    .await;
    let mut lease = cards.lease(MUTE, Holder::Reader(9)).unwrap();
    lease.in_session();
    for _ in 0..2 {
        assert!(lease.start().await.is_err());
    }
    lease.release().await;
    assert!(cards.bad(MUTE).is_some(), "marked bad");
    settle(&cards).await;
    assert_eq!(sim.error_indications(MUTE.get()), 1);
    assert_eq!(sim.slot_state(MUTE.get()), Some(SlotState::Abnormal));
    sim.update_faults(|f| f.mute.clear());
    (sim, cards)
}

/// The pool takes requests in order: once it answers this one, it has had every request sent
/// before (a stop and an error indication get no answer of their own).
async fn settle(cards: &Cards) {
    cards.link().states().await.unwrap();
}

fn starts(sim: &SimPool) -> u64 {
    sim.stats().card_starts.load(Ordering::Relaxed)
}

#[tokio::test]
async fn one_shot_uses_do_not_mark_a_card_bad_but_a_session_does() {
    let (_sim, cards) = pool(Faults {
        mute: [MUTE.get()].into(),
        ..Faults::default()
    })
    .await;
    // A scan or an API request failing on a card (or a pool garbling its answers) says little
    // about the card: no marking.
    for _ in 0..3 {
        let mut lease = cards.lease(MUTE, Holder::Scan).unwrap();
        assert!(lease.start().await.is_err());
        lease.release().await;
    }
    assert_eq!(cards.bad(MUTE), None);
    let mut lease = cards.lease(MUTE, Holder::Reader(0)).unwrap();
    lease.in_session();
    assert!(lease.start().await.is_err());
    assert!(lease.start().await.is_err());
    assert!(cards
        .bad(MUTE)
        .unwrap()
        .starts_with("did not start 2 times in a row"));
}

#[tokio::test]
async fn an_api_request_is_refused_a_bad_card_at_once_naming_why() {
    let (sim, cards) = marked_bad().await;
    let before = starts(&sim);
    let t0 = Instant::now();
    let r = simpool::cards::ops::apdu(
        &cards,
        MUTE,
        Holder::Api("test".into()),
        &[hex::decode("A0A40000023F00").unwrap()],
        false,
        Duration::from_secs(1),
    )
    .await;
    let took = t0.elapsed();
    let e = r.unwrap_err().to_string();
    assert!(
        e.starts_with("card 7 is marked bad on the pool: did not start 2 times in a row"),
        "{e}"
    );
    assert!(
        took < REPLY_TIMEOUT,
        "refused at once, not after a start: {took:?}"
    );
    assert_eq!(starts(&sim), before, "the card was not started");
    // A scan reports it so too, without starting it.
    let rows = cards.scan(Duration::from_secs(1)).await.unwrap();
    let row = rows.iter().find(|r| r.card == MUTE).unwrap();
    assert!(
        row.error.as_deref().unwrap().contains("marked bad"),
        "{row:?}"
    );
    // Every other inserted card of the built-in set was started; this one was not.
    assert_eq!(
        starts(&sim),
        before + rows.len() as u64 - 1,
        "the other cards only"
    );
    // Pulled and put back: tried again, and it works.
    sim.reinsert(MUTE.get());
    let r = simpool::cards::ops::apdu(
        &cards,
        MUTE,
        Holder::Api("test".into()),
        &[hex::decode("A0A40000023F00").unwrap()],
        false,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(r.responses[0].as_bytes()[0], 0x9F);
    assert_eq!(cards.bad(MUTE), None);
}

#[tokio::test]
async fn a_reader_is_refused_a_bad_card_at_once_naming_why() {
    let (sim, cards) = marked_bad().await;
    let before = starts(&sim);
    // Nothing listens on the vpcd port: a reader that got the card would start it first.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vpcd = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (reader, handle) = Reader::new(
        0,
        cards.clone(),
        ReaderConfig {
            vpcd,
            command_timeout: Duration::from_millis(1500),
            reset: ResetPolicy::Restart,
            quickack: true,
            retry: Duration::from_millis(100),
        },
        Some(Binding::Card(MUTE)),
    );
    let task = tokio::spawn(reader.run());
    let st = handle.wait_settled(Duration::from_secs(2)).await;
    assert_eq!(st.state, Presence::Waiting);
    let detail = st.detail.unwrap_or_default();
    assert!(
        detail.starts_with("card 7 is marked bad on the pool: did not start 2 times"),
        "{detail}"
    );
    // It keeps waiting for a re-insertion, never starting the card.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settle(&cards).await;
    assert_eq!(starts(&sim), before, "the reader did not start the card");
    assert_eq!(sim.error_indications(MUTE.get()), 1, "marked once");
    task.abort();
}

#[tokio::test]
async fn a_bank_client_is_refused_a_bad_card_at_once() {
    let (sim, cards) = marked_bad().await;
    let before = starts(&sim);
    let server = Server::bind().await;
    let bank = Bank::start(
        BankConfig {
            server: server.addr().to_string(),
            bank_id: 1,
            listen: "127.0.0.1:0".into(),
            command_timeout: Duration::from_millis(1500),
            name: "test-bank".into(),
        },
        cards.clone(),
    )
    .await
    .unwrap();
    let (mut control, _, _) = server.accept_bank().await;
    // Bank slot 6 is card 7.
    assert_eq!(map(&mut control, cs(23, 0), bs(1, 6)).await, ResultCode::Ok);
    let t0 = Instant::now();
    let (_client, result, atr) = Client::connect(bank.local_addr(), cs(23, 0), bs(1, 6)).await;
    assert_eq!(result, ResultCode::CardNotPresent);
    assert_eq!(atr, None);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(starts(&sim), before, "the card was not started");
    assert_eq!(cards.holder(MUTE), None, "nor held");
}

#[tokio::test]
async fn a_forced_stop_goes_through_the_lease_and_ends_its_holders_session() {
    let (sim, cards) = pool(Faults::default()).await;
    let n = CardNo::of(18);
    let mut lease = cards.lease(n, Holder::Reader(0)).unwrap();
    lease.start().await.unwrap();
    let stops = cards.card_stats(n).stops.load(Ordering::Relaxed);
    let session = tokio::spawn(async move {
        let e = lease.ended().await;
        (e, lease)
    });
    let (holder, r) = cards
        .force_stop(n, &Holder::Api("127.0.0.1:1".into()))
        .await;
    r.unwrap();
    assert_eq!(holder, Some(Holder::Reader(0)));
    let (ended, lease) = tokio::time::timeout(Duration::from_secs(1), session)
        .await
        .expect("the holder's session ends at once")
        .unwrap();
    assert_eq!(
        ended,
        Ended::Revoked("stopped by API request from 127.0.0.1:1 (forced)".into())
    );
    assert_eq!(cards.card_stats(n).stops.load(Ordering::Relaxed), stops + 1);
    settle(&cards).await;
    assert_eq!(sim.slot_state(18), Some(SlotState::Inserted));
    // Seen once: the holder starts the card again and its next session goes on.
    let mut lease = lease;
    lease.restart().await.unwrap();
    let again = tokio::time::timeout(Duration::from_millis(300), lease.ended()).await;
    assert!(
        again.is_err(),
        "the revocation is not seen twice: {again:?}"
    );
    lease.release().await;
}

#[tokio::test]
async fn a_session_ends_when_the_pool_connection_changes() {
    let (sim, cards) = pool(Faults::default()).await;
    let mut lease = cards.lease(CardNo::of(18), Holder::Reader(0)).unwrap();
    lease.start().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(200), lease.ended()).await;
    assert!(quiet.is_err(), "nothing changed yet");
    sim.restart(Duration::from_millis(200));
    let ended = tokio::time::timeout(Duration::from_secs(5), lease.ended())
        .await
        .expect("ended");
    assert!(matches!(ended, Ended::LinkChanged(_)), "{ended:?}");
    // An empty slot is refused at once, naming it empty.
    assert!(cards.link().wait_up(Duration::from_secs(5)).await);
    let empty = CardNo::all()
        .find(|n| sim.slot_state(n.get()) == Some(SlotState::Empty))
        .unwrap();
    let lease = cards.lease(empty, Holder::Scan).unwrap();
    assert_eq!(lease.admit().await, Err(StartError::Empty(empty)));
}
