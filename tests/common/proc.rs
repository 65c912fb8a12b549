//! Helper processes that die with the test process however it ends — also on SIGKILL (a CI
//! time-out), when no destructor runs.
//!
//! - A helper gets `PR_SET_PDEATHSIG` = SIGKILL. The kernel sends it when the *thread* that
//!   forked the helper ends, not the process: a helper spawned from a test's own thread would
//!   be killed as soon as that test returned, even if another test still used it. So
//!   [`spawn`] forks from one thread that lives as long as the process; [`output`] and
//!   [`status`] fork from a thread that waits for the helper, and so outlives it.
//! - A helper's own children (a shell's background jobs, the browser chromedriver starts,
//!   tshark's dumpcap) are not covered by their parent's death signal. Such trees run in a PID
//!   namespace of their own ([`OWN_PIDS`], [`tree`]): when its first process dies the kernel
//!   kills every process in it, and that first process dies with `unshare`, which is a helper.
//! - The private pcscd (`driver/pcscd-private start --foreground`) passes a death signal on to
//!   pcscd itself: see `stack::Pcscd`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// `unshare` options for a PID namespace whose processes all die with the `unshare` process
/// (needs root, as the tests that use it do). Add `-n` for a network namespace too.
pub const OWN_PIDS: [&str; 4] = ["--pid", "--fork", "--kill-child", "--mount-proc"];

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// The thread that forks every [`spawn`]ed helper; it never ends before the process.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("helper-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(tie(&mut cmd).spawn());
                }
                // The senders live in a static: this is never reached while the process runs.
                loop {
                    std::thread::park();
                }
            })
            .expect("start the helper-spawner thread");
        Mutex::new(tx)
    })
}

/// Makes `cmd`'s process get SIGKILL when the thread that forks it ends (or the whole process).
fn tie(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only makes two async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            // The parent may have died between fork and prctl: then no signal will come.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::other("the test process is gone"));
            }
            Ok(())
        })
    }
}

/// Starts `cmd` as a helper that dies with the test process. `cmd` is taken (left empty).
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let cmd = std::mem::replace(cmd, Command::new("/nonexistent"));
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("the helper-spawner thread runs");
    rx.recv().expect("the helper-spawner thread answers")
}

/// `cmd.output()`, the process dying with the test process.
pub fn output(cmd: &mut Command) -> io::Result<Output> {
    let mut cmd = std::mem::replace(cmd, Command::new("/nonexistent"));
    std::thread::scope(|s| s.spawn(move || tie(&mut cmd).output()).join())
        .expect("the thread running a helper")
}

/// `cmd.status()`, the process dying with the test process.
pub fn status(cmd: &mut Command) -> io::Result<ExitStatus> {
    let mut cmd = std::mem::replace(cmd, Command::new("/nonexistent"));
    std::thread::scope(|s| s.spawn(move || tie(&mut cmd).status()).join())
        .expect("the thread running a helper")
}

/// `program` in a PID namespace of its own ([`OWN_PIDS`]): everything it starts dies with it,
/// and it dies with the `unshare` process the returned command runs (spawn that with
/// [`spawn`]). Signals meant for `program` go to [`tree_main`].
pub fn tree(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("unshare");
    c.args(OWN_PIDS).arg("--").arg(program);
    c
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The direct children of process `pid` (from `/proc`: not every kernel has
/// `/proc/PID/task/TID/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// Process `pid` and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let c = children(all[i]);
        all.extend(c);
        i += 1;
    }
    all
}

/// The program of a [`tree`]: the one child of its `unshare` (waits, bounded, for the fork).
pub fn tree_main(unshare: &Child) -> Option<u32> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(&p) = children(unshare.id()).first() {
            return Some(p);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether process `pid` still runs (a zombie, dead but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// [`spawn`], [`output`] and [`status`] as methods, for `Command` chains: `.spawn_tied()`
/// where `.spawn()` would be.
pub trait Tied {
    fn spawn_tied(&mut self) -> io::Result<Child>;
    fn output_tied(&mut self) -> io::Result<Output>;
    fn status_tied(&mut self) -> io::Result<ExitStatus>;
}

impl Tied for Command {
    fn spawn_tied(&mut self) -> io::Result<Child> {
        spawn(self)
    }
    fn output_tied(&mut self) -> io::Result<Output> {
        output(self)
    }
    fn status_tied(&mut self) -> io::Result<ExitStatus> {
        status(self)
    }
}
