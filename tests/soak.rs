//! Soak: 16 readers (pcsc-lite's maximum) bound to 16 simulated cards through the real pcscd and
//! vpcd, each driven by its own PC/SC client doing pySim-like sequences, while the simulated pool
//! injects faults: split and delayed replies, NULL bytes, garbage, a mute card, pool restarts.
//! Every card has its own ICCID, IMSI and Ki, so an answer delivered to the wrong reader shows.
//!
//! Short in CI; long on demand:  SIMPOOL_SOAK_SECS=600 cargo test --release --test soak -- --nocapture

mod common;

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stack::{self, Serve};
use pcsc::{Protocols, ShareMode};
use simpool::sim::algo::run_gsm;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 36700;
const READERS: u16 = 16;
/// simpool's bound on any command, and what pcscd + a restart may add on top.
const BOUND: Duration = Duration::from_millis(1500);
const SLACK: Duration = Duration::from_millis(1500);

#[derive(Default)]
struct Counts {
    exchanges: AtomicU64,
    sequences: AtomicU64,
    error_status: AtomicU64,
    pcsc_errors: AtomicU64,
    reconnects: AtomicU64,
    unexpected: AtomicU64,
    misrouted: AtomicU64,
    lost: AtomicU64,
    over_bound: AtomicU64,
    slowest_ms: AtomicU64,
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

enum Outcome {
    /// The card answered; the sequence goes on.
    Ok(Vec<u8>),
    /// simpool answered an error status (the card was then reset): start over.
    ErrorStatus,
    /// PC/SC reports the card removed/reset/absent: reconnect.
    Gone,
}

struct Client {
    n: u16,
    counts: Arc<Counts>,
}

impl Client {
    fn tx(&self, card: &pcsc::Card, cmd: &[u8]) -> Outcome {
        let mut buf = [0u8; 300];
        let t0 = Instant::now();
        let r = card.transmit(cmd, &mut buf).map(|r| r.to_vec());
        let took = t0.elapsed();
        self.counts
            .slowest_ms
            .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
        if took > BOUND + SLACK {
            self.counts.over_bound.fetch_add(1, Ordering::Relaxed);
            eprintln!("card {}: {} took {took:?}", self.n, hex::encode_upper(cmd));
        }
        self.counts.exchanges.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(r) if r.len() < 2 => {
                self.counts.lost.fetch_add(1, Ordering::Relaxed);
                Outcome::ErrorStatus
            }
            Ok(r) if r == [0x6F, 0x00] => {
                self.counts.error_status.fetch_add(1, Ordering::Relaxed);
                Outcome::ErrorStatus
            }
            Ok(r) => Outcome::Ok(r),
            Err(_) => {
                self.counts.pcsc_errors.fetch_add(1, Ordering::Relaxed);
                Outcome::Gone
            }
        }
    }

    fn expect(&self, what: &str, got: &[u8], want: &[u8], identity: bool) {
        if got != want {
            // Data of the right shape but not this card's: someone else's answer. A bare status
            // word instead of the data is "unexpected" (the card lost its selection).
            let counter = if identity && got.len() == want.len() {
                &self.counts.misrouted
            } else {
                &self.counts.unexpected
            };
            counter.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "card {}: {what}: got {} want {}",
                self.n,
                hex::encode_upper(got),
                hex::encode_upper(want)
            );
        }
    }

    /// One pySim-like sequence: ICCID, IMSI, RUN GSM ALGORITHM. Returns false when the card is gone.
    fn sequence(&self, card: &pcsc::Card, sim: &SimPool, round: u64) -> bool {
        let (iccid, imsi, ki, algo) = sim
            .with_card(self.n, |c| {
                let p = c.profile();
                (
                    simpool::sim::profile::encode_iccid(&p.iccid),
                    simpool::sim::profile::encode_imsi(&p.imsi),
                    p.ki,
                    p.algo.clone(),
                )
            })
            .unwrap();
        let mut rand = [0u8; 16];
        rand[..8].copy_from_slice(&round.to_be_bytes());
        rand[8..10].copy_from_slice(&self.n.to_be_bytes());
        let (sres, kc) = run_gsm(&algo, &ki, &rand);
        let mut run_gsm_cmd = vec![0xA0, 0x88, 0x00, 0x00, 0x10];
        run_gsm_cmd.extend(rand);
        let steps: [(&str, Vec<u8>, Vec<u8>, bool); 10] = [
            (
                "SELECT MF",
                vec![0xA0, 0xA4, 0, 0, 2, 0x3F, 0x00],
                vec![0x9F, 0x17],
                false,
            ),
            (
                "SELECT ICCID",
                vec![0xA0, 0xA4, 0, 0, 2, 0x2F, 0xE2],
                vec![0x9F, 0x0F],
                false,
            ),
            (
                "READ ICCID",
                vec![0xA0, 0xB0, 0, 0, 10],
                [&iccid[..], &[0x90, 0x00]].concat(),
                true,
            ),
            (
                "SELECT GSM",
                vec![0xA0, 0xA4, 0, 0, 2, 0x7F, 0x20],
                vec![0x9F, 0x17],
                false,
            ),
            (
                "GET RESPONSE",
                vec![0xA0, 0xC0, 0, 0, 0x17],
                Vec::new(),
                false,
            ),
            (
                "SELECT IMSI",
                vec![0xA0, 0xA4, 0, 0, 2, 0x6F, 0x07],
                vec![0x9F, 0x0F],
                false,
            ),
            (
                "READ IMSI",
                vec![0xA0, 0xB0, 0, 0, 9],
                [&imsi[..], &[0x90, 0x00]].concat(),
                true,
            ),
            ("RUN GSM", run_gsm_cmd, vec![0x9F, 0x0C], false),
            (
                "GET SRES/Kc",
                vec![0xA0, 0xC0, 0, 0, 0x0C],
                [&sres[..], &kc[..], &[0x90, 0x00]].concat(),
                true,
            ),
            ("STATUS", vec![0xA0, 0xF2, 0, 0, 0x17], Vec::new(), false),
        ];
        for (what, cmd, want, identity) in steps {
            match self.tx(card, &cmd) {
                Outcome::Ok(got) => {
                    if want.is_empty() {
                        // shape only: 23-byte DF body of DF.GSM + 9000
                        if got.len() != 25 || got[4..6] != [0x7F, 0x20] || got[23..] != [0x90, 0x00]
                        {
                            self.expect(what, &got, b"(DF.GSM body)", false);
                        }
                    } else {
                        self.expect(what, &got, &want, identity);
                    }
                }
                Outcome::ErrorStatus => return true,
                Outcome::Gone => return false,
            }
        }
        self.counts.sequences.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn run(&self, sim: &SimPool, name: &CString, stop: &AtomicBool) {
        let ctx = stack::context();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if !stack::wait_card(&ctx, name, true, Duration::from_secs(2)) {
                continue;
            }
            let card = match ctx.connect(name, ShareMode::Shared, Protocols::ANY) {
                Ok(c) => c,
                Err(_) => continue,
            };
            self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                if !self.sequence(&card, sim, round) {
                    break;
                }
            }
        }
    }
}

#[test]
fn sixteen_readers_under_faults_lose_and_misroute_nothing() {
    let secs: u64 = std::env::var("SIMPOOL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut cards = CardsFile::default_set();
    cards.pool.nulls = 3;
    let sim = common::sim_pool(cards, Faults::default());
    let pcscd = stack::pcscd(BASE_PORT);
    let mut args = vec![
        "--pool".to_string(),
        sim.addr().to_string(),
        "--vpcd".into(),
        pcscd.vpcd_addr(0),
        "--command-timeout-ms".into(),
        BOUND.as_millis().to_string(),
        "--reply-timeout-ms".into(),
        "500".into(),
    ];
    for n in 1..=READERS {
        args.push("--card".into());
        args.push(n.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut serve = Serve::start(&refs, "soak");
    let names: Vec<CString> = (0..READERS).map(|i| pcscd.reader_name(i)).collect();
    let ctx = stack::context();
    for n in &names {
        assert!(
            stack::wait_card(&ctx, n, true, Duration::from_secs(30)),
            "{n:?}: {}",
            serve.log_text()
        );
    }
    let pid = serve.child.id();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=READERS)
        .map(|n| {
            let (sim, counts, stop) = (sim.clone(), counts.clone(), stop.clone());
            let name = names[usize::from(n - 1)].clone();
            std::thread::spawn(move || Client { n, counts }.run(&sim, &name, &stop))
        })
        .collect();

    // Warm up before the first memory figure.
    std::thread::sleep(Duration::from_secs(2));
    let rss_start = rss_kib(pid);
    let t0 = Instant::now();
    let mut phase = 0u64;
    let mut restarts = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let mut f = Faults::default();
        match phase % 6 {
            0 => f.split = 1,
            1 => {
                f.latency_min = Duration::from_millis(0);
                f.latency_max = Duration::from_millis(30);
                f.split = 4;
            }
            2 => f.garbage_every = 5,
            3 => {
                f.mute.insert(16);
            }
            4 => {
                sim.restart(Duration::from_millis(300));
                restarts += 1;
            }
            _ => {}
        }
        sim.set_faults(f);
        phase += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    sim.set_faults(Faults::default());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let rss_end = rss_kib(pid);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "soak {secs} s, 16 readers: {} exchanges, {} sequences, {} error statuses, {} PC/SC errors \
         (card removed/reset), {} reconnects, {} pool restarts, {} unexpected, {} misrouted, {} lost, \
         {} over the bound (slowest {} ms); simpool RSS {} KiB at start, {} KiB at end",
        c(&counts.exchanges),
        c(&counts.sequences),
        c(&counts.error_status),
        c(&counts.pcsc_errors),
        c(&counts.reconnects),
        restarts,
        c(&counts.unexpected),
        c(&counts.misrouted),
        c(&counts.lost),
        c(&counts.over_bound),
        c(&counts.slowest_ms),
        rss_start,
        rss_end
    );
    assert!(serve.is_running(), "simpool keeps running");
    assert_eq!(
        c(&counts.misrouted),
        0,
        "replies delivered to the wrong card"
    );
    assert_eq!(c(&counts.lost), 0, "replies lost");
    assert_eq!(c(&counts.unexpected), 0, "unexpected answers");
    assert_eq!(c(&counts.over_bound), 0, "PC/SC calls over the bound");
    assert!(c(&counts.sequences) > 16, "the clients got work done");
    assert!(
        rss_end < rss_start + 16 * 1024,
        "memory grew from {rss_start} to {rss_end} KiB"
    );
    // every reader shows its card again once the faults stop
    for n in &names {
        assert!(
            stack::wait_card(&ctx, n, true, Duration::from_secs(20)),
            "{n:?} did not come back"
        );
    }
}
