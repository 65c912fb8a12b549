//! The keeper of an exec that dies without cleaning up (SIGKILL, SIGHUP, a crash): a small
//! process of its own (`simpool exec-guard`, hidden) that exec starts first and tells, over a
//! pipe, each reader it took (with what the reader was bound to before) and each run's
//! process group. When the pipe closes without exec's "done", exec is gone: the guard kills
//! the runs' process groups and puts the readers back, through the same control API.
//!
//! It closes what the binding seam of [`super::hold`] leaves open until reservations come: a
//! killed exec no longer leaves readers bound forever. With reservations the daemon frees the
//! cards by itself (they expire), but the runs' programs, in process groups of their own, would
//! still live on: killing those stays the guard's job.
//!
//! The lines on the pipe: `control ADDR`, `token TOKEN` (only with a token), `socket PATH`
//! (only with the daemon's Unix socket), `reader N BINDING-JSON`, `group PGID`, `ended PGID`,
//! `done`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use hyper::Method;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::bridge::{Binding, ReaderRow};
use crate::control::client::Control;

/// exec's end of the pipe.
pub struct Guard {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Guard {
    /// Starts `cmd` (the `simpool exec-guard` command) and tells it the daemon's address.
    pub fn start(mut cmd: Command, control: &Control) -> std::io::Result<Guard> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // A group of its own: the terminal's Ctrl-C, meant for exec, does not reach it.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        let g = Guard {
            pipe: Mutex::new(pipe),
            child: Mutex::new(child),
        };
        g.say(&format!("control {}", control.addr));
        if let Some(t) = &control.token {
            g.say(&format!("token {t}"));
        }
        if let Some(p) = &control.socket {
            g.say(&format!("socket {}", p.display()));
        }
        Ok(g)
    }

    fn say(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipe.as_mut() {
            if let Err(e) = writeln!(p, "{line}").and_then(|()| p.flush()) {
                log::warn!(
                    "the exec guard went away ({e}): a killed exec would leave its readers bound"
                );
                *pipe = None;
            }
        }
    }

    /// exec took reader `n`, which was bound to `before`.
    pub fn reader(&self, n: u16, before: &Option<Binding>) {
        let b = serde_json::to_string(before).unwrap_or_else(|_| "null".into());
        self.say(&format!("reader {n} {b}"));
    }

    /// A run's process group started.
    pub fn group(&self, pgid: i32) {
        self.say(&format!("group {pgid}"));
    }

    /// A run's process group is gone.
    pub fn ended(&self, pgid: i32) {
        self.say(&format!("ended {pgid}"));
    }

    /// exec cleaned up itself: the guard ends without doing anything.
    pub fn done(&self) {
        self.say("done");
        self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.wait();
    }
}

/// What the guard knows.
#[derive(Debug, Default, PartialEq)]
pub struct Watch {
    pub control: Option<String>,
    pub token: Option<String>,
    /// The daemon's Unix control socket, when exec used it.
    pub socket: Option<std::path::PathBuf>,
    pub readers: BTreeMap<u16, Option<Binding>>,
    pub groups: BTreeSet<i32>,
    pub done: bool,
}

impl Watch {
    /// Takes one line of the pipe; an unknown line is ignored (logged).
    pub fn line(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: &str| s.trim().parse::<i32>().ok();
        match word {
            "control" => self.control = Some(rest.to_string()),
            "token" => self.token = Some(rest.to_string()),
            "socket" => self.socket = Some(rest.into()),
            "reader" => {
                let (n, b) = rest.split_once(' ').unwrap_or((rest, "null"));
                match (n.parse::<u16>(), serde_json::from_str::<Option<Binding>>(b)) {
                    (Ok(n), Ok(b)) => {
                        self.readers.entry(n).or_insert(b);
                    }
                    _ => log::warn!("exec guard: bad line {line:?}"),
                }
            }
            "group" => {
                if let Some(g) = num(rest) {
                    self.groups.insert(g);
                }
            }
            "ended" => {
                if let Some(g) = num(rest) {
                    self.groups.remove(&g);
                }
            }
            "done" => self.done = true,
            _ => log::warn!("exec guard: bad line {line:?}"),
        }
    }
}

/// The guard process: reads the pipe until it closes; then, unless exec said "done", kills the
/// runs' groups and restores the readers. Answers whether it had to.
pub async fn run() -> bool {
    // exec's Ctrl-C is exec's: the guard only acts when the pipe closes.
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let w = tokio::task::spawn_blocking(|| {
        let mut w = Watch::default();
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            w.line(&l);
            if w.done {
                break;
            }
        }
        w
    })
    .await
    .unwrap_or_default();
    if w.done {
        return false;
    }
    for g in &w.groups {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    let Some(addr) = w.control.clone() else {
        return true;
    };
    let control = Control {
        addr,
        token: w.token.clone(),
        socket: w.socket.clone(),
    };
    for (n, before) in &w.readers {
        let path = format!("/api/v1/readers/{n}");
        let t = Duration::from_secs(15);
        let r: Result<ReaderRow, _> = match before {
            None => control.call(Method::DELETE, &path, None::<&()>, t).await,
            Some(b) => control.call(Method::PUT, &path, Some(b), t).await,
        };
        match r {
            Ok(_) => log::warn!("exec ended without cleaning up: reader {n} restored"),
            Err(e) => log::error!("exec ended without cleaning up: reader {n} not restored: {e}"),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::CardNo;

    #[test]
    fn the_guard_keeps_the_first_binding_seen_and_the_live_groups() {
        let mut w = Watch::default();
        for l in [
            "control 127.0.0.1:6680",
            "reader 2 null",
            "reader 3 {\"card\":30}",
            "reader 2 {\"card\":5}",
            "group 100",
            "group 200",
            "ended 100",
            "nonsense",
        ] {
            w.line(l);
        }
        assert_eq!(w.control.as_deref(), Some("127.0.0.1:6680"));
        assert_eq!(w.readers[&2], None, "the binding before exec took it");
        assert_eq!(w.readers[&3], Some(Binding::Card(CardNo::of(30))));
        assert_eq!(w.groups, BTreeSet::from([200]));
        assert!(!w.done);
        w.line("done");
        assert!(w.done);
    }
}
