//! Authentications per second (`cargo bench --bench auth`): 32 USIMs of the simulated pool at
//! 5 ms per reply, each authenticated over and over through the card layer's
//! [`simpool::cards::auth::authenticate`] (a lease, start, SELECT ADF.USIM, AUTHENTICATE, GET
//! RESPONSE, stop: what every sim-rest and API request does), all 32 at once over the one pool
//! connection, against one card at a time. A plain program printing figures.
//!
//! `SIMPOOL_BENCH_QUICK=1` runs a short version (0.5 s per measurement instead of 5 s).

use std::time::{Duration, Instant};

use simpool::cards::auth::{authenticate, Challenge, Via};
use simpool::cards::{Cards, Holder};
use simpool::pool::{Link, LinkOptions};
use simpool::sim::algo::Algo;
use simpool::sim::auth::{sqn_to_bytes, Milenage, MilenageConsts};
use simpool::sim::profile::{generated_usim, CardsFile, SlotEntry, SlotState};
use simpool::sim::{Faults, SimPool};
use simpool::values::CardNo;

fn quick() -> bool {
    std::env::var_os("SIMPOOL_BENCH_QUICK").is_some()
}

/// A fresh 3G challenge for card `slot` with sequence number `seq` (IND 0).
fn challenge(slot: u16, seq: u64) -> Challenge {
    let p = generated_usim(slot);
    let Algo::Milenage { opc } = p.algo else {
        unreachable!("generated USIMs use Milenage")
    };
    let m = Milenage::new(&p.ki, &opc, MilenageConsts::default());
    let mut rand = [0u8; 16];
    rand[..8].copy_from_slice(&seq.to_be_bytes());
    rand[14..].copy_from_slice(&slot.to_be_bytes());
    let sqn = sqn_to_bytes(seq << 5);
    let amf = [0x00, 0x00];
    let v = m.f2345(&rand);
    let mac = m.f1(&rand, &sqn, &amf);
    let mut autn = [0u8; 16];
    for i in 0..6 {
        autn[i] = sqn[i] ^ v.ak[i];
    }
    autn[6..8].copy_from_slice(&amf);
    autn[8..].copy_from_slice(&mac);
    Challenge {
        rand,
        autn: Some(autn),
    }
}

/// Authentications on `cards` cards (slots 1..=cards, all USIMs) for `period`, concurrently.
/// Sequence numbers start at `first_seq` (above those of an earlier run: each must be fresh).
async fn run(cards: &Cards, n: u16, period: Duration, first_seq: u64) -> (u64, Duration) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for slot in 1..=n {
        let cards = cards.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut seq = first_seq;
            while t0.elapsed() < period {
                let c = challenge(slot, seq);
                seq += 1;
                let r = authenticate(
                    &cards,
                    CardNo::of(slot),
                    Holder::Command("bench"),
                    None,
                    c,
                    Duration::from_secs(2),
                    Via::Command,
                )
                .await;
                match r {
                    Ok(simpool::cards::auth::Outcome::Umts { .. }) => done += 1,
                    other => panic!("card {slot}: {other:?}"),
                }
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total, t0.elapsed())
}

fn main() {
    let (n, period) = if quick() {
        (32u16, Duration::from_millis(500))
    } else {
        (32u16, Duration::from_secs(5))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let latency = Duration::from_millis(5);
        let faults = Faults {
            latency_min: latency,
            latency_max: latency,
            ..Faults::default()
        };
        let file = CardsFile {
            card: (1..=n)
                .map(|slot| SlotEntry {
                    slot,
                    state: SlotState::Normal,
                    profile: generated_usim(slot),
                })
                .collect(),
            ..CardsFile::filled(0)
        };
        let sim = SimPool::start("127.0.0.1:0", file, faults).await.unwrap();
        let link = Link::connect(&sim.addr().to_string(), LinkOptions::default())
            .await
            .unwrap();
        let cards = Cards::new(link, Vec::new());

        let (one, t_one) = run(&cards, 1, period, 1).await;
        let one_rate = one as f64 / t_one.as_secs_f64();
        let (all, t_all) = run(&cards, n, period, 1 << 20).await;
        let all_rate = all as f64 / t_all.as_secs_f64();
        println!(
            "auth: 1 USIM at 5 ms per reply: {one} authentications in {:.2} s = {one_rate:.1}/s \
             ({:.1} ms each)",
            t_one.as_secs_f64(),
            1000.0 / one_rate
        );
        println!(
            "auth: {n} USIMs at once at 5 ms per reply: {all} authentications in {:.2} s = \
             {all_rate:.1}/s ({:.1}x one card)",
            t_all.as_secs_f64(),
            all_rate / one_rate
        );
    });
}
