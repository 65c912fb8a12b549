//! The bank against a scripted osmo-remsim-server and RSPRO clients on loopback, with the
//! simulated pool behind it: maps, concurrent cards, reset, unmapping, held cards, hostile
//! clients, server reconnects.

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::remsim::{bs, cs, map, unmap, Client, Gone, Peer, Server};
use simpool::cards::{Cards, Holder};
use simpool::pool::{Link, LinkOptions, SlotState};
use simpool::remsim::rspro::{Msg, ResultCode};
use simpool::remsim::{Bank, BankConfig};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};
use simpool::values::CardNo;

struct Rig {
    sim: SimPool,
    cards: Cards,
    bank: Bank,
    server: Server,
    control: Peer,
}

async fn rig() -> Rig {
    let sim = SimPool::start("127.0.0.1:0", CardsFile::default_set(), Faults::default())
        .await
        .unwrap();
    let link = Link::spawn(
        &sim.addr().to_string(),
        LinkOptions {
            reply_timeout: Duration::from_millis(500),
            ..LinkOptions::default()
        },
    );
    assert!(link.wait_up(Duration::from_secs(5)).await);
    let cards = Cards::new(link, Vec::new());
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
    let (control, bank_id, slots) = server.accept_bank().await;
    assert_eq!((bank_id, slots), (1, 256));
    Rig {
        sim,
        cards,
        bank,
        server,
        control,
    }
}

/// Whether the pool reports the card started (the pool's own slot state).
async fn working(cards: &Cards, card: u16) -> bool {
    let states = cards.link().states().await.unwrap();
    states[usize::from(card - 1)] == SlotState::Working
}

/// Waits until card `card` is stopped and free (bounded).
async fn stopped_and_free(cards: &Cards, card: u16) {
    for _ in 0..100 {
        if cards.holder(CardNo::of(card)).is_none() && !working(cards, card).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("card {card} not stopped and free within 2 s");
}

#[tokio::test]
async fn two_clients_read_their_cards_at_once() {
    let mut r = rig().await;
    assert_eq!(
        map(&mut r.control, cs(23, 0), bs(1, 17)).await,
        ResultCode::Ok
    );
    assert_eq!(
        map(&mut r.control, cs(24, 0), bs(1, 255)).await,
        ResultCode::Ok
    );
    let addr = r.bank.local_addr();
    let (mut a, res_a, atr_a) = Client::connect(addr, cs(23, 0), bs(1, 17)).await;
    let (mut b, res_b, atr_b) = Client::connect(addr, cs(24, 0), bs(1, 255)).await;
    assert_eq!((res_a, res_b), (ResultCode::Ok, ResultCode::Ok));
    assert_eq!(hex::encode_upper(atr_a.unwrap()), cards::atr(18));
    assert!(!atr_b.unwrap().is_empty());
    assert_eq!(
        r.cards.holder(CardNo::of(18)),
        Some(Holder::Bank {
            bank: 1,
            slot: 17,
            client: Some((23, 0))
        })
    );
    // Interleaved at the same time, several rounds: no cross-talk.
    for _ in 0..5 {
        let (iccid, imsi) = tokio::join!(a.iccid(), b.imsi());
        assert_eq!(iccid, cards::iccid(18));
        assert_eq!(imsi.as_deref(), Some(cards::imsi(256).as_str()));
    }
    // Status words go back untouched: 9Fxx after SELECT (no GET RESPONSE by the bank).
    let r1 = a
        .transmit(&[0xA0, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00])
        .await;
    assert_eq!(r1.len(), 2);
    assert_eq!(r1[0], 0x9F);
    let len = r1[1];
    let resp = a.transmit(&[0xA0, 0xC0, 0x00, 0x00, len]).await;
    assert_eq!(resp.len(), usize::from(len) + 2);
    assert_eq!(&resp[resp.len() - 2..], &[0x90, 0x00]);
    assert!(r.bank.stats().exchanges.load(Ordering::Relaxed) >= 30);
    assert!(working(&r.cards, 18).await && working(&r.cards, 256).await);
}

#[tokio::test]
async fn data_link_answers_ping_and_id_ack() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let mut p = Peer::connect(r.bank.local_addr()).await;
    p.send_raw(&[0x00, 0x01, 0xFE, 0x00]).await;
    p.send_raw(&[0x00, 0x01, 0xFE, 0x06]).await;
    let mut got = vec![0u8; 8];
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(5), p.stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, [0x00, 0x01, 0xFE, 0x01, 0x00, 0x01, 0xFE, 0x06]);
}

#[tokio::test]
async fn logical_channels_and_es10_through_the_bank() {
    let mut r = rig().await;
    // Card 33, a simulated eUICC (bank slot 32).
    map(&mut r.control, cs(23, 0), bs(1, 32)).await;
    let (mut a, res, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 32)).await;
    assert_eq!(res, ResultCode::Ok);
    let h = |s: &str| hex::decode(s).unwrap();
    assert_eq!(a.transmit(&h("0070000001")).await, h("019000"));
    let sel = a
        .transmit(&h("01A4040410A0000005591010FFFFFFFF8900000100"))
        .await;
    assert_eq!(sel, h("6121"));
    let fci = a.transmit(&h("01C0000021")).await;
    assert_eq!(&fci[..4], &h("6F1F8410")[..]);
    assert_eq!(a.transmit(&h("81E2910006BF3E035C015A")).await, h("6115"));
    let eid = a.transmit(&h("81C0000015")).await;
    let want = r.sim.with_card(33, |c| c.euicc().unwrap().eid()).unwrap();
    assert_eq!(&eid[5..21], &want[..]);
    assert_eq!(&eid[21..], &[0x90, 0x00]);
    // An extended channel, never opened, and a close.
    assert_eq!(a.transmit(&h("4AA40004022FE2")).await, h("6881"));
    assert_eq!(a.transmit(&h("0070800100")).await, h("9000"));
    assert_eq!(a.transmit(&h("01A40004022FE2")).await, h("6881"));
}

#[tokio::test]
async fn reset_restarts_the_card_and_sends_the_atr_again() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (mut a, _, atr) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    // Leave the card in DF.GSM: after a real restart it is back at the MF.
    assert_eq!(a.select([0x7F, 0x20]).await, 0x9F);
    for _ in 0..2 {
        a.reset().await;
        assert_eq!(a.expect_atr().await, atr.clone().unwrap());
        // EF.IMSI is under DF.GSM: not selectable from the MF without selecting 7F20 again.
        assert_ne!(a.select([0x6F, 0x07]).await, 0x9F, "card restarted at MF");
    }
    assert_eq!(r.bank.stats().resets.load(Ordering::Relaxed), 2);
    assert_eq!(a.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn removing_the_map_ends_the_session_and_frees_the_card() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    map(&mut r.control, cs(24, 0), bs(1, 255)).await;
    let addr = r.bank.local_addr();
    let (mut a, _, _) = Client::connect(addr, cs(23, 0), bs(1, 17)).await;
    let (mut b, _, _) = Client::connect(addr, cs(24, 0), bs(1, 255)).await;
    assert_eq!(a.select([0x3F, 0x00]).await, 0x9F);
    // Removal naming another client is refused and changes nothing.
    assert_eq!(
        unmap(&mut r.control, cs(99, 0), bs(1, 17)).await,
        ResultCode::UnknownSlotmap
    );
    assert_eq!(
        unmap(&mut r.control, cs(23, 0), bs(1, 17)).await,
        ResultCode::Ok
    );
    assert!(a.peer.closed_within(Duration::from_secs(2)).await);
    stopped_and_free(&r.cards, 18).await;
    // The other client goes on.
    assert_eq!(b.imsi().await.as_deref(), Some(cards::imsi(256).as_str()));
    // resetState ends it too.
    r.control.send(Msg::ResetStateReq).await;
    assert_eq!(
        r.control.recv().await,
        Msg::ResetStateRes {
            result: ResultCode::Ok
        }
    );
    assert!(b.peer.closed_within(Duration::from_secs(2)).await);
    assert!(r.bank.maps().is_empty());
    stopped_and_free(&r.cards, 256).await;
}

#[tokio::test]
async fn a_dead_client_releases_its_card() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (a, _, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert!(working(&r.cards, 18).await);
    drop(a);
    stopped_and_free(&r.cards, 18).await;
    // And the same slot works again for a new connection.
    let (mut a, res, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert_eq!(res, ResultCode::Ok);
    assert_eq!(a.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn unmapped_client_waits_for_its_map() {
    let mut r = rig().await;
    let (mut a, res, atr) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert_eq!((res, atr), (ResultCode::CardNotPresent, None));
    assert_eq!(
        map(&mut r.control, cs(23, 0), bs(1, 17)).await,
        ResultCode::Ok
    );
    let atr = a.expect_atr().await;
    assert_eq!(hex::encode_upper(atr), cards::atr(18));
    assert_eq!(a.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn a_held_card_is_refused_naming_its_holder() {
    let mut r = rig().await;
    let lease = r.cards.lease(CardNo::of(18), Holder::Reader(0)).unwrap();
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (mut a, res, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert_eq!(res, ResultCode::CardNotPresent);
    assert_eq!(r.cards.holder(CardNo::of(18)), Some(Holder::Reader(0)));
    // The holder lets go: the waiting client gets the card at once (setAtrReq).
    drop(lease);
    assert_eq!(hex::encode_upper(a.expect_atr().await), cards::atr(18));
    assert_eq!(a.iccid().await, cards::iccid(18));
    // And the other way round: a card the bank holds is refused to others.
    match r.cards.lease(CardNo::of(18), Holder::Reader(0)) {
        Err(e) => assert_eq!(e.to_string(), "card 18 is held by bank 1:17 → client 23:0"),
        Ok(_) => panic!("card 18 leased twice"),
    }
}

/// A reserved card is refused to remote clients (the bank's sessions work for no user), as
/// a held one is; when the reservation ends, the waiting client gets it.
#[tokio::test]
async fn a_reserved_card_is_refused_to_remote_clients() {
    use simpool::users::{Role, Who};
    let mut r = rig().await;
    let alice = Who::new("alice", Role::Use);
    let res = r
        .cards
        .reserve(
            CardNo::of(18),
            &alice,
            Duration::from_secs(600),
            None,
            simpool::history::Timestamp::now(),
        )
        .unwrap();
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (mut a, code, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert_eq!(code, ResultCode::CardNotPresent);
    assert_eq!(r.cards.holder(CardNo::of(18)), None);
    assert!(
        !working(&r.cards, 18).await,
        "the reserved card was started"
    );
    // Its user's own lease is fine; another holder without a user is refused, naming alice.
    match r.cards.lease(CardNo::of(18), Holder::Scan) {
        Err(e) => assert!(e.to_string().contains("reserved by alice"), "{e}"),
        Ok(_) => panic!("a reserved card leased to a holder without its user"),
    }
    // The reservation ends: the waiting client gets the card.
    r.cards.with_book(|b| b.remove(res.id));
    assert_eq!(hex::encode_upper(a.expect_atr().await), cards::atr(18));
    assert_eq!(a.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn a_reconnecting_client_takes_over_from_its_old_connection() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let addr = r.bank.local_addr();
    let (mut old, _, _) = Client::connect(addr, cs(23, 0), bs(1, 17)).await;
    assert_eq!(old.select([0x7F, 0x20]).await, 0x9F);
    // The same client slot connects again (its old link half-dead): it gets the card, freshly
    // started, and the old connection is closed.
    let (mut new, res, atr) = Client::connect(addr, cs(23, 0), bs(1, 17)).await;
    assert_eq!(res, ResultCode::Ok);
    assert_eq!(hex::encode_upper(atr.unwrap()), cards::atr(18));
    assert!(old.peer.closed_within(Duration::from_secs(2)).await);
    assert_eq!(new.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn bad_clients_are_closed_or_refused_and_others_never_disturbed() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    map(&mut r.control, cs(24, 0), bs(1, 255)).await;
    map(&mut r.control, cs(25, 0), bs(1, 1)).await;
    let addr = r.bank.local_addr();
    let (mut good, _, _) = Client::connect(addr, cs(23, 0), bs(1, 17)).await;

    // Oversized IPA length: closed.
    let mut p = Peer::connect(addr).await;
    p.send_raw(&[0xFF, 0xFF, 0xEE, 0x07, 0x30]).await;
    assert!(p.closed_within(Duration::from_secs(2)).await);
    // Garbage that frames but does not decode: closed.
    let mut p = Peer::connect(addr).await;
    p.send_raw(&[0x00, 0x03, 0xEE, 0x07, 0x30, 0x05]).await;
    assert!(p.closed_within(Duration::from_secs(2)).await);
    // A TPDU for a bank slot that is not this client's: closed.
    let (mut bad, _, _) = Client::connect(addr, cs(24, 0), bs(1, 255)).await;
    bad.send_tpdu(bs(1, 17), &[0xA0, 0xF2, 0, 0, 0x16]).await;
    assert!(bad.peer.closed_within(Duration::from_secs(2)).await);
    // A TPDU before connectClientReq: closed.
    let mut p = Peer::connect(addr).await;
    p.send(Msg::TpduModemToCard {
        from_client: cs(23, 0),
        to_bank: bs(1, 17),
        flags: Default::default(),
        data: vec![0xA0, 0xF2, 0, 0, 0x16],
    })
    .await;
    assert!(p.closed_within(Duration::from_secs(2)).await);
    // TPDUs of 4 and 261 bytes: 6700, link kept.
    let (mut c, _, _) = Client::connect(addr, cs(25, 0), bs(1, 1)).await;
    assert_eq!(c.transmit(&[0xA0, 0xF2, 0, 0]).await, [0x67, 0x00]);
    assert_eq!(c.transmit(&[0xA0; 261]).await, [0x67, 0x00]);
    assert_eq!(c.select([0x3F, 0x00]).await, 0x9F);
    // The good client saw none of it.
    assert_eq!(good.iccid().await, cards::iccid(18));
    assert!(r.bank.stats().bad_peers.load(Ordering::Relaxed) >= 4);
    assert!(matches!(
        good.peer.recv_within(Duration::from_millis(100)).await,
        Err(Gone::Timeout)
    ));
}

#[tokio::test]
async fn the_bank_reconnects_to_a_restarted_server_and_keeps_serving() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (mut a, _, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    let mut up = r.bank.control_watch();
    // The server goes away: the bank comes back by itself, the client keeps its card.
    drop(r.control);
    let (mut control, _, slots) = r.server.accept_bank().await;
    assert_eq!(slots, 256);
    tokio::time::timeout(Duration::from_secs(5), up.wait_for(|u| *u))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.iccid().await, cards::iccid(18));
    // The new server pushes its maps; the bank takes them.
    assert_eq!(
        map(&mut control, cs(24, 0), bs(1, 255)).await,
        ResultCode::Ok
    );
    let (mut b, res, _) = Client::connect(r.bank.local_addr(), cs(24, 0), bs(1, 255)).await;
    assert_eq!(res, ResultCode::Ok);
    assert_eq!(b.imsi().await.as_deref(), Some(cards::imsi(256).as_str()));
    // Keep-alive on the control link: the bank answers PING.
    control.send_raw(&[0x00, 0x01, 0xFE, 0x00]).await;
    assert!(matches!(
        control.recv_within(Duration::from_millis(300)).await,
        Err(Gone::Timeout)
    ));
    assert_eq!(control.pongs, 1);
}

#[tokio::test]
async fn a_pool_reconnect_ends_the_session_and_the_client_comes_back() {
    let mut r = rig().await;
    map(&mut r.control, cs(23, 0), bs(1, 17)).await;
    let (mut a, _, _) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    assert_eq!(a.iccid().await, cards::iccid(18));
    // The pool drops its connection (and with it the card's state).
    r.sim.restart(Duration::from_millis(300));
    assert!(a.peer.closed_within(Duration::from_secs(3)).await);
    // The client reconnects at once: no card while the pool is away, then the card.
    let (mut a, res, atr) = Client::connect(r.bank.local_addr(), cs(23, 0), bs(1, 17)).await;
    let atr = match res {
        ResultCode::Ok => atr.unwrap(),
        ResultCode::CardNotPresent => a.expect_atr().await,
        other => panic!("{other:?}"),
    };
    assert_eq!(hex::encode_upper(atr), cards::atr(18));
    assert_eq!(a.iccid().await, cards::iccid(18));
}

#[tokio::test]
async fn a_connection_that_never_says_who_it_is_is_closed() {
    let r = rig().await;
    let mut p = Peer::connect(r.bank.local_addr()).await;
    let t = std::time::Instant::now();
    // Keep-alive traffic does not count as saying who it is.
    let closed = loop {
        p.send_raw(&[0x00, 0x01, 0xFE, 0x00]).await;
        if p.closed_within(Duration::from_secs(2)).await {
            break true;
        }
        if t.elapsed() > Duration::from_secs(15) {
            break false;
        }
    };
    assert!(closed, "idle connection still open after 15 s");
    assert!(t.elapsed() >= Duration::from_secs(9), "closed too early");
    assert!(p.pongs > 0, "PINGs were answered meanwhile");
}

#[tokio::test]
async fn illegal_maps_are_refused() {
    let mut r = rig().await;
    assert_eq!(
        map(&mut r.control, cs(23, 0), bs(2, 0)).await,
        ResultCode::IllegalBankId
    );
    assert_eq!(
        map(&mut r.control, cs(23, 0), bs(1, 256)).await,
        ResultCode::IllegalSlotId
    );
    assert!(r.bank.maps().is_empty());
}

#[test]
fn serve_check_reports_the_remsim_server_and_listen_address() {
    let check = |server: &str, listen: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_simpool"))
            .args(["serve", "--check", "--pool", "sim", "--control", "off"])
            .args([
                "--remsim",
                server,
                "--bank-id",
                "1",
                "--remsim-listen",
                listen,
            ])
            .output_tied()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_, text) = check(&server.local_addr().unwrap().to_string(), "127.0.0.1:0");
    assert!(text.contains("ok     remsim server"), "{text}");
    assert!(text.contains("ok     remsim bank listen"), "{text}");
    // Port 0 is never the one the server hands out (tests/remsim_banks.rs checks port 9999).
    assert_eq!(
        text.lines().filter(|l| l.starts_with("FAILED")).count(),
        1,
        "{text}"
    );
    assert!(text.contains("FAILED remsim bank 1 clients: "), "{text}");
    let (ok, text) = check("127.0.0.1:1", &taken.local_addr().unwrap().to_string());
    assert!(!ok, "{text}");
    assert!(text.contains("FAILED remsim server 127.0.0.1:1"), "{text}");
    assert!(text.contains("FAILED remsim bank listen"), "{text}");
}
