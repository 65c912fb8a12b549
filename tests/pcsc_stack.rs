//! End to end through the real stack: the `pcsc` crate → pcsc-lite's pcscd → Debian's vpcd →
//! `simpool serve` → a simulated pool on TCP. Needs pcscd and vsmartcard-vpcd installed
//! (`driver/pcscd-private install`).

mod common;

use common::h;
use common::vectors as cards;
use std::ffi::CString;
use std::time::{Duration, Instant};

use common::stack::{self, tx, Serve};
use pcsc::{Context, Disposition, Protocols, ShareMode};
use simpool::sim::algo::run_gsm;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 26300;

/// Serves `cards` on readers `first..` of the shared pcscd; waits until every reader shows its card.
fn serve(
    sim: &SimPool,
    first: u16,
    cards: &[u16],
    extra: &[&str],
) -> (Serve, Context, Vec<CString>) {
    let pcscd = stack::pcscd(BASE_PORT);
    let pool = sim.addr().to_string();
    let vpcd = pcscd.vpcd_addr(first);
    let mut args: Vec<String> = vec!["--pool".into(), pool, "--vpcd".into(), vpcd];
    for c in cards {
        args.push("--card".into());
        args.push(c.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(&refs, &format!("reader{first}"));
    let ctx = stack::context();
    let names: Vec<CString> = (0..cards.len() as u16)
        .map(|i| pcscd.reader_name(first + i))
        .collect();
    for n in &names {
        assert!(
            stack::wait_card(&ctx, n, true, Duration::from_secs(15)),
            "{n:?} shows no card; simpool log:\n{}",
            serve.log_text()
        );
    }
    (serve, ctx, names)
}

fn connect(ctx: &Context, name: &CString) -> pcsc::Card {
    ctx.connect(name, ShareMode::Shared, Protocols::ANY)
        .expect("connect")
}

#[test]
fn reads_iccid_and_imsi_with_pysim_tpdus() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (mut serve, ctx, names) = serve(&sim, 0, &[18, 256], &[]);
    assert!(
        ctx.list_readers_owned().unwrap().contains(&names[0]),
        "reader listed"
    );

    let card18 = connect(&ctx, &names[0]);
    let st = card18.status2_owned().unwrap();
    assert_eq!(
        st.atr(),
        sim.with_card(18, |c| c.atr().to_vec()).unwrap().as_slice()
    );
    assert_eq!(st.atr(), h(&cards::atr(18)).as_slice());
    assert_eq!(tx(&card18, "A0A40000023F00"), h("9F17"));
    let gr = tx(&card18, "A0C0000017");
    assert_eq!(
        (gr.len(), &gr[4..6], &gr[23..]),
        (25, &[0x3F, 0x00][..], &[0x90, 0x00][..])
    );
    assert_eq!(tx(&card18, "A0A40000022FE2"), h("9F0F"));
    let iccid = tx(&card18, "A0B000000A");
    assert_eq!(iccid, cards::sw9000(&cards::ef_iccid(18)));
    assert_eq!(
        simpool::sim::profile::decode_iccid(&iccid[..10]),
        cards::iccid(18)
    );

    let card256 = connect(&ctx, &names[1]);
    assert_eq!(tx(&card256, "A0A40000027F20"), h("9F17"));
    assert_eq!(tx(&card256, "A0A40000026F07"), h("9F0F"));
    let imsi = tx(&card256, "A0B0000009");
    assert_eq!(
        simpool::sim::profile::decode_imsi(&imsi[..9]).unwrap(),
        cards::imsi(256)
    );
    assert!(serve.is_running());
}

#[test]
fn run_gsm_algorithm_equals_the_simulator() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (_serve, ctx, names) = serve(&sim, 2, &[2], &[]);
    let card = connect(&ctx, &names[0]);
    assert_eq!(tx(&card, "A0A40000027F20"), h("9F17"));
    let rand = h("12305263415263524195637485967463");
    assert_eq!(
        tx(&card, &format!("A088000010{}", hex::encode(&rand))),
        h("9F0C")
    );
    let r = tx(&card, "A0C000000C");
    let (sres, kc) = sim
        .with_card(2, |c| {
            run_gsm(
                &c.profile().algo,
                &c.profile().ki,
                &rand.clone().try_into().unwrap(),
            )
        })
        .unwrap();
    assert_eq!(r[..4], sres);
    assert_eq!(r[4..12], kc);
    assert_eq!(r[12..], [0x90, 0x00]);
}

#[test]
fn reset_restarts_the_card() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (serve, ctx, names) = serve(&sim, 4, &[3], &[]);
    let mut card = connect(&ctx, &names[0]);
    assert_eq!(tx(&card, "A0A40000027F20"), h("9F17"));
    // STATUS names the current DF: DF.GSM now …
    assert_eq!(tx(&card, "A0F2000017")[4..6], [0x7F, 0x20]);
    let resets = || power_events(&serve);
    let before = resets();
    card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
        .unwrap();
    // … and the MF after a real restart …
    assert_eq!(tx(&card, "A0F2000017")[4..6], [0x3F, 0x00]);
    // … which simpool was asked for.
    assert!(
        resets() > before,
        "no Reset/PowerOn reached simpool:\n{}",
        serve.log_text()
    );
}

/// How many PC/SC power-on/reset requests simpool logged (bridge log lines).
fn power_events(serve: &Serve) -> usize {
    serve
        .log_text()
        .lines()
        .filter(|l| l.ends_with(": Reset") || l.ends_with(": PowerOn"))
        .count()
}

#[test]
fn two_readers_two_cards_no_cross_talk() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (_serve, ctx, names) = serve(&sim, 6, &[5, 6], &[]);
    drop(ctx);
    let workers: Vec<_> = [(5u16, names[0].clone()), (6u16, names[1].clone())]
        .into_iter()
        .map(|(n, name)| {
            let sim = sim.clone();
            std::thread::spawn(move || {
                let ctx = stack::context();
                let card = connect(&ctx, &name);
                assert_eq!(tx(&card, "A0A40000027F20"), h("9F17"));
                let (ki, algo) = sim
                    .with_card(n, |c| (c.profile().ki, c.profile().algo.clone()))
                    .unwrap();
                for i in 0..100u8 {
                    let rand = [i ^ n as u8; 16];
                    assert_eq!(
                        tx(&card, &format!("A088000010{}", hex::encode(rand))),
                        h("9F0C")
                    );
                    let r = tx(&card, "A0C000000C");
                    let (sres, kc) = run_gsm(&algo, &ki, &rand);
                    assert_eq!(r[..4], sres, "card {n} got another card's SRES");
                    assert_eq!(r[4..12], kc, "card {n} got another card's Kc");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn pool_stopped_mid_session_then_back() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let (mut serve, ctx, names) = serve(
        &sim,
        8,
        &[7],
        &["--command-timeout-ms", "1500", "--reply-timeout-ms", "500"],
    );
    let card = connect(&ctx, &names[0]);
    assert_eq!(tx(&card, "A0A40000023F00"), h("9F17"));

    // The pool goes silent: the command comes back with an error status within the bound.
    sim.update_faults(|f| {
        f.mute.insert(7);
    });
    let t0 = Instant::now();
    let mut buf = [0u8; 258];
    let r = card
        .transmit(&h("A0F2000016"), &mut buf)
        .map(|r| r.to_vec());
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(r.unwrap(), h("6F00"));
    // … and the reader shows no card while the card cannot start.
    assert!(
        stack::wait_card(&ctx, &names[0], false, Duration::from_secs(10)),
        "card still shown"
    );

    // The card is back once it answers again …
    sim.update_faults(|f| {
        f.mute.clear();
    });
    assert!(
        stack::wait_card(&ctx, &names[0], true, Duration::from_secs(15)),
        "card back after the mute; log:\n{}",
        serve.log_text()
    );
    let card = connect(&ctx, &names[0]);
    assert_eq!(tx(&card, "A0A40000023F00"), h("9F17"));

    // … then the pool is switched off altogether: the reader shows no card, simpool knows why.
    sim.go_down();
    assert!(
        stack::wait_card(&ctx, &names[0], false, Duration::from_secs(10)),
        "card still shown while the pool is down"
    );
    let t0 = Instant::now();
    while !serve
        .log_text()
        .contains("unavailable: no connection to the pool")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "pool outage not noticed:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        stack::wait_card(&ctx, &names[0], false, Duration::ZERO),
        "card shown while the pool is down"
    );
    sim.come_back();
    assert!(
        stack::wait_card(&ctx, &names[0], true, Duration::from_secs(15)),
        "card back; log:\n{}",
        serve.log_text()
    );
    let card = connect(&ctx, &names[0]);
    assert_eq!(tx(&card, "A0A40000023F00"), h("9F17"));
    assert!(serve.is_running(), "simpool keeps running");
}
