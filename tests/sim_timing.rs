//! The simulator at real byte timing (`--byte-time-us`, `[pool] byte_time_us`): each answer comes
//! after the wire time of every byte the card received and sent, as on the pool's 9600 baud
//! line; and a slow eUICC function spreads its answer over seconds with NULL bytes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simpool::pool::{Link, LinkOptions, Slot};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

/// READ RECORD of a 176-byte EF.SMS record on USIM card 4: header 5 + ACK 1 + 176 + SW 2 =
/// 184 bytes on the wire.
const SELECT_SMS: [&str; 3] = ["00A40004023F00", "00A40004027F10", "00A40004026F3C"];
const READ_SMS: &str = "00B20104B0";
const WIRE_BYTES: u32 = 184;

async fn timed_read(addr: &str) -> Duration {
    let link = Link::spawn(addr, LinkOptions::default());
    assert!(link.wait_up(Duration::from_secs(5)).await);
    let card = link.card(Slot::from_card(4).unwrap());
    card.start().await.unwrap();
    for s in SELECT_SMS {
        let r = card
            .transmit(&hex::decode(s).unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r[0], 0x61, "{s}");
    }
    let t = Instant::now();
    let r = card
        .transmit(&hex::decode(READ_SMS).unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!((r.len(), r[176], r[177]), (178, 0x90, 0x00));
    took
}

#[tokio::test]
async fn byte_time_from_the_cards_file_delays_answers_by_their_wire_time() {
    let mut cards = CardsFile::default_set();
    cards.pool.byte_time_us = 1040;
    let slow = SimPool::start("127.0.0.1:0", cards, Faults::default())
        .await
        .unwrap();
    let fast = SimPool::start("127.0.0.1:0", CardsFile::default_set(), Faults::default())
        .await
        .unwrap();
    let t_slow = timed_read(&slow.addr().to_string()).await;
    let t_fast = timed_read(&fast.addr().to_string()).await;
    let wire = Duration::from_micros(1040) * WIRE_BYTES;
    assert!(t_slow >= wire, "{t_slow:?} < {wire:?}");
    assert!(t_slow < wire + Duration::from_millis(300), "{t_slow:?}");
    assert!(t_fast < Duration::from_millis(50), "{t_fast:?}");
    eprintln!("READ RECORD 176 bytes: {t_slow:?} at 9600 baud, {t_fast:?} without byte time");
}

#[tokio::test]
async fn simpool_sim_byte_time_us_flag() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["sim", "--listen", "127.0.0.1:0", "--byte-time-us", "2000"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "simulated pool listening on ADDR" on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line.split("listening on ").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("sim address");
    let took = timed_read(&addr).await;
    let _ = child.kill();
    let _ = child.wait();
    let wire = Duration::from_micros(2000) * WIRE_BYTES;
    assert!(took >= wire, "{took:?} < {wire:?}");
    let bad = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["sim", "--listen", "127.0.0.1:0", "--byte-time-us", "200000"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
