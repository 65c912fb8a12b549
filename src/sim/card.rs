//! The card side of ISO 7816-3 T=0, byte by byte, in front of a [`GsmSim`] (class `A0`) and,
//! for USIMs, a [`Uicc`] (classes `00`/`80`). Sans-IO: bytes from the terminal go in through
//! [`SimCard::receive`] in chunks of any size; the bytes the card sends come back.
//!
//! Behaviour:
//! - Header (5 bytes) first. CLA `A0` goes to the GSM face. Other classes go to the UICC face
//!   of a USIM ([`uicc::command`] checks them) and get `6E 00` on a SIM; unknown INS (incl. the
//!   SAT commands) → `6D 00`; all at once, without ACK.
//! - UICC incoming commands: P3 = `00` → `67 00`, except VERIFY/UNBLOCK PIN, which then run as
//!   case 1 (retry counter query). Case 4 commands (SELECT with FCP, AUTHENTICATE) answer
//!   `61 xx` after their data; wrong Le of an outgoing one → `6C xx`, no data.
//! - Incoming commands (SELECT, UPDATE BINARY/RECORD, SEEK, INCREASE, the CHV commands, RUN
//!   GSM ALGORITHM): a wrong P3 of a fixed-length command → `67 XX` at once (XX = the right
//!   length); P3 = `00` for a variable-length one → `67 00`. Otherwise ACK (= INS), collect P3
//!   bytes, execute, answer SW — after `t0.nulls` NULLs (`60`) for the slow commands RUN GSM
//!   ALGORITHM, UPDATE BINARY and UPDATE RECORD, whatever their outcome.
//! - Outgoing commands (STATUS, READ BINARY/RECORD, GET RESPONSE): executed at the header; on
//!   success `INS ‖ data ‖ SW`, on error only the SW. With `t0.single_byte_out` the first
//!   ⌈n/2⌉ data bytes each follow a `~INS` (`INS ^ FF`), then come one NULL, `INS` and the
//!   rest (so a terminal sees both procedures in one exchange).
//! - Case 1 (INVALIDATE, REHABILITATE, SLEEP): SW at once (`67 00` if P3 ≠ 0).
//! - `t0.trailing_garbage`: one junk byte ([`JUNK`]) after every SW2.
//! - A card is created powered off and ignores bytes until [`SimCard::reset`].

use std::time::Duration;

use super::euicc::Euicc;
use super::fs::{sw_p3, Answer, GsmSim};
use super::profile::{CardKind, CardProfile, T0Quirks};
use super::uicc::{self, Dir, Uicc};

/// NULL procedure byte.
pub const NULL: u8 = 0x60;
/// While a slow function runs (an eUICC enabling a profile), a NULL byte this often: well
/// inside the pool's 1000 ms reply time.
pub const NULL_EVERY: Duration = Duration::from_millis(200);

/// Bytes the card sends `after` the previous burst (or after the terminal's last byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    pub after: Duration,
    pub bytes: Vec<u8>,
}
/// The byte appended after SW2 when `t0.trailing_garbage` is set.
pub const JUNK: u8 = 0xEE;

/// How a command's data travel in T=0 (GSM 11.11 §9.2).
enum Xfer {
    /// Terminal → card; `Some(n)` = P3 must be n.
    In(Option<u8>),
    Out,
    Case1,
    Unknown,
}

fn xfer(ins: u8) -> Xfer {
    match ins {
        0xA4 => Xfer::In(Some(2)),
        0x32 => Xfer::In(Some(3)),
        0x20 | 0x26 | 0x28 => Xfer::In(Some(8)),
        0x24 | 0x2C | 0x88 => Xfer::In(Some(16)),
        0xD6 | 0xDC | 0xA2 => Xfer::In(None),
        0xF2 | 0xB0 | 0xB2 | 0xC0 => Xfer::Out,
        0x04 | 0x44 | 0xFA => Xfer::Case1,
        _ => Xfer::Unknown,
    }
}

fn is_slow(ins: u8) -> bool {
    matches!(ins, 0x88 | 0xD6 | 0xDC)
}

/// One simulated SIM with its T=0 state.
#[derive(Debug, Clone)]
pub struct SimCard {
    profile: CardProfile,
    sim: GsmSim,
    /// The UICC face of a USIM.
    uicc: Option<Uicc>,
    /// An eUICC: its profiles, each with both faces (then `sim` and `uicc` are unused).
    euicc: Option<Euicc>,
    powered: bool,
    hdr: [u8; 5],
    hdr_len: usize,
    /// `Some` while collecting the incoming data of the command in `hdr`.
    data: Option<Vec<u8>>,
    /// The wait before the last burst of a slow function.
    tail: Duration,
}

fn wrong_class() -> Answer {
    Answer {
        data: Vec::new(),
        sw: uicc::SW_WRONG_CLASS,
    }
}

impl SimCard {
    /// A card built from `profile`, powered off. Call [`CardProfile::validate`] first for
    /// user-supplied profiles: invalid parts are skipped here.
    pub fn new(profile: CardProfile) -> SimCard {
        let sim = GsmSim::new(&profile);
        let uicc = (profile.kind == CardKind::Usim).then(|| Uicc::new(&profile));
        let euicc = match (&profile.kind, &profile.euicc) {
            (CardKind::Euicc, Some(p)) => Some(Euicc::new(&profile, p)),
            _ => None,
        };
        SimCard {
            profile,
            sim,
            uicc,
            euicc,
            powered: false,
            hdr: [0; 5],
            hdr_len: 0,
            data: None,
            tail: Duration::ZERO,
        }
    }

    pub fn atr(&self) -> &[u8] {
        &self.profile.atr
    }

    /// Power-up + reset: clears T=0 state, current DF = MF, no EF selected, CHV verification
    /// forgotten, nothing pending for GET RESPONSE. Returns the ATR.
    pub fn reset(&mut self) -> Vec<u8> {
        self.powered = true;
        self.hdr_len = 0;
        self.data = None;
        self.sim.reset();
        if let Some(u) = &mut self.uicc {
            u.reset();
        }
        if let Some(e) = &mut self.euicc {
            e.reset();
        }
        self.profile.atr.clone()
    }

    /// Power-down: the card ignores bytes until the next [`reset`](Self::reset).
    pub fn power_off(&mut self) {
        self.powered = false;
        self.hdr_len = 0;
        self.data = None;
    }

    pub fn is_powered(&self) -> bool {
        self.powered
    }

    pub fn profile(&self) -> &CardProfile {
        &self.profile
    }

    /// Replaces the T=0 quirks (e.g. the pool-wide `nulls` override).
    pub fn set_quirks(&mut self, t0: T0Quirks) {
        self.profile.t0 = t0;
    }

    /// The file system and CHV state, for inspection.
    pub fn sim(&self) -> &GsmSim {
        &self.sim
    }

    /// The UICC face (USIMs, and the face an eUICC shows now), for inspection.
    pub fn uicc(&self) -> Option<&Uicc> {
        match &self.euicc {
            Some(e) => Some(e.uicc()),
            None => self.uicc.as_ref(),
        }
    }

    /// The eUICC state (eUICCs only), for inspection.
    pub fn euicc(&self) -> Option<&Euicc> {
        self.euicc.as_ref()
    }

    /// Bytes from the terminal, in chunks of any size. Returns the bytes the card sends in
    /// answer (empty while it waits for more, or when powered off), as if at once.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.receive_paced(bytes)
            .into_iter()
            .flat_map(|b| b.bytes)
            .collect()
    }

    /// [`receive`](Self::receive) with the card's own timing: a slow function (an eUICC
    /// enabling a profile) answers in bursts, a NULL every [`NULL_EVERY`] while it works.
    pub fn receive_paced(&mut self, bytes: &[u8]) -> Vec<Burst> {
        let mut bursts = Vec::new();
        let mut out = Vec::new();
        self.tail = Duration::ZERO;
        if !self.powered {
            return bursts;
        }
        for &b in bytes {
            if let Some(data) = &mut self.data {
                data.push(b);
                if data.len() == usize::from(self.hdr[4]) {
                    let data = self.data.take().unwrap_or_default();
                    self.finish_in(&data, &mut out, &mut bursts);
                }
                continue;
            }
            self.hdr[self.hdr_len] = b;
            self.hdr_len += 1;
            if self.hdr_len == 5 {
                self.hdr_len = 0;
                self.header(&mut out);
            }
        }
        if !out.is_empty() {
            bursts.push(Burst {
                after: self.tail,
                bytes: out,
            });
        }
        bursts
    }

    fn has_uicc(&self) -> bool {
        self.uicc.is_some() || self.euicc.is_some()
    }

    /// Runs a UICC command on the face the card shows.
    fn uicc_execute(&mut self, data: &[u8]) -> Answer {
        match (&mut self.euicc, &mut self.uicc) {
            (Some(e), _) => e.execute(&self.hdr, data),
            (None, Some(u)) => u.execute(&self.hdr, data),
            (None, None) => Answer {
                data: Vec::new(),
                sw: uicc::SW_WRONG_CLASS,
            },
        }
    }

    /// Runs a class `A0` command on the GSM face (`None`: there is none).
    fn gsm_execute(&mut self, data: &[u8]) -> Option<Answer> {
        match &mut self.euicc {
            Some(e) => e.gsm().map(|g| g.execute(&self.hdr, data)),
            None => Some(self.sim.execute(&self.hdr, data)),
        }
    }

    fn has_gsm(&mut self) -> bool {
        match &mut self.euicc {
            Some(e) => e.gsm().is_some(),
            None => true,
        }
    }

    fn sw(&self, sw: [u8; 2], out: &mut Vec<u8>) {
        out.extend_from_slice(&sw);
        if self.profile.t0.trailing_garbage {
            out.push(JUNK);
        }
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        let [cla, ins, _, _, p3] = self.hdr;
        if cla != 0xA0 {
            return match self.has_uicc() {
                true => self.uicc_header(out),
                false => self.sw([0x6E, 0x00], out),
            };
        }
        if !self.has_gsm() {
            return self.sw([0x6E, 0x00], out);
        }
        match xfer(ins) {
            Xfer::Unknown => self.sw([0x6D, 0x00], out),
            Xfer::In(Some(n)) if p3 != n => self.sw(sw_p3(n.into()), out),
            Xfer::In(None) if p3 == 0 => self.sw(sw_p3(0), out),
            Xfer::In(_) => {
                out.push(ins);
                self.data = Some(Vec::with_capacity(p3.into()));
            }
            Xfer::Case1 => {
                let a = self.gsm_execute(&[]).unwrap_or_else(wrong_class);
                self.sw(a.sw, out);
            }
            Xfer::Out => {
                let a = self.gsm_execute(&[]).unwrap_or_else(wrong_class);
                self.send_out(ins, &a, out);
                self.sw(a.sw, out);
            }
        }
    }

    fn uicc_header(&mut self, out: &mut Vec<u8>) {
        let [_, ins, _, _, p3] = self.hdr;
        match uicc::command(&self.hdr) {
            Err(sw) => self.sw(sw, out),
            Ok((_, Dir::Out)) => {
                let a = self.uicc_execute(&[]);
                self.send_out(ins, &a, out);
                self.sw(a.sw, out);
            }
            Ok((_, Dir::InOrNone | Dir::None)) if p3 == 0 => {
                let a = self.uicc_execute(&[]);
                self.sw(a.sw, out);
            }
            Ok((_, Dir::None)) => self.sw(uicc::SW_WRONG_LENGTH, out),
            Ok((_, Dir::In | Dir::InOrNone)) if p3 == 0 => self.sw(uicc::SW_WRONG_LENGTH, out),
            Ok((_, Dir::In | Dir::InOrNone)) => {
                out.push(ins);
                self.data = Some(Vec::with_capacity(p3.into()));
            }
        }
    }

    fn finish_in(&mut self, data: &[u8], out: &mut Vec<u8>, bursts: &mut Vec<Burst>) {
        let a = if self.hdr[0] != 0xA0 {
            self.uicc_execute(data)
        } else {
            self.gsm_execute(data).unwrap_or_else(wrong_class)
        };
        let busy = self.euicc.as_mut().map_or(Duration::ZERO, Euicc::take_busy);
        if !busy.is_zero() {
            // A slow function: what is due goes out now, then a NULL every NULL_EVERY until
            // the card is done.
            if !out.is_empty() {
                bursts.push(Burst {
                    after: Duration::ZERO,
                    bytes: std::mem::take(out),
                });
            }
            let mut left = busy;
            while left > NULL_EVERY {
                bursts.push(Burst {
                    after: NULL_EVERY,
                    bytes: vec![NULL],
                });
                left -= NULL_EVERY;
            }
            self.tail = left;
        }
        if is_slow(self.hdr[1]) {
            out.extend(std::iter::repeat_n(NULL, self.profile.t0.nulls.into()));
        }
        self.sw(a.sw, out);
    }

    fn send_out(&self, ins: u8, a: &Answer, out: &mut Vec<u8>) {
        if a.data.is_empty() {
            return;
        }
        if !self.profile.t0.single_byte_out {
            out.push(ins);
            out.extend_from_slice(&a.data);
            return;
        }
        let (single, rest) = a.data.split_at(a.data.len().div_ceil(2));
        for &b in single {
            out.extend_from_slice(&[ins ^ 0xFF, b]);
        }
        if !rest.is_empty() {
            out.extend_from_slice(&[NULL, ins]);
            out.extend_from_slice(rest);
        }
    }
}
