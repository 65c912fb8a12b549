//! `simpool trace` as a user runs it: the binary listens on loopback, GSMTAP datagrams arrive
//! from simpool's tracer, and it prints one decoded line per datagram.

mod common;

use common::proc::Tied;
use common::{free_port, free_udp_port, h};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use simpool::cards::{Front, Observer};
use simpool::gsmtap::{CardFilter, Tracer};

struct Trace {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `simpool trace --listen ADDR` and waits until it says it listens.
fn trace(listen: &str) -> Trace {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["trace", "--listen", listen])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .expect("run simpool trace");
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let err = child.stderr.take().unwrap();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = ready_tx.send(l);
        }
    });
    let said = ready
        .recv_timeout(Duration::from_secs(10))
        .expect("simpool trace says where it listens");
    assert!(said.contains("listening for GSMTAP on"), "{said}");
    Trace { child, lines }
}

#[test]
fn prints_one_decoded_line_per_exchange_and_atr() {
    let port = free_udp_port();
    let t = trace(&format!("127.0.0.1:{port}"));
    // The tracer's sending task runs on this runtime's worker thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    let tracer = Tracer::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        CardFilter::all(),
    )
    .unwrap();
    tracer.atr(18, &h("3B9F96801F878031E073FE211B674A4C753034054BA9"));
    for (cmd, resp) in [
        ("A0A40000027F20", "9F17"),
        ("A0A40000026F07", "9F0F"),
        ("A0B0000009", "0849061089491063519000"),
        ("A088000010000102030405060708090A0B0C0D0E0F", "9F0C"),
        ("A0C000000C", "D1D2D3D4C1C2C3C4C5C6C7C89000"),
    ] {
        tracer.exchange(18, Front::Vpcd, &h(cmd), &h(resp));
    }
    tracer.exchange(256, Front::Api, &h("00B0000002"), &h("AABB9000"));
    let lines: Vec<String> = (0..7)
        .map(|_| {
            t.lines
                .recv_timeout(Duration::from_secs(5))
                .expect("a line")
        })
        .collect();
    let rest: Vec<&str> = lines.iter().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(
        rest,
        [
            "card  18 ATR                3B9F96801F878031E073FE211B674A4C753034054BA9",
            "card  18 SELECT             A0A4000002 7F20 DF.GSM      9F17 >7F20",
            "card  18 SELECT             A0A4000002 6F07 EF.IMSI     9F0F >6F07",
            "card  18 READ BINARY        A0B0000009 6F07 EF.IMSI     9000 <084906108949106351",
            "card  18 RUN GSM ALGORITHM  A088000010 -                9F0C >000102030405060708090A0B0C0D0E0F",
            "card  18 GET RESPONSE       A0C000000C -                9000 <D1D2D3D4C1C2C3C4C5C6C7C8",
            "card 256 READ BINARY        00B0000002 -                9000 <AABB",
        ]
    );
    // Each line starts with the UTC time of day, HH:MM:SS.uuuuuu.
    for l in &lines {
        let time = l.split(' ').next().unwrap();
        assert_eq!(time.len(), 15, "{l}");
        assert!(
            time.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.'),
            "{l}"
        );
    }
}

#[test]
fn a_port_in_use_is_an_error_not_a_hang() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args([
            "trace",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .stdin(Stdio::null())
        .output_tied()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    common::http::call(addr, "POST", path, Some(body))
}

/// The whole chain a user sets up: `simpool serve --gsmtap` (simulated pool, commands through
/// its control API) and `simpool trace` printing them.
#[test]
fn serve_gsmtap_into_simpool_trace() {
    let port = free_udp_port();
    let t = trace(&format!("127.0.0.1:{port}"));
    let control = format!("127.0.0.1:{}", free_port());
    // A reader with no card, on a vpcd port nobody serves: only the control API carries traffic.
    let vpcd = format!("127.0.0.1:{}", free_port());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["serve", "--pool", "sim", "--readers", "1", "--vpcd", &vpcd])
        .args([
            "--control",
            &control,
            "--gsmtap",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--gsmtap-cards", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tied()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&control).is_err() {
        assert!(std::time::Instant::now() < end, "control API never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"tpdus":["A0A40000023F00","A0A40000027F20","A0A40000026F07","A0B0000009"]}"#;
    let r3 = post(&control, "/api/v1/cards/3/apdu", body);
    let r2 = post(&control, "/api/v1/cards/2/apdu", body);
    assert!(r2.0 == 200 && r3.0 == 200, "{r2:?}\n{r3:?}");
    let lines: Vec<String> = (0..5)
        .map(|_| {
            t.lines
                .recv_timeout(Duration::from_secs(5))
                .expect("a line")
        })
        .collect();
    let _ = serve.kill();
    let _ = serve.wait();
    // Card 3 is not traced (--gsmtap-cards 2); card 2: its start, then the four commands.
    assert!(
        lines[0].contains(" card   2 ATR                3B"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(" card   2 SELECT             A0A4000002 3F00 MF          9F"),
        "{lines:#?}"
    );
    assert!(
        lines[2].contains(" card   2 SELECT             A0A4000002 7F20 DF.GSM      9F"),
        "{lines:#?}"
    );
    assert!(
        lines[3].contains(" card   2 SELECT             A0A4000002 6F07 EF.IMSI     9F"),
        "{lines:#?}"
    );
    assert!(
        lines[4].contains(" card   2 READ BINARY        A0B0000009 6F07 EF.IMSI     9000 <08"),
        "{lines:#?}"
    );
    assert!(
        t.lines.recv_timeout(Duration::from_millis(300)).is_err(),
        "more lines than exchanges"
    );
}
