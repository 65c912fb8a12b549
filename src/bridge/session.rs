//! One vpcd session of a reader as a sans-IO state machine: what to do with each event vpcd
//! sends (an ATR poll, power on/off, reset, a command), given the card's answers, with time
//! passed in. The reader's task ([`super::Reader`]) only moves bytes: it feeds events and the
//! card's results in, and carries out the [`Action`]s that come out, one at a time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ReaderStats, ResetPolicy};
use crate::cards::Ended;
use crate::pool::ExchangeError;
use crate::t0;
use crate::vpcd::Event;

/// After this long without a word from vpcd on a new connection, say so.
pub const NOT_TAKEN_WARNING: Duration = Duration::from_secs(5);

/// What the reader's task is to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// vpcd talked on this connection: pcscd sees the card now.
    Present,
    /// Answer vpcd.
    Reply(Vec<u8>),
    /// Restart the card (stop if running, then start); report with [`Session::restarted`].
    Restart,
    /// Stop the card; report with [`Session::stopped`].
    Stop,
    /// Exchange `cmd` with the card; report with [`Session::answered`].
    Transmit(Vec<u8>),
    /// vpcd has not taken the connection for [`NOT_TAKEN_WARNING`] (warn once).
    NotTaken,
    /// The session is over.
    End(End),
}

/// Why a session with vpcd ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    VpcdClosed(String),
    CardGone(String),
    /// The card was reset after a failed exchange; reconnect so pcscd reports it.
    CardReset,
    LinkDown,
}

/// What the card operation in flight was for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// A power-on or reset; then the command that found the card powered off, if any.
    Restart(Option<Vec<u8>>),
    PowerOff,
    /// The stop after an exchange that lost the card's T=0 state.
    ResetStop,
    Transmit,
}

pub struct Session {
    name: String,
    atr: Vec<u8>,
    reset: ResetPolicy,
    stats: Arc<ReaderStats>,
    powered: bool,
    /// vpcd has talked on this connection.
    present: bool,
    /// When to warn that vpcd has not taken the connection (once).
    not_taken_at: Option<Instant>,
    pending: Pending,
    out: VecDeque<Action>,
    ended: bool,
}

impl Session {
    /// A session on a connection just made, with the card started (its ATR `atr`).
    pub fn new(
        name: String,
        atr: Vec<u8>,
        reset: ResetPolicy,
        stats: Arc<ReaderStats>,
        now: Instant,
    ) -> Session {
        Session {
            name,
            atr,
            reset,
            stats,
            powered: true,
            present: false,
            not_taken_at: Some(now + NOT_TAKEN_WARNING),
            pending: Pending::None,
            out: VecDeque::new(),
            ended: false,
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Session::tick`] wants to be called.
    pub fn deadline(&self) -> Option<Instant> {
        self.not_taken_at
    }

    pub fn tick(&mut self, now: Instant) {
        if self.not_taken_at.is_some_and(|t| now >= t) {
            self.not_taken_at = None;
            self.out.push_back(Action::NotTaken);
        }
    }

    /// The ATR now cached for pcscd's polls.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn end(&mut self, e: End) {
        if !self.ended {
            self.ended = true;
            self.out.clear();
            self.out.push_back(Action::End(e));
        }
    }

    /// What vpcd sent: an event, the end of the stream (`None`), or a read error.
    pub fn event(&mut self, ev: std::io::Result<Option<Event>>) {
        let ev = match ev {
            Ok(Some(ev)) => ev,
            Ok(None) => return self.end(End::VpcdClosed("end of stream".into())),
            Err(e) => return self.end(End::VpcdClosed(e.to_string())),
        };
        if !self.present {
            self.present = true;
            self.not_taken_at = None;
            self.out.push_back(Action::Present);
        }
        match ev {
            Event::GetAtr => self.out.push_back(Action::Reply(self.atr.clone())),
            Event::PowerOn | Event::Reset => {
                log::info!("{}: {ev:?}", self.name);
                if !self.powered || self.reset == ResetPolicy::Restart {
                    self.restart(None);
                }
            }
            Event::PowerOff => {
                log::info!("{}: PowerOff", self.name);
                self.pending = Pending::PowerOff;
                self.out.push_back(Action::Stop);
            }
            Event::UnknownControl(b) => {
                log::warn!("{}: unknown vpcd control byte {b:02X} ignored", self.name);
            }
            Event::Invalid { len } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: vpcd frame of {len} bytes cannot be a command: 6700",
                    self.name
                );
                self.out
                    .push_back(Action::Reply(t0::sw::WRONG_LENGTH.to_vec()));
            }
            Event::Command(cmd) => {
                self.stats.commands.fetch_add(1, Ordering::Relaxed);
                if self.powered {
                    self.transmit(cmd);
                } else {
                    // pcscd powers a card on before using it; be lenient if it did not.
                    log::warn!(
                        "{}: command while powered off: starting the card",
                        self.name
                    );
                    self.restart(Some(cmd));
                }
            }
        }
    }

    fn restart(&mut self, then: Option<Vec<u8>>) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        self.pending = Pending::Restart(then);
        self.out.push_back(Action::Restart);
    }

    fn transmit(&mut self, cmd: Vec<u8>) {
        log::debug!("{}: > {}", self.name, hex::encode_upper(&cmd));
        self.pending = Pending::Transmit;
        self.out.push_back(Action::Transmit(cmd));
    }

    /// The result of [`Action::Restart`].
    pub fn restarted<E: std::fmt::Display>(&mut self, r: Result<Vec<u8>, E>) {
        let Pending::Restart(then) = std::mem::replace(&mut self.pending, Pending::None) else {
            return;
        };
        match r {
            Ok(atr) => {
                self.atr = atr;
                self.powered = true;
                if let Some(cmd) = then {
                    self.transmit(cmd);
                }
            }
            Err(e) => {
                let what = if then.is_some() { "start" } else { "restart" };
                self.end(End::CardGone(format!("{what} failed: {e}")));
            }
        }
    }

    /// The result of [`Action::Stop`].
    pub fn stopped<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::PowerOff => match r {
                Ok(()) => self.powered = false,
                Err(e) => self.end(End::CardGone(format!("stop failed: {e}"))),
            },
            Pending::ResetStop => self.end(End::CardReset),
            _ => {}
        }
    }

    /// The result of [`Action::Transmit`] for `cmd`.
    pub fn answered(&mut self, cmd: &[u8], r: Result<Vec<u8>, ExchangeError>) {
        self.pending = Pending::None;
        match r {
            Ok(resp) => {
                log::debug!("{}: < {}", self.name, hex::encode_upper(&resp));
                self.out.push_back(Action::Reply(resp));
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, ExchangeError::Refused(_)) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                let sw = e.status();
                log::warn!(
                    "{}: {} failed, answered {}: {e}",
                    self.name,
                    hex::encode_upper(cmd),
                    hex::encode_upper(sw)
                );
                self.out.push_back(Action::Reply(sw.to_vec()));
                if e.card_touched() {
                    // The card's T=0 state is unknown: stop it and make pcscd see the card
                    // removed, so no application goes on with lost selections or PIN.
                    self.pending = Pending::ResetStop;
                    self.out.push_back(Action::Stop);
                }
            }
        }
    }

    /// An answer could not be written to vpcd.
    pub fn reply_failed(&mut self, e: std::io::Error) {
        self.end(End::VpcdClosed(e.to_string()));
    }

    /// The card layer ended the session (pool connection changed, card taken away).
    pub fn lease_ended(&mut self, e: Ended) {
        self.end(match e {
            Ended::LinkChanged(_) => End::LinkDown,
            Ended::Revoked(why) => End::CardGone(why),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolError;

    fn session(reset: ResetPolicy) -> (Session, Instant) {
        let now = Instant::now();
        let s = Session::new(
            "reader 0".into(),
            vec![0x3B, 0x00],
            reset,
            Arc::default(),
            now,
        );
        (s, now)
    }

    fn drain(s: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    fn ev(e: Event) -> std::io::Result<Option<Event>> {
        Ok(Some(e))
    }

    #[test]
    fn atr_polls_are_answered_from_the_cache_and_commands_go_to_the_card() {
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(ev(Event::GetAtr));
        assert_eq!(
            drain(&mut s),
            [Action::Present, Action::Reply(vec![0x3B, 0x00])]
        );
        s.event(ev(Event::Command(vec![0xA0, 0xF2, 0, 0, 0x16])));
        assert_eq!(
            drain(&mut s),
            [Action::Transmit(vec![0xA0, 0xF2, 0, 0, 0x16])]
        );
        s.answered(&[0xA0], Ok(vec![0x90, 0x00]));
        assert_eq!(drain(&mut s), [Action::Reply(vec![0x90, 0x00])]);
        assert_eq!(s.stats.commands.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reset_restarts_by_default_and_not_when_cached() {
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(ev(Event::Reset));
        assert_eq!(drain(&mut s), [Action::Present, Action::Restart]);
        s.restarted(Ok::<_, PoolError>(vec![0x3B, 0x01]));
        assert_eq!(s.atr(), [0x3B, 0x01]);
        let (mut c, _) = session(ResetPolicy::Cached);
        c.event(ev(Event::Reset));
        assert_eq!(drain(&mut c), [Action::Present], "cached: no restart");
        // Powered off, a reset starts the card even when cached.
        c.event(ev(Event::PowerOff));
        assert_eq!(drain(&mut c), [Action::Stop]);
        c.stopped(Ok::<_, PoolError>(()));
        c.event(ev(Event::PowerOn));
        assert_eq!(drain(&mut c), [Action::Restart]);
    }

    #[test]
    fn a_command_while_powered_off_starts_the_card_first() {
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(ev(Event::PowerOff));
        s.stopped(Ok::<_, PoolError>(()));
        drain(&mut s);
        s.event(ev(Event::Command(vec![0xA0, 0xC0, 0, 0, 0x0F])));
        assert_eq!(drain(&mut s), [Action::Restart]);
        s.restarted(Ok::<_, PoolError>(vec![0x3B]));
        assert_eq!(
            drain(&mut s),
            [Action::Transmit(vec![0xA0, 0xC0, 0, 0, 0x0F])]
        );
        // A start that fails ends the session: the card is gone.
        s.event(ev(Event::PowerOff));
        s.stopped(Ok::<_, PoolError>(()));
        s.event(ev(Event::Command(vec![0xA0, 0xC0, 0, 0, 0x0F])));
        drain(&mut s);
        s.restarted(Err::<Vec<u8>, _>(PoolError::Timeout(1000)));
        assert_eq!(
            drain(&mut s),
            [Action::End(End::CardGone(
                "start failed: no answer from the pool within 1000 ms".into()
            ))]
        );
    }

    #[test]
    fn a_failed_exchange_is_answered_then_the_card_is_reset() {
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(ev(Event::Command(vec![0xA0, 0xB0, 0, 0, 9])));
        drain(&mut s);
        s.answered(
            &[0xA0, 0xB0, 0, 0, 9],
            Err(ExchangeError::Deadline {
                ms: 1500,
                seen: vec![],
            }),
        );
        assert_eq!(
            drain(&mut s),
            [Action::Reply(vec![0x6F, 0x00]), Action::Stop]
        );
        s.stopped(Ok::<_, PoolError>(()));
        assert_eq!(drain(&mut s), [Action::End(End::CardReset)]);
        // A command refused before reaching the card is answered and the session goes on.
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(ev(Event::Command(vec![0xA0, 0x60, 0, 0, 0])));
        drain(&mut s);
        s.answered(
            &[0xA0, 0x60, 0, 0, 0],
            Err(ExchangeError::Refused(t0::Refusal::InvalidIns(0x60))),
        );
        assert_eq!(drain(&mut s), [Action::Reply(vec![0x6D, 0x00])]);
        assert_eq!(s.stats.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn hostile_frames_vpcd_silence_and_lost_leases() {
        let (mut s, now) = session(ResetPolicy::Restart);
        assert_eq!(s.deadline(), Some(now + NOT_TAKEN_WARNING));
        s.tick(now + Duration::from_secs(1));
        assert_eq!(drain(&mut s), []);
        s.tick(now + NOT_TAKEN_WARNING);
        assert_eq!(drain(&mut s), [Action::NotTaken]);
        assert_eq!(s.deadline(), None, "warned once");
        s.event(ev(Event::Invalid { len: 1 }));
        assert_eq!(
            drain(&mut s),
            [Action::Present, Action::Reply(vec![0x67, 0x00])]
        );
        s.event(ev(Event::UnknownControl(0x09)));
        assert_eq!(drain(&mut s), []);
        s.lease_ended(Ended::Revoked(
            "stopped by API request from x (forced)".into(),
        ));
        assert_eq!(
            drain(&mut s),
            [Action::End(End::CardGone(
                "stopped by API request from x (forced)".into()
            ))]
        );
        let (mut s, _) = session(ResetPolicy::Restart);
        s.event(Ok(None));
        s.lease_ended(Ended::LinkChanged(crate::pool::LinkState::Connecting));
        assert_eq!(
            drain(&mut s),
            [Action::End(End::VpcdClosed("end of stream".into()))],
            "the first end wins"
        );
    }
}
