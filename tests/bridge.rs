//! The bridge against a scripted vpcd (a TCP listener speaking vpcd's framing) and a simulated
//! pool: what vpcd sees for good, bad and hostile input, and when the card goes away.

mod common;

use common::vectors as cards;
use std::sync::Arc;
use std::time::{Duration, Instant};

use simpool::bridge::{Binding, Reader, ReaderConfig, ReaderHandle, ReaderStats, ResetPolicy};
use simpool::cards::Cards;
use simpool::pool::{Link, LinkOptions};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Vpcd {
    s: TcpStream,
}

impl Vpcd {
    async fn send(&mut self, payload: &[u8]) {
        let mut f = (payload.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        self.s.write_all(&f).await.unwrap();
    }

    /// One framed answer; `None` when simpool closed the connection.
    async fn answer(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no answer within 5 s: vpcd would hang"),
        }
        let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.s.read_exact(&mut p).await.ok()?;
        Some(p)
    }

    async fn ask(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        self.send(payload).await;
        self.answer().await
    }
}

async fn setup(faults: Faults, timeout_ms: u64) -> (SimPool, Link, TcpListener) {
    let sim = SimPool::start("127.0.0.1:0", CardsFile::default_set(), faults)
        .await
        .unwrap();
    let link = Link::spawn(
        &sim.addr().to_string(),
        LinkOptions {
            reply_timeout: Duration::from_millis(timeout_ms),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            keepalive: Some(Duration::from_millis(300)),
            // Endless NULL bytes end at the cap (or the command timeout, if longer).
            null_wait_cap: Duration::from_millis(1000),
            ..LinkOptions::default()
        },
    );
    let vpcd = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (sim, link, vpcd)
}

/// A reader with its control handle (kept alive while it runs).
struct TestReader(Reader, ReaderHandle);

impl TestReader {
    fn stats(&self) -> Arc<ReaderStats> {
        self.1.stats()
    }

    async fn run(self) {
        let _handle = self.1;
        self.0.run().await
    }
}

fn reader(link: &Link, vpcd: &TcpListener, card: u16, bound_ms: u64) -> TestReader {
    reader_for(
        link,
        vpcd,
        Binding::Card(simpool::values::CardNo::of(card)),
        bound_ms,
    )
}

fn reader_for(link: &Link, vpcd: &TcpListener, binding: Binding, bound_ms: u64) -> TestReader {
    let (r, h) = Reader::new(
        0,
        Cards::new(link.clone(), Vec::new()),
        ReaderConfig {
            vpcd: vpcd.local_addr().unwrap().to_string(),
            command_timeout: Duration::from_millis(bound_ms),
            reset: ResetPolicy::Restart,
            quickack: true,
            retry: Duration::from_millis(100),
        },
        Some(binding),
    );
    TestReader(r, h)
}

async fn accept(vpcd: &TcpListener) -> Vpcd {
    let (s, _) = tokio::time::timeout(Duration::from_secs(10), vpcd.accept())
        .await
        .expect("simpool connects to vpcd when its card is there")
        .unwrap();
    Vpcd { s }
}

#[tokio::test]
async fn power_atr_commands_and_hostile_frames() {
    let _ = env_logger::builder().is_test(true).try_init();
    let (_sim, link, vpcd) = setup(Faults::default(), 500).await;
    tokio::spawn(reader(&link, &vpcd, 18, 1500).run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await; // power on: no answer
    let atr = v.ask(&[0x04]).await.unwrap();
    assert_eq!(atr, common::hex(&cards::atr(18)));
    assert_eq!(
        v.ask(&common::hex("A0A40000023F00")).await.unwrap(),
        common::hex("9F17")
    );
    // length 0, and a frame beyond T=0's maximum: error status, connection goes on
    assert_eq!(v.ask(&[]).await.unwrap(), common::hex("6700"));
    assert_eq!(v.ask(&[0xA0; 400]).await.unwrap(), common::hex("6700"));
    // refused locally, never sent to the card
    assert_eq!(
        v.ask(&common::hex("A0D6000001FF")).await.unwrap(),
        common::hex("6F00")
    );
    assert_eq!(
        v.ask(&common::hex("A0600000")).await.unwrap(),
        common::hex("6D00")
    );
    assert_eq!(
        v.ask(&common::hex("A0A4")).await.unwrap(),
        common::hex("6700")
    );
    v.send(&[0x03]).await; // unknown control byte: ignored
    assert_eq!(
        v.ask(&common::hex("A0A40000022FE2")).await.unwrap(),
        common::hex("9F0F")
    );
    assert_eq!(
        v.ask(&common::hex("A0B000000A")).await.unwrap(),
        cards::sw9000(&cards::ef_iccid(18))
    );
    // ATR polls come from the cache: no pool traffic
    let before = link
        .stats()
        .frames_out
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(v.ask(&[0x04]).await.unwrap(), atr);
    }
    assert_eq!(
        link.stats()
            .frames_out
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
}

#[tokio::test]
async fn a_card_gone_silent_gets_an_error_in_bounded_time_then_no_card() {
    let (sim, link, vpcd) = setup(Faults::default(), 300).await;
    tokio::spawn(reader(&link, &vpcd, 5, 1000).run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert!(v.ask(&[0x04]).await.is_some());
    sim.update_faults(|f| {
        f.mute.insert(5);
    });
    let t0 = Instant::now();
    assert_eq!(
        v.ask(&common::hex("A0F2000016")).await.unwrap(),
        common::hex("6F00")
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1100),
        "{:?}",
        t0.elapsed()
    );
    // the card cannot be restarted: the connection closes (card removed), no empty ATR
    assert_eq!(v.ask(&[0x04]).await, None);
    // … and comes back once the card answers again
    sim.update_faults(|f| f.mute.clear());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert_eq!(
        v.ask(&common::hex("A0A40000023F00")).await.unwrap(),
        common::hex("9F17")
    );
}

#[tokio::test]
async fn pool_link_lost_closes_the_reader_and_it_comes_back() {
    let (sim, link, vpcd) = setup(Faults::default(), 300).await;
    tokio::spawn(reader(&link, &vpcd, 256, 1000).run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert!(v.ask(&[0x04]).await.is_some());
    // A command in flight (the card's answer delayed) when the pool goes away.
    sim.update_faults(|f| {
        f.latency_min = Duration::from_millis(250);
        f.latency_max = f.latency_min;
    });
    let frames = || {
        sim.stats()
            .card_frames_in
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = frames();
    v.send(&common::hex("A0A40000023F00")).await;
    common::wait_for_async(
        "the command to reach the pool",
        Duration::from_secs(5),
        || frames() > before,
    )
    .await;
    let t0 = Instant::now();
    sim.go_down();
    assert_eq!(
        v.answer().await,
        Some(common::hex("6F00")),
        "the command in flight fails"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    sim.update_faults(|f| *f = Faults::default());
    assert_eq!(
        v.answer().await,
        None,
        "card shown removed while the pool is down"
    );
    sim.come_back();
    let mut v = accept(&vpcd).await;
    v.send(&[0x02]).await;
    assert_eq!(
        v.ask(&common::hex("A0A40000027F20")).await.unwrap(),
        common::hex("9F17")
    );
    assert_eq!(
        v.ask(&common::hex("A0A40000026F07")).await.unwrap(),
        common::hex("9F0F")
    );
    assert_eq!(
        v.ask(&common::hex("A0B0000009")).await.unwrap(),
        cards::sw9000(&cards::ef_imsi(256))
    );
}

#[tokio::test]
async fn a_silent_pool_is_noticed_by_the_keepalive() {
    let (sim, link, vpcd) = setup(Faults::default(), 200).await;
    tokio::spawn(reader(&link, &vpcd, 2, 1000).run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert!(v.ask(&[0x04]).await.is_some());
    // The pool stays connected but stops answering anything (a hung box): a command gets
    // 6F00 within the bound …
    sim.update_faults(|f| f.silent = true);
    let t0 = Instant::now();
    assert_eq!(
        v.ask(&common::hex("A0F2000016")).await,
        Some(common::hex("6F00"))
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1100),
        "{:?}",
        t0.elapsed()
    );
    // … the reader is closed, and the keep-alive finds the pool dead.
    assert_eq!(v.answer().await, None, "reader closed");
    let failures = || {
        link.stats()
            .keepalive_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while failures() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "keep-alive failure not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn binding_by_imsi_finds_the_card() {
    let (_sim, link, vpcd) = setup(Faults::default(), 500).await;
    let r = reader_for(&link, &vpcd, Binding::Imsi(cards::imsi(256)), 1500);
    tokio::spawn(r.run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert_eq!(
        v.ask(&[0x04]).await.unwrap(),
        common::hex(&cards::atr(256)),
        "card 256's ATR"
    );
}

/// A card fault ends the exchange with `6F00` within the bound, the card is shown removed,
/// and it comes back (restarted) once the card behaves.
async fn card_fault_is_bounded(fault: impl Fn(&mut Faults, u16), clear: impl Fn(&mut Faults)) {
    let card = 9;
    let (sim, link, vpcd) = setup(Faults::default(), 300).await;
    let r = reader(&link, &vpcd, card, 1200);
    let stats = r.stats();
    tokio::spawn(r.run());
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert!(v.ask(&[0x04]).await.is_some());
    sim.update_faults(|f| fault(f, card));
    let t0 = Instant::now();
    assert_eq!(
        v.ask(&common::hex("A0A40000023F00")).await.unwrap(),
        common::hex("6F00")
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "counted"
    );
    assert_eq!(v.ask(&[0x04]).await, None, "shown removed after the fault");
    sim.update_faults(clear);
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert_eq!(
        v.ask(&common::hex("A0A40000023F00")).await.unwrap(),
        common::hex("9F17")
    );
}

#[tokio::test]
async fn a_nonsense_procedure_byte_is_an_error_status() {
    card_fault_is_bounded(
        |f, c| {
            f.bad_procedure.insert(c);
        },
        |f| f.bad_procedure.clear(),
    )
    .await;
}

#[tokio::test]
async fn endless_null_bytes_are_cut_off() {
    card_fault_is_bounded(
        |f, c| {
            f.endless_nulls.insert(c);
        },
        |f| f.endless_nulls.clear(),
    )
    .await;
}

#[tokio::test]
async fn a_slot_turning_abnormal_is_an_error_status() {
    card_fault_is_bounded(
        |f, c| {
            f.abnormal.insert(c);
        },
        |f| f.abnormal.clear(),
    )
    .await;
}

/// A rebind ends the session at vpcd's next presence poll (an ATR request, left unanswered:
/// pcscd reports the card removed then), and the next card connects at once. Until that poll
/// a command gets `6F 00`. A session closed otherwise (here by the ATR request of a power-up,
/// which is no poll) keeps the reader away for longer than a poll, so that pcscd's next poll
/// finds nothing to take and reports the removal before the next card shows.
#[tokio::test]
async fn a_rebind_closes_at_the_poll_and_the_next_card_follows_at_once() {
    let _ = env_logger::builder().is_test(true).try_init();
    let (_sim, link, vpcd) = setup(Faults::default(), 500).await;
    let r = reader(&link, &vpcd, 18, 1500);
    let h = r.1.clone();
    tokio::spawn(r.run());
    let rebind = |card: u16| {
        let h = h.clone();
        tokio::spawn(async move {
            h.bind(Some(Binding::Card(simpool::values::CardNo::of(card))))
                .await
        })
    };
    let mut v = accept(&vpcd).await;
    v.send(&[0x01]).await;
    assert_eq!(v.ask(&[0x04]).await.unwrap(), common::hex(&cards::atr(18)));
    let bind = rebind(2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        v.ask(&common::hex("A0A40000023F00")).await.unwrap(),
        common::hex("6F00"),
        "before the poll, the old card's commands get an error status"
    );
    assert!(!bind.is_finished(), "the session ends at the poll");
    v.send(&[0x04]).await;
    assert_eq!(v.answer().await, None, "the poll gets no ATR");
    let polled = Instant::now();
    bind.await.unwrap().unwrap();
    let mut v = accept(&vpcd).await;
    assert!(
        polled.elapsed() < Duration::from_millis(300),
        "the next card connects at once after the poll: {:?}",
        polled.elapsed()
    );
    v.send(&[0x01]).await;
    assert_eq!(v.ask(&[0x04]).await.unwrap(), common::hex(&cards::atr(2)));
    let bind = rebind(256);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A power-up and its ATR request: not a poll, pcscd has seen no removal.
    v.send(&[0x01]).await;
    v.send(&[0x04]).await;
    assert_eq!(v.answer().await, None);
    let closed = Instant::now();
    bind.await.unwrap().unwrap();
    let _v = accept(&vpcd).await;
    assert!(
        closed.elapsed() >= Duration::from_millis(550),
        "the next card stays away longer than a poll: {:?}",
        closed.elapsed()
    );
}
