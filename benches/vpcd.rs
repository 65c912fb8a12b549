//! Round trip of one exchange through pcscd + vpcd + simpool + simulated pool (zero card latency),
//! beside the floor: the same pcscd + vpcd path with a minimal responder in simpool's place that
//! answers `90 00` at once. Each with and without TCP_QUICKACK on the vpcd socket. Two more
//! floors spend 5 and 25 µs before answering: on a VM, pcscd's and vpcd's threads sleep once an
//! answer takes more than a few microseconds, and that wake-up, not simpool's work, is most of
//! the difference to the instant floor.
//!
//! `cargo bench --bench vpcd` (needs pcscd and vsmartcard-vpcd: `driver/pcscd-private install`,
//! and root for the private pcscd's mount namespace). `SIMPOOL_BENCH_QUICK=1` runs a short
//! version (about a second of exchanges) to check that it still builds and runs: `driver/test`
//! does that.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pcsc::{Context, Protocols, Scope, ShareMode};
use simpool::bridge::{Binding, ResetPolicy};
use simpool::config::{ReaderSpec, ServeConfig};
use simpool::vpcd::{Connection, Event};

const BASE: u16 = 26500;
/// Exchanges per fast reader, in rounds (the full run, and the quick one).
const N: usize = 4000;
const ROUNDS: usize = 20;
const N_QUICK: usize = 100;
const ROUNDS_QUICK: usize = 2;

fn reader_name(i: u16) -> CString {
    CString::new(simpool::vpcd::reader_name(i)).unwrap()
}

/// A card that answers 90 00 to everything, as fast as a socket allows, or after spending
/// `work` on the CPU (to show what any processing at all costs on this path).
async fn floor_responder(port: u16, quickack: bool, work: Duration) {
    loop {
        let Ok(mut c) = Connection::connect(
            &format!("127.0.0.1:{port}"),
            quickack,
            Duration::from_secs(1),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Ok(Some(ev)) = c.next_event().await {
            let t0 = Instant::now();
            while t0.elapsed() < work {
                std::hint::spin_loop();
            }
            let answer: &[u8] = match ev {
                Event::GetAtr => &[0x3B, 0x02, 0x14, 0x50],
                Event::Command(_) | Event::Invalid { .. } => &[0x90, 0x00],
                _ => continue,
            };
            if c.reply(answer).await.is_err() {
                break;
            }
        }
    }
}

fn on_own_thread(f: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    });
}

/// Median, p99 and max of `samples`.
fn stats(mut t: Vec<Duration>) -> (Duration, Duration, Duration) {
    t.sort();
    let n = t.len();
    (t[n / 2], t[n * 99 / 100], t[n - 1])
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join("simpool-bench-vpcd");
    let script = repo.join("driver/pcscd-private");
    // A run that panicked may have left its pcscd behind.
    let _ = Command::new(&script)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output();
    let out = Command::new(&script)
        .args([
            "start",
            "--readers",
            "6",
            "--port",
            &BASE.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("driver/pcscd-private");
    assert!(
        out.status.success(),
        "private pcscd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::env::set_var("PCSCLITE_CSOCK_NAME", dir.join("run/pcscd.comm"));

    // `simpool serve --pool sim`: the simulated pool inside simpool's own runtime. With
    // SIMPOOL_BENCH_POOL=thread it runs on a thread of its own instead (a pool is a box of its
    // own; on a 2-vCPU VM each cross-thread wake-up then adds tens of microseconds).
    let pool = if std::env::var("SIMPOOL_BENCH_POOL").as_deref() == Ok("thread") {
        let (tx, rx) = std::sync::mpsc::channel();
        on_own_thread(async move {
            let sim = simpool::sim::SimPool::start(
                "127.0.0.1:0",
                simpool::sim::profile::CardsFile::default_set(),
                simpool::sim::Faults::default(),
            )
            .await
            .unwrap();
            tx.send(sim.addr().to_string()).unwrap();
            std::future::pending::<()>().await;
        });
        rx.recv().unwrap()
    } else {
        "sim".to_string()
    };
    let serve = |port: u16, quickack: bool| ServeConfig {
        pool: pool.as_str().into(),
        cards: None,
        command_timeout: Duration::from_millis(1500),
        reply_timeout: Duration::from_millis(1000),
        null_wait_cap: simpool::pool::link::NULL_WAIT_CAP,
        keepalive: Duration::from_secs(5),
        reset: ResetPolicy::Restart,
        quickack,
        health: Default::default(),
        control: None,
        control_token: None,
        control_tokens: None,
        control_socket: None,
        control_socket_mode: 0o660,
        control_socket_group: None,
        state: None,
        history: None,
        history_days: 90,
        remsim: None,
        sim_rest: None,
        card_settings: Default::default(),
        // `SIMPOOL_BENCH_GSMTAP=HOST:PORT` measures with GSMTAP tracing on.
        gsmtap: std::env::var("SIMPOOL_BENCH_GSMTAP")
            .ok()
            .map(|d| simpool::gsmtap::Config {
                dest: simpool::gsmtap::destination(&d).unwrap(),
                cards: simpool::gsmtap::CardFilter::all(),
            }),
        readers: vec![ReaderSpec {
            binding: Some(Binding::Card(simpool::values::CardNo::of(if quickack {
                18
            } else {
                2
            }))),
            vpcd: format!("127.0.0.1:{port}"),
        }],
    };
    // Each on a single-threaded runtime of its own, as `simpool serve` runs.
    for (port, quickack) in [(BASE, true), (BASE + 1, false)] {
        let cfg = serve(port, quickack);
        on_own_thread(async move {
            let _running = simpool::serve::start(cfg).await.unwrap();
            std::future::pending::<()>().await;
        });
    }
    on_own_thread(floor_responder(BASE + 2, true, Duration::ZERO));
    on_own_thread(floor_responder(BASE + 3, false, Duration::ZERO));
    on_own_thread(floor_responder(BASE + 4, true, Duration::from_micros(5)));
    on_own_thread(floor_responder(BASE + 5, true, Duration::from_micros(25)));

    let ctx = Context::establish(Scope::User).unwrap();
    let names: Vec<CString> = (0..6).map(reader_name).collect();
    simpool::client::wait_for_cards(&ctx, &names, Duration::from_secs(20)).unwrap();
    // STATUS of the MF: a real T=0 Out exchange on the simulated card (one pool round trip).
    let cmd = [0xA0, 0xF2, 0x00, 0x00, 0x16];
    let labels = [
        "simpool + simulated pool, QUICKACK",
        "simpool + simulated pool, no QUICKACK",
        "floor (answers 9000), QUICKACK",
        "floor (answers 9000), no QUICKACK",
        "floor after 5 us of work, QUICKACK",
        "floor after 25 us of work, QUICKACK",
    ];
    let cards: Vec<pcsc::Card> = names
        .iter()
        .map(|n| {
            ctx.connect(n, ShareMode::Shared, Protocols::ANY)
                .expect("connect")
        })
        .collect();
    let mut buf = [0u8; 300];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 6];
    let (n_all, rounds) = if std::env::var_os("SIMPOOL_BENCH_QUICK").is_some() {
        (N_QUICK, ROUNDS_QUICK)
    } else {
        (N, ROUNDS)
    };
    // Interleaved rounds, so that a drifting machine weighs on all four alike. The slow
    // (no-QUICKACK) readers get fewer exchanges: each costs ~44 ms.
    for round in 0..rounds {
        for (i, card) in cards.iter().enumerate() {
            let n = if i % 2 == 0 || i >= 4 {
                n_all / rounds
            } else {
                n_all / rounds / 10
            };
            for k in 0..n + 5 {
                let t0 = Instant::now();
                card.transmit(&cmd, &mut buf).unwrap();
                if k >= 5 || round > 0 {
                    samples[i].push(t0.elapsed());
                }
            }
        }
    }
    println!("round trip of one SCardTransmit (STATUS), interleaved over {rounds} rounds:");
    let mut med = [Duration::ZERO; 6];
    for (i, label) in labels.iter().enumerate() {
        let count = samples[i].len();
        let (m, p99, max) = stats(std::mem::take(&mut samples[i]));
        med[i] = m;
        println!(
            "  {label:<40} n {count:>5}  median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
            m.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    println!(
        "ratio simpool/floor (median): {:.2} with QUICKACK, {:.2} without",
        med[0].as_secs_f64() / med[2].as_secs_f64(),
        med[1].as_secs_f64() / med[3].as_secs_f64()
    );
    println!(
        "ratio simpool/floor after 5 us of work (median): {:.2}",
        med[0].as_secs_f64() / med[4].as_secs_f64()
    );
    let _ = Command::new(&script)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output();
}
