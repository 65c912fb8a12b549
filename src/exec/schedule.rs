//! Which card runs on which reader, the progress counts and the exit status of `simpool exec`:
//! a state machine without I/O or clocks. The driver asks [`Schedule::start_next`] for work whenever
//! a run ends, reports each end, and prints what [`Schedule::progress`] says.
//!
//! A run's fault is judged by harm: a card that is refused, does not show or whose program
//! fails costs that card ([`Schedule::finished`]); a reader that cannot be used (pcscd does not
//! list it, the daemon stopped it) costs the reader, and its card goes back to the queue for
//! another reader ([`Schedule::reader_failed`]), at most [`MAX_TRIES`] times.

use std::collections::VecDeque;

/// A card of the selection, by its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub usize);

/// One of the readers exec uses, by its place in exec's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub usize);

/// How often a card is tried on another reader after readers failed under it.
pub const MAX_TRIES: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Pending,
    Running(SlotId),
    Ok,
    Failed,
    /// Never started: interrupted first.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Idle,
    Busy(JobId),
    /// Failed under a run: not used again.
    Retired,
}

/// The counts the progress line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Runs that ended with exit 0.
    pub ok: usize,
    /// Runs that ended otherwise (also cards given up for want of a reader).
    pub failed: usize,
    pub running: usize,
    /// Cards never started because exec was interrupted.
    pub skipped: usize,
    pub total: usize,
}

impl Progress {
    /// `done 12, failed 1, running 4 of 24, 8.3 s`.
    pub fn line(&self, elapsed: std::time::Duration) -> String {
        format!(
            "done {}, failed {}, running {} of {}, {:.1} s",
            self.ok,
            self.failed,
            self.running,
            self.total,
            elapsed.as_secs_f64()
        )
    }
}

/// How exec ends (the command's exit status: 0, 3, 130).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    AllOk,
    SomeFailed,
    Interrupted,
}

/// The schedule of one exec.
#[derive(Debug)]
pub struct Schedule {
    jobs: Vec<Job>,
    tries: Vec<u8>,
    slots: Vec<Slot>,
    queue: VecDeque<JobId>,
    parallel: usize,
    interrupted: bool,
}

impl Schedule {
    /// `jobs` cards over `slots` readers, at most `parallel` at once (at least 1).
    pub fn new(jobs: usize, slots: usize, parallel: usize) -> Schedule {
        Schedule {
            jobs: vec![Job::Pending; jobs],
            tries: vec![0; jobs],
            slots: vec![Slot::Idle; slots],
            queue: (0..jobs).map(JobId).collect(),
            parallel: parallel.max(1),
            interrupted: false,
        }
    }

    fn running(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Busy(_)))
            .count()
    }

    /// The next card to start and the reader to start it on, if one may start now: a card is
    /// waiting, a reader is idle, fewer than `parallel` run, and exec is not interrupted.
    /// Readers are reused card after card; the lowest idle one is taken.
    pub fn start_next(&mut self) -> Option<(JobId, SlotId)> {
        if self.interrupted || self.running() >= self.parallel {
            return None;
        }
        let slot = SlotId(self.slots.iter().position(|s| *s == Slot::Idle)?);
        let job = self.queue.pop_front()?;
        self.jobs[job.0] = Job::Running(slot);
        self.tries[job.0] += 1;
        self.slots[slot.0] = Slot::Busy(job);
        Some((job, slot))
    }

    /// Every assignment that may start now (see [`Schedule::start_next`]).
    pub fn next_all(&mut self) -> Vec<(JobId, SlotId)> {
        std::iter::from_fn(|| self.start_next()).collect()
    }

    /// The reader a running card is on.
    pub fn slot_of(&self, job: JobId) -> Option<SlotId> {
        match self.jobs.get(job.0) {
            Some(Job::Running(s)) => Some(*s),
            _ => None,
        }
    }

    /// A run ended: `ok` when its program exited 0. Its reader is free again.
    pub fn finished(&mut self, job: JobId, ok: bool) {
        let Some(slot) = self.slot_of(job) else {
            return;
        };
        self.slots[slot.0] = Slot::Idle;
        self.jobs[job.0] = if ok { Job::Ok } else { Job::Failed };
    }

    /// The reader under a running card could not be used: it is retired, and the card waits
    /// for another reader (first in the queue) unless it was tried [`MAX_TRIES`] times or no
    /// reader is left. Answers the cards given up because of it (their runs failed): this one,
    /// or every waiting card when the last reader went.
    pub fn reader_failed(&mut self, job: JobId) -> Vec<JobId> {
        let Some(slot) = self.slot_of(job) else {
            return Vec::new();
        };
        self.slots[slot.0] = Slot::Retired;
        let mut given_up = Vec::new();
        if self.tries[job.0] >= MAX_TRIES || self.interrupted {
            self.jobs[job.0] = if self.interrupted {
                Job::Skipped
            } else {
                Job::Failed
            };
            if !self.interrupted {
                given_up.push(job);
            }
        } else {
            self.jobs[job.0] = Job::Pending;
            self.queue.push_front(job);
        }
        if self.slots.iter().all(|s| *s == Slot::Retired) {
            for j in self.queue.drain(..) {
                self.jobs[j.0] = Job::Failed;
                given_up.push(j);
            }
        }
        given_up
    }

    /// Ctrl-C: nothing more starts. Answers the cards that will never start (the running ones
    /// are the driver's to kill; they end through [`Schedule::finished`]).
    pub fn interrupt(&mut self) -> Vec<JobId> {
        self.interrupted = true;
        let skipped: Vec<JobId> = self.queue.drain(..).collect();
        for j in &skipped {
            self.jobs[j.0] = Job::Skipped;
        }
        skipped
    }

    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Nothing runs and nothing more will start.
    pub fn is_over(&self) -> bool {
        self.running() == 0
            && (self.queue.is_empty() || self.interrupted || !self.slots.contains(&Slot::Idle))
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.jobs.len(),
            ..Progress::default()
        };
        for j in &self.jobs {
            match j {
                Job::Ok => p.ok += 1,
                Job::Failed => p.failed += 1,
                Job::Running(_) => p.running += 1,
                Job::Skipped => p.skipped += 1,
                Job::Pending => {}
            }
        }
        p
    }

    pub fn verdict(&self) -> Verdict {
        if self.interrupted {
            Verdict::Interrupted
        } else if self.jobs.iter().all(|j| *j == Job::Ok) {
            Verdict::AllOk
        } else {
            Verdict::SomeFailed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the schedule to its end: each started card finishes at once with `ok(job)`;
    /// answers which reader ran which card, in order.
    fn drain(s: &mut Schedule, ok: impl Fn(JobId) -> bool) -> Vec<(JobId, SlotId)> {
        let mut log = Vec::new();
        while !s.is_over() {
            let started = s.next_all();
            assert!(!started.is_empty(), "stuck: {s:?}");
            for (j, r) in started {
                log.push((j, r));
                s.finished(j, ok(j));
            }
        }
        log
    }

    #[test]
    fn readers_are_reused_card_after_card_and_never_more_than_parallel_run() {
        let mut s = Schedule::new(24, 4, 4);
        let first = s.next_all();
        assert_eq!(first.len(), 4);
        let readers: Vec<usize> = first.iter().map(|(_, r)| r.0).collect();
        assert_eq!(readers, [0, 1, 2, 3]);
        assert_eq!(s.start_next(), None, "all four readers busy");
        assert_eq!(s.progress().running, 4);
        // Reader 2's card ends: the next card goes to reader 2.
        s.finished(first[2].0, true);
        assert_eq!(s.start_next(), Some((JobId(4), SlotId(2))));
        s.finished(JobId(4), true);
        for (j, _) in &first {
            s.finished(*j, true);
        }
        let log = drain(&mut s, |_| true);
        assert_eq!(log.len(), 19, "every other card once");
        assert!(log.iter().all(|(_, r)| r.0 < 4));
        let p = s.progress();
        assert_eq!((p.ok, p.failed, p.running, p.total), (24, 0, 0, 24));
        assert_eq!(s.verdict(), Verdict::AllOk);
    }

    #[test]
    fn parallel_caps_below_the_readers() {
        let mut s = Schedule::new(10, 8, 3);
        assert_eq!(s.next_all().len(), 3);
        assert_eq!(s.start_next(), None);
        let mut s = Schedule::new(2, 8, 8);
        assert_eq!(s.next_all().len(), 2, "no more runs than cards");
        assert!(!s.is_over());
    }

    #[test]
    fn a_failed_run_makes_the_verdict_partial_and_is_counted() {
        let mut s = Schedule::new(5, 2, 2);
        drain(&mut s, |j| j.0 != 3);
        let p = s.progress();
        assert_eq!((p.ok, p.failed), (4, 1));
        assert_eq!(s.verdict(), Verdict::SomeFailed);
    }

    #[test]
    fn a_failing_reader_is_retired_and_its_card_runs_on_another() {
        let mut s = Schedule::new(3, 2, 2);
        let started = s.next_all();
        assert_eq!(started, [(JobId(0), SlotId(0)), (JobId(1), SlotId(1))]);
        assert!(s.reader_failed(JobId(0)).is_empty(), "card 0 goes back");
        // Reader 0 is never used again: card 0 waits for reader 1, before card 2.
        assert_eq!(s.start_next(), None);
        s.finished(JobId(1), true);
        assert_eq!(s.start_next(), Some((JobId(0), SlotId(1))));
        s.finished(JobId(0), true);
        assert_eq!(s.start_next(), Some((JobId(2), SlotId(1))));
        s.finished(JobId(2), true);
        assert!(s.is_over());
        assert_eq!(s.verdict(), Verdict::AllOk);
    }

    #[test]
    fn when_the_last_reader_fails_the_waiting_cards_are_given_up() {
        let mut s = Schedule::new(4, 1, 1);
        assert_eq!(s.start_next(), Some((JobId(0), SlotId(0))));
        let given_up = s.reader_failed(JobId(0));
        assert_eq!(given_up, [JobId(0), JobId(1), JobId(2), JobId(3)]);
        assert!(s.is_over());
        assert_eq!(s.progress().failed, 4);
        assert_eq!(s.verdict(), Verdict::SomeFailed);
    }

    #[test]
    fn a_card_that_breaks_every_reader_is_given_up_after_max_tries() {
        let mut s = Schedule::new(1, 5, 5);
        for t in 1..=MAX_TRIES {
            let (j, _) = s.start_next().expect("a reader left");
            let given_up = s.reader_failed(j);
            assert_eq!(given_up.is_empty(), t < MAX_TRIES, "try {t}");
        }
        assert!(s.is_over());
        assert_eq!(s.progress().failed, 1);
    }

    #[test]
    fn an_interrupt_starts_nothing_more_and_wins_the_verdict() {
        let mut s = Schedule::new(10, 3, 3);
        let started = s.next_all();
        s.finished(started[0].0, true);
        let skipped = s.interrupt();
        assert_eq!(skipped.len(), 7, "cards 3..10 never start");
        assert_eq!(s.start_next(), None);
        assert!(!s.is_over(), "two still run");
        s.finished(started[1].0, false);
        s.finished(started[2].0, false);
        assert!(s.is_over());
        let p = s.progress();
        assert_eq!((p.ok, p.failed, p.running, p.skipped), (1, 2, 0, 7));
        assert_eq!(s.verdict(), Verdict::Interrupted);
    }

    #[test]
    fn the_progress_line_names_every_count() {
        let p = Progress {
            ok: 12,
            failed: 1,
            running: 4,
            skipped: 0,
            total: 24,
        };
        assert_eq!(
            p.line(std::time::Duration::from_millis(8340)),
            "done 12, failed 1, running 4 of 24, 8.3 s"
        );
    }
}
