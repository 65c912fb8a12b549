//! Round trip of one exchange through pcscd + vpcd + simpool + simulated pool (zero card latency),
//! beside the floor: the same pcscd + vpcd path with a minimal responder in simpool's place that
//! answers `90 00` at once. Each with and without TCP_QUICKACK on the vpcd socket.
//!
//! `cargo bench --bench vpcd` (needs pcscd and vsmartcard-vpcd: `driver/pcscd-private install`,
//! and root for the private pcscd's mount namespace).

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pcsc::{Context, Protocols, Scope, ShareMode};
use simpool::bridge::{Binding, ResetPolicy};
use simpool::config::{ReaderSpec, ServeConfig};
use simpool::vpcd::{Connection, Event};

const BASE: u16 = 36500;
const N: usize = 1000;

fn reader_name(i: u16) -> CString {
    CString::new(simpool::vpcd::reader_name(i)).unwrap()
}

/// A card that answers 90 00 to everything, as fast as a socket allows.
async fn floor_responder(port: u16, quickack: bool) {
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

fn measure(ctx: &Context, reader: &CString, cmd: &[u8]) -> (Duration, Duration, Duration) {
    let card = ctx
        .connect(reader, ShareMode::Shared, Protocols::ANY)
        .expect("connect");
    let mut buf = [0u8; 300];
    for _ in 0..50 {
        card.transmit(cmd, &mut buf).unwrap();
    }
    let mut t: Vec<Duration> = (0..N)
        .map(|_| {
            let t0 = Instant::now();
            card.transmit(cmd, &mut buf).unwrap();
            t0.elapsed()
        })
        .collect();
    t.sort();
    (t[N / 2], t[N * 99 / 100], t[N - 1])
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join("simpool-bench-vpcd");
    let script = repo.join("driver/pcscd-private");
    let out = Command::new(&script)
        .args([
            "start",
            "--readers",
            "4",
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

    let rt = tokio::runtime::Runtime::new().unwrap();
    let serve = |port: u16, quickack: bool| ServeConfig {
        pool: "sim".into(),
        cards: None,
        command_timeout: Duration::from_millis(1500),
        reply_timeout: Duration::from_millis(1000),
        keepalive: Duration::from_secs(5),
        reset: ResetPolicy::Restart,
        quickack,
        readers: vec![ReaderSpec {
            binding: Binding::Card(18),
            vpcd: format!("127.0.0.1:{port}"),
        }],
    };
    let _a = rt
        .block_on(simpool::serve::start(serve(BASE, true)))
        .unwrap();
    let _b = rt
        .block_on(simpool::serve::start(serve(BASE + 1, false)))
        .unwrap();
    rt.spawn(floor_responder(BASE + 2, true));
    rt.spawn(floor_responder(BASE + 3, false));

    let ctx = Context::establish(Scope::User).unwrap();
    let names: Vec<CString> = (0..4).map(reader_name).collect();
    simpool::client::wait_for_cards(&ctx, &names, Duration::from_secs(20)).unwrap();
    // STATUS of the MF: a real T=0 Out exchange on the simulated card (one pool round trip).
    let cmd = [0xA0, 0xF2, 0x00, 0x00, 0x16];
    let rows = [
        ("simpool + simulated pool, QUICKACK", 0),
        ("simpool + simulated pool, no QUICKACK", 1),
        ("floor (answers 9000), QUICKACK", 2),
        ("floor (answers 9000), no QUICKACK", 3),
    ];
    let mut med = [Duration::ZERO; 4];
    println!("round trip of one SCardTransmit, {N} exchanges each:");
    for (label, i) in rows {
        let (m, p99, max) = measure(&ctx, &names[i], &cmd);
        med[i] = m;
        println!(
            "  {label:<40} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
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
    let _ = Command::new(&script)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output();
}
