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
    trace_with(listen, &[])
}

fn trace_with(listen: &str, extra: &[&str]) -> Trace {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["trace", "--listen", listen])
        .args(extra)
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

fn datagram(card: u16, cmd: &str, resp: &str) -> Vec<u8> {
    let mut b = [0u8; simpool::gsmtap::MAX_DATAGRAM];
    let n = simpool::gsmtap::encode_exchange(card, &h(cmd), &h(resp), &mut b).unwrap();
    b[..n].to_vec()
}

/// `trace --card LIST --pcap FILE`: only the listed cards are shown and captured; the capture
/// opens in tshark (while trace still runs: written record by record) as Ethernet, IPv4, UDP
/// to GSMTAP's port 4729 (trace listens on another) with good checksums, GSMTAP and GSM SIM,
/// each datagram byte for byte, and pySim-trace's display filter (`gsm_sim || iso7816.atr`)
/// takes every frame, all without "Decode As".
#[test]
fn card_filter_and_pcap_capture() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("simpool-trace-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sim.pcap");
    let t = trace_with(
        &format!("127.0.0.1:{port}"),
        &["--card", "18,20-21", "--pcap", file.to_str().unwrap()],
    );
    let mut atr = [0u8; simpool::gsmtap::MAX_DATAGRAM];
    let n = simpool::gsmtap::encode_atr(
        18,
        &h("3B9F95801FC38031E073FE21135786810286984418A8"),
        &mut atr,
    )
    .unwrap();
    let mut anonymous = datagram(18, "A0F2000016", "9000");
    anonymous[8..12].fill(0);
    let sent = [
        (true, atr[..n].to_vec()),
        (true, datagram(18, "A0A40000027F20", "9F17")),
        (false, datagram(256, "A0B0000009", "0849061089491063519000")),
        (false, anonymous),
        (
            true,
            datagram(
                20,
                "00880081221023553CBE9637A89D218AE64DAE47BF351055F328B43577B9B94A9FFAC354DFAFB3",
                "6135",
            ),
        ),
        (false, vec![0x02, 0x04, 0x01]),
        (true, datagram(21, "00C0000002", "AABB9000")),
    ];
    let from = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (_, d) in &sent {
        from.send_to(d, ("127.0.0.1", port)).unwrap();
    }
    let kept: Vec<&Vec<u8>> = sent.iter().filter(|(k, _)| *k).map(|(_, d)| d).collect();
    let lines: Vec<String> = (0..kept.len())
        .map(|_| {
            t.lines
                .recv_timeout(Duration::from_secs(5))
                .expect("a line")
        })
        .collect();
    assert!(
        t.lines.recv_timeout(Duration::from_millis(300)).is_err(),
        "a line for a card not asked for: {lines:#?}"
    );
    for (l, want) in lines.iter().zip([
        "card  18 ATR ",
        "card  18 SELECT ",
        "card  20 AUTHENTICATE ",
        "card  21 GET RESPONSE ",
    ]) {
        assert!(l.contains(want), "{l} (want {want})");
    }

    // The capture, read while trace still runs.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "frame.protocols",
            "-e",
            "udp.dstport",
            "-e",
            "udp.payload",
        ])
        .args([
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "_ws.malformed",
        ])
        .output()
        .expect("tshark (driver/ensure-build-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), kept.len(), "{text}");
    for (r, d) in rows.iter().zip(&kept) {
        assert_eq!(r[0], "eth:ethertype:ip:udp:gsmtap:gsm_sim", "{text}");
        // GSMTAP's port, so that Wireshark decodes it without "Decode As".
        assert_eq!(r[1], "4729", "{text}");
        assert_eq!(r[2], hex::encode(d), "{text}");
        // 1: checksum good.
        assert_eq!((r[3], r[4], r[5]), ("1", "1", ""), "{text}");
    }
    let encap = Command::new("capinfos")
        .arg("-E")
        .arg(&file)
        .output()
        .unwrap();
    let encap = String::from_utf8_lossy(&encap.stdout);
    assert!(encap.contains("Ethernet"), "{encap}");
    // pySim-trace (gsmtap-pyshark-pcap) reads the frames this display filter passes.
    let pysim = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-Y", "gsm_sim || iso7816.atr"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pysim.stdout).lines().count(),
        kept.len()
    );
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_card_list_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .args(["trace", "--listen", "127.0.0.1:0", "--card", "0,300"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--card 0,300") && err.contains("no card number"),
        "{err}"
    );
}

/// pySim-trace (osmocom pySim, `gsmtap-pyshark-pcap`) decodes the capture of `trace --pcap`:
/// a USIM session as pySim runs it (SELECT, GET RESPONSE, READ BINARY of EF.ICCID and EF.IMSI,
/// AUTHENTICATE). Needs pySim's source in `SIMPOOL_PYSIM`, as `driver/pysim-build` installs it
/// (its venv, with pyshark, beside the source: the same Python `tests/pysim.rs` runs); skipped
/// loudly without it.
#[test]
fn pysim_trace_opens_the_capture() {
    let Some(pysim) = std::env::var_os("SIMPOOL_PYSIM") else {
        eprintln!(
            "\n*** SKIPPED pySim-trace on trace --pcap: SIMPOOL_PYSIM (pySim's source) is not set ***\n"
        );
        return;
    };
    let python = std::path::Path::new(&pysim).join("../../venv/bin/python");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("simpool-trace-pysim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("usim.pcap");
    let t = trace_with(
        &format!("127.0.0.1:{port}"),
        &["--pcap", file.to_str().unwrap()],
    );
    // Card 20 of the simulated pool, as `simpool apdu --pool sim --card 20` answers.
    let session = [
        ("00A40004023F00", "6122"),
        (
            "00C0000022",
            "62208202782183023F00A5038001718A01058B032F0601C6099001406106",
        ),
        ("00A40004022FE2", "611E"),
        (
            "00C000001E",
            "621C8202412183022FE2A5038001718A01058B032F06018002000A88009000",
        ),
        ("00B000000A", "989444000000000020309000"),
        ("00A4040410A0000000871002FFFFFFFF8907090000", "6134"),
        (
            "00C0000034",
            "62328202782183027FF08410A0000000871002FFFFFFFF8907090000A5038001718A01058B036F0601C60990014083010183010A9000",
        ),
        ("00A40004026F07", "611E"),
        (
            "00C000001E",
            "621C8202412183026F07A5038001718A01058B036F06048002000988083800009000",
        ),
        ("00B0000009", "0809101000000000029000"),
        (
            "00880081221023553CBE9637A89D218AE64DAE47BF351055F328B43577B9B94A9FFAC354DFAFB3",
            "6135",
        ),
        (
            "00C0000035",
            "DB08A54211D5E3BA50BF10B40BA9A3C58B2A05BBF0D987B21BF8CB10F769BCD751044604127672711C6D344108EAE4BE823AF9A08B9000",
        ),
    ];
    let from = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut atr = [0u8; simpool::gsmtap::MAX_DATAGRAM];
    let n = simpool::gsmtap::encode_atr(20, &h("3B8B801FC773696D706F6F6C5553494DBA"), &mut atr)
        .unwrap();
    from.send_to(&atr[..n], ("127.0.0.1", port)).unwrap();
    for (cmd, resp) in session {
        from.send_to(&datagram(20, cmd, resp), ("127.0.0.1", port))
            .unwrap();
    }
    for _ in 0..=session.len() {
        t.lines
            .recv_timeout(Duration::from_secs(5))
            .expect("a line");
    }
    let out = Command::new(&python)
        .arg(std::path::Path::new(&pysim).join("pySim-trace.py"))
        .args(["gsmtap-pyshark-pcap", "-f"])
        .arg(&file)
        .current_dir(&pysim)
        .env("PYSIM_INTEGRATION_TEST", "1")
        .env("ANSI_COLORS_DISABLED", "1")
        .output()
        .expect("run pySim-trace");
    let text = String::from_utf8_lossy(&out.stdout);
    let what = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}");
    assert!(
        text.contains(r#"{"iccid": "89494400000000000203"}"#),
        "{what}"
    );
    assert!(text.contains(r#"{"imsi": "001010000000020"}"#), "{what}");
    assert!(text.contains(r#""res": "a54211d5e3ba50bf""#), "{what}");
    assert!(text.contains("APDUs parsed"), "{what}");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
