//! What the history costs (`cargo bench --bench history`): a plain program printing figures,
//! like the other benches.
//!
//! 1. The caller's share: one `lease_began` + `lease_ended` pair, and one `event`, while the
//!    writer keeps up (the record is queued), and while it is stuck (the record is dropped).
//!    This is all a lease's end will cost the daemon.
//! 2. Rows written per second by the writer thread (each lease is two rows: its open row and
//!    its end), with batches of 1, 64 and 512 records per transaction, into a new file.
//! 3. On a history of many leases: opening it (the integrity check is most of it) and the
//!    queries `simpool history` makes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use simpool::history::{
    Counters, EndReason, Event, EventKind, History, HolderKind, LeaseBegan, LeaseEnded, Options,
    Query, Timestamp,
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "simpool-bench-history-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn began(i: u64) -> LeaseBegan {
    let card = (i % 256 + 1) as u16;
    LeaseBegan {
        card,
        iccid: Some(format!("8949{card:016}")),
        imsi: Some(format!("00101{card:010}")),
        holder_kind: HolderKind::Reader,
        front_end: format!("reader {}", i % 16),
        user: Some(["alice", "bob", "ci"][(i % 3) as usize].into()),
        reservation: None,
        note: None,
        start: Timestamp::now(),
    }
}

fn ended() -> LeaseEnded {
    LeaseEnded::now(
        EndReason::Released,
        Counters {
            exchanges: 120,
            errors: 0,
            authentications: 4,
            pin_failures: 0,
        },
    )
}

fn ns(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

/// The caller's cost of a lease (began + ended) and of an event, queued and dropped.
fn caller_cost(quick: bool) {
    let d = dir("caller");
    let mut opts = Options::new(d.join("h.db"));
    opts.queue = 4096;
    let h = History::open(opts).unwrap();
    let bursts = if quick { 20 } else { 400 };
    let per_burst = 1000u64; // pairs: 2000 records, within the queue of 4096
    let (mut lease_t, mut event_t) = (Duration::ZERO, Duration::ZERO);
    for b in 0..bursts {
        let ids: Vec<LeaseBegan> = (0..per_burst).map(|i| began(b * per_burst + i)).collect();
        let t0 = Instant::now();
        for l in ids {
            let o = h.lease_began(l);
            h.lease_ended(o, ended());
        }
        lease_t += t0.elapsed();
        h.flush_blocking();
        let t0 = Instant::now();
        for i in 0..per_burst {
            h.event(Event::now((i % 256 + 1) as u16, EventKind::Inserted));
        }
        event_t += t0.elapsed();
        h.flush_blocking();
    }
    let s = h.stats();
    assert_eq!(s.dropped + s.failed, 0, "{s:?}");
    let n = bursts * per_burst;
    println!(
        "history, caller's cost, queued:  lease (began + ended) {:>6.0} ns, event {:>6.0} ns",
        ns(lease_t, n),
        ns(event_t, n)
    );
    // The writer stuck (its store held): every call past the queue is dropped and counted.
    let n = if quick { 20_000u64 } else { 1_000_000 };
    let (lease_t, event_t) = h.with_store(|_| {
        for i in 0..5000 {
            h.event(Event::now((i % 256 + 1) as u16, EventKind::Inserted));
        }
        let ls: Vec<LeaseBegan> = (0..n).map(began).collect();
        let t0 = Instant::now();
        for l in ls {
            let o = h.lease_began(l);
            h.lease_ended(o, ended());
        }
        let lease_t = t0.elapsed();
        let t0 = Instant::now();
        for i in 0..n {
            h.event(Event::now((i % 256 + 1) as u16, EventKind::Inserted));
        }
        (lease_t, t0.elapsed())
    });
    assert!(h.stats().dropped >= 3 * n);
    println!(
        "history, caller's cost, dropped: lease (began + ended) {:>6.0} ns, event {:>6.0} ns",
        ns(lease_t, n),
        ns(event_t, n)
    );
    h.close_blocking();
    drop(h);
    let _ = std::fs::remove_dir_all(&d);
}

/// Rows per second the writer commits, by batch size.
fn write_rate(quick: bool) {
    let leases = if quick { 2_000u64 } else { 50_000 };
    let mut rates = Vec::new();
    for batch in [1usize, 64, 512] {
        let d = dir(&format!("rate-{batch}"));
        let mut opts = Options::new(d.join("h.db"));
        opts.batch = batch;
        opts.queue = 2 * leases as usize + 16;
        let h = History::open(opts).unwrap();
        let n = leases;
        let ls: Vec<LeaseBegan> = (0..n).map(began).collect();
        let t0 = Instant::now();
        for l in ls {
            let o = h.lease_began(l);
            h.lease_ended(o, ended());
        }
        h.flush_blocking();
        let took = t0.elapsed();
        let s = h.stats();
        assert_eq!((s.written, s.dropped, s.failed), (2 * n, 0, 0), "{s:?}");
        let rate = s.written as f64 / took.as_secs_f64();
        println!(
            "history, writer: {rate:>9.0} rows/s ({:>7.0} leases/s) in batches of {batch:>3} ({} transactions)",
            rate / 2.0,
            s.batches
        );
        rates.push(rate);
        h.close_blocking();
        drop(h);
        let _ = std::fs::remove_dir_all(&d);
    }
    println!(
        "history, writer: batches of 512 write {:.0}× the rows of batches of 1",
        rates[2] / rates[0]
    );
}

/// Opening and querying a large history.
fn large_history(quick: bool) {
    let leases = if quick { 10_000u64 } else { 500_000 };
    let d = dir("large");
    let path = d.join("h.db");
    {
        let mut opts = Options::new(&path);
        opts.queue = 10_000;
        let h = History::open(opts).unwrap();
        for i in 0..leases {
            let o = h.lease_began(began(i));
            while !h.lease_ended(o.clone(), ended()) {
                h.flush_blocking();
            }
        }
        h.close_blocking();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let t0 = Instant::now();
    let h = History::open(Options::new(&path)).unwrap();
    let open = t0.elapsed();
    println!(
        "history, {leases} leases ({:.1} MiB): open (integrity check included) {:>7.1} ms",
        size as f64 / (1 << 20) as f64,
        open.as_secs_f64() * 1e3
    );
    let queries: [(&str, Query); 4] = [
        ("newest 100", Query::default()),
        (
            "--card 18",
            Query {
                card: Some(18),
                ..Query::default()
            },
        ),
        (
            "--user bob --limit 1000",
            Query {
                user: Some("bob".into()),
                limit: Some(1000),
                ..Query::default()
            },
        ),
        (
            "--since 1h",
            Query {
                since: Some("1h".parse().unwrap()),
                ..Query::default()
            },
        ),
    ];
    for (name, q) in queries {
        let reps = if quick { 5 } else { 50 };
        let t0 = Instant::now();
        let mut rows = 0;
        for _ in 0..reps {
            rows = h
                .with_store(|s| s.leases(&q, Timestamp::now()))
                .unwrap()
                .len();
        }
        println!(
            "history, query {name:<24} {rows:>5} rows {:>8.2} ms",
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
    }
    h.close_blocking();
    drop(h);
    let _ = std::fs::remove_dir_all(&d);
}

fn main() {
    // `driver/test` only checks that the bench runs: a second or so.
    let quick = std::env::var_os("SIMPOOL_BENCH_QUICK").is_some();
    caller_cost(quick);
    write_rate(quick);
    large_history(quick);
}
