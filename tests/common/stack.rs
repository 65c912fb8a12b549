//! The real PC/SC stack for end-to-end tests: a private pcscd (driver/pcscd-private) with vpcd
//! readers (16 shared by the tests of one test binary, or one of a test's own), `simpool serve`
//! subprocesses, and PC/SC helpers.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, Scope, State};

/// A private pcscd (driver/pcscd-private) serving only vpcd readers, started by this process.
pub struct Pcscd {
    pub dir: PathBuf,
    pub base_port: u16,
}

static PCSCD: OnceLock<Pcscd> = OnceLock::new();

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary's private pcscd with 16 readers, shared by its tests, started on first use; the
/// PC/SC client library of this process is pointed at it. `base_port` must differ between test
/// binaries, and the 16 ports must lie below Linux's ephemeral range (32768-60999): there, a
/// test's own listeners on port 0 and its client sockets may hold one of them, and vpcd cannot
/// bind it.
pub fn pcscd(base_port: u16) -> &'static Pcscd {
    PCSCD.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("simpool-test-{}-{base_port}", std::process::id()));
        let p = Pcscd::start(dir, 16, base_port);
        // The client library reads this once per process, before the first context.
        std::env::set_var("PCSCLITE_CSOCK_NAME", p.socket());
        p
    })
}

impl Pcscd {
    /// Starts a private pcscd with `readers` vpcd readers on ports `base_port`.. in `dir`; it
    /// stops when this value is dropped, or by a watchdog when the test process exits.
    pub fn start(dir: PathBuf, readers: u16, base_port: u16) -> Pcscd {
        // The previous run of this test binary may still be stopping its pcscd on the same
        // ports (its watchdog polls every 0.5 s): retry for a while before giving up.
        let start = || {
            Command::new(repo().join("driver/pcscd-private"))
                .args([
                    "start",
                    "--readers",
                    &readers.to_string(),
                    "--port",
                    &base_port.to_string(),
                    "--dir",
                ])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .expect("run driver/pcscd-private (see README: driver/pcscd-private install)")
                .success()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !start() {
            assert!(
                std::time::Instant::now() < deadline,
                "private pcscd did not start"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; exec {script} stop --dir {dir}",
            pid = std::process::id(),
            script = repo().join("driver/pcscd-private").display(),
            dir = dir.display()
        );
        // `setsid -f` forks the watchdog off and returns at once.
        Command::new("setsid")
            .args(["-f", "bash", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the pcscd watchdog");
        Pcscd { dir, base_port }
    }

    /// Its PC/SC socket: the value for `PCSCLITE_CSOCK_NAME`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/pcscd.comm")
    }

    /// PC/SC name of reader `i` (0..16): two readers per vpcd config line.
    pub fn reader_name(&self, i: u16) -> CString {
        CString::new(simpool::vpcd::reader_name(i)).unwrap()
    }

    pub fn vpcd_addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base_port + i)
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("driver/pcscd-private"))
            .args(["stop", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `simpool serve` subprocess, killed on drop.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
}

impl Serve {
    pub fn start(args: &[&str], log_name: &str) -> Serve {
        let log =
            std::env::temp_dir().join(format!("simpool-{}-{log_name}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        // Tests run daemons side by side: no control API unless the test asks for one.
        let control: &[&str] = if args.contains(&"--control") {
            &[]
        } else {
            &["--control", "off"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_simpool"))
            .arg("serve")
            .args(args)
            .args(control)
            .env("RUST_LOG", "info,simpool=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start simpool serve");
        Serve { child, log }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command through PC/SC, hex in (spaces allowed); answers data ‖ SW1 SW2. Panics on a
/// PC/SC error: see [`try_tx`] for tests that expect one.
pub fn tx(card: &pcsc::Card, cmd: &str) -> Vec<u8> {
    try_tx(card, cmd).unwrap_or_else(|e| panic!("transmit {cmd}: {e}"))
}

/// [`tx`], with the PC/SC error (card removed, reset, …) as the answer.
pub fn try_tx(card: &pcsc::Card, cmd: &str) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
    card.transmit(&super::hex(cmd), &mut buf)
        .map(|r| r.to_vec())
}

pub fn context() -> Context {
    Context::establish(Scope::User).expect("PC/SC context on the private pcscd")
}

/// Waits (event-driven, bounded) until `reader` shows a card (`present`) or none.
pub fn wait_card(ctx: &Context, reader: &CString, present: bool, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut rs = [ReaderState::new(reader.clone(), State::UNAWARE)];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match ctx.get_status_change(left, &mut rs) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => return false,
            Err(pcsc::Error::UnknownReader) => return false,
            Err(e) => panic!("get_status_change: {e}"),
        }
        let st = rs[0].event_state();
        let reached = if present {
            st.contains(State::PRESENT) && !st.contains(State::MUTE)
        } else {
            st.contains(State::EMPTY)
        };
        if reached {
            return true;
        }
        rs[0].sync_current_state();
        if Instant::now() >= end {
            return false;
        }
    }
}
