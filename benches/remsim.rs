//! Remote clients on simpool's osmo-remsim bank (`cargo bench --bench remsim`): a plain
//! program printing figures.
//!
//! `simpool serve` runs as a pure bank in its own process (so its RSS is its own), between a
//! scripted osmo-remsim-server and RSPRO clients of our own (tests/common/remsim.rs); the
//! simulated pool (zero latency, 256 cards) runs in this process on a thread of its own.
//!
//! 1. One client: STATUS round trips (client → bank → pool → card and back), p50/p99.
//! 2. 256 mapped slots, 256 clients connecting at once (connect → connectClientRes + setAtrReq:
//!    session set-up), their first exchange, then all exchanging STATUS at once for a fixed
//!    period: exchanges/s, p50/p99/max, and the daemon's RSS idle and at peak.
//!
//! `SIMPOOL_BENCH_QUICK=1` runs a short version (16 clients, 0.5 s; about two seconds) to keep
//! it building and running in `driver/test`.

#[path = "../tests/common/remsim.rs"]
mod remsim;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remsim::{bs, cs, map, Client, Server};
use simpool::remsim::rspro::ResultCode;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const STATUS: [u8; 5] = [0xA0, 0xF2, 0x00, 0x00, 0x16];
/// Slots the bank registers (all of them are mapped).
const SLOTS: u16 = 256;

fn quick() -> bool {
    std::env::var_os("SIMPOOL_BENCH_QUICK").is_some()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// VmRSS and VmHWM (peak) of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), *v.last().unwrap())
}

/// The simulated pool on a thread and runtime of its own; answers its address.
fn start_pool() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sim = SimPool::start("127.0.0.1:0", CardsFile::filled(256), Faults::default())
                .await
                .unwrap();
            tx.send(sim.addr()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let (clients, period, singles): (u16, Duration, usize) = if quick() {
        (16, Duration::from_millis(500), 200)
    } else {
        (SLOTS, Duration::from_secs(10), 2000)
    };
    let pool = start_pool();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server = Server::bind().await;
        let bank: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log =
            std::env::temp_dir().join(format!("simpool-remsim-bench-{}.log", std::process::id()));
        let daemon = Daemon(
            Command::new(env!("CARGO_BIN_EXE_simpool"))
                .args(["serve", "--pool", &pool.to_string(), "--control", "off"])
                .args(["--remsim", &server.addr().to_string(), "--bank-id", "1"])
                .args(["--remsim-listen", &bank.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("simpool serve"),
        );
        let pid = daemon.0.id();
        let (mut control, _, slots) = server.accept_bank().await;
        assert_eq!(slots, SLOTS);
        for k in 0..SLOTS {
            assert_eq!(map(&mut control, cs(k, 0), bs(1, k)).await, ResultCode::Ok);
        }
        let (idle_rss, _) = rss_kib(pid);

        // 1. One client.
        let (mut c, res, _) = Client::connect(bank, cs(0, 0), bs(1, 0)).await;
        assert_eq!(res, ResultCode::Ok);
        let mut lat = Vec::new();
        for _ in 0..singles {
            let t = Instant::now();
            let r = c.transmit(&STATUS).await;
            lat.push(t.elapsed());
            assert_eq!(r.len(), 0x16 + 2);
        }
        drop(c);
        let (p50, p99, max) = percentiles(lat);
        println!(
            "one client, {singles} STATUS: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
        // Let the bank release card 1 before its client slot connects again.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // 2. All clients at once.
        let barrier = Arc::new(tokio::sync::Barrier::new(usize::from(clients)));
        let mut tasks = Vec::new();
        for k in 0..clients {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let peer = remsim::Peer::connect(bank).await;
                let connect = t.elapsed();
                let t = Instant::now();
                let (mut c, res, atr) = Client::handshake(peer, cs(k, 0), bs(1, k)).await;
                assert_eq!(res, ResultCode::Ok, "slot {k}");
                assert!(atr.is_some());
                let setup = t.elapsed();
                let t = Instant::now();
                assert_eq!(c.transmit(&STATUS).await.len(), 0x16 + 2);
                let first = t.elapsed();
                barrier.wait().await;
                let start = Instant::now();
                let mut lat = Vec::with_capacity(20_000);
                while start.elapsed() < period {
                    let t = Instant::now();
                    let r = c.transmit(&STATUS).await;
                    lat.push(t.elapsed());
                    assert_eq!(r.len(), 0x16 + 2);
                }
                (connect, setup, first, lat, start.elapsed())
            }));
        }
        let mut connects = Vec::new();
        let mut setups = Vec::new();
        let mut firsts = Vec::new();
        let mut all = Vec::new();
        let mut per_client = Vec::new();
        let mut longest = Duration::ZERO;
        for t in tasks {
            let (c, s, f, lat, took) = t.await.unwrap();
            connects.push(c);
            setups.push(s);
            firsts.push(f);
            per_client.push(lat.len());
            all.extend(lat);
            longest = longest.max(took);
        }
        let (busy_rss, peak_rss) = rss_kib(pid);
        let total = all.len();
        let (sp50, sp99, smax) = percentiles(setups);
        let (fp50, fp99, _) = percentiles(firsts);
        let (p50, p99, max) = percentiles(all);
        let (cp50, cp99, cmax) = percentiles(connects);
        println!(
            "{clients} clients connecting at once: TCP connect p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms; session set-up (connectClientReq to setAtrReq) p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms",
            ms(cp50),
            ms(cp99),
            ms(cmax),
            ms(sp50),
            ms(sp99),
            ms(smax)
        );
        println!(
            "{clients} clients: first exchange of each session p50 {:.2} ms, p99 {:.2} ms",
            ms(fp50),
            ms(fp99)
        );
        println!(
            "{clients} clients exchanging at once for {:.0} s: {total} STATUS, {:.0} exchanges/s; \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; per client min {} max {}",
            longest.as_secs_f64(),
            total as f64 / longest.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(max),
            per_client.iter().min().unwrap(),
            per_client.iter().max().unwrap()
        );
        println!(
            "simpool serve (pure bank) RSS: {:.1} MiB idle with {SLOTS} maps, {:.1} MiB with \
             {clients} sessions, peak {:.1} MiB",
            idle_rss as f64 / 1024.0,
            busy_rss as f64 / 1024.0,
            peak_rss as f64 / 1024.0
        );
        let warnings = std::fs::read_to_string(&log).unwrap_or_default();
        if !warnings.trim().is_empty() {
            println!("daemon log ({}):\n{}", log.display(), warnings.trim_end());
        } else {
            let _ = std::fs::remove_file(&log);
        }
        drop(daemon);
    });
}
