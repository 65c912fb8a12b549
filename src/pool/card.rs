//! A handle for one card of the pool: start (ATR), stop, and T=0 exchanges over the link.

use std::time::Duration;

use tokio::time::Instant;

use super::frame::{Request, Slot};
use super::integrity::{Phase, Verdict};
use super::link::{Link, PoolError, Waiter};
use crate::t0::{self, Exchange, Limits, Refusal, Step, T0Error, Tpdu};

/// Why a command did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("refused without reaching the card: {0}")]
    Refused(#[from] Refusal),
    #[error("{error} (card sent {})", hex::encode_upper(.seen))]
    Protocol { error: T0Error, seen: Vec<u8> },
    #[error("{error} (card sent {})", hex::encode_upper(.seen))]
    Pool { error: PoolError, seen: Vec<u8> },
    #[error("no complete answer within {ms} ms (card sent {})", hex::encode_upper(.seen))]
    Deadline { ms: u64, seen: Vec<u8> },
    /// The answer cannot be trusted to be this command's: the pool sent more than asked.
    #[error("{why} (card sent {})", hex::encode_upper(.seen))]
    Stale { why: &'static str, seen: Vec<u8> },
    /// The card layer's rules refused the command without sending it (the last-try guard,
    /// write protection): the application gets `sw`.
    #[error("{why}")]
    Guarded { sw: [u8; 2], why: String },
}

impl ExchangeError {
    /// The status word the application gets instead of the card's.
    pub fn status(&self) -> [u8; 2] {
        match self {
            ExchangeError::Refused(r) => r.status(),
            ExchangeError::Guarded { sw, .. } => *sw,
            _ => t0::sw::TECHNICAL_PROBLEM,
        }
    }

    /// Bytes reached the card, which may now be in any T=0 state: it needs a restart.
    pub fn card_touched(&self) -> bool {
        !matches!(
            self,
            ExchangeError::Refused(_) | ExchangeError::Guarded { .. }
        )
    }
}

/// One card of the pool.
#[derive(Clone)]
pub struct Card {
    link: Link,
    slot: Slot,
    limits: Limits,
}

impl Card {
    pub(crate) fn new(link: Link, slot: Slot) -> Card {
        Card {
            link,
            slot,
            limits: Limits::default(),
        }
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Powers up and resets the card; answers its ATR. Bytes that cannot begin an ATR (late
    /// answers of an earlier exchange) are logged and skipped.
    pub async fn start(&self) -> Result<Vec<u8>, PoolError> {
        let timeout = self.link.options().reply_timeout;
        let _g = self.link.lock_card(self.slot).await;
        let mut w = self.link.register_card(self.slot)?;
        // A fresh start: whatever came late for the old session no longer matters.
        self.link.integrity().starting(self.slot);
        w.send(&Request::Start(self.slot), &self.link).await?;
        let deadline = Instant::now() + timeout;
        let mut atr: Vec<u8> = Vec::new();
        // Remembered as the session's first pieces: copies of the ATR are recognised.
        let mut pieces = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let piece = w.recv(left).await.map_err(|e| match e {
                PoolError::Timeout(_) => PoolError::Timeout(timeout.as_millis() as u64),
                e => e,
            })?;
            atr.extend_from_slice(&piece);
            pieces.push(piece);
            if !matches!(atr.first(), Some(0x3B | 0x3F)) {
                log::warn!(
                    "{}: skipped {} byte(s) that are no ATR",
                    self.slot,
                    atr.len()
                );
                atr.clear();
                continue;
            }
            match atr_length(&atr) {
                Some(n) if atr.len() >= n => {
                    if atr.len() > n {
                        log::warn!(
                            "{}: {} byte(s) after the ATR ignored",
                            self.slot,
                            atr.len() - n
                        );
                        atr.truncate(n);
                    }
                    w.finish();
                    let mut i = self.link.integrity();
                    i.started(self.slot);
                    let now = std::time::Instant::now();
                    for p in &pieces {
                        i.received(self.slot, p, now);
                    }
                    return Ok(atr);
                }
                _ if atr.len() >= 33 => {
                    return Err(PoolError::BadAnswer {
                        what: "ATR",
                        got: atr.len(),
                        expected: 33,
                    })
                }
                _ => {}
            }
        }
    }

    /// Powers the card down (the pool does not answer).
    pub async fn stop(&self) -> Result<(), PoolError> {
        let _g = self.link.lock_card(self.slot).await;
        self.link.send_only(&Request::Stop(self.slot)).await?;
        self.link.integrity().stopped(self.slot);
        Ok(())
    }

    /// Tells the pool this card misbehaves (its LED blinks slowly).
    pub async fn error_indication(&self) -> Result<(), PoolError> {
        let _g = self.link.lock_card(self.slot).await;
        self.link
            .send_only(&Request::ErrorIndication(self.slot))
            .await
    }

    /// Runs one command (as the application passed it) through the T=0 terminal; answers
    /// `data ‖ SW1 SW2`. Every wait is bounded by the link's reply timeout, the whole exchange
    /// by `deadline` — except that each NULL byte ("keep waiting") extends it to one reply
    /// timeout from then, up to the link's NULL wait cap (and the T=0 NULL limit).
    pub async fn transmit(&self, cmd: &[u8], deadline: Duration) -> Result<Vec<u8>, ExchangeError> {
        let tpdu = Tpdu::parse(cmd)?;
        self.transmit_tpdu(tpdu, deadline).await
    }

    pub async fn transmit_tpdu(
        &self,
        tpdu: Tpdu,
        deadline: Duration,
    ) -> Result<Vec<u8>, ExchangeError> {
        let began = Instant::now();
        let end = began + deadline;
        let _g = self.link.lock_card(self.slot).await;
        let w = self
            .link
            .register_card(self.slot)
            .map_err(|error| ExchangeError::Pool {
                error,
                seen: Vec::new(),
            })?;
        if !self.link.integrity().exchange_begins(self.slot) {
            // Bytes came for this card outside any exchange: a reply arrived late or twice, so
            // an earlier answer may have been another command's. Start over rather than go on.
            return Err(ExchangeError::Stale {
                why: "replies for this card arrived outside any exchange (late or duplicated): \
                      its T=0 state is unknown",
                seen: Vec::new(),
            });
        }
        let (ex, header) = Exchange::new(tpdu, self.limits);
        let cap = began + deadline.max(self.link.options().null_wait_cap);
        let mut run = Run {
            card: self,
            w,
            ex,
            began,
            end,
            cap,
            deadline,
        };
        run.send(header).await?;
        run.run().await
    }
}

/// One exchange in progress: the T=0 engine fed with the pieces the integrity rules let
/// through.
struct Run<'a> {
    card: &'a Card,
    w: Waiter,
    ex: Exchange,
    began: Instant,
    /// The deadline, moved on by NULL bytes up to `cap`.
    end: Instant,
    cap: Instant,
    deadline: Duration,
}

impl Run<'_> {
    async fn run(&mut self) -> Result<Vec<u8>, ExchangeError> {
        loop {
            let piece = self.next_piece().await?;
            let nulls = self.ex.nulls();
            let step = self.ex.feed(&piece);
            if self.ex.nulls() > nulls {
                // The card asks for time: give it one more reply timeout, within the cap.
                let idle = self.card.link.options().reply_timeout;
                self.end = self.end.max((Instant::now() + idle).min(self.cap));
            }
            let step = match step {
                Ok(s) => s,
                Err(error) => {
                    self.count_t0_violation();
                    return Err(ExchangeError::Protocol {
                        error,
                        seen: self.ex.received().to_vec(),
                    });
                }
            };
            match step {
                Step::Wait => {}
                Step::Send(data) => self.send(data).await?,
                Step::Done(resp) => {
                    if resp.trailing > 0 {
                        // More than one answer: which one is this command's cannot be told.
                        self.count_t0_violation();
                        return Err(ExchangeError::Stale {
                            why: "the card sent bytes after SW2 (a duplicated or late reply)",
                            seen: self.ex.received().to_vec(),
                        });
                    }
                    self.hold().await?;
                    self.w.finish();
                    return Ok(resp.bytes);
                }
            }
        }
    }

    fn pool_err(&self, error: PoolError) -> ExchangeError {
        ExchangeError::Pool {
            error,
            seen: self.ex.received().to_vec(),
        }
    }

    fn count_t0_violation(&self) {
        self.card.link.t0_violation();
    }

    async fn send(&mut self, data: Vec<u8>) -> Result<(), ExchangeError> {
        let req = Request::Data(self.card.slot, data);
        let r = self.w.send(&req, &self.card.link).await;
        r.map_err(|e| self.pool_err(e))
    }

    /// The next piece the engine is to take: each wait bounded by the reply timeout, all of
    /// them by the deadline.
    async fn next_piece(&mut self) -> Result<Vec<u8>, ExchangeError> {
        let idle = self.card.link.options().reply_timeout;
        loop {
            let left = self.end.saturating_duration_since(Instant::now());
            let piece = match self.w.recv(idle.min(left)).await {
                Ok(p) => p,
                Err(PoolError::Timeout(_)) if left <= idle => {
                    // The deadline, or as long as the card's NULLs moved it.
                    let ms = self.deadline.max(self.end.duration_since(self.began));
                    return Err(ExchangeError::Deadline {
                        ms: ms.as_millis() as u64,
                        seen: self.ex.received().to_vec(),
                    });
                }
                Err(e) => return Err(self.pool_err(e)),
            };
            match self.judge(&piece, Phase::Waiting) {
                Verdict::Take => return Ok(piece),
                Verdict::Drop => {}
                Verdict::Reject(why) => return Err(self.stale(why, &piece)),
            }
        }
    }

    /// While the link is guarded (or when more came at once), holds the answer for the settle
    /// time: copies of this exchange's pieces may come and are dropped; anything else means
    /// the answer may not be this command's.
    async fn hold(&mut self) -> Result<(), ExchangeError> {
        let settle = self.card.link.integrity().settle(std::time::Instant::now());
        if settle.is_none() && !self.w.more_queued() {
            return Ok(());
        }
        let until = Instant::now() + settle.unwrap_or_default();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let piece = match self.w.recv(left).await {
                Ok(p) => p,
                Err(PoolError::Timeout(_)) => return Ok(()),
                Err(e) => return Err(self.pool_err(e)),
            };
            if let Verdict::Reject(why) = self.judge(&piece, Phase::Holding) {
                return Err(self.stale(why, &piece));
            }
            if settle.is_none() && !self.w.more_queued() {
                return Ok(());
            }
        }
    }

    fn judge(&self, piece: &[u8], phase: Phase) -> Verdict {
        self.card.link.judge(self.card.slot, piece, phase)
    }

    fn stale(&self, why: &'static str, piece: &[u8]) -> ExchangeError {
        let mut seen = self.ex.received().to_vec();
        seen.extend_from_slice(piece);
        ExchangeError::Stale { why, seen }
    }
}

/// Length of a complete ATR (ISO/IEC 7816-3 §8.2), or `None` if `atr` is too short to tell.
pub fn atr_length(atr: &[u8]) -> Option<usize> {
    let t0 = *atr.get(1)?;
    let historical = usize::from(t0 & 0x0F);
    let mut y = t0 >> 4;
    let mut i = 2;
    let mut needs_tck = false;
    loop {
        let count = (y & 0x0F).count_ones() as usize;
        let td = if y & 0x08 != 0 {
            Some(i + count - 1)
        } else {
            None
        };
        i += count;
        match td {
            Some(pos) => {
                let td = *atr.get(pos)?;
                if td & 0x0F != 0 {
                    needs_tck = true;
                }
                y = td >> 4;
            }
            None => break,
        }
    }
    Some(i + historical + usize::from(needs_tck))
}

#[cfg(test)]
mod tests {
    use super::atr_length;

    #[test]
    fn manual_atr_lengths() {
        for atr in [
            "3B9F95801FC38031E073FE211357868102869844 18A8",
            "3B9E94801F478031A073BE211166444D5422010026",
            "3B9D95801FC78031E073FE211365150963868 3A1",
            "3B3D9400320601120000866061108000 07",
            "3B991800118822334455667760",
        ] {
            let b = hex::decode(atr.replace(' ', "")).unwrap();
            assert_eq!(atr_length(&b), Some(b.len()), "{atr}");
            assert_eq!(atr_length(&b[..1]), None);
        }
    }
}
