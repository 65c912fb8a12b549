//! Pool-side benchmarks (`cargo bench --bench pool`): a plain program printing figures, since
//! what matters are ratios on a noisy machine, not statistics of nanoseconds.
//!
//! 1. `scan` of 256 simulated cards with 5 ms per-reply latency: concurrent over the one link,
//!    against the same reads one card at a time.
//! 2. Exchanges per second over one connection with zero latency: one card, and 64 cards at once.
//!
//! `SIMPOOL_BENCH_QUICK=1` runs a short version (8 cards, 0.2 s periods; about a second) to
//! check that the benchmark still builds and runs: `driver/test` does that.

use std::time::{Duration, Instant};

use simpool::cards::{Cards, Holder};
use simpool::pool::{Link, LinkOptions, Slot};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

fn quick() -> bool {
    std::env::var_os("SIMPOOL_BENCH_QUICK").is_some()
}

async fn pool(latency: Duration, cards: u16) -> (SimPool, Link) {
    let faults = Faults {
        latency_min: latency,
        latency_max: latency,
        ..Faults::default()
    };
    let sim = SimPool::start("127.0.0.1:0", CardsFile::filled(cards), faults)
        .await
        .unwrap();
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

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
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
