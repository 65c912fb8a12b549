//! What the metrics cost (`cargo bench --bench metrics`): a plain program printing figures,
//! like the other benches.
//!
//! 1. The exchange path's share: two relaxed atomic adds per exchange (the per-front-end split
//!    of the card's counters; everything else was counted before metrics existed).
//! 2. One scrape (`GET /metrics` without HTTP): a daemon with all 256 cards used.
//! 3. Exchanges per second on one simulated card through `Lease::transmit` (single-threaded
//!    runtime like the daemon), alternately: no scrapes; a scrape a second (Prometheus
//!    scrapes every 15 s or so); a thread scraping without pause; and, to tell CPU competition
//!    from contention, a thread spinning without pause and without scraping.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use simpool::bridge::ResetPolicy;
use simpool::cards::{Cards, Front, Holder};
use simpool::config::ServeConfig;
use simpool::metrics::{render, Format};

async fn exchanges_per_s(cards: &Cards, period: Duration) -> f64 {
    let mut lease = cards
        .lease(simpool::values::CardNo::of(18), Holder::Scan)
        .unwrap();
    lease.start().await.unwrap();
    let cmd = [0xA0, 0xF2, 0x00, 0x00, 0x16];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < period {
        lease
            .transmit(&cmd, Duration::from_secs(2), Front::Vpcd)
            .await
            .unwrap();
        n += 1;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    lease.release().await;
    rate
}

fn main() {
    // `driver/test` only checks that the bench runs: a second or so.
    let quick = std::env::var_os("SIMPOOL_BENCH_QUICK").is_some();
    let a = [AtomicU64::new(0), AtomicU64::new(0)];
    let n = if quick { 100_000u32 } else { 20_000_000 };
    let t0 = Instant::now();
    for i in 0..n {
        black_box(&a[(i & 1) as usize]).fetch_add(1, Ordering::Relaxed);
        black_box(&a[(i & 1) as usize]).fetch_add(1, Ordering::Relaxed);
    }
    let adds = t0.elapsed() / n;
    println!(
        "metrics on the exchange path: two relaxed atomic adds {:>6.1} ns",
        adds.as_secs_f64() * 1e9
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = simpool::serve::start(ServeConfig {
            pool: "sim".into(),
            cards: None,
            command_timeout: Duration::from_millis(1500),
            reply_timeout: Duration::from_millis(1000),
            null_wait_cap: simpool::pool::link::NULL_WAIT_CAP,
            keepalive: Duration::from_secs(10),
            reset: ResetPolicy::Restart,
            quickack: true,
            readers: Vec::new(),
            control: None,
            control_token: None,
            control_tokens: None,
            control_socket: None,
            control_socket_mode: 0o660,
            control_socket_group: None,
            state: None,
            history: None,
            history_days: 90,
            gsmtap: None,
            health: Default::default(),
            remsim: None,
            sim_rest: None,
            card_settings: Default::default(),
        })
        .await
        .unwrap();
        let d = running.daemon.clone();
        d.link.wait_up(Duration::from_secs(5)).await;
        // Every card used from every front end: the largest exposition.
        for n in simpool::values::CardNo::all() {
            let s = d.cards.card_stats(n);
            s.starts.fetch_add(1, Ordering::Relaxed);
            for f in &s.exchanges_by_front {
                f.fetch_add(1000, Ordering::Relaxed);
            }
        }
        let text = render(d.clone(), Format::Prometheus);
        let scrapes = if quick { 5u32 } else { 200 };
        let t0 = Instant::now();
        for _ in 0..scrapes {
            black_box(render(d.clone(), Format::Prometheus));
        }
        let per = t0.elapsed() / scrapes;
        println!(
            "one scrape, 256 cards used: {:>7.0} us, {} bytes, {} lines",
            per.as_secs_f64() * 1e6,
            text.len(),
            text.lines().count()
        );

        // 0: idle, 1: scrape every second, 2: scrape without pause, 3: spin without scraping.
        let mode = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = {
            let (d, stop, mode) = (d.clone(), stop.clone(), mode.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match mode.load(Ordering::Relaxed) {
                        1 => {
                            black_box(render(d.clone(), Format::Prometheus));
                            n += 1;
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        2 => {
                            black_box(render(d.clone(), Format::Prometheus));
                            n += 1;
                        }
                        3 => {
                            let t = Instant::now();
                            while t.elapsed() < Duration::from_micros(700) {
                                black_box(t.elapsed());
                            }
                        }
                        _ => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                n
            })
        };
        let (period, rounds) = if quick {
            (Duration::from_millis(150), 1)
        } else {
            (Duration::from_secs(2), 5)
        };
        let mut rates = [const { Vec::new() }; 4];
        // Alternate to spread the machine's noise over all modes.
        for _ in 0..rounds {
            for (m, r) in rates.iter_mut().enumerate() {
                mode.store(m as u64, Ordering::Relaxed);
                r.push(exchanges_per_s(&d.cards, period).await);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let scraped = scraper.join().unwrap();
        // The best round of each: the machine's other load only ever slows a round down.
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let base = best(&rates[0]);
        println!(
            "STATUS on one card through Lease::transmit (built-in simulator, one thread; \
             best of {rounds} rounds of {period:?}):"
        );
        for (m, what) in [
            "no scrapes",
            "a scrape a second",
            "scraping without pause",
            "spinning without pause",
        ]
        .iter()
        .enumerate()
        {
            let r = best(&rates[m]);
            println!(
                "  {what:<24} {r:>8.0}/s ({:.1} us each), {:+.1}%",
                1e6 / r,
                (1e6 / r - 1e6 / base) / (1e6 / base) * 100.0
            );
        }
        println!("  ({scraped} scrapes in all)");
        running.shutdown().await;
    });
}
