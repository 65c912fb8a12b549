//! The host side of ISO/IEC 7816-3 T=0 (§10.3, §12.2), sans-IO.
//!
//! The pool passes bytes to the card transparently, so simpool is the T=0 terminal: it sends the
//! header, reads procedure bytes, sends or receives data and finally reads SW1 SW2. One
//! [`Exchange`] is one TPDU; it is fed the card's bytes in pieces of any size and tells its
//! driver what to send. Completion follows T=0 rules only, never silence or frame boundaries.
//!
//! `61xx`, `9Fxx` and `6Cxx` go back unchanged: PC/SC SIM tools (pySim, OpenSC) send GET
//! RESPONSE or re-issue with the corrected P3 themselves.

use std::fmt;

/// Status words simpool answers itself when it must refuse or abandon a command.
pub mod sw {
    /// Wrong length: malformed or extended-length command.
    pub const WRONG_LENGTH: [u8; 2] = [0x67, 0x00];
    /// INS that T=0 cannot carry (6X/9X).
    pub const INS_NOT_SUPPORTED: [u8; 2] = [0x6D, 0x00];
    /// Technical problem: the pool cannot carry it, or the exchange failed.
    pub const TECHNICAL_PROBLEM: [u8; 2] = [0x6F, 0x00];
}

/// Limits of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// NULL procedure bytes tolerated in one exchange before it is abandoned.
    pub max_nulls: u32,
}

impl Default for Limits {
    fn default() -> Self {
        // oscam's figure; a SIM computing A3/A8 sends a handful.
        Limits { max_nulls: 200 }
    }
}

/// Why a command is answered locally without reaching the card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("command of {0} bytes is malformed (T=0 needs CLA INS P1 P2 [P3 [data]])")]
    Malformed(usize),
    #[error("extended-length command ({0} bytes with P3 = 00): T=0 carries at most 255 bytes in")]
    Extended(usize),
    #[error("INS {0:02X} cannot be sent over T=0 (6X/9X are procedure bytes)")]
    InvalidIns(u8),
    #[error("command with exactly one data byte: the pool takes a 1-byte frame as a control command, so it cannot be sent")]
    OneDataByte,
}

impl Refusal {
    /// The status word the application gets.
    pub fn status(&self) -> [u8; 2] {
        match self {
            Refusal::Malformed(_) | Refusal::Extended(_) => sw::WRONG_LENGTH,
            Refusal::InvalidIns(_) => sw::INS_NOT_SUPPORTED,
            Refusal::OneDataByte => sw::TECHNICAL_PROBLEM,
        }
    }
}

/// Why an exchange was abandoned after bytes reached the card (its T=0 state is now unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum T0Error {
    #[error("unexpected procedure byte {0:02X}")]
    UnexpectedProcedure(u8),
    #[error("card acknowledged ({0:02X}) with nothing left to transfer")]
    NothingLeft(u8),
    #[error("card asks for a single data byte, which the pool cannot send (1-byte frames are pool commands)")]
    OneByteRequested,
    #[error("card sent {0} NULL bytes without answering")]
    TooManyNulls(u32),
    #[error("card sent {0} byte(s) before receiving the data it acknowledged")]
    BytesBeforeData(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Data go to the card (case 3, or case 4 with Le stripped).
    In,
    /// Data come from the card (case 1/2); `P3 = 00` means 256.
    Out,
}

/// A command ready for the wire: the 5-byte header and the body (empty for Out).
#[derive(Clone, PartialEq, Eq)]
pub struct Tpdu {
    pub header: [u8; 5],
    pub body: Vec<u8>,
    /// Le of a case-4 APDU that was stripped at intake.
    pub stripped_le: Option<u8>,
}

impl fmt::Debug for Tpdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            hex::encode_upper(self.header),
            hex::encode_upper(&self.body)
        )
    }
}

impl Tpdu {
    /// Intake: turns what the application passed to `SCardTransmit` into a TPDU, or refuses it.
    pub fn parse(cmd: &[u8]) -> Result<Tpdu, Refusal> {
        let l = cmd.len();
        if l < 4 {
            return Err(Refusal::Malformed(l));
        }
        let ins = cmd[1];
        if ins & 0xF0 == 0x60 || ins & 0xF0 == 0x90 {
            return Err(Refusal::InvalidIns(ins));
        }
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&cmd[..4]);
        if l == 4 {
            // Case 1 APDU: T=0 always sends P3.
            return Ok(Tpdu {
                header,
                body: Vec::new(),
                stripped_le: None,
            });
        }
        let p3 = cmd[4];
        header[4] = p3;
        let lc = usize::from(p3);
        if l == 5 {
            return Ok(Tpdu {
                header,
                body: Vec::new(),
                stripped_le: None,
            });
        }
        if p3 == 0 {
            return Err(Refusal::Extended(l));
        }
        let stripped_le = if l == 5 + lc {
            None
        } else if l == 6 + lc {
            Some(cmd[l - 1])
        } else {
            return Err(Refusal::Malformed(l));
        };
        if lc == 1 {
            return Err(Refusal::OneDataByte);
        }
        Ok(Tpdu {
            header,
            body: cmd[5..5 + lc].to_vec(),
            stripped_le,
        })
    }

    pub fn ins(&self) -> u8 {
        self.header[1]
    }

    pub fn direction(&self) -> Direction {
        if self.body.is_empty() {
            Direction::Out
        } else {
            Direction::In
        }
    }

    /// Bytes expected from the card in the Out direction.
    pub fn ne(&self) -> usize {
        match self.header[4] {
            0 => 256,
            n => usize::from(n),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a procedure byte.
    Proc,
    /// Receiving `n` more data bytes (procedure byte = INS).
    RxAll(usize),
    /// Receiving one data byte (procedure byte = INS ^ FF).
    RxOne,
    /// SW1 received, waiting for SW2.
    Sw2(u8),
    Done,
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send; wait for more bytes from the card (restart the idle timer).
    Wait,
    /// Send these bytes to the card (as one pool data frame), then wait.
    Send(Vec<u8>),
    /// The exchange is complete.
    Done(Response),
}

/// The outcome of one exchange: response data followed by SW1 SW2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub bytes: Vec<u8>,
    /// Bytes the card sent after SW2 in the same piece (logged and discarded).
    pub trailing: usize,
}

impl Response {
    pub fn sw(&self) -> [u8; 2] {
        let n = self.bytes.len();
        [self.bytes[n - 2], self.bytes[n - 1]]
    }
    pub fn data(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - 2]
    }
}

/// One TPDU exchange in progress.
#[derive(Debug)]
pub struct Exchange {
    tpdu: Tpdu,
    limits: Limits,
    state: State,
    sent_body: bool,
    rx: Vec<u8>,
    nulls: u32,
}

impl Exchange {
    /// Starts an exchange; the header is to be sent first.
    pub fn new(tpdu: Tpdu, limits: Limits) -> (Exchange, Vec<u8>) {
        let header = tpdu.header.to_vec();
        let ex = Exchange {
            tpdu,
            limits,
            state: State::Proc,
            sent_body: false,
            rx: Vec::new(),
            nulls: 0,
        };
        (ex, header)
    }

    pub fn tpdu(&self) -> &Tpdu {
        &self.tpdu
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// NULL procedure bytes seen so far ("keep waiting").
    pub fn nulls(&self) -> u32 {
        self.nulls
    }

    /// Bytes seen so far (for error reports).
    pub fn received(&self) -> &[u8] {
        &self.rx
    }

    /// Feeds one piece of what the card sent. After `Step::Send` the driver must send before
    /// feeding more; a `Step::Done` ends the exchange (later pieces are a caller's error).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Step, T0Error> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match self.state {
                State::Done => break,
                State::RxAll(n) => {
                    // Data bytes may look like procedure bytes: take them as data.
                    let take = n.min(bytes.len() - i + 1);
                    self.rx.extend_from_slice(&bytes[i - 1..i - 1 + take]);
                    i += take - 1;
                    self.state = if take == n {
                        State::Proc
                    } else {
                        State::RxAll(n - take)
                    };
                }
                State::RxOne => {
                    self.rx.push(b);
                    self.state = State::Proc;
                }
                State::Sw2(sw1) => {
                    let mut out = std::mem::take(&mut self.rx);
                    out.push(sw1);
                    out.push(b);
                    self.state = State::Done;
                    return Ok(Step::Done(Response {
                        bytes: out,
                        trailing: bytes.len() - i,
                    }));
                }
                State::Proc => {
                    if let Some(send) = self.procedure(b)? {
                        if i < bytes.len() {
                            return Err(T0Error::BytesBeforeData(bytes.len() - i));
                        }
                        return Ok(Step::Send(send));
                    }
                }
            }
        }
        Ok(Step::Wait)
    }

    /// Handles one procedure byte; returns the data to send, if any.
    fn procedure(&mut self, b: u8) -> Result<Option<Vec<u8>>, T0Error> {
        let ins = self.tpdu.ins();
        if b == 0x60 {
            self.nulls += 1;
            if self.nulls > self.limits.max_nulls {
                return Err(T0Error::TooManyNulls(self.nulls));
            }
            return Ok(None);
        }
        if b & 0xF0 == 0x60 || b & 0xF0 == 0x90 {
            self.state = State::Sw2(b);
            return Ok(None);
        }
        let ack = b == ins;
        let single = b == ins ^ 0xFF;
        if !ack && !single {
            return Err(T0Error::UnexpectedProcedure(b));
        }
        match self.tpdu.direction() {
            Direction::In => {
                if self.sent_body {
                    return Err(T0Error::NothingLeft(b));
                }
                if single {
                    // The body is at least 2 bytes (intake), so "one byte" is never everything.
                    return Err(T0Error::OneByteRequested);
                }
                self.sent_body = true;
                Ok(Some(self.tpdu.body.clone()))
            }
            Direction::Out => {
                let left = self.tpdu.ne().saturating_sub(self.rx.len());
                if left == 0 {
                    return Err(T0Error::NothingLeft(b));
                }
                self.state = if ack {
                    State::RxAll(left)
                } else {
                    State::RxOne
                };
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intake_cases() {
        assert_eq!(
            Tpdu::parse(&[0xA0, 0xF2, 0, 0]).unwrap().header,
            [0xA0, 0xF2, 0, 0, 0]
        );
        assert_eq!(
            Tpdu::parse(&[0xA0, 0x60, 0, 0, 0]),
            Err(Refusal::InvalidIns(0x60))
        );
        assert_eq!(
            Tpdu::parse(&[0xA0, 0x9F, 0, 0, 0]),
            Err(Refusal::InvalidIns(0x9F))
        );
        assert_eq!(
            Tpdu::parse(&[0xA0, 0xD6, 0, 0, 1, 5]),
            Err(Refusal::OneDataByte)
        );
        assert_eq!(
            Tpdu::parse(&[0xA0, 0xD6, 0, 0, 1, 5, 0]),
            Err(Refusal::OneDataByte)
        );
        assert_eq!(
            Tpdu::parse(&[0, 0xA4, 0, 0, 0, 0, 2, 0x3F, 0]),
            Err(Refusal::Extended(9))
        );
        assert_eq!(
            Tpdu::parse(&[0, 0xA4, 0, 0, 3, 0x3F]),
            Err(Refusal::Malformed(6))
        );
        assert_eq!(Tpdu::parse(&[0, 0xA4]), Err(Refusal::Malformed(2)));
        let t = Tpdu::parse(&[0, 0xA4, 0, 4, 2, 0x3F, 0, 0x10]).unwrap();
        assert_eq!((t.body.clone(), t.stripped_le), (vec![0x3F, 0], Some(0x10)));
        assert_eq!(t.direction(), Direction::In);
    }
}
