//! simpool's GSMTAP as the real decoder sees it: Debian's tshark captures the datagrams on the
//! loopback interface while a pySim-style session runs (SELECT MF, DF.GSM, EF.IMSI with GET
//! RESPONSE, READ BINARY) and must show each command with its file id, data and status word,
//! nothing malformed. Needs tshark (`driver/ensure-build-deps` installs it) and root, to capture.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simpool::cards::{Front, Observer};
use simpool::gsmtap::{self, CardFilter, Tracer};
use simpool::pool::{Link, LinkOptions, Slot};
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

fn h(s: &str) -> Vec<u8> {
    common::hex(s)
}

/// A tshark capture of the UDP datagrams to one loopback port, plus a socket that receives
/// them (so the sender meets a listener, and the test knows when all have arrived).
struct Capture {
    child: Child,
    file: PathBuf,
    sink: UdpSocket,
}

impl Capture {
    fn start(name: &str) -> Capture {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sink.local_addr().unwrap().port();
        let file = std::env::temp_dir().join(format!(
            "simpool-gsmtap-{}-{name}.pcapng",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&file);
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f"])
            .arg(format!("udp and dst port {port} and dst host 127.0.0.1"))
            // Bounded even if the test dies before stopping it.
            .args(["-a", "duration:120", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tshark (driver/ensure-build-deps installs it)");
        // tshark says "Capture started" once dumpcap has the interface open with its filter.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Capture started") {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(said)) => panic!("tshark could not capture on lo (root needed):\n{said}"),
            Err(_) => panic!("tshark did not start capturing within 30 s"),
        }
        Capture { child, file, sink }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.sink.local_addr().unwrap()
    }

    /// Receives `count` datagrams, then checks that no more follow for a moment.
    fn receive(&self, count: usize) -> Vec<Vec<u8>> {
        self.sink
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < count {
            let (n, _) = self
                .sink
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{} of {count} datagrams, then {e}", got.len()));
            got.push(buf[..n].to_vec());
        }
        self.sink
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if let Ok((n, _)) = self.sink.recv_from(&mut buf) {
            panic!(
                "datagram beyond the {count} expected: {}",
                hex::encode_upper(&buf[..n])
            );
        }
        got
    }

    /// Stops the capture and decodes it: one row of fields per frame.
    fn decode(mut self) -> Decoded {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "tshark did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = self.addr().port();
        let decode_as = format!("udp.port=={port},gsmtap");
        let fields = [
            "frame.protocols",
            "gsm_sim.apdu.ins",
            "gsm_sim.file_id",
            "gsm_sim.apdu.data",
            "gsm_sim.apdu.sw",
            "_ws.malformed",
            "_ws.expert",
            "_ws.col.Info",
        ];
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(&self.file).args(["-d", &decode_as]);
        cmd.args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().expect("tshark -r");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Vec<String> = l.split('|').map(str::to_string).collect();
                Frame {
                    protocols: v[0].clone(),
                    ins: v[1].clone(),
                    file_id: v[2].clone(),
                    data: v[3].clone(),
                    sw: v[4].clone(),
                    malformed: v[5].clone(),
                    expert: v[6].clone(),
                    info: v[7].clone(),
                }
            })
            .collect();
        // The verbose text too: any "Malformed" or dissector exception anywhere fails.
        let verbose = Command::new("tshark")
            .arg("-r")
            .arg(&self.file)
            .args(["-d", &decode_as, "-V"])
            .output()
            .expect("tshark -V");
        let _ = std::fs::remove_file(&self.file);
        Decoded {
            frames: rows,
            verbose: String::from_utf8_lossy(&verbose.stdout).into_owned(),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Frame {
    protocols: String,
    ins: String,
    file_id: String,
    data: String,
    sw: String,
    malformed: String,
    expert: String,
    info: String,
}

struct Decoded {
    frames: Vec<Frame>,
    verbose: String,
}

/// One command of the session and what the card really answered.
struct Exchange {
    cmd: Vec<u8>,
    resp: Vec<u8>,
}

/// Checks tshark's view of each frame against the exchange (or ATR) that produced it.
fn check(decoded: &Decoded, atr: &[u8], exchanges: &[Exchange]) {
    assert!(
        !decoded.verbose.contains("Malformed") && !decoded.verbose.contains("Exception"),
        "tshark found malformed packets:\n{}",
        decoded.verbose
    );
    let frames = &decoded.frames;
    assert_eq!(frames.len(), 1 + exchanges.len(), "{frames:#?}");
    for f in frames {
        assert!(f.protocols.ends_with("udp:gsmtap:gsm_sim"), "{f:?}");
        assert_eq!((f.malformed.as_str(), f.expert.as_str()), ("", ""), "{f:?}");
    }
    // Wireshark 4.0 has no ATR view for GSMTAP SIM: it shows the ATR as a (bogus) APDU, whose
    // "SW" is the ATR's last two bytes. That proves the frame carried the ATR as its body.
    let n = atr.len();
    assert_eq!(
        frames[0].sw,
        format!("0x{:02x}{:02x}", atr[n - 2], atr[n - 1])
    );
    for (f, x) in frames[1..].iter().zip(exchanges) {
        let what = format!(
            "{} -> {}: {f:?}",
            hex::encode_upper(&x.cmd),
            hex::encode_upper(&x.resp)
        );
        assert_eq!(f.ins, format!("0x{:02x}", x.cmd[1]), "{what}");
        let r = x.resp.len();
        assert_eq!(
            f.sw,
            format!("0x{:02x}{:02x}", x.resp[r - 2], x.resp[r - 1]),
            "{what}"
        );
        match x.cmd[1] {
            0xA4 => {
                let fid = &x.cmd[5..7];
                assert_eq!(f.file_id, format!("0x{}", hex::encode(fid)), "{what}");
                assert!(f.info.contains("SELECT"), "{what}");
            }
            0xC0 | 0xB0 => {
                assert_eq!(f.data, hex::encode(&x.resp[..r - 2]), "{what}");
                let name = if x.cmd[1] == 0xC0 {
                    "GET RESPONSE"
                } else {
                    "READ BINARY"
                };
                assert!(f.info.contains(name), "{what}");
            }
            _ => {}
        }
    }
}

/// pySim-read's opening on a GSM SIM, GET RESPONSE lengths taken from the card's 9Fxx.
fn pysim_session(mut transmit: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<Exchange> {
    let mut done = Vec::new();
    let mut run = |cmd: Vec<u8>| -> Vec<u8> {
        let resp = transmit(&cmd);
        done.push(Exchange {
            cmd,
            resp: resp.clone(),
        });
        resp
    };
    // pySim's UICC probe: a GSM SIM refuses CLA 00 right after the header.
    let probe = run(h("00A40004023F00"));
    assert_eq!(probe, h("6E00"), "the simulated GSM SIM refuses CLA 00");
    for fid in ["3F00", "7F20", "6F07"] {
        let sw = run(h(&format!("A0A4000002{fid}")));
        assert_eq!(sw[0], 0x9F, "SELECT {fid}: {}", hex::encode_upper(&sw));
        run(vec![0xA0, 0xC0, 0, 0, sw[1]]);
    }
    let imsi = run(h("A0B0000009"));
    assert_eq!(
        imsi.len(),
        11,
        "READ BINARY EF.IMSI: {}",
        hex::encode_upper(&imsi)
    );
    done
}

#[test]
fn tshark_decodes_a_pysim_style_session_sent_by_the_tracer() {
    let capture = Capture::start("session");
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let tracer = Tracer::new(capture.addr(), CardFilter::all()).unwrap();
    let counters = tracer.counters();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let link = rt
        .block_on(Link::connect(
            &sim.addr().to_string(),
            LinkOptions::default(),
        ))
        .unwrap();
    let card = link.card(Slot::from_card(18).unwrap());
    let atr = rt.block_on(card.start()).unwrap();
    tracer.atr(18, &atr);
    // Each command through the pool, then traced, as the exchange path does.
    let exchanges = pysim_session(|cmd| {
        let resp = rt
            .block_on(card.transmit(cmd, Duration::from_secs(2)))
            .unwrap();
        tracer.exchange(18, Front::Api, cmd, &resp);
        resp
    });
    let got = capture.receive(1 + exchanges.len());
    assert_eq!((counters.sent(), counters.dropped()), (got.len() as u64, 0));
    assert_eq!(got[0][12], gsmtap::SUB_ATR);
    check(&capture.decode(), &atr, &exchanges);
}
