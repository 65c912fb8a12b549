//! What GSMTAP tracing costs per exchange (`cargo bench --bench gsmtap`): a plain program
//! printing figures, like the other benches.
//!
//! 1. Encoding one datagram (a 9-byte READ BINARY and a 256-byte one).
//! 2. The tracer's observer call (encode, queue, wake the sender thread): to a loopback
//!    listener that reads, to a port nobody listens on, to a listener that never reads.
//! 3. Exchanges per second on one simulated card through the daemon's exchange path
//!    (`Lease::transmit`, single-threaded runtime like the daemon), without and with the tracer
//!    as observer.

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use std::sync::Arc;

use simpool::cards::{Cards, Front, Holder, Observer};
use simpool::gsmtap::{encode_exchange, CardFilter, Tracer, MAX_DATAGRAM};
use simpool::pool::{Link, LinkOptions};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

const READ_IMSI: [u8; 5] = [0xA0, 0xB0, 0x00, 0x00, 0x09];
const IMSI: [u8; 11] = [
    0x08, 0x49, 0x06, 0x10, 0x89, 0x49, 0x10, 0x63, 0x51, 0x90, 0x00,
];

fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed() / n
}

fn ns(d: Duration) -> String {
    format!("{:>8.0} ns", d.as_secs_f64() * 1e9)
}

/// The observer call as the exchange path pays it (encode + queue), then the yield after which
/// the sending task does the `sendto` on the same thread; paced 50 us apart like the exchanges
/// of a busy reader.
async fn send_cost(what: &str, dest: SocketAddr) {
    let t = Tracer::new(dest, CardFilter::all()).unwrap();
    let n = 20_000u32;
    let (mut call, mut send) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t0 = Instant::now();
        t.exchange(18, Front::Vpcd, black_box(&READ_IMSI), black_box(&IMSI));
        let t1 = Instant::now();
        tokio::task::yield_now().await;
        call += t1 - t0;
        send += t1.elapsed();
        while t0.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
    }
    let c = t.counters();
    println!(
        "  {what:<31} observer call {}, then send {} (sent {}, dropped {})",
        ns(call / n),
        ns(send / n),
        c.sent(),
        c.dropped()
    );
}

/// Exchanges per second through the daemon's exchange path (`Lease::transmit`).
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
    // SIMPOOL_BENCH_QUICK: a short run that only shows the bench still builds and works.
    let quick = std::env::var_os("SIMPOOL_BENCH_QUICK").is_some();
    let calls = if quick { 20_000 } else { 2_000_000 };
    let mut buf = [0u8; MAX_DATAGRAM];
    let small = per_call(calls, || {
        black_box(encode_exchange(18, black_box(&READ_IMSI), black_box(&IMSI), &mut buf).unwrap());
    });
    let big_resp = [[0x55u8; 256].as_slice(), &[0x90, 0x00]].concat();
    let big = per_call(calls, || {
        black_box(
            encode_exchange(
                18,
                black_box(&[0xA0, 0xB0, 0, 0, 0]),
                black_box(&big_resp),
                &mut buf,
            )
            .unwrap(),
        );
    });
    println!("GSMTAP cost per exchange:");
    println!("  encode, READ BINARY 9 bytes   {}", ns(small));
    println!("  encode, READ BINARY 256 bytes {}", ns(big));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A listener that reads everything (a thread draining the socket).
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let reading = rx.local_addr().unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while rx.recv_from(&mut b).is_ok() {}
        });
        send_cost("to a reading listener", reading).await;
        let closed = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        send_cost("to a port nobody listens on", closed).await;
        let stuck = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_cost(
            "to a listener that never reads",
            stuck.local_addr().unwrap(),
        )
        .await;

        let sim = SimPool::start("127.0.0.1:0", CardsFile::filled(32), Faults::default())
            .await
            .unwrap();
        let link = Link::connect(&sim.addr().to_string(), LinkOptions::default())
            .await
            .unwrap();
        let tracer = Tracer::new(reading, CardFilter::all()).unwrap();
        let counters = tracer.counters();
        let off_cards = Cards::new(link.clone(), Vec::new());
        let on_cards = Cards::new(link.clone(), vec![Arc::new(tracer)]);
        let period = if quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        };
        // Alternate to spread the machine's noise over both.
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            off.push(exchanges_per_s(&off_cards, period).await);
            on.push(exchanges_per_s(&on_cards, period).await);
        }
        let off = off.iter().sum::<f64>() / off.len() as f64;
        let on = on.iter().sum::<f64>() / on.len() as f64;
        println!("STATUS on one card through Lease::transmit (simulator in-process, one thread):");
        println!("  tracing off {off:>8.0}/s ({:.1} us each)", 1e6 / off);
        println!(
            "  tracing on  {on:>8.0}/s ({:.1} us each), {:+.1}%",
            1e6 / on,
            (1e6 / on - 1e6 / off) / (1e6 / off) * 100.0
        );
        println!(
            "  datagrams sent {}, dropped {}",
            counters.sent(),
            counters.dropped()
        );
    });
}
