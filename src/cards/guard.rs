//! Nothing in the pool gets locked or changed by accident: the last-try guard and write
//! protection, applied in [`super::Lease::transmit`] so that every front end (vpcd readers, the
//! bank, the API, sim-rest) obeys them.
//!
//! - **Last-try guard** (on by default; `guard = "off"` per card): simpool follows the retry
//!   counters it sees — `63 Cx` answers to VERIFY, CHANGE, DISABLE, ENABLE and UNBLOCK PIN,
//!   `69 83`/`98 40` (blocked), `98 04` (GSM: one try less) — and, where it knows none, asks
//!   the card first with a VERIFY (or UNBLOCK) without data, which uses no try (class `A0`:
//!   STATUS, which holds the CHV counters). A command that would use the last try of PIN1,
//!   PIN2, a PUK or an ADM key is refused without reaching
//!   the card: status word [`SW_LAST_TRY`] (`69 85`, "conditions of use not satisfied"), logged,
//!   and shown as "refused: would use ADM1's last try". One lease may allow it
//!   ([`super::Lease::allow_last_try`]: `--allow-last-try`, `"allow_last_try": true`).
//! - **Write protection** (`protect = "write"` per card): UPDATE BINARY/RECORD, WRITE BINARY,
//!   INCREASE, APPEND RECORD, CREATE/DELETE/RESIZE/(DE)ACTIVATE FILE, CHANGE/DISABLE/ENABLE/
//!   UNBLOCK PIN and, on an eUICC, ES10 EnableProfile/DisableProfile/DeleteProfile/eUICCMemoryReset
//!   are refused with [`SW_PROTECTED`] (`69 82`, "security status not satisfied"), logged.
//!
//! The per-card settings come from one place, a [`SettingsSource`]: the configuration's
//! `[[card_settings]]` tables today ([`ConfigSettings`]); a label store can stand in for it.
//!
//! This module is sans-IO: [`classify`] names what a command does, [`Tracker`] keeps what was
//! seen of a card's counters and decides.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::values::CardNo;

/// The status word of a command the last-try guard refused.
pub const SW_LAST_TRY: [u8; 2] = [0x69, 0x85];
/// The status word of a command write protection refused.
pub const SW_PROTECTED: [u8; 2] = [0x69, 0x82];

/// A secret whose retry counter the guard follows, by its key reference (TS 102 221 §9.5.1;
/// GSM 11.11's CHV1/CHV2 are PIN1/PIN2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Secret {
    /// A PIN or ADM key: `01` PIN1, `81` PIN2, `0A`–`0E` ADM1–ADM5, `11` universal PIN, ….
    Pin(u8),
    /// The unblock key of PIN `k` (PUK1 for `01`, PUK2 for `81`).
    Puk(u8),
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Secret::Pin(0x01) => f.write_str("PIN1"),
            Secret::Pin(0x81) => f.write_str("PIN2"),
            Secret::Pin(r @ 0x0A..=0x0E) => write!(f, "ADM{}", r - 0x09),
            Secret::Pin(0x11) => f.write_str("universal PIN"),
            Secret::Pin(r) => write!(f, "PIN {r:02X}"),
            Secret::Puk(0x01) => f.write_str("PUK1"),
            Secret::Puk(0x81) => f.write_str("PUK2"),
            Secret::Puk(r) => write!(f, "PUK of PIN {r:02X}"),
        }
    }
}

/// What a command does, as far as the guard is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Presents a secret (VERIFY, CHANGE, DISABLE, ENABLE, UNBLOCK with data): uses a try
    /// when wrong. `writes`: it changes the card too (all but VERIFY).
    Presents {
        secret: Secret,
        op: &'static str,
        writes: bool,
    },
    /// Asks a counter without using a try (VERIFY or UNBLOCK without data).
    Asks(Secret),
    /// GSM 11.11 STATUS (`A0 F2`): the current DF's status, CHV1/CHV2 and their unblock
    /// counters among it.
    GsmStatus,
    /// Changes the card's files or profiles.
    Writes(&'static str),
    /// Anything else.
    Other,
}

/// GSM 11.11 numbers CHV2 `02`; TS 102 221 calls the same PIN2 `81`.
fn key(cla: u8, p2: u8) -> u8 {
    if cla == 0xA0 && p2 == 0x02 {
        0x81
    } else {
        p2
    }
}

/// What `cmd` (a TPDU as a front end sent it) does.
pub fn classify(cmd: &[u8]) -> Kind {
    let [cla, ins, _p1, p2, rest @ ..] = cmd else {
        return Kind::Other;
    };
    let (cla, ins, p2) = (*cla, *ins, *p2);
    // P3 and data: a header alone (or P3 = 0) carries no secret.
    let with_data = rest.len() > 1 && rest[0] != 0;
    let gsm = cla == 0xA0;
    let secret = |unblock: bool| {
        if unblock {
            // GSM: P2 00 unblocks CHV1, 02 CHV2.
            let k = match (gsm, p2) {
                (true, 0x00) => 0x01,
                _ => key(cla, p2),
            };
            Secret::Puk(k)
        } else {
            Secret::Pin(key(cla, p2))
        }
    };
    let op = match ins {
        0x20 => "VERIFY",
        0x24 => "CHANGE PIN",
        0x26 => "DISABLE PIN",
        0x28 => "ENABLE PIN",
        0x2C => "UNBLOCK PIN",
        0xD6 => return Kind::Writes("UPDATE BINARY"),
        0xDC => return Kind::Writes("UPDATE RECORD"),
        0xD0 => return Kind::Writes("WRITE BINARY"),
        0x32 => return Kind::Writes("INCREASE"),
        0xE0 => return Kind::Writes("CREATE FILE"),
        0xE4 => return Kind::Writes("DELETE FILE"),
        0xD4 => return Kind::Writes("RESIZE FILE"),
        0x04 if !gsm => return Kind::Writes("DEACTIVATE FILE"),
        0x44 if !gsm => return Kind::Writes("ACTIVATE FILE"),
        0x04 => return Kind::Writes("INVALIDATE"),
        0x44 => return Kind::Writes("REHABILITATE"),
        // Class 0X: APPEND RECORD; class 8X: GlobalPlatform STORE DATA (ES10 on an eUICC).
        0xE2 if cla & 0x80 == 0 => return Kind::Writes("APPEND RECORD"),
        0xE2 => return es10(rest),
        0xF2 if gsm => return Kind::GsmStatus,
        _ => return Kind::Other,
    };
    // GSM 11.11 has no VERIFY without data; TS 102 221 answers the counter to it.
    match (with_data, ins) {
        (true, _) => Kind::Presents {
            secret: secret(ins == 0x2C),
            op,
            writes: ins != 0x20,
        },
        (false, 0x20) | (false, 0x2C) if !gsm => Kind::Asks(secret(ins == 0x2C)),
        _ => Kind::Other,
    }
}

/// An ES10 function that changes an eUICC's profiles, by the tag its STORE DATA starts with
/// (the first block carries it).
fn es10(rest: &[u8]) -> Kind {
    match rest.get(1..3) {
        Some([0xBF, 0x31]) => Kind::Writes("EnableProfile"),
        Some([0xBF, 0x32]) => Kind::Writes("DisableProfile"),
        Some([0xBF, 0x33]) => Kind::Writes("DeleteProfile"),
        Some([0xBF, 0x34]) => Kind::Writes("eUICCMemoryReset"),
        _ => Kind::Other,
    }
}

/// How a card is to be guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardSettings {
    /// The last-try guard (on by default).
    pub guard: bool,
    /// Write protection (off by default).
    pub protect_write: bool,
}

impl Default for CardSettings {
    fn default() -> CardSettings {
        CardSettings {
            guard: true,
            protect_write: false,
        }
    }
}

/// Where per-card settings come from. The configuration's `[[card_settings]]` tables are one source; a
/// label store (settings by label or ICCID) is another, set with [`super::Cards::set_settings`].
pub trait SettingsSource: Send + Sync {
    fn settings(&self, card: CardNo) -> CardSettings;
}

/// `[[card_settings]]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardEntry {
    pub card: CardNo,
    /// `"on"` (default) or `"off"`.
    pub guard: Option<String>,
    /// `"write"`, or `"off"` (default).
    pub protect: Option<String>,
}

/// Settings by card number, from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSettings(pub BTreeMap<CardNo, CardSettings>);

impl ConfigSettings {
    /// Checks the `[[card_settings]]` tables: known values, each card once.
    pub fn from_entries(entries: &[CardEntry]) -> Result<ConfigSettings, String> {
        let mut map = BTreeMap::new();
        for e in entries {
            let mut s = CardSettings::default();
            match e.guard.as_deref() {
                None | Some("on") => {}
                Some("off") => s.guard = false,
                Some(o) => {
                    return Err(format!(
                        "card {}: guard = {o:?}: want \"on\" or \"off\"",
                        e.card
                    ))
                }
            }
            match e.protect.as_deref() {
                None | Some("off") => {}
                Some("write") => s.protect_write = true,
                Some(o) => {
                    return Err(format!(
                        "card {}: protect = {o:?}: want \"write\" or \"off\"",
                        e.card
                    ))
                }
            }
            if map.insert(e.card, s).is_some() {
                return Err(format!("card {} has two [[card_settings]] tables", e.card));
            }
        }
        Ok(ConfigSettings(map))
    }
}

impl SettingsSource for ConfigSettings {
    fn settings(&self, card: CardNo) -> CardSettings {
        self.0.get(&card).copied().unwrap_or_default()
    }
}

/// Why a command was refused without reaching the card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardRefusal {
    #[error("refused: {op} would use {secret}'s last try (the last-try guard; --allow-last-try or \"allow_last_try\" for one lease, guard = \"off\" for the card)")]
    LastTry { secret: Secret, op: &'static str },
    #[error("refused: {op} on a write-protected card (protect = \"write\")")]
    Protected { op: &'static str },
}

impl GuardRefusal {
    pub fn status(&self) -> [u8; 2] {
        match self {
            GuardRefusal::LastTry { .. } => SW_LAST_TRY,
            GuardRefusal::Protected { .. } => SW_PROTECTED,
        }
    }

    /// Short, for the card's row: "refused: would use ADM1's last try".
    pub fn short(&self) -> String {
        format!("refused: {}", self.reason())
    }

    /// Why, for the history's `refused` event: "would use ADM1's last try".
    pub fn reason(&self) -> String {
        match self {
            GuardRefusal::LastTry { secret, .. } => format!("would use {secret}'s last try"),
            GuardRefusal::Protected { op } => format!("{op} (write-protected)"),
        }
    }
}

/// What the guard decided for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send,
    /// Send this counter query first, give its answer to [`Tracker::answered`], then ask
    /// [`Tracker::check`] again.
    AskFirst(Vec<u8>),
    Refuse(GuardRefusal),
}

/// What one card's counters are known to be (kept while the daemon runs; a reset keeps them,
/// as the card does).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    left: BTreeMap<Secret, u8>,
    /// Secrets already asked about without an answer that told a count (PIN disabled or
    /// verified, or a card that does not say): not asked again until a try tells more.
    asked: Vec<Secret>,
}

impl Tracker {
    /// Tries left of `secret`, when known.
    pub fn left(&self, secret: Secret) -> Option<u8> {
        self.left.get(&secret).copied()
    }

    pub fn check(&self, cmd: &[u8], s: CardSettings, allow_last_try: bool) -> Decision {
        let kind = classify(cmd);
        if s.protect_write {
            match kind {
                Kind::Writes(op)
                | Kind::Presents {
                    op, writes: true, ..
                } => return Decision::Refuse(GuardRefusal::Protected { op }),
                _ => {}
            }
        }
        let Kind::Presents { secret, op, .. } = kind else {
            return Decision::Send;
        };
        if !s.guard || allow_last_try {
            return Decision::Send;
        }
        match self.left(secret) {
            Some(1) => Decision::Refuse(GuardRefusal::LastTry { secret, op }),
            Some(_) => Decision::Send,
            None if cmd[0] != 0xA0 && !self.asked.contains(&secret) => {
                let ins = if matches!(secret, Secret::Puk(_)) {
                    0x2C
                } else {
                    0x20
                };
                Decision::AskFirst(vec![cmd[0], ins, 0x00, cmd[3], 0x00])
            }
            // GSM 11.11 has no VERIFY without data; its STATUS tells the CHV counters and
            // changes no selection.
            None if cmd[0] == 0xA0 && !self.asked.contains(&secret) => {
                Decision::AskFirst(vec![0xA0, 0xF2, 0x00, 0x00, 0x16])
            }
            None => Decision::Send,
        }
    }

    /// The card's answer (`… SW1 SW2`) to `cmd`.
    pub fn answered(&mut self, cmd: &[u8], resp: &[u8]) {
        let (secret, presented) = match classify(cmd) {
            Kind::Presents { secret, .. } => (secret, true),
            Kind::Asks(secret) => (secret, false),
            Kind::GsmStatus => return self.gsm_status(cmd, resp),
            _ => return,
        };
        let Some(&[sw1, sw2]) = resp.get(resp.len().saturating_sub(2)..) else {
            return;
        };
        match (sw1, sw2) {
            (0x63, x) if x & 0xF0 == 0xC0 => {
                self.left.insert(secret, x & 0x0F);
            }
            (0x69, 0x83) | (0x98, 0x40) => {
                self.left.insert(secret, 0);
            }
            (0x98, 0x04) if presented => {
                if let Some(n) = self.left.get_mut(&secret) {
                    *n = n.saturating_sub(1);
                }
            }
            (0x90, 0x00) if presented => {
                // Right: the counter is back at its maximum, which the card did not say.
                self.left.remove(&secret);
                self.asked.retain(|s| *s != secret);
            }
            _ if !presented && !self.asked.contains(&secret) => self.asked.push(secret),
            _ => {}
        }
    }

    /// A GSM STATUS answer: bytes 19–22 are the CHV1, UNBLOCK CHV1, CHV2 and UNBLOCK CHV2
    /// statuses (b8 initialised, b4–b1 tries left).
    fn gsm_status(&mut self, cmd: &[u8], resp: &[u8]) {
        let secrets = [
            Secret::Pin(0x01),
            Secret::Puk(0x01),
            Secret::Pin(0x81),
            Secret::Puk(0x81),
        ];
        match resp {
            [d @ .., 0x90, 0x00] if d.len() >= 22 => {
                for (s, b) in secrets.iter().zip(&d[18..22]) {
                    if b & 0x80 != 0 {
                        self.left.insert(*s, b & 0x0F);
                    }
                }
            }
            // Asked and not told: not asked again for these.
            _ if cmd == [0xA0, 0xF2, 0x00, 0x00, 0x16] => {
                for s in secrets {
                    if !self.asked.contains(&s) {
                        self.asked.push(s);
                    }
                }
            }
            _ => {}
        }
    }

    /// What is known, for the card's row (e.g. "PIN1 2, ADM1 9").
    pub fn summary(&self) -> Vec<(Secret, u8)> {
        self.left.iter().map(|(s, n)| (*s, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    const ON: CardSettings = CardSettings {
        guard: true,
        protect_write: false,
    };

    #[test]
    fn a_wrong_pin_loop_stops_one_try_short() {
        let mut t = Tracker::default();
        let verify = h("00 20 00 01 08 3939393939393939");
        // Nothing known: ask first, without using a try.
        assert_eq!(
            t.check(&verify, ON, false),
            Decision::AskFirst(h("0020000100"))
        );
        t.answered(&h("0020000100"), &h("63C3"));
        assert_eq!(t.left(Secret::Pin(1)), Some(3));
        assert_eq!(t.check(&verify, ON, false), Decision::Send);
        t.answered(&verify, &h("63C2"));
        assert_eq!(t.check(&verify, ON, false), Decision::Send);
        t.answered(&verify, &h("63C1"));
        let d = t.check(&verify, ON, false);
        let Decision::Refuse(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.status(), [0x69, 0x85]);
        assert_eq!(r.short(), "refused: would use PIN1's last try");
        // Allowed for one lease; or the guard off.
        assert_eq!(t.check(&verify, ON, true), Decision::Send);
        let off = CardSettings { guard: false, ..ON };
        assert_eq!(t.check(&verify, off, false), Decision::Send);
        // The right PIN resets what is known.
        t.answered(&verify, &h("9000"));
        assert_eq!(t.left(Secret::Pin(1)), None);
    }

    #[test]
    fn keys_are_named_and_gsm_is_followed_by_its_own_words() {
        let mut t = Tracker::default();
        let adm = h("00 20 00 0A 08 3131313131313131");
        t.answered(&adm, &h("63C1"));
        let Decision::Refuse(r) = t.check(&adm, ON, false) else {
            panic!()
        };
        assert_eq!(r.short(), "refused: would use ADM1's last try");
        // UNBLOCK PIN1 uses PUK1's tries; CHANGE PIN2 uses PIN2's.
        let unblock = h("00 2C 00 01 10 3132333435363738 3131313131313131");
        t.answered(&unblock, &h("63C1"));
        let Decision::Refuse(r) = t.check(&unblock, ON, false) else {
            panic!()
        };
        assert!(r.to_string().contains("PUK1's last try"), "{r}");
        let change2 = h("00 24 00 81 10 31313131FFFFFFFF 32323232FFFFFFFF");
        t.answered(&change2, &h("63C1"));
        let Decision::Refuse(r) = t.check(&change2, ON, false) else {
            panic!()
        };
        assert!(
            r.to_string()
                .starts_with("refused: CHANGE PIN would use PIN2's"),
            "{r}"
        );
        // GSM: CHV2 is PIN2; no count in 98 04, but one less of a known count; STATUS asks.
        let chv1 = h("A0 20 00 01 08 39393939FFFFFFFF");
        assert_eq!(
            t.check(&chv1, ON, false),
            Decision::AskFirst(h("A0F2000016"))
        );
        t.answered(&h("0020000100"), &h("63C2"));
        t.answered(&chv1, &h("9804"));
        let Decision::Refuse(_) = t.check(&chv1, ON, false) else {
            panic!()
        };
        assert_eq!(
            classify(&h("A0 24 00 02 10 31313131FFFFFFFF32323232FFFFFFFF")),
            Kind::Presents {
                secret: Secret::Pin(0x81),
                op: "CHANGE PIN",
                writes: true
            }
        );
        // A blocked PIN is no last try: the card says 69 83 again, harmlessly.
        let mut t = Tracker::default();
        t.answered(&chv1, &h("9840"));
        assert_eq!(t.check(&chv1, ON, false), Decision::Send);
    }

    #[test]
    fn gsm_status_tells_the_chv_counters() {
        let mut t = Tracker::default();
        let mut status = vec![0u8; 18];
        status.extend([0x81, 0x8A, 0x83, 0x8A, 0x00, 0x00]);
        status.extend([0x90, 0x00]);
        t.answered(&h("A0F2000016"), &status);
        assert_eq!(t.left(Secret::Pin(1)), Some(1));
        assert_eq!(t.left(Secret::Puk(1)), Some(10));
        assert_eq!(t.left(Secret::Pin(0x81)), Some(3));
        let chv1 = h("A0 20 00 01 08 39393939FFFFFFFF");
        assert!(matches!(t.check(&chv1, ON, false), Decision::Refuse(_)));
        // A card that answers STATUS with less is not asked again.
        let mut t = Tracker::default();
        t.answered(&h("A0F2000016"), &h("6700"));
        assert_eq!(t.check(&chv1, ON, false), Decision::Send);
    }

    #[test]
    fn a_card_that_tells_no_count_is_asked_once() {
        let mut t = Tracker::default();
        let verify = h("00 20 00 01 08 3939393939393939");
        t.answered(&h("0020000100"), &h("9000"));
        assert_eq!(t.check(&verify, ON, false), Decision::Send);
    }

    #[test]
    fn write_protection_refuses_what_changes_a_card() {
        let t = Tracker::default();
        let p = CardSettings {
            guard: true,
            protect_write: true,
        };
        for (cmd, op) in [
            ("00D6000002 1234", "UPDATE BINARY"),
            ("A0DC010402 1234", "UPDATE RECORD"),
            ("A032000003 000001", "INCREASE"),
            ("0024000110 31313131FFFFFFFF32323232FFFFFFFF", "CHANGE PIN"),
            ("0026000108 31313131FFFFFFFF", "DISABLE PIN"),
            ("0028000108 31313131FFFFFFFF", "ENABLE PIN"),
            (
                "002C000110 3132333435363738 3131313131313131",
                "UNBLOCK PIN",
            ),
            (
                "81E2910014 BF3111A00F4F0DA0000005591010FFFFFFFF8900001000",
                "EnableProfile",
            ),
            ("80E2910006 BF3203810101", "DisableProfile"),
            ("80E2910006 BF3303810101", "DeleteProfile"),
        ] {
            let d = t.check(&h(cmd), p, true);
            assert_eq!(d, Decision::Refuse(GuardRefusal::Protected { op }), "{cmd}");
        }
        for cmd in [
            "00B0000010",
            "00A40004027F20",
            "0020000108 3131313131313131",
            "80E2910003 BF3E00",
            "00880081221023553cbe9637a89d218ae64dae47bf351055f328b43577b9b94a9ffac354dfafb3",
        ] {
            assert_ne!(
                std::mem::discriminant(&t.check(&h(cmd), p, true)),
                std::mem::discriminant(&Decision::Refuse(GuardRefusal::Protected { op: "" })),
                "{cmd}"
            );
        }
    }

    #[test]
    fn settings_from_the_configuration() {
        let e = |card: u16, guard: Option<&str>, protect: Option<&str>| CardEntry {
            card: CardNo::of(card),
            guard: guard.map(String::from),
            protect: protect.map(String::from),
        };
        let s = ConfigSettings::from_entries(&[e(4, Some("off"), None), e(5, None, Some("write"))])
            .unwrap();
        assert!(!s.settings(CardNo::of(4)).guard);
        assert!(s.settings(CardNo::of(5)).protect_write && s.settings(CardNo::of(5)).guard);
        assert_eq!(s.settings(CardNo::of(6)), CardSettings::default());
        assert!(ConfigSettings::from_entries(&[e(4, Some("maybe"), None)]).is_err());
        assert!(ConfigSettings::from_entries(&[e(4, None, Some("read"))]).is_err());
        assert!(ConfigSettings::from_entries(&[e(4, None, None), e(4, None, None)]).is_err());
    }
}
