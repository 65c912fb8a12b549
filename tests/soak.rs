//! Soak: 16 readers (pcsc-lite's maximum) bound to 16 simulated cards through the real pcscd and
//! vpcd, each driven by its own PC/SC client doing pySim-like sequences, while the simulated pool
//! injects faults: split and delayed replies, NULL bytes, garbage, a mute card, pool restarts.
//! Every card has its own ICCID, IMSI and Ki, so an answer delivered to the wrong reader shows.
//!
//! What users feel is asserted: every answer is the card's own or `6F 00`, and `6F 00` (or "card
//! removed") only inside an outage the test drives itself (pool restart, muted card, junk
//! between reply frames), from its
//! start until that reader's first good answer; each reader recovers from each outage within
//! a bound; simpool's RSS and open fds stay flat. The figures are printed at the end.
//!
//! Short in CI; long on demand:  SIMPOOL_SOAK_SECS=600 cargo test --release --test soak -- --nocapture

mod common;

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::stack::{self, Serve};
use pcsc::{Protocols, ShareMode};
use simpool::sim::algo::run_gsm;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const BASE_PORT: u16 = 26700;
const READERS: u16 = 16;
/// simpool's bound on any command, and what pcscd + a restart may add on top.
const BOUND: Duration = Duration::from_millis(1500);
const SLACK: Duration = Duration::from_millis(1500);

#[derive(Default)]
struct Counts {
    exchanges: AtomicU64,
    sequences: AtomicU64,
    reconnects: AtomicU64,
    unexpected: AtomicU64,
    misrouted: AtomicU64,
    over_bound: AtomicU64,
    slowest_ms: AtomicU64,
}

/// What one `SCardTransmit` brought back, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The card's own answer.
    Card,
    /// `6F 00`: simpool's documented error for a pool error or timeout.
    ErrorStatus,
    /// PC/SC reports the card removed or reset.
    PcscError,
    /// Anything else: another status, wrong data, another card's data.
    Wrong,
}

/// A fault the test itself drives: from `start` until `end` the pool (or some cards) cannot
/// answer; a reader has recovered at its first good answer after `end`.
#[derive(Debug, Clone)]
struct Outage {
    what: &'static str,
    /// `None`: every card.
    cards: Option<Vec<u16>>,
    start: Instant,
    end: Instant,
}

impl Outage {
    fn affects(&self, card: u16) -> bool {
        self.cards.as_ref().is_none_or(|c| c.contains(&card))
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
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
    /// Every answer this client got, in order, with the time it came back.
    log: Mutex<Vec<(Instant, Seen)>>,
    sequences: AtomicU64,
}

impl Client {
    fn note(&self, at: Instant, seen: Seen) {
        self.log.lock().unwrap().push((at, seen));
    }

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
            Ok(r) if r == [0x6F, 0x00] => {
                self.note(Instant::now(), Seen::ErrorStatus);
                Outcome::ErrorStatus
            }
            Ok(r) => Outcome::Ok(r),
            Err(_) => {
                self.note(Instant::now(), Seen::PcscError);
                Outcome::Gone
            }
        }
    }

    fn expect(&self, what: &str, got: &[u8], want: &[u8], identity: bool) {
        let now = Instant::now();
        if got == want {
            self.note(now, Seen::Card);
        } else {
            self.note(now, Seen::Wrong);
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
                        } else {
                            self.note(Instant::now(), Seen::Card);
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
        self.sequences.fetch_add(1, Ordering::Relaxed);
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

/// How long the pool is down in each simulated restart.
const POOL_DOWN: Duration = Duration::from_millis(300);
/// The longest a reader may take from the start of an outage to its first good answer again:
/// the outage itself, pcscd's next presence poll (~400 ms) ending the drain of `6F 00`,
/// simpool's removal grace (600 ms), the link's reconnect back-off, pcscd's poll seeing the
/// card again, and the application reconnecting — under load on a busy machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(6);
/// RSS growth over the run that fails the soak.
const RSS_GROWTH_KIB: u64 = 2 * 1024;

/// When client `n` recovered from `o`: its first good answer after the fault ended.
fn recovered_at(log: &[(Instant, Seen)], o: &Outage) -> Option<Instant> {
    log.iter()
        .find(|(t, s)| *t >= o.end && *s == Seen::Card)
        .map(|(t, _)| *t)
}

#[test]
fn sixteen_readers_under_faults_answer_right_or_6f00_inside_outages() {
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
    let clients: Vec<Arc<Client>> = (1..=READERS)
        .map(|n| {
            Arc::new(Client {
                n,
                counts: counts.clone(),
                log: Mutex::new(Vec::new()),
                sequences: AtomicU64::new(0),
            })
        })
        .collect();
    let threads: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, sim, stop) = (c.clone(), sim.clone(), stop.clone());
            let name = names[usize::from(c.n - 1)].clone();
            std::thread::spawn(move || c.run(&sim, &name, &stop))
        })
        .collect();

    // Warm up before the first memory figure: every reader through its first sequences.
    common::wait_for(
        "every reader's first sequences",
        Duration::from_secs(30),
        || {
            clients
                .iter()
                .all(|c| c.sequences.load(Ordering::Relaxed) >= 3)
        },
    );
    let (rss_start, fds_start) = (rss_kib(pid), open_fds(pid));
    let (mut rss_max, mut fds_max) = (rss_start, fds_start);
    let t0 = Instant::now();
    let mut phase = 0u64;
    let mut outages: Vec<Outage> = Vec::new();
    // A fault that lasts one phase; it ends when the next phase starts.
    let mut open: Option<Outage> = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if let Some(mut o) = open.take() {
            o.end = now;
            outages.push(o);
        }
        let mut f = Faults::default();
        match phase % 6 {
            0 => f.split = 1,
            1 => {
                outages.push(Outage {
                    what: "pool restart",
                    cards: None,
                    start: now,
                    end: now + POOL_DOWN,
                });
                sim.restart(POOL_DOWN);
            }
            2 => {
                f.latency_min = Duration::from_millis(0);
                f.latency_max = Duration::from_millis(30);
                f.split = 4;
            }
            3 => {
                f.garbage_every = 5;
                // Junk right after a reply frame cannot be told from that frame's tail (a pool
                // that gave its length one short): the card layer fails that exchange (6F00)
                // rather than risk wrong data, costing that card only. A fault window, then.
                open = Some(Outage {
                    what: "junk before replies",
                    cards: None,
                    start: now,
                    end: now,
                });
            }
            4 => {
                f.mute.insert(16);
                open = Some(Outage {
                    what: "card 16 mute",
                    cards: Some(vec![16]),
                    start: now,
                    end: now,
                });
            }
            _ => {}
        }
        sim.set_faults(f);
        phase += 1;
        let phase_end = now + Duration::from_secs(2);
        while Instant::now() < phase_end {
            std::thread::sleep(Duration::from_millis(200));
            rss_max = rss_max.max(rss_kib(pid));
            fds_max = fds_max.max(open_fds(pid));
        }
    }
    sim.set_faults(Faults::default());
    if let Some(mut o) = open.take() {
        o.end = Instant::now();
        outages.push(o);
    }
    // Let every reader recover from the last fault before stopping the clients (bounded).
    let all_recovered = || {
        clients.iter().all(|c| {
            let log = c.log.lock().unwrap();
            outages
                .iter()
                .filter(|o| o.affects(c.n))
                .all(|o| recovered_at(&log, o).is_some())
        })
    };
    let wait_end = Instant::now() + RECOVERY_BOUND + Duration::from_secs(4);
    while !all_recovered() && Instant::now() < wait_end {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (rss_end, fds_end) = (rss_kib(pid), open_fds(pid));

    // Every 6F00 and every "card removed" must fall inside an outage window of its card: from
    // the fault's start until that reader's first good answer afterwards.
    let mut answers = 0u64;
    let (mut stray_6f00, mut stray_removed, mut inside_6f00, mut inside_removed) = (0, 0, 0, 0);
    let mut not_recovered = Vec::new();
    // per outage: slowest recovery over the readers it affected
    let mut recovery: Vec<Option<Duration>> = vec![Some(Duration::ZERO); outages.len()];
    // per outage: whether any reader's recovery counted for it (not overtaken by a later one)
    let mut judged = vec![false; outages.len()];
    for c in &clients {
        let log = c.log.lock().unwrap();
        answers += log.len() as u64;
        let mut windows = Vec::new();
        for (i, o) in outages.iter().enumerate().filter(|(_, o)| o.affects(c.n)) {
            match recovered_at(&log, o) {
                Some(t) => {
                    let took = t - o.start;
                    // A reader a later fault hit before it recovered (card 16, muted right
                    // after the junk) is judged by that fault's recovery.
                    let overtaken = outages.iter().any(|p| {
                        !std::ptr::eq(p, o) && p.affects(c.n) && p.start > o.start && p.start <= t
                    });
                    if let Some(r) = recovery[i].as_mut().filter(|_| !overtaken) {
                        *r = (*r).max(took);
                        judged[i] = true;
                    }
                    windows.push((o.start, t));
                }
                None => {
                    recovery[i] = None;
                    not_recovered.push(format!("card {} after {} #{i}", c.n, o.what));
                    windows.push((o.start, Instant::now()));
                }
            }
        }
        let inside = |t: &Instant| windows.iter().any(|(a, b)| a <= t && t <= b);
        for (t, seen) in log.iter() {
            match seen {
                Seen::ErrorStatus if inside(t) => inside_6f00 += 1,
                Seen::ErrorStatus => {
                    stray_6f00 += 1;
                    eprintln!(
                        "card {}: 6F00 outside any outage, {:?} into the run",
                        c.n,
                        t.saturating_duration_since(t0)
                    );
                }
                Seen::PcscError if inside(t) => inside_removed += 1,
                Seen::PcscError => {
                    stray_removed += 1;
                    eprintln!(
                        "card {}: card removed/reset outside any outage, {:?} into the run",
                        c.n,
                        t.saturating_duration_since(t0)
                    );
                }
                Seen::Card | Seen::Wrong => {}
            }
        }
    }
    let per_reader: Vec<u64> = clients
        .iter()
        .map(|c| c.sequences.load(Ordering::Relaxed))
        .collect();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "soak {secs} s, {READERS} readers: {} exchanges, {answers} answers seen, {} sequences \
         (per reader {}..{}), {} reconnects; 6F00: {inside_6f00} inside outages, {stray_6f00} \
         outside; card removed/reset: {inside_removed} inside outages, {stray_removed} outside; \
         {} unexpected, {} misrouted, {} over the bound (slowest {} ms)",
        c(&counts.exchanges),
        c(&counts.sequences),
        per_reader.iter().min().unwrap(),
        per_reader.iter().max().unwrap(),
        c(&counts.reconnects),
        c(&counts.unexpected),
        c(&counts.misrouted),
        c(&counts.over_bound),
        c(&counts.slowest_ms),
    );
    for ((o, r), j) in outages.iter().zip(&recovery).zip(&judged) {
        eprintln!(
            "  {} at {:.1} s: {}",
            o.what,
            o.start.saturating_duration_since(t0).as_secs_f64(),
            match r {
                None => "some reader never recovered".to_string(),
                Some(_) if !j => "its readers were hit by a later fault first".to_string(),
                Some(d) => format!("every reader recovered within {} ms", d.as_millis()),
            }
        );
    }
    eprintln!(
        "  simpool RSS {rss_start} KiB at start, {rss_max} KiB max, {rss_end} KiB at end; \
         open fds {fds_start} at start, {fds_max} max, {fds_end} at end"
    );

    assert!(serve.is_running(), "simpool keeps running");
    assert_eq!(
        c(&counts.misrouted),
        0,
        "replies delivered to the wrong card"
    );
    assert_eq!(
        c(&counts.unexpected),
        0,
        "answers neither the card's nor 6F00"
    );
    assert_eq!(stray_6f00, 0, "6F00 answers outside a pool outage");
    assert_eq!(
        stray_removed, 0,
        "cards shown removed outside a pool outage"
    );
    assert_eq!(c(&counts.over_bound), 0, "PC/SC calls over the bound");
    assert!(
        not_recovered.is_empty(),
        "never recovered: {not_recovered:?}"
    );
    let restarts = outages.iter().filter(|o| o.what == "pool restart").count();
    assert!(restarts >= 1 || secs < 4, "the run drove a pool restart");
    for (o, r) in outages.iter().zip(&recovery) {
        let r = r.expect("checked above");
        assert!(r <= RECOVERY_BOUND, "{}: recovery took {r:?}", o.what);
    }
    // Every reader got work done: 5 full sequences per second of the run (~35 measured).
    assert!(
        per_reader.iter().all(|&n| n >= 5 * secs),
        "sequences per reader: {per_reader:?}"
    );
    assert!(
        rss_end <= rss_start + RSS_GROWTH_KIB,
        "memory grew from {rss_start} to {rss_end} KiB"
    );
    assert!(
        fds_end <= fds_start,
        "open fds went from {fds_start} to {fds_end}"
    );
    // every reader shows its card again once the faults stop
    for n in &names {
        assert!(
            stack::wait_card(&ctx, n, true, Duration::from_secs(20)),
            "{n:?} did not come back"
        );
    }
}
