//! Helpers of the tests that watch the daemon (metrics, the front-panel page): tools installed
//! on demand, a stand-in for vpcd (the HTTP client, free ports and waits are in `common`).
#![allow(dead_code)]

pub mod webdriver;

use crate::common::proc::Tied;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs (Debian, as root) what these tests need if it is missing: `driver/ensure-watch-deps`.
pub fn ensure_tools() {
    let ok = Command::new(repo().join("driver/ensure-watch-deps"))
        .status_tied()
        .expect("run driver/ensure-watch-deps");
    assert!(
        ok.success(),
        "driver/ensure-watch-deps failed: chromium, chromium-driver and \
         python3-prometheus-client are needed (apt, as root)"
    );
}

/// Stands in for vpcd: listens on `count` consecutive loopback ports (one per reader) and keeps
/// the readers' connections, so the readers show their cards; the test talks vpcd's protocol
/// on them (2-byte length, then a control byte or a command).
pub struct FakeVpcd {
    pub first_port: u16,
    conns: Arc<Mutex<Vec<Option<TcpStream>>>>,
}

impl FakeVpcd {
    pub fn start(count: u16) -> FakeVpcd {
        let listeners = 'found: loop {
            let first = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = first.local_addr().unwrap().port();
            if p > u16::MAX - count {
                continue;
            }
            let mut ls = vec![first];
            for i in 1..count {
                match TcpListener::bind(("127.0.0.1", p + i)) {
                    Ok(l) => ls.push(l),
                    Err(_) => continue 'found,
                }
            }
            break ls;
        };
        let first_port = listeners[0].local_addr().unwrap().port();
        let conns = Arc::new(Mutex::new((0..count).map(|_| None).collect::<Vec<_>>()));
        for (i, l) in listeners.into_iter().enumerate() {
            let conns = conns.clone();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    s.set_nodelay(true).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    // vpcd's first presence poll (GET ATR): only then does the reader count
                    // its card as shown.
                    let mut c = VpcdConn(s);
                    c.send(&[0x04]);
                    c.recv();
                    conns.lock().unwrap()[i] = Some(c.0);
                }
            });
        }
        FakeVpcd { first_port, conns }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.first_port)
    }

    /// Reader `i`'s connection, once it has connected (bounded wait).
    pub fn reader(&self, i: usize, within: Duration) -> VpcdConn {
        let mut found = None;
        crate::common::wait_for(&format!("reader {i} to connect to vpcd"), within, || {
            found = self.conns.lock().unwrap()[i]
                .as_ref()
                .map(|s| s.try_clone().unwrap());
            found.is_some()
        });
        VpcdConn(found.unwrap())
    }
}

pub struct VpcdConn(pub TcpStream);

impl VpcdConn {
    fn send(&mut self, payload: &[u8]) {
        let mut f = (payload.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        self.0.write_all(&f).unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut len = [0u8; 2];
        self.0.read_exact(&mut len).expect("an answer from simpool");
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.0.read_exact(&mut buf).unwrap();
        buf
    }

    /// Power on (a card restart under the default reset policy), then the ATR.
    pub fn power_on(&mut self) -> Vec<u8> {
        self.send(&[0x01]);
        self.send(&[0x04]);
        self.recv()
    }

    /// One command; answers data ‖ SW.
    pub fn transmit(&mut self, cmd: &[u8]) -> Vec<u8> {
        self.send(cmd);
        self.recv()
    }
}

/// Where test artifacts go: `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
