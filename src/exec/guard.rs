//! The keeper of an exec that dies without cleaning up (SIGKILL, SIGHUP, a crash): a small
//! process of its own (`simpool exec-guard`, hidden) that exec starts first and tells, over a
//! pipe, each run's process group. When the pipe closes without exec's "done", exec is gone:
//! the guard kills the runs' process groups.
//!
//! The cards and readers need no keeper: they are held by reservations that exec renews
//! ([`super::hold`]), so the daemon ends them by itself once exec stops renewing. The runs'
//! programs, in process groups of their own, would live on without the guard.
//!
//! The lines on the pipe: `group PGID`, `ended PGID`, `done`.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// exec's end of the pipe.
pub struct Guard {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Guard {
    /// Starts `cmd` (the `simpool exec-guard` command).
    pub fn start(mut cmd: Command) -> std::io::Result<Guard> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // A group of its own: the terminal's Ctrl-C, meant for exec, does not reach it.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Guard {
            pipe: Mutex::new(pipe),
            child: Mutex::new(child),
        })
    }

    fn say(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipe.as_mut() {
            if let Err(e) = writeln!(p, "{line}").and_then(|()| p.flush()) {
                log::warn!(
                    "the exec guard went away ({e}): a killed exec would leave its programs running"
                );
                *pipe = None;
            }
        }
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
    pub groups: BTreeSet<i32>,
    pub done: bool,
}

impl Watch {
    /// Takes one line of the pipe; an unknown line is ignored (logged).
    pub fn line(&mut self, line: &str) {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: &str| s.trim().parse::<i32>().ok();
        match (word, num(rest)) {
            ("group", Some(g)) => {
                self.groups.insert(g);
            }
            ("ended", Some(g)) => {
                self.groups.remove(&g);
            }
            ("done", _) => self.done = true,
            _ => log::warn!("exec guard: bad line {line:?}"),
        }
    }
}

/// The guard process: reads the pipe until it closes; then, unless exec said "done", kills the
/// runs' groups. Answers whether it had to.
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
    log::warn!(
        "exec ended without cleaning up: {} run(s) killed; its reservations expire",
        w.groups.len()
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_keeps_the_live_groups() {
        let mut w = Watch::default();
        for l in ["group 100", "group 200", "ended 100", "nonsense", "group x"] {
            w.line(l);
        }
        assert_eq!(w.groups, BTreeSet::from([200]));
        assert!(!w.done);
        w.line("done");
        assert!(w.done);
    }
}
