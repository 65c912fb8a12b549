//! What each card is (issue 20 §2, issue 24 §3): its type (`sim`, `usim`, `euicc`), ICCID,
//! IMSI, SPN, MSISDN, the state of PIN1 and PUK1, and an eUICC's EID — read by sans-IO
//! sequences right after the card was started, without a PIN and without using up a try.
//!
//! Two parts, so that a scan costs at most one exchange per card more than the identity read
//! of before (an exchange: one command and its answer over the pool; a GET RESPONSE is one):
//! - The first read ([`Reading::new`]; the daemon's scan, `scan --pool`, identity searches and
//!   bindings, through [`super::Lease::read_identity`]): ICCID, type, PIN1/PUK1, IMSI.
//!   - UICC first: READ BINARY of EF.ICCID by SFI `02` (`00 B0 82 00 0A`). A GSM SIM refuses
//!     class `00` (`6E 00`/`6D 00`): then the GSM 11.11 sequence (class `A0`).
//!   - USIM: SELECT ADF.USIM by its partial AID (`A0000000871002`, P2 `0C`); `euicc` instead
//!     when the ATR says so ([`atr_says_euicc`]); PIN1's state by VERIFY *without data*
//!     (`00 20 00 01`: `63 Cx` = enabled, not verified, x tries; `69 83` blocked; `90 00` =
//!     no verification needed, which right after a reset means disabled), PUK1's tries by
//!     UNBLOCK without data (`00 2C 00 01`); EF.IMSI by SFI `07`. Five exchanges.
//!   - SIM: EF.ICCID, DF.GSM with its GET RESPONSE (CHV1 enabled, its tries and UNBLOCK
//!     CHV1's, GSM 11.11 §9.2.1), EF.IMSI (`98 04` = CHV1 not verified). Seven, the probe
//!     included.
//! - The details ([`Reading::details`], [`super::Cards::read_details`]): what only a write
//!   changes. EF.SPN (6F46), EF.MSISDN (6F40, skipped while PIN1 is enabled and not
//!   verified: it needs PIN1); on a UICC the EID: MANAGE CHANNEL open, SELECT ISD-R on that
//!   channel, GetEID (`BF3E`) by STORE DATA, GET RESPONSE, MANAGE CHANNEL close — no channel
//!   is left open; an ISD-R that answers makes the card an `euicc`.
//! - No VERIFY with data is ever sent: reading these facts uses no PIN try.
//! - What stays the same for a card as long as nobody else uses it — type, SPN, MSISDN, EID —
//!   is taken from [`Stable`] when the ICCID read matches, so a repeated scan of an untouched
//!   card reads only ICCID, PIN state and IMSI, and no details again.

use serde::{Deserialize, Serialize};

/// ISD-R of an SGP.22 eUICC.
pub const ISDR_AID: [u8; 16] = [
    0xA0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x89, 0x00, 0x00, 0x01, 0x00,
];
/// ADF.USIM's AID up to the application code: any USIM answers to it as a partial AID.
const USIM_AID_PREFIX: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x87, 0x10, 0x02];
/// STORE DATA of GetEID (`BF3E 03 5C 01 5A`), one block.
const GET_EID: [u8; 6] = [0xBF, 0x3E, 0x03, 0x5C, 0x01, 0x5A];

/// A card's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardType {
    /// GSM 11.11 only (class `A0`).
    Sim,
    /// A UICC with ADF.USIM.
    Usim,
    /// An SGP.22 eUICC (an ISD-R answers).
    Euicc,
}

impl CardType {
    pub fn name(self) -> &'static str {
        match self {
            CardType::Sim => "sim",
            CardType::Usim => "usim",
            CardType::Euicc => "euicc",
        }
    }
}

/// PIN1 (CHV1) as read. `null` where the card did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinState {
    pub enabled: Option<bool>,
    pub verified: Option<bool>,
    pub tries: Option<u8>,
}

/// PUK1 (UNBLOCK CHV1) as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PukState {
    pub tries: Option<u8>,
}

/// What a card is, besides ATR, ICCID and IMSI. Every key always present (`null` where
/// unknown); `hidden` names the fields PIN1 keeps from being read (`"imsi"`, `"msisdn"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(rename = "type", default)]
    pub kind: Option<CardType>,
    #[serde(default)]
    pub spn: Option<String>,
    #[serde(default)]
    pub msisdn: Option<String>,
    #[serde(default)]
    pub eid: Option<String>,
    #[serde(default)]
    pub pin1: PinState,
    #[serde(default)]
    pub puk1: PukState,
    #[serde(default)]
    pub hidden: Vec<String>,
}

impl Facts {
    /// Why `field` is unknown, when PIN1 hides it.
    pub fn hides(&self, field: &str) -> bool {
        self.hidden.iter().any(|h| h == field)
    }
}

/// What was read from a card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub facts: Facts,
    /// SPN, MSISDN and EID are in `facts` (read, or taken over as known): false after a first
    /// read, which leaves them to [`Reading::details`].
    pub details: bool,
}

/// The facts of a card that change only when someone writes it: reused when the ICCID read
/// is this one and nobody but scans used the card since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stable {
    pub iccid: String,
    pub kind: CardType,
    pub spn: Option<String>,
    pub msisdn: Option<String>,
    pub eid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    UIccid,
    UAdf,
    /// The details' first command on a UICC with a USIM (the card was started anew).
    DAdf,
    /// The details' first commands on a SIM.
    DSelGsm,
    DSelDcs,
    UVerify,
    UUnblock,
    UImsi,
    USelSpn,
    UReadSpn,
    USelMsisdn,
    UReadMsisdn,
    EOpen,
    ESelect,
    EStore,
    EGet(u8),
    EClose,
    SSelIccid,
    SReadIccid,
    SSelGsm,
    SSelDcs,
    SGetGsm(u8),
    SSelImsi,
    SReadImsi,
    SSelSpn,
    SReadSpn,
    SSelTelecom,
    SSelMsisdn,
    SGetMsisdn(u8),
    SReadMsisdn(u8),
    Done,
}

/// Why reading stopped: an answer without a status word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: card answered {}", hex::encode_upper(.got))]
pub struct BadAnswer {
    pub what: &'static str,
    pub got: Vec<u8>,
}

/// The reading sequence: ask [`Reading::command`] what to send, feed the card's answer
/// (`data ‖ SW1 SW2`) to [`Reading::answer`], until there is nothing more to send. Status
/// words are facts here, not errors: a file that cannot be read leaves its field `null`
/// (and a `69 82`/`98 04` names it in `hidden`).
#[derive(Debug, Clone)]
pub struct Reading {
    step: Step,
    /// The length the card named for the command to send again (`6Cxx`/`67xx`), once.
    le: Option<u8>,
    retried: bool,
    /// The probe by class `00` was skipped (the card was known to be a SIM).
    probe_skipped: bool,
    channel: u8,
    stable: Option<Stable>,
    /// The stable facts were taken over: skip reading them.
    reused: bool,
    /// The ATR says eUICC (see [`atr_says_euicc`]).
    euicc_atr: bool,
    /// This is a reading of the details (SPN, MSISDN, EID), not a first read.
    details: bool,
    read: Read,
    exchanges: u32,
}

impl Reading {
    /// The first read, right after the card (ATR `atr`) was started: ICCID, type, PIN1/PUK1,
    /// IMSI; `stable`: what is known of it, if that can be trusted (nobody used the card
    /// since), whose SPN, MSISDN and EID are then taken over. Without it they are left to
    /// [`Reading::details`].
    pub fn new(atr: &[u8], stable: Option<Stable>) -> Reading {
        let sim = stable.as_ref().is_some_and(|s| s.kind == CardType::Sim);
        Reading {
            step: if sim { Step::SSelIccid } else { Step::UIccid },
            le: None,
            retried: false,
            probe_skipped: sim,
            channel: 0,
            stable,
            reused: false,
            euicc_atr: atr_says_euicc(atr),
            details: false,
            read: Read::default(),
            exchanges: 0,
        }
    }

    /// The details of a card a first read found to be `kind` with PIN1 `pin1`, right after it
    /// was started (again): SPN, MSISDN (unless PIN1 hides it) and, on a UICC, the EID.
    pub fn details(kind: Option<CardType>, pin1: PinState) -> Reading {
        let mut r = Reading::new(&[], None);
        r.details = true;
        r.read.facts.kind = kind;
        r.read.facts.pin1 = pin1;
        r.step = match kind {
            Some(CardType::Sim) => Step::DSelGsm,
            Some(CardType::Usim | CardType::Euicc) => Step::DAdf,
            None => Step::EOpen,
        };
        r
    }

    /// What to send next, named for errors; `None` when done.
    pub fn command(&self) -> Option<(&'static str, Vec<u8>)> {
        let gsm_select = |fid: [u8; 2]| vec![0xA0, 0xA4, 0x00, 0x00, 0x02, fid[0], fid[1]];
        let uicc_select = |fid: [u8; 2]| vec![0x00, 0xA4, 0x00, 0x0C, 0x02, fid[0], fid[1]];
        let le = |default: u8| self.le.unwrap_or(default);
        let ch = self.channel;
        Some(match self.step {
            Step::UIccid => (
                "READ BINARY EF.ICCID (SFI)",
                vec![0x00, 0xB0, 0x82, 0x00, le(10)],
            ),
            Step::UAdf | Step::DAdf => {
                let mut c = vec![0x00, 0xA4, 0x04, 0x0C, USIM_AID_PREFIX.len() as u8];
                c.extend_from_slice(&USIM_AID_PREFIX);
                ("SELECT ADF.USIM", c)
            }
            Step::DSelGsm => ("SELECT DF.GSM", gsm_select([0x7F, 0x20])),
            Step::DSelDcs => ("SELECT DF.DCS1800", gsm_select([0x7F, 0x21])),
            Step::UVerify => ("VERIFY PIN1 (no data)", vec![0x00, 0x20, 0x00, 0x01]),
            Step::UUnblock => ("UNBLOCK PIN1 (no data)", vec![0x00, 0x2C, 0x00, 0x01]),
            Step::UImsi => (
                "READ BINARY EF.IMSI (SFI)",
                vec![0x00, 0xB0, 0x87, 0x00, le(9)],
            ),
            Step::USelSpn => ("SELECT EF.SPN", uicc_select([0x6F, 0x46])),
            Step::UReadSpn => ("READ BINARY EF.SPN", vec![0x00, 0xB0, 0x00, 0x00, le(17)]),
            Step::USelMsisdn => ("SELECT EF.MSISDN", uicc_select([0x6F, 0x40])),
            Step::UReadMsisdn => ("READ RECORD EF.MSISDN", vec![0x00, 0xB2, 0x01, 0x04, le(0)]),
            Step::EOpen => ("MANAGE CHANNEL open", vec![0x00, 0x70, 0x00, 0x00, 0x01]),
            Step::ESelect => {
                let mut c = vec![cla(ch, false), 0xA4, 0x04, 0x00, ISDR_AID.len() as u8];
                c.extend_from_slice(&ISDR_AID);
                ("SELECT ISD-R", c)
            }
            Step::EStore => {
                let mut c = vec![cla(ch, true), 0xE2, 0x91, 0x00, GET_EID.len() as u8];
                c.extend_from_slice(&GET_EID);
                ("STORE DATA GetEID", c)
            }
            Step::EGet(n) => ("GET RESPONSE GetEID", vec![cla(ch, false), 0xC0, 0, 0, n]),
            Step::EClose => ("MANAGE CHANNEL close", vec![0x00, 0x70, 0x80, ch, 0x00]),
            Step::SSelIccid => ("SELECT EF.ICCID", gsm_select([0x2F, 0xE2])),
            Step::SReadIccid => ("READ BINARY EF.ICCID", vec![0xA0, 0xB0, 0x00, 0x00, le(10)]),
            Step::SSelGsm => ("SELECT DF.GSM", gsm_select([0x7F, 0x20])),
            Step::SSelDcs => ("SELECT DF.DCS1800", gsm_select([0x7F, 0x21])),
            Step::SGetGsm(n) => ("GET RESPONSE DF.GSM", vec![0xA0, 0xC0, 0x00, 0x00, n]),
            Step::SSelImsi => ("SELECT EF.IMSI", gsm_select([0x6F, 0x07])),
            Step::SReadImsi => ("READ BINARY EF.IMSI", vec![0xA0, 0xB0, 0x00, 0x00, le(9)]),
            Step::SSelSpn => ("SELECT EF.SPN", gsm_select([0x6F, 0x46])),
            Step::SReadSpn => ("READ BINARY EF.SPN", vec![0xA0, 0xB0, 0x00, 0x00, le(17)]),
            Step::SSelTelecom => ("SELECT DF.TELECOM", gsm_select([0x7F, 0x10])),
            Step::SSelMsisdn => ("SELECT EF.MSISDN", gsm_select([0x6F, 0x40])),
            Step::SGetMsisdn(n) => ("GET RESPONSE EF.MSISDN", vec![0xA0, 0xC0, 0x00, 0x00, n]),
            Step::SReadMsisdn(n) => ("READ RECORD EF.MSISDN", vec![0xA0, 0xB2, 0x01, 0x04, n]),
            Step::Done => return None,
        })
    }

    /// The card's answer to the last command.
    pub fn answer(&mut self, resp: &[u8]) -> Result<(), BadAnswer> {
        let what = self.command().map_or("", |(w, _)| w);
        let (data, sw) = match resp {
            [data @ .., a, b] => (data, [*a, *b]),
            _ => {
                return Err(BadAnswer {
                    what,
                    got: resp.to_vec(),
                })
            }
        };
        self.exchanges += 1;
        // A read with the wrong length: once more with the length the card names.
        let is_read = matches!(
            self.step,
            Step::UIccid
                | Step::UImsi
                | Step::UReadSpn
                | Step::UReadMsisdn
                | Step::SReadIccid
                | Step::SReadImsi
                | Step::SReadSpn
        );
        if is_read && matches!(sw[0], 0x6C | 0x67) && sw[1] != 0 && !self.retried {
            self.le = Some(sw[1]);
            self.retried = true;
            return Ok(());
        }
        self.le = None;
        self.retried = false;
        let ok = sw == [0x90, 0x00];
        let selected = ok || matches!(sw[0], 0x61 | 0x9F);
        let r = &mut self.read;
        self.step = match self.step {
            Step::UIccid if ok => {
                r.iccid = Some(crate::identity::decode_iccid(data));
                Step::UAdf
            }
            // Class 00 refused: a GSM SIM.
            Step::UIccid if matches!(sw[0], 0x6E | 0x6D) => {
                r.facts.kind = Some(CardType::Sim);
                Step::SSelIccid
            }
            Step::UIccid => Step::UAdf,
            Step::UAdf if selected => {
                r.facts.kind = Some(if self.euicc_atr {
                    CardType::Euicc
                } else {
                    CardType::Usim
                });
                Step::UVerify
            }
            // A UICC without a USIM (an eUICC with no profile enabled?).
            Step::UAdf => {
                if self.euicc_atr {
                    r.facts.kind = Some(CardType::Euicc);
                }
                self.after_identity()
            }
            Step::DAdf if selected => Step::USelSpn,
            Step::DAdf => Step::EOpen,
            Step::DSelGsm | Step::DSelDcs if selected || sw[0] == 0x9F => Step::SSelSpn,
            Step::DSelGsm => Step::DSelDcs,
            Step::DSelDcs => Step::Done,
            Step::UVerify => {
                match sw {
                    [0x63, x] if x & 0xF0 == 0xC0 => {
                        r.facts.pin1 = PinState {
                            enabled: Some(true),
                            verified: Some(false),
                            tries: Some(x & 0x0F),
                        }
                    }
                    [0x69, 0x83] => {
                        r.facts.pin1 = PinState {
                            enabled: Some(true),
                            verified: Some(false),
                            tries: Some(0),
                        }
                    }
                    // No verification needed right after a reset: PIN1 is disabled.
                    [0x90, 0x00] => {
                        r.facts.pin1.enabled = Some(false);
                        r.facts.pin1.verified = Some(false);
                    }
                    _ => {}
                }
                Step::UUnblock
            }
            Step::UUnblock => {
                r.facts.puk1.tries = match sw {
                    [0x63, x] if x & 0xF0 == 0xC0 => Some(x & 0x0F),
                    [0x69, 0x83] => Some(0),
                    _ => None,
                };
                Step::UImsi
            }
            Step::UImsi => {
                if ok {
                    r.imsi = crate::identity::decode_imsi(data);
                } else if matches!(sw, [0x69, 0x82]) {
                    r.facts.hidden.push("imsi".into());
                }
                self.after_identity()
            }
            Step::USelSpn if selected => Step::UReadSpn,
            Step::USelSpn => self.msisdn_step(Step::USelMsisdn),
            Step::UReadSpn => {
                if ok {
                    r.facts.spn = decode_spn(data);
                }
                self.msisdn_step(Step::USelMsisdn)
            }
            Step::USelMsisdn if selected => Step::UReadMsisdn,
            Step::USelMsisdn => Step::EOpen,
            Step::UReadMsisdn => {
                if ok {
                    r.facts.msisdn = decode_msisdn(data);
                } else if matches!(sw, [0x69, 0x82]) {
                    r.facts.hidden.push("msisdn".into());
                }
                Step::EOpen
            }
            Step::EOpen => match data {
                [c] if ok && (1..=19).contains(c) => {
                    self.channel = *c;
                    Step::ESelect
                }
                _ => Step::Done,
            },
            Step::ESelect if selected => {
                r.facts.kind = Some(CardType::Euicc);
                Step::EStore
            }
            Step::ESelect => Step::EClose,
            Step::EStore if sw[0] == 0x61 => Step::EGet(sw[1]),
            Step::EStore => {
                if ok {
                    r.facts.eid = parse_eid(data);
                }
                Step::EClose
            }
            Step::EGet(_) => {
                if ok {
                    r.facts.eid = parse_eid(data);
                }
                Step::EClose
            }
            Step::EClose => Step::Done,
            Step::SSelIccid if selected => Step::SReadIccid,
            Step::SSelIccid => Step::SSelGsm,
            Step::SReadIccid => {
                if ok {
                    r.iccid = Some(crate::identity::decode_iccid(data));
                }
                if self.probe_skipped && !self.matches_stable() {
                    // Not the SIM known here: read it as an unknown card, probe included.
                    self.stable = None;
                    self.probe_skipped = false;
                    self.read = Read::default();
                    Step::UIccid
                } else {
                    Step::SSelGsm
                }
            }
            Step::SSelGsm | Step::SSelDcs if sw[0] == 0x9F => Step::SGetGsm(sw[1]),
            Step::SSelGsm | Step::SSelDcs if selected => Step::SSelImsi,
            Step::SSelGsm => Step::SSelDcs,
            Step::SSelDcs => Step::Done,
            Step::SGetGsm(_) => {
                if ok {
                    gsm_pin_status(data, &mut r.facts);
                }
                Step::SSelImsi
            }
            Step::SSelImsi if selected => Step::SReadImsi,
            Step::SSelImsi => self.after_identity(),
            Step::SReadImsi => {
                if ok {
                    r.imsi = crate::identity::decode_imsi(data);
                    if r.facts.pin1.enabled == Some(true) {
                        // A CHV1-protected file read: CHV1 is verified.
                        r.facts.pin1.verified = Some(true);
                    }
                } else if matches!(sw, [0x98, 0x04]) {
                    r.facts.hidden.push("imsi".into());
                }
                self.after_identity()
            }
            Step::SSelSpn if selected => Step::SReadSpn,
            Step::SSelSpn => self.msisdn_step(Step::SSelTelecom),
            Step::SReadSpn => {
                if ok {
                    r.facts.spn = decode_spn(data);
                }
                self.msisdn_step(Step::SSelTelecom)
            }
            Step::SSelTelecom if selected => Step::SSelMsisdn,
            Step::SSelTelecom => Step::Done,
            Step::SSelMsisdn if sw[0] == 0x9F => Step::SGetMsisdn(sw[1]),
            Step::SSelMsisdn => Step::Done,
            // GSM 11.11 §9.2.1: byte 15 of an EF's response is its record length.
            Step::SGetMsisdn(_) => match data.get(14) {
                Some(&len) if ok && len > 0 => Step::SReadMsisdn(len),
                _ => Step::Done,
            },
            Step::SReadMsisdn(_) => {
                if ok {
                    r.facts.msisdn = decode_msisdn(data);
                } else if matches!(sw, [0x98, 0x04]) {
                    r.facts.hidden.push("msisdn".into());
                }
                Step::Done
            }
            Step::Done => Step::Done,
        };
        Ok(())
    }

    fn matches_stable(&self) -> bool {
        match (&self.stable, &self.read.iccid) {
            (Some(s), Some(i)) => &s.iccid == i,
            _ => false,
        }
    }

    /// After ICCID, PIN state and IMSI: the stable facts taken over when they are known, else
    /// the first read is over (the details read them).
    fn after_identity(&mut self) -> Step {
        if self.matches_stable() {
            let s = self.stable.take().expect("matched");
            // A USIM found now but known as an eUICC is one (its ISD-R is not probed again).
            if s.kind == CardType::Euicc || self.read.facts.kind.is_none() {
                self.read.facts.kind = Some(s.kind);
            }
            let pin = self.read.facts.pin1;
            if s.msisdn.is_none() && pin.enabled == Some(true) && pin.verified != Some(true) {
                self.read.facts.hidden.push("msisdn".into());
            }
            self.read.facts.spn = s.spn;
            self.read.facts.msisdn = s.msisdn;
            self.read.facts.eid = s.eid;
            self.reused = true;
            self.read.details = true;
            return Step::Done;
        }
        // SPN, MSISDN and EID are the details' (a scan is not slowed by them); what PIN1
        // hides is known already.
        let pin = self.read.facts.pin1;
        if pin.enabled == Some(true) && pin.verified != Some(true) {
            self.read.facts.hidden.push("msisdn".into());
        }
        Step::Done
    }

    /// EF.MSISDN needs PIN1: while it is enabled and not verified it is not read, only named.
    fn msisdn_step(&mut self, next: Step) -> Step {
        let pin = self.read.facts.pin1;
        if pin.enabled == Some(true) && pin.verified != Some(true) {
            self.read.facts.hidden.push("msisdn".into());
            return if next == Step::USelMsisdn {
                Step::EOpen
            } else {
                Step::Done
            };
        }
        next
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Exchanges answered so far.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// Whether type, SPN, MSISDN and EID were taken over rather than read.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// What was read (call once [`Reading::command`] answers `None`).
    pub fn into_read(mut self) -> Read {
        self.read.details |= self.details;
        self.read
    }
}

/// Whether the ATR says the card is an eUICC: the first TB after T=15 with b8 and b2 set
/// (TS 102 221 §6.3.3, "eUICC-related functions supported"; Android reads it so too). An
/// eUICC that does not say so is found by the details' ISD-R probe.
pub fn atr_says_euicc(atr: &[u8]) -> bool {
    let Some(&t0) = atr.get(1) else { return false };
    let (mut y, mut i, mut after_t15) = (t0 >> 4, 2usize, false);
    loop {
        let (ta, tb, tc, td) = (y & 1 != 0, y & 2 != 0, y & 4 != 0, y & 8 != 0);
        let tb_at = i + usize::from(ta);
        if after_t15 {
            return tb && atr.get(tb_at).is_some_and(|&b| b & 0x82 == 0x82);
        }
        i += usize::from(ta) + usize::from(tb) + usize::from(tc);
        if !td {
            return false;
        }
        let Some(&d) = atr.get(i) else { return false };
        i += 1;
        after_t15 = d & 0x0F == 0x0F;
        y = d >> 4;
    }
}

/// The class byte of a command on logical channel `ch` (TS 102 221 §10.1.1): basic channels
/// 0-3 in b1-b2, extended 4-19 as `4X`; `proprietary` sets b8 (STORE DATA is `8X`).
pub fn cla(ch: u8, proprietary: bool) -> u8 {
    let base = if ch <= 3 { ch } else { 0x40 | (ch - 4) };
    if proprietary {
        base | 0x80
    } else {
        base
    }
}

/// The DF response of GSM 11.11 §9.2.1: byte 14 b8 = 1 when CHV1 is disabled, bytes 19 and 20
/// the status of CHV1 and UNBLOCK CHV1 (b8 initialised, b4-b1 tries left).
fn gsm_pin_status(d: &[u8], f: &mut Facts) {
    let (Some(&fchar), Some(&chv1), Some(&unblock1)) = (d.get(13), d.get(18), d.get(19)) else {
        return;
    };
    let enabled = fchar & 0x80 == 0;
    f.pin1 = PinState {
        enabled: Some(enabled),
        verified: Some(false),
        tries: (chv1 & 0x80 != 0).then_some(chv1 & 0x0F),
    };
    f.puk1.tries = (unblock1 & 0x80 != 0).then_some(unblock1 & 0x0F);
}

/// EF.SPN (TS 31.102 §4.2.12, GSM 11.11 §10.3.11): display condition, then the name in the
/// GSM 7-bit default alphabet, unpacked, `FF`-padded. `None` when empty.
pub fn decode_spn(d: &[u8]) -> Option<String> {
    let name = d.get(1..)?;
    if name.first() == Some(&0x80) {
        // UCS2
        let s: String = char::decode_utf16(
            name[1..]
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0xFFFF),
        )
        .map(|c| c.unwrap_or('?'))
        .collect();
        return (!s.is_empty()).then_some(s);
    }
    let s: String = name
        .iter()
        .take_while(|&&b| b != 0xFF)
        .map(|&b| match b {
            0x00 => '@',
            0x02 => '$',
            0x11 => '_',
            0x20..=0x7E if !matches!(b, 0x24 | 0x40 | 0x5B..=0x60 | 0x7B..=0x7E) => char::from(b),
            _ => '?',
        })
        .collect();
    let s = s.trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

/// An ADN-style record of EF.MSISDN (TS 31.102 §4.2.26): its last 14 bytes are the length of
/// the BCD number (with TON/NPI), TON/NPI (`+` when international), 10 bytes of BCD digits.
/// `None` for an empty record.
pub fn decode_msisdn(rec: &[u8]) -> Option<String> {
    if rec.len() < 14 {
        return None;
    }
    let t = &rec[rec.len() - 14..];
    let len = usize::from(t[0]);
    if !(2..=11).contains(&len) {
        return None;
    }
    let digits: String = t[2..1 + len]
        .iter()
        .flat_map(|b| [b & 0x0F, b >> 4])
        .take_while(|&n| n != 0x0F)
        .map(|n| match n {
            0..=9 => char::from(b'0' + n),
            0xA => '*',
            0xB => '#',
            _ => '?',
        })
        .collect();
    if digits.is_empty() {
        return None;
    }
    let intl = t[1] & 0x70 == 0x10;
    Some(if intl { format!("+{digits}") } else { digits })
}

/// The EID from GetEID's answer (`BF3E L 5A 10 EID`, SGP.22 §5.7.20): 32 hex digits.
pub fn parse_eid(d: &[u8]) -> Option<String> {
    let rest = d.strip_prefix(&[0xBF, 0x3E])?;
    let (&len, inner) = rest.split_first()?;
    let inner = inner.get(..usize::from(len))?;
    match inner {
        [0x5A, 0x10, eid @ ..] if eid.len() >= 16 => Some(hex::encode_upper(&eid[..16])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// ATRs of the simulated USIMs and eUICCs (the eUICC's says so: TB3 `82` after T=15).
    const USIM: &str = "3B8B801FC773696D706F6F6C5553494DBA";
    const EUICC: &str = "3B8C803FC78273696D706F6F6C655549434364";

    /// Runs a reading against a table of (command, answer); unknown commands `6A 82`. Answers
    /// the commands sent.
    fn run_reading(mut r: Reading, table: &[(&str, &str)]) -> (Read, Vec<String>) {
        let mut sent = Vec::new();
        while let Some((_, cmd)) = r.command() {
            let c = hex::encode_upper(&cmd);
            let a = table
                .iter()
                .find(|(k, _)| k.replace(' ', "") == c)
                .map_or("6A82", |(_, v)| *v);
            sent.push(c);
            r.answer(&h(a)).unwrap();
            assert!(sent.len() < 40, "{sent:?}");
        }
        assert_eq!(r.exchanges() as usize, sent.len());
        (r.into_read(), sent)
    }

    /// A first read of a card with ATR `atr`.
    fn run(atr: &str, stable: Option<Stable>, table: &[(&str, &str)]) -> (Read, Vec<String>) {
        run_reading(Reading::new(&h(atr), stable), table)
    }

    /// The details of what the first read `first` found.
    fn details(first: &Read, table: &[(&str, &str)]) -> (Read, Vec<String>) {
        run_reading(Reading::details(first.facts.kind, first.facts.pin1), table)
    }

    #[test]
    fn a_usim_with_pin1_enabled_shows_what_pin1_hides() {
        let iccid = hex::encode_upper(crate::identity::encode_iccid("89494400000000000306"));
        let iccid_ok = format!("{iccid}9000");
        let table = [
            ("00B082000A", iccid_ok.as_str()),
            ("00A4040C07A0000000871002", "9000"),
            ("0020 0001", "63C3"),
            ("002C 0001", "63CA"),
            ("00B0870009", "6982"),
            ("00A4000C026F46", "9000"),
            ("00B0000011", "0173696D706F6F6CFFFFFFFFFFFFFFFFFF9000"),
            ("0070000001", "019000"),
            ("01A4040010A0000005591010FFFFFFFF8900000100", "6A82"),
            ("0070800100", "9000"),
        ];
        // The first read: ICCID, type, PIN1, PUK1, IMSI; five exchanges.
        let (r, sent) = run(USIM, None, &table);
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert!(!r.details);
        assert_eq!(r.iccid.as_deref(), Some("89494400000000000306"));
        assert_eq!(r.imsi, None);
        assert_eq!(r.facts.kind, Some(CardType::Usim));
        assert_eq!(r.facts.spn, None);
        assert_eq!(
            r.facts.pin1,
            PinState {
                enabled: Some(true),
                verified: Some(false),
                tries: Some(3)
            }
        );
        assert_eq!(r.facts.puk1.tries, Some(10));
        assert_eq!(r.facts.hidden, ["imsi", "msisdn"]);
        // The details: SPN, no MSISDN, the ISD-R probe.
        let (d, dsent) = details(&r, &table);
        assert!(d.details);
        assert_eq!(d.facts.spn.as_deref(), Some("simpool"));
        assert_eq!(d.facts.kind, Some(CardType::Usim));
        assert_eq!(d.facts.hidden, ["msisdn"]);
        // No VERIFY with data, EF.MSISDN not even selected, the channel closed.
        let all: Vec<_> = sent.iter().chain(&dsent).collect();
        assert!(!all.iter().any(|c| c.starts_with("002000") && c.len() > 8));
        assert!(!all.iter().any(|c| c.ends_with("6F40")));
        assert_eq!(dsent.last().unwrap(), "0070800100");
    }

    #[test]
    fn an_euicc_gives_its_eid_and_a_repeat_reuses_what_cannot_change() {
        let iccid = crate::identity::encode_iccid("89494490003300000007");
        let iccid_ok = format!("{}9000", hex::encode_upper(iccid));
        let imsi = crate::identity::encode_imsi("001018000330000");
        let imsi_ok = format!("{}9000", hex::encode_upper(imsi));
        let msisdn = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF07919471214365F7FFFFFFFFFFFF9000";
        let table = [
            ("00B082000A", iccid_ok.as_str()),
            ("00A4040C07A0000000871002", "9000"),
            ("00200001", "9000"),
            ("002C0001", "63CA"),
            ("00B0870009", imsi_ok.as_str()),
            ("00A4000C026F46", "9000"),
            ("00B0000011", "6C05"),
            ("00B0000005", "0141424344 9000"),
            ("00A4000C026F40", "9000"),
            ("00B2010400", "6C1E"),
            ("00B201041E", msisdn),
            ("0070000001", "029000"),
            ("02A4040010A0000005591010FFFFFFFF8900000100", "6121"),
            ("82E2910006BF3E035C015A", "6115"),
            (
                "02C0000015",
                "BF3E125A1089049032000000000000000003300006 9000",
            ),
            ("0070800200", "9000"),
        ];
        // The ATR says eUICC: the type from the first read's five exchanges.
        let (first, sent) = run(EUICC, None, &table);
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert_eq!(first.facts.kind, Some(CardType::Euicc));
        assert_eq!(first.imsi.as_deref(), Some("001018000330000"));
        assert_eq!(first.facts.pin1.enabled, Some(false));
        assert_eq!(first.facts.eid, None);
        // An ATR that does not say so: a USIM until the details find the ISD-R.
        let (plain, _) = run(USIM, None, &table);
        assert_eq!(plain.facts.kind, Some(CardType::Usim));
        let (d, dsent) = details(&plain, &table);
        assert_eq!(d.facts.kind, Some(CardType::Euicc));
        assert_eq!(
            d.facts.eid.as_deref(),
            Some("89049032000000000000000003300006")
        );
        assert_eq!(d.facts.spn.as_deref(), Some("ABCD"));
        assert_eq!(d.facts.msisdn.as_deref(), Some("+49171234567"));
        assert!(d.facts.hidden.is_empty());
        // SELECT ADF.USIM, SPN (with a length retry), MSISDN (too), the EID on channel 2.
        assert_eq!(dsent.len(), 12, "{dsent:?}");
        // Again, known and untouched: ICCID, PIN state, IMSI only, the details taken over.
        let stable = Stable {
            iccid: first.iccid.clone().unwrap(),
            kind: CardType::Euicc,
            spn: d.facts.spn.clone(),
            msisdn: d.facts.msisdn.clone(),
            eid: d.facts.eid.clone(),
        };
        let (again, sent) = run(EUICC, Some(stable.clone()), &table);
        assert!(again.details);
        assert_eq!(again.facts.eid, d.facts.eid);
        assert_eq!(again.facts.msisdn, d.facts.msisdn);
        assert_eq!(sent.len(), 5, "{sent:?}");
        // Another card in the slot: a first read again, the details left out.
        let other = Stable {
            iccid: "89000000000000000000".into(),
            ..stable
        };
        let (full, sent) = run(EUICC, Some(other), &table);
        assert!(!full.details);
        assert_eq!(full.facts, first.facts);
        assert_eq!(sent.len(), 5);
    }

    #[test]
    fn a_gsm_sim_with_chv1_enabled() {
        let iccid = hex::encode_upper(crate::identity::encode_iccid("89860043191482190636"));
        let iccid_ok = format!("{iccid}9000");
        // CHV1 enabled (byte 14 b8 = 0), 3 tries, UNBLOCK CHV1 10 tries.
        let df = "00000000 7F20 02 0000000000 09 13 00 04 04 00 83 8A 83 8A 00 9000";
        let table = [
            ("00B082000A", "6E00"),
            ("A0A40000022FE2", "9F0F"),
            ("A0B000000A", iccid_ok.as_str()),
            ("A0A40000027F20", "9F17"),
            ("A0C0000017", df),
            ("A0A40000026F07", "9F0F"),
            ("A0B0000009", "9804"),
            ("A0A40000026F46", "9F0F"),
            (
                "A0B0000011",
                "01 41 FF FF FF FF FF FF FF FF FF FF FF FF FF FF FF 9000",
            ),
        ];
        let gr1 = "3B991800118822334455667760";
        let (r, sent) = run(gr1, None, &table);
        assert_eq!(r.facts.kind, Some(CardType::Sim));
        assert_eq!(r.iccid.as_deref(), Some("89860043191482190636"));
        assert_eq!(r.imsi, None);
        assert_eq!(
            r.facts.pin1,
            PinState {
                enabled: Some(true),
                verified: Some(false),
                tries: Some(3)
            }
        );
        assert_eq!(r.facts.puk1.tries, Some(10));
        assert_eq!(r.facts.hidden, ["imsi", "msisdn"]);
        // The class 00 probe, then GSM 11.11's reads: seven exchanges.
        assert_eq!(sent.len(), 7, "{sent:?}");
        let (d, dsent) = details(&r, &table);
        assert_eq!(d.facts.spn.as_deref(), Some("A"));
        assert_eq!(dsent.len(), 3, "DF.GSM, EF.SPN, no MSISDN: {dsent:?}");
        // Known as a SIM: no class 00 probe.
        let stable = Stable {
            iccid: "89860043191482190636".into(),
            kind: CardType::Sim,
            spn: Some("A".into()),
            msisdn: None,
            eid: None,
        };
        let (again, sent) = run(gr1, Some(stable), &table);
        assert_eq!(again.facts.spn.as_deref(), Some("A"));
        assert_eq!(again.facts.hidden, ["imsi", "msisdn"]);
        assert_eq!(sent.len(), 6, "{sent:?}");
    }

    #[test]
    fn the_atr_says_euicc_in_the_first_tb_after_t15() {
        assert!(atr_says_euicc(&h(EUICC)));
        assert!(!atr_says_euicc(&h(USIM)));
        assert!(!atr_says_euicc(&h("3B991800118822334455667760")));
        // TB3 after T=15 without b2 (the eUICC bit): no.
        assert!(!atr_says_euicc(&h(
            "3B8C803FC78073696D706F6F6C655549434366"
        )));
        // Cut short, or nothing at all: no, and no panic.
        assert!(!atr_says_euicc(&h("3B8C803F")));
        assert!(!atr_says_euicc(&[]));
        assert_eq!(
            crate::sim::profile::EUICC_ATR.to_vec(),
            h(EUICC),
            "the simulated eUICCs say so"
        );
    }

    #[test]
    fn codecs() {
        assert_eq!(cla(0, false), 0x00);
        assert_eq!(cla(3, true), 0x83);
        assert_eq!(cla(4, false), 0x40);
        assert_eq!(cla(19, true), 0xCF);
        assert_eq!(decode_spn(&h("01FFFF")), None);
        assert_eq!(
            decode_spn(&h("00 80 0041 0042 FFFF")).as_deref(),
            Some("AB")
        );
        assert_eq!(decode_msisdn(&h("FF".repeat(30).as_str())), None);
        assert_eq!(
            decode_msisdn(&h("03 81 2143 FFFFFFFFFFFFFFFF FF FF")).as_deref(),
            Some("1234")
        );
        assert_eq!(parse_eid(&h("BF3E03 5A01 00")), None);
        assert_eq!(parse_eid(&h("BF")), None);
        // An answer without a status word is an error naming the command.
        let mut r = Reading::new(&[], None);
        let e = r.answer(&[0x90]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "READ BINARY EF.ICCID (SFI): card answered 90"
        );
    }
}
