//! Pool-side benchmarks (`cargo bench --bench pool`): a plain program printing figures, since
//! what matters are ratios on a noisy machine, not statistics of nanoseconds.
//!
//! 1. `scan` of 256 simulated cards with 5 ms per-reply latency: concurrent over the one link,
//!    against the same reads one card at a time.
//! 2. Exchanges per second over one connection with zero latency: one card, and 64 cards at once.
//! 3. What reading a card's facts costs (issue 20 §2): exchanges and pool requests per card and
//!    the time of a scan of the built-in set (SIMs, USIMs, eUICCs; 5 ms per reply), for the
//!    identity read that came before (`identity::Reading`: ATR, ICCID, IMSI), the facts read
//!    of a card seen for the first time (the scan), the details read after it (SPN, MSISDN,
//!    EID; once per card, outside the scan), and the scan again once known (nobody used the
//!    cards between).
//!
//! `SIMPOOL_BENCH_QUICK=1` runs a short version (8 cards, 0.2 s periods; about a second) to
//! check that the benchmark still builds and runs: `driver/test` does that.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use simpool::cards::{Cards, Front, Holder};
use simpool::pool::{Link, LinkOptions, Slot};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

fn quick() -> bool {
    std::env::var_os("SIMPOOL_BENCH_QUICK").is_some()
}

async fn pool(latency: Duration, cards: u16) -> (SimPool, Link) {
    pool_of(latency, CardsFile::filled(cards)).await
}

async fn pool_of(latency: Duration, set: CardsFile) -> (SimPool, Link) {
    let faults = Faults {
        latency_min: latency,
        latency_max: latency,
        ..Faults::default()
    };
    let sim = SimPool::start("127.0.0.1:0", set, faults).await.unwrap();
    let link = Link::connect(&sim.addr().to_string(), LinkOptions::default())
        .await
        .unwrap();
    (sim, link)
}

async fn exchanges_for(link: &Link, cards: u16, period: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=cards {
        let card = link.card(Slot::from_card(n).unwrap());
        tasks.push(tokio::spawn(async move {
            card.start().await.unwrap();
            let mut done = 0u64;
            let t0 = Instant::now();
            while t0.elapsed() < period {
                let r = card
                    .transmit(&[0xA0, 0xF2, 0x00, 0x00, 0x16], Duration::from_secs(2))
                    .await
                    .unwrap();
                assert_eq!(r.len(), 0x16 + 2);
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total, start.elapsed())
}

/// Exchanges and pool requests (frames out: start, commands, data, stop) per card, and the
/// time, of one pass over the inserted cards of `cards`: `Old` runs the identity read of
/// before on each card concurrently (start, `identity::Reading`, stop), `Scan` a scan,
/// `Details` the details read the daemon runs after a scan.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    Old,
    Scan,
    Details,
}

async fn cost(cards: &Cards, pass: Pass) -> (f64, f64, Duration) {
    let link = cards.link();
    let states = link.states().await.unwrap();
    let inserted: Vec<_> = simpool::values::CardNo::all()
        .filter(|n| states[n.index()].has_card())
        .collect();
    let ex = |c: &Cards| -> u64 {
        inserted
            .iter()
            .map(|n| c.card_stats(*n).exchanges.load(Ordering::Relaxed))
            .sum()
    };
    let (ex0, out0) = (ex(cards), link.stats().frames_out.load(Ordering::Relaxed));
    let t0 = Instant::now();
    if pass == Pass::Old {
        // As the scan of before did: the slot states first, then every card at once.
        link.states().await.unwrap();
        let mut tasks = Vec::new();
        for &n in &inserted {
            let cards = cards.clone();
            tasks.push(tokio::spawn(async move {
                let mut lease = cards.lease(n, Holder::Scan).unwrap();
                lease.start().await.unwrap();
                let mut r = simpool::identity::Reading::new();
                while let Some((_, cmd)) = r.command() {
                    let resp = lease
                        .transmit(&cmd, Duration::from_secs(5), Front::Scan)
                        .await
                        .unwrap();
                    // Cards 30 and 31 end in `98 04` (PIN1): the error row of before.
                    if r.answer::<std::io::Error>(&resp).is_err() {
                        break;
                    }
                }
                lease.release().await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    } else if pass == Pass::Details {
        assert_eq!(
            cards.read_details(Duration::from_secs(5)).await,
            inserted.len()
        );
    } else {
        let rows = cards.scan(Duration::from_secs(5)).await.unwrap();
        assert!(rows
            .iter()
            .all(|r| r.error.is_none() && r.facts.kind.is_some()));
    }
    let took = t0.elapsed();
    let per = inserted.len() as f64;
    (
        (ex(cards) - ex0) as f64 / per,
        (link.stats().frames_out.load(Ordering::Relaxed) - out0) as f64 / per,
        took,
    )
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_sim, link) = pool_of(Duration::from_millis(5), CardsFile::default_set()).await;
        let cards = Cards::new(link.clone(), Vec::new());
        let rounds = if quick() { 1 } else { 5 };
        let mut runs = [Duration::ZERO; 4];
        let mut per = [(0.0, 0.0); 4];
        for _ in 0..rounds {
            let fresh = Cards::new(link.clone(), Vec::new());
            for (i, (c, pass)) in [
                (&cards, Pass::Old),
                (&fresh, Pass::Scan),
                (&fresh, Pass::Details),
                (&fresh, Pass::Scan),
            ]
            .into_iter()
            .enumerate()
            {
                let (e, f, t) = cost(c, pass).await;
                per[i] = (e, f);
                runs[i] += t;
            }
        }
        println!("reading the built-in set's 39 cards (SIM, USIM, eUICC), 5 ms per reply:");
        for (i, name) in [
            "identity before (ATR, ICCID, IMSI)",
            "facts, first read (the scan)",
            "details, once, after the scan",
            "facts, known card (the scan)",
        ]
        .into_iter()
        .enumerate()
        {
            println!(
                "  {name:<36} {:>5.1} exchanges/card {:>5.1} pool requests/card {:>7.1} ms  ({:.2}x)",
                per[i].0,
                per[i].1,
                runs[i].as_secs_f64() * 1e3 / f64::from(rounds),
                runs[i].as_secs_f64() / runs[0].as_secs_f64()
            );
        }

        let scanned: u16 = if quick() { 8 } else { 256 };
        let (_sim, link) = pool(Duration::from_millis(5), scanned).await;
        let t0 = Instant::now();
        // The daemon's scan: every free card under a lease, concurrently over the one link.
        let cards = Cards::new(link.clone(), Vec::new());
        let reports = cards
            .scan(Duration::from_secs(5))
            .await
            .unwrap();
        let concurrent = t0.elapsed();
        assert_eq!(reports.len(), usize::from(scanned));
        assert!(reports
            .iter()
            .all(|r| r.error.is_none() && r.imsi.is_some()));

        let t0 = Instant::now();
        for n in simpool::values::CardNo::all().take(usize::from(scanned)) {
            let mut lease = cards.lease(n, Holder::Scan).unwrap();
            lease.read_identity(Duration::from_secs(5)).await.unwrap();
            lease.release().await;
        }
        let sequential = t0.elapsed();
        println!("scan of {scanned} cards, 5 ms per reply:");
        println!("  concurrent     {:>8.1} ms", concurrent.as_secs_f64() * 1e3);
        println!("  one at a time  {:>8.1} ms", sequential.as_secs_f64() * 1e3);
        println!("  speed-up       {:>8.1}x", sequential.as_secs_f64() / concurrent.as_secs_f64());

        let (_sim, link) = pool(Duration::ZERO, 256).await;
        let period = Duration::from_millis(if quick() { 200 } else { 3000 });
        for cards in [1u16, 64] {
            let (n, took) = exchanges_for(&link, cards, period).await;
            println!(
                "exchanges over one connection, zero latency, {cards:>2} card(s): {:>8.0}/s ({n} in {:.1} s)",
                n as f64 / took.as_secs_f64(),
                took.as_secs_f64()
            );
        }
    });
}
