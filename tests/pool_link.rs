//! The pool link against a scripted pool on a real socket: concurrent cards, routing by slot,
//! bounded waits, failure of every waiter at once, reconnection.

mod common;

use std::time::{Duration, Instant};

use simpool::pool::frame::{Reply, Request, RequestDecoder, Slot};
use simpool::pool::{ExchangeError, Link, LinkOptions, LinkState, PoolError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One accepted connection of a scripted pool: requests come out of `requests`, raw bytes go
/// in through `stream`.
struct Scripted {
    requests: mpsc::UnboundedReceiver<Request>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Scripted {
    async fn accept(listener: &TcpListener) -> Scripted {
        let (stream, _) = listener.accept().await.unwrap();
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Scripted {
        let (mut rd, writer) = stream.into_split();
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut dec = RequestDecoder::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                dec.push(&buf[..n]);
                while let Some(Ok(r)) = dec.next_request() {
                    let _ = tx.send(r);
                }
            }
        });
        Scripted { requests, writer }
    }

    async fn next(&mut self) -> Request {
        tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
            .await
            .expect("a request within 5 s")
            .expect("connection open")
    }

    /// Expects the ID query and answers the manual's ID.
    async fn answer_id(&mut self) {
        assert_eq!(self.next().await, Request::ReadId);
        self.writer
            .write_all(&common::hex("AA 44 00 00 0C FF7506718255543339206700"))
            .await
            .unwrap();
    }

    async fn card(&mut self, slot: u8, data: &str) {
        let bytes = Reply::Card {
            slot: Slot(slot),
            data: common::hex(data),
        }
        .to_bytes();
        self.writer.write_all(&bytes).await.unwrap();
    }
}

fn opts(ms: u64) -> LinkOptions {
    LinkOptions {
        reply_timeout: Duration::from_millis(ms),
        ..LinkOptions::default()
    }
}

async fn setup(ms: u64) -> (Link, Scripted, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (link, pool) = tokio::join!(Link::connect(&addr, opts(ms)), Scripted::accept(&listener));
    (link.unwrap(), pool, listener)
}

#[tokio::test]
async fn pool_queries_follow_the_manual() {
    let (link, mut pool, _l) = setup(1000).await;
    let ask = tokio::spawn({
        let link = link.clone();
        async move { (link.id().await, link.version().await) }
    });
    assert_eq!(pool.next().await, Request::ReadId);
    pool.writer
        .write_all(&common::case("read-id").steps[0].reply.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(pool.next().await, Request::ReadVersion);
    pool.writer
        .write_all(&common::case("read-version").steps[0].reply.clone().unwrap())
        .await
        .unwrap();
    let (id, version) = ask.await.unwrap();
    assert_eq!(hex::encode_upper(id.unwrap()), "FF7506718255543339206700");
    assert_eq!(version.unwrap(), "V053");
}

#[tokio::test]
async fn replies_in_any_order_reach_their_own_card() {
    let (link, mut pool, _l) = setup(2000).await;
    let a = link.card(Slot(1));
    let b = link.card(Slot(0x11));
    let ta = tokio::spawn(async move {
        a.transmit(&common::hex("A0F2000002"), Duration::from_secs(3))
            .await
    });
    let tb = tokio::spawn(async move {
        b.transmit(&common::hex("A0F2000002"), Duration::from_secs(3))
            .await
    });
    let mut seen = [pool.next().await, pool.next().await];
    seen.sort_by_key(|r| match r {
        Request::Data(s, _) => s.0,
        _ => 0,
    });
    assert_eq!(
        seen,
        [
            Request::Data(Slot(1), common::hex("A0F2000002")),
            Request::Data(Slot(0x11), common::hex("A0F2000002"))
        ]
    );
    // b's answer first, split over frames and interleaved with a's
    pool.card(0x11, "F2").await;
    pool.card(0x01, "F2 AA").await;
    pool.card(0x11, "BB BB 90").await;
    pool.card(0x01, "AA 90 00").await;
    pool.card(0x11, "00").await;
    assert_eq!(ta.await.unwrap().unwrap(), common::hex("AAAA9000"));
    assert_eq!(tb.await.unwrap().unwrap(), common::hex("BBBB9000"));
}

#[tokio::test]
async fn a_reply_nobody_waits_for_is_dropped_not_delivered() {
    let (link, mut pool, _l) = setup(1000).await;
    let a = link.card(Slot(1));
    let t = tokio::spawn(async move {
        a.transmit(&common::hex("A0F2000002"), Duration::from_secs(3))
            .await
    });
    pool.next().await;
    // An answer for card 3, which asked nothing, then card 2's own.
    pool.card(0x02, "F2 6666 9000").await;
    pool.card(0x01, "F2 1111 9000").await;
    assert_eq!(t.await.unwrap().unwrap(), common::hex("11119000"));
    assert_eq!(
        link.stats()
            .unsolicited
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_mute_card_times_out_in_bounded_time_and_others_go_on() {
    let (link, mut pool, _l) = setup(300).await;
    let mute = link.card(Slot(5));
    let t0 = Instant::now();
    let tm = tokio::spawn(async move { mute.start().await });
    assert_eq!(pool.next().await, Request::Start(Slot(5)));
    let ok = link.card(Slot(6));
    let to = tokio::spawn(async move { ok.start().await });
    assert_eq!(pool.next().await, Request::Start(Slot(6)));
    pool.card(6, "3B 99 18 00 11 88 22 33 44 55 66 77 60").await;
    assert_eq!(to.await.unwrap().unwrap()[0], 0x3B);
    assert_eq!(tm.await.unwrap(), Err(PoolError::Timeout(300)));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_split_atr_is_reassembled_and_junk_before_it_skipped() {
    let (link, mut pool, _l) = setup(1000).await;
    let c = link.card(Slot(0x11));
    let t = tokio::spawn(async move { c.start().await });
    pool.next().await;
    pool.card(0x11, "9000").await; // late answer of some earlier exchange
    pool.card(0x11, "3B 9F 95 80 1F C3 80 31").await;
    pool.card(0x11, "E0 73 FE 21 13 57 86 81 02 86 98 44 18 A8")
        .await;
    assert_eq!(
        t.await.unwrap().unwrap(),
        common::hex("3B9F95801FC38031E073FE211357868102869844 18A8")
    );
}

#[tokio::test]
async fn a_broken_connection_fails_every_waiter_at_once() {
    let (link, mut pool, _l) = setup(5000).await;
    let mut tasks = Vec::new();
    for s in 0..8u8 {
        let c = link.card(Slot(s));
        tasks.push(tokio::spawn(async move {
            c.transmit(&common::hex("A0F2000016"), Duration::from_secs(10))
                .await
        }));
    }
    for _ in 0..8 {
        pool.next().await;
    }
    let t0 = Instant::now();
    drop(pool);
    for t in tasks {
        match t.await.unwrap() {
            Err(ExchangeError::Pool {
                error: PoolError::LinkLost,
                ..
            }) => {}
            other => panic!("expected link lost, got {other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_millis(1000));
    // later calls fail at once with a clear error
    assert!(matches!(
        link.version().await,
        Err(PoolError::Down | PoolError::LinkLost)
    ));
}

#[tokio::test]
async fn one_exchange_per_card_at_a_time() {
    let (link, mut pool, _l) = setup(2000).await;
    let c1 = link.card(Slot(9));
    let c2 = link.card(Slot(9));
    let t1 = tokio::spawn(async move {
        c1.transmit(&common::hex("A0F2000001 "), Duration::from_secs(3))
            .await
    });
    let first = pool.next().await;
    let mut t2 = Box::pin(async move {
        c2.transmit(&common::hex("A0B0000001"), Duration::from_secs(3))
            .await
    });
    // The second command must wait for the first to finish: a command of another card, issued
    // after it, reaches the pool first. Run it until it waits (for card 9, or — were there no
    // per-card lock — for its answer, its request already on its way), then let it go on.
    let waiting = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(t2.as_mut(), cx).is_pending())
    })
    .await;
    assert!(waiting, "the second command of card 9 finished at once");
    let t2 = tokio::spawn(t2);
    let other = link.card(Slot(10));
    let t3 = tokio::spawn(async move {
        other
            .transmit(&common::hex("A0F2000001"), Duration::from_secs(3))
            .await
    });
    assert_eq!(
        pool.next().await,
        Request::Data(Slot(10), common::hex("A0F2000001")),
        "card 10's command came first"
    );
    pool.card(10, "F2 03 9000").await;
    assert_eq!(t3.await.unwrap().unwrap(), common::hex("039000"));
    assert_eq!(first, Request::Data(Slot(9), common::hex("A0F2000001")));
    pool.card(9, "F2 01 9000").await;
    assert_eq!(t1.await.unwrap().unwrap(), common::hex("019000"));
    assert_eq!(
        pool.next().await,
        Request::Data(Slot(9), common::hex("A0B0000001"))
    );
    pool.card(9, "B0 02 9000").await;
    assert_eq!(t2.await.unwrap().unwrap(), common::hex("029000"));
}

#[tokio::test]
async fn refused_commands_never_reach_the_pool() {
    let (link, mut pool, _l) = setup(1000).await;
    let c = link.card(Slot(1));
    let e = c
        .transmit(&common::hex("A0D6000001 FF"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.status(), [0x6F, 0x00]);
    assert!(!e.card_touched());
    // The next request on the wire is the one sent after the refusal.
    let v = tokio::spawn({
        let link = link.clone();
        async move { link.version().await }
    });
    assert_eq!(pool.next().await, Request::ReadVersion);
    pool.writer
        .write_all(&common::hex("AA 44 00 00 04 56 30 35 33"))
        .await
        .unwrap();
    assert_eq!(v.await.unwrap().unwrap(), "V053");
}

#[tokio::test]
async fn reconnect_back_off_grows_to_its_cap_with_jitter() {
    // A pool that accepts and drops at once: each connection is short, so the back-off is never
    // reset and the pauses between connections show it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (min, max) = (Duration::from_millis(40), Duration::from_millis(160));
    let link = Link::spawn(
        &addr,
        LinkOptions {
            backoff_min: min,
            backoff_max: max,
            ..opts(500)
        },
    );
    let mut accepted = Vec::new();
    for _ in 0..10 {
        let (s, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the link reconnects")
            .unwrap();
        accepted.push(Instant::now());
        drop(s);
    }
    link.close();
    let gaps: Vec<Duration> = accepted.windows(2).map(|w| w[1] - w[0]).collect();
    let ms: Vec<u128> = gaps.iter().map(Duration::as_millis).collect();
    // jitter is ±25 %; allow some scheduling delay on top
    let slack = Duration::from_millis(60);
    assert!(
        gaps.iter().all(|g| *g <= max.mul_f64(1.25) + slack),
        "pauses beyond the cap: {ms:?} ms"
    );
    assert!(
        gaps[0] < max.mul_f64(0.75),
        "the first pause starts near the minimum: {ms:?} ms"
    );
    let capped = &gaps[3..];
    assert!(
        capped.iter().all(|g| *g >= max.mul_f64(0.75)),
        "pauses grew to the cap: {ms:?} ms"
    );
    // jittered: ±25 % of 160 ms spreads six pauses over far more than 20 ms
    let spread = *capped.iter().max().unwrap() - *capped.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(20),
        "pauses at the cap are jittered: {ms:?} ms"
    );
}

#[tokio::test]
async fn the_daemon_link_reconnects_after_the_pool_drops_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let link = Link::spawn(
        &addr,
        LinkOptions {
            backoff_min: Duration::from_millis(20),
            ..opts(500)
        },
    );
    let mut watch = link.watch();
    let mut first = Scripted::accept(&listener).await;
    // The daemon's link checks that a pool answers before it calls the link up.
    first.answer_id().await;
    assert!(link.wait_up(Duration::from_secs(5)).await);
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(*watch.borrow_and_update(), LinkState::Down { .. }) {
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("link noticed the drop");
    let mut second = Scripted::accept(&listener).await;
    second.answer_id().await;
    assert!(link.wait_up(Duration::from_secs(5)).await);
    let v = tokio::spawn({
        let link = link.clone();
        async move { link.version().await }
    });
    assert_eq!(second.next().await, Request::ReadVersion);
    second
        .writer
        .write_all(&common::hex("AA 44 00 00 04 56 30 35 33"))
        .await
        .unwrap();
    assert_eq!(v.await.unwrap().unwrap(), "V053");
    link.close();
}
