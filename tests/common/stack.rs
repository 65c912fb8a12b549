//! The real PC/SC stack for end-to-end tests: a private pcscd (driver/pcscd-private) with vpcd
//! readers (16 shared by the tests of one test binary, or one of a test's own), `simpool serve`
//! subprocesses, and PC/SC helpers.

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, Scope, State};

/// A private pcscd (driver/pcscd-private) serving only vpcd readers, started by this process:
/// it dies with the process however that ends (see `super::proc`), and stops when dropped.
pub struct Pcscd {
    pub dir: PathBuf,
    pub base_port: u16,
    /// `pcscd-private start --foreground`, pcscd's parent; pcscd dies with it. Its stdout is
    /// kept open: a write to a closed pipe would kill it.
    script: Mutex<(Child, Option<ChildStdout>)>,
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
    /// Starts a private pcscd with `readers` vpcd readers on ports `base_port`.. in `dir`.
    pub fn start(dir: PathBuf, readers: u16, base_port: u16) -> Pcscd {
        // A pcscd of an earlier test process may still hold the ports for a moment: retry for
        // a while before giving up.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut child = super::proc::spawn(
                Command::new(repo().join("driver/pcscd-private"))
                    .args([
                        "start",
                        "--foreground",
                        "--readers",
                        &readers.to_string(),
                        "--port",
                        &base_port.to_string(),
                        "--dir",
                    ])
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit()),
            )
            .expect("run driver/pcscd-private (see README: driver/pcscd-private install)");
            // It prints the export line once pcscd is ready, and ends if it cannot start it.
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            if out.read_line(&mut line).is_ok() && line.starts_with("export PCSCLITE_CSOCK_NAME=") {
                return Pcscd {
                    dir,
                    base_port,
                    script: Mutex::new((child, Some(out.into_inner()))),
                };
            }
            let _ = child.wait();
            assert!(
                std::time::Instant::now() < deadline,
                "private pcscd did not start"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The pid of pcscd itself (`DIR/pcscd.pid`).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pcscd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the script that is pcscd's parent.
    pub fn script_pid(&self) -> u32 {
        self.script.lock().unwrap().0.id()
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
        // SIGTERM: the script stops pcscd, then ends.
        let script = self.script.get_mut().unwrap_or_else(|e| e.into_inner());
        let pid = nix::unistd::Pid::from_raw(script.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = script.0.wait();
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
        let child = super::proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_simpool"))
                .arg("serve")
                .args(args)
                .args(control)
                .env("RUST_LOG", "info,simpool=debug")
                .stdout(Stdio::null())
                .stderr(file),
        )
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

/// `simpool serve` on `pool` with vpcd reader `reader` of the binary's private pcscd
/// (`base_port`) bound to `card`, plus `extra` arguments; waits until pcscd shows the card.
/// The daemon's log is `{log}-reader{reader}`.
pub fn serve_card(
    base_port: u16,
    pool: &str,
    reader: u16,
    card: u16,
    extra: &[&str],
    log: &str,
) -> (Serve, Context, CString) {
    let pcscd = pcscd(base_port);
    let mut args = vec![
        "--pool".to_string(),
        pool.to_string(),
        "--vpcd".into(),
        pcscd.vpcd_addr(reader),
        "--card".into(),
        card.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(&refs, &format!("{log}-reader{reader}"));
    let ctx = context();
    let name = pcscd.reader_name(reader);
    assert!(
        wait_card(&ctx, &name, true, Duration::from_secs(15)),
        "{name:?} shows no card; simpool log:\n{}",
        serve.log_text()
    );
    (serve, ctx, name)
}
