//! Simulated cards: the cards file (TOML), the built-in default set, generated cards, and the
//! ICCID/IMSI codecs (also used by the client side to decode what it reads).
//!
//! A cards file:
//!
//! ```
//! # use simpool::sim::profile::CardsFile;
//! let text = r#"
//! [pool]
//! latency_ms = 5
//!
//! ## Every omitted field is taken from `generated(slot)`.
//! [[card]]
//! slot = 18                     # front-panel number 1..=256
//! atr = "3B 9F 95 80 1F C3 80 31 E0 73 FE 21 13 57 86 81 02 86 98 44 18 A8"
//! iccid = "89860043191482190636"
//! imsi = "001010000000018"
//! ki = "000102030405060708090a0b0c0d0e0f"
//! algo = "milenage"             # "xor2g" (default for odd slots) | "milenage"
//! opc = "000102030405060708090a0b0c0d0e0f"   # or op = "…"
//! spn = "Test"                  # "" = no service provider name
//! msisdn = "+491701234567"
//! chv1 = "1234"                 # CHV1 enabled with this PIN (absent = disabled)
//! df_gsm_ef_count = 48          # reported number of EFs in DF.GSM (absent = real count)
//! t0 = { nulls = 2, single_byte_out = true, trailing_garbage = false }
//!
//! [card.files]                  # content overrides: transparent data or all records
//! "3F00/7F20/6FAD" = "00000003"
//!
//! [[card]]
//! slot = 38
//! state = "abnormal"            # normal | mute | abnormal
//!
//! [[card]]
//! slot = 40
//! profile = "usim"              # "sim" (default) | "usim": also a UICC with ADF.USIM
//! ki = "465b5ce8b199b49faa5f0a2ee238a6bc"
//! opc = "cd63cb71954a9f4e48a5994e37a02baf"   # a USIM needs Milenage (opc or op)
//! sqn = "ff9bb4d0b5e7"          # highest SQN accepted so far (hex, default 0)
//! sqn_ind_bits = 5              # IND length (TS 33.102 Annex C), default 5
//! sqn_delta = 268435456         # Δ, default 2^28; 0 = no limit
//! pin1 = "1234"                 # = chv1: PIN1 enabled with this value
//! puk1 = "12345678"             # default 12345678
//! adm1 = "88888888"             # default 88888888
//! milenage = { r = [64, 0, 32, 64, 96] }   # and/or c = [5 × 32 hex]; default: standard
//! "#;
//! let f = CardsFile::from_toml(text).unwrap();
//! assert_eq!(f.card.len(), 3);
//! assert_eq!(f.pool.latency_ms, 5);
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::algo::{opc_from_op, Algo};
use super::auth::{MilenageConsts, DEFAULT_DELTA, DEFAULT_IND_BITS, MAX_IND_BITS};
use super::euicc::{self, EuiccParams, EuiccProfile, ProfileClass};
use super::layout;
use super::PoolKnobs;

/// pySim's sysmoSIM-GR1 ATR (T=0 only), used by generated cards.
pub const GR1_ATR: [u8; 13] = [
    0x3B, 0x99, 0x18, 0x00, 0x11, 0x88, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x60,
];

/// The ATR of generated USIMs: T=0, then T=15 with TA3 `C7` (clock stop, classes A–C), the
/// historical bytes "simpoolUSIM" (proprietary, so no tool takes it for a known card), TCK.
pub const USIM_ATR: [u8; 17] = [
    0x3B, 0x8B, 0x80, 0x1F, 0xC7, b's', b'i', b'm', b'p', b'o', b'o', b'l', b'U', b'S', b'I', b'M',
    0xBA,
];

/// PUK1 of USIMs unless the cards file says otherwise.
pub const DEFAULT_PUK1: &str = "12345678";
/// ADM1 of USIMs unless the cards file says otherwise.
pub const DEFAULT_ADM1: &str = "88888888";

/// Which command sets a simulated card answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardKind {
    /// GSM 11.11 SIM: class `A0` only.
    #[default]
    Sim,
    /// UICC with ADF.USIM (classes `00`/`80`) that also answers class `A0` as a SIM.
    Usim,
    /// SGP.22 eUICC: ISD-R and profiles, each a USIM (see [`super::euicc`]).
    Euicc,
}

/// The USIM-only part of a profile (ignored for [`CardKind::Sim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsimParams {
    /// The highest SQN the card has accepted (48 bits).
    pub sqn: u64,
    /// Length of IND in bits (TS 33.102 Annex C), 0..=10.
    pub ind_bits: u8,
    /// Largest step of SEQ above the highest accepted (Δ); 0 = no limit.
    pub delta: u64,
    /// 8 digits.
    pub puk1: String,
    /// 4..=8 digits.
    pub adm1: String,
    pub milenage: MilenageConsts,
}

impl Default for UsimParams {
    fn default() -> UsimParams {
        UsimParams {
            sqn: 0,
            ind_bits: DEFAULT_IND_BITS,
            delta: DEFAULT_DELTA,
            puk1: DEFAULT_PUK1.into(),
            adm1: DEFAULT_ADM1.into(),
            milenage: MilenageConsts::default(),
        }
    }
}

/// Errors in a cards file or a card profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cards file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("slot {0} out of range 1..=256")]
    SlotRange(u16),
    #[error("slot {0} appears twice")]
    DuplicateSlot(u16),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("slot {slot}: {error}")]
    Slot {
        slot: u16,
        #[source]
        error: Box<ProfileError>,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// T=0 behaviours of a simulated card (for testing the terminal side).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct T0Quirks {
    /// NULL bytes (`60`) before the SW of slow commands (RUN GSM ALGORITHM, UPDATE *).
    pub nulls: u8,
    /// Send outgoing data with `~INS` procedure bytes (see [`super::card`]).
    pub single_byte_out: bool,
    /// Append one junk byte after every SW2.
    pub trailing_garbage: bool,
}

/// What the pool reports for a slot holding a card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    #[default]
    Normal,
    /// Inserted, but never answers (not even the ATR).
    Mute,
    /// Reported as abnormal (`FF`) by the pool.
    Abnormal,
}

/// Alias for code that also imports the pool protocol's own `SlotState`.
pub type SlotBehaviour = SlotState;

/// One simulated card: a GSM SIM, or a USIM that is also a SIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardProfile {
    /// `profile = "sim" | "usim"` in a cards file.
    pub kind: CardKind,
    /// 2..=33 bytes.
    pub atr: Vec<u8>,
    /// Up to 20 digits.
    pub iccid: String,
    /// 6..=15 digits.
    pub imsi: String,
    pub ki: [u8; 16],
    /// Includes OPc for Milenage (`opc`/`op` in the cards file).
    pub algo: Algo,
    /// Service provider name (≤ 16 characters).
    pub spn: Option<String>,
    /// Digits, optionally with a leading `+` (≤ 20 digits).
    pub msisdn: Option<String>,
    /// `Some(pin)` = CHV1 enabled with that PIN (4..=8 digits); `None` = disabled.
    pub chv1: Option<String>,
    /// Number of EFs DF.GSM reports in its select response (`None` = the real count).
    pub df_gsm_ef_count: Option<u8>,
    /// Content overrides by path (`3F00/7F20/6F46`), already hex-decoded.
    pub files: BTreeMap<String, Vec<u8>>,
    pub t0: T0Quirks,
    pub usim: UsimParams,
    /// An eUICC's EID and profiles (`Some` exactly when `kind` is [`CardKind::Euicc`]); the
    /// fields above are then those of the profile enabled at start-up.
    pub euicc: Option<Box<EuiccParams>>,
}

impl CardProfile {
    /// Checks every field; [`CardsFile::from_toml`] calls this for each card.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if !(2..=33).contains(&self.atr.len()) {
            return Err(invalid("atr", "must be 2..=33 bytes"));
        }
        if self.atr[0] != 0x3B && self.atr[0] != 0x3F {
            return Err(invalid("atr", "TS must be 3B or 3F"));
        }
        check_digits("iccid", &self.iccid, 1, 20)?;
        check_digits("imsi", &self.imsi, 6, 15)?;
        if let Some(pin) = &self.chv1 {
            check_digits("chv1", pin, 4, 8)?;
        }
        if let Some(m) = &self.msisdn {
            check_digits("msisdn", m.strip_prefix('+').unwrap_or(m), 1, 20)?;
        }
        if let Some(spn) = &self.spn {
            if spn.chars().count() > 16 {
                return Err(invalid("spn", "at most 16 characters"));
            }
            if let Some(c) = spn.chars().find(|&c| !gsm7_same_as_ascii(c)) {
                return Err(invalid("spn", format!("character {c:?} not supported")));
            }
        }
        if self.kind == CardKind::Euicc {
            let e = self
                .euicc
                .as_deref()
                .ok_or_else(|| invalid("profiles", "an eUICC needs profiles"))?;
            if !euicc::eid_valid(&euicc::eid_digits(&e.eid)) {
                return Err(invalid(
                    "eid",
                    "32 digits whose SGP.29 check (mod 97 = 1) holds",
                ));
            }
            if e.profiles.is_empty() || e.profiles.len() > 16 {
                return Err(invalid("profiles", "1..=16 profiles"));
            }
            if e.profiles.iter().filter(|p| p.enabled).count() > 1 {
                return Err(invalid("profiles", "at most one profile enabled"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for p in &e.profiles {
                p.card.validate()?;
                if !seen.insert(p.card.iccid.clone()) {
                    return Err(invalid("profiles", format!("ICCID {} twice", p.card.iccid)));
                }
                if p.name.len() > 64 || p.provider.len() > 32 || p.smdp.len() > 255 {
                    return Err(invalid("profiles", "name ≤ 64, provider ≤ 32 bytes"));
                }
                if p.nickname.as_ref().is_some_and(|n| n.chars().count() > 64) {
                    return Err(invalid("profiles", "nickname ≤ 64 characters"));
                }
            }
        }
        if self.kind == CardKind::Usim {
            if !matches!(self.algo, Algo::Milenage { .. }) {
                return Err(invalid("algo", "a USIM needs milenage (opc or op)"));
            }
            check_digits("puk1", &self.usim.puk1, 8, 8)?;
            check_digits("adm1", &self.usim.adm1, 4, 8)?;
            if self.usim.ind_bits > MAX_IND_BITS {
                return Err(invalid("sqn_ind_bits", format!("at most {MAX_IND_BITS}")));
            }
            if self.usim.sqn >> 48 != 0 {
                return Err(invalid("sqn", "at most 48 bits"));
            }
        }
        for (path, data) in &self.files {
            layout::check_override(path, data).map_err(|e| invalid("files", e))?;
        }
        Ok(())
    }
}

/// Characters whose GSM 03.38 default-alphabet code equals their ASCII code.
fn gsm7_same_as_ascii(c: char) -> bool {
    c.is_ascii_alphanumeric() || " !\"#%&'()*+,-./:;<=>?".contains(c)
}

fn check_digits(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), ProfileError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, "digits only"));
    }
    if !(min..=max).contains(&s.len()) {
        return Err(invalid(field, format!("{min}..={max} digits")));
    }
    Ok(())
}

/// A populated slot of the simulated pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSlot")]
pub struct SlotEntry {
    /// Front-panel number 1..=256 (the protocol's slot byte + 1).
    pub slot: u16,
    pub state: SlotState,
    pub profile: CardProfile,
}

/// A cards file: pool knobs and the populated slots (others are empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawFile")]
pub struct CardsFile {
    pub pool: PoolKnobs,
    pub card: Vec<SlotEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pool: PoolKnobs,
    #[serde(default)]
    card: Vec<RawSlot>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AlgoName {
    Xor2g,
    Milenage,
}

// Field names are those of the cards file; flatten is avoided so that unknown keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsts {
    r: Option<[u8; 5]>,
    c: Option<[String; 5]>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    slot: u16,
    #[serde(default)]
    state: SlotState,
    profile: Option<CardKind>,
    atr: Option<String>,
    iccid: Option<String>,
    imsi: Option<String>,
    ki: Option<String>,
    algo: Option<AlgoName>,
    opc: Option<String>,
    op: Option<String>,
    spn: Option<String>,
    msisdn: Option<String>,
    #[serde(alias = "pin1")]
    chv1: Option<String>,
    puk1: Option<String>,
    adm1: Option<String>,
    /// Hex, up to 12 digits.
    sqn: Option<String>,
    sqn_ind_bits: Option<u8>,
    sqn_delta: Option<u64>,
    milenage: Option<RawConsts>,
    df_gsm_ef_count: Option<u8>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    t0: T0Quirks,
    /// eUICC only: 32 digits.
    eid: Option<String>,
    enable_ms: Option<u64>,
    default_smdp: Option<String>,
    profiles: Option<Vec<RawEuiccProfile>>,
}

/// One profile of an eUICC in a cards file (`[[card.profiles]]`); omitted fields come from
/// [`generated_euicc_profile`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEuiccProfile {
    iccid: Option<String>,
    imsi: Option<String>,
    ki: Option<String>,
    opc: Option<String>,
    op: Option<String>,
    spn: Option<String>,
    msisdn: Option<String>,
    #[serde(alias = "chv1")]
    pin1: Option<String>,
    puk1: Option<String>,
    adm1: Option<String>,
    sqn: Option<String>,
    name: Option<String>,
    provider: Option<String>,
    class: Option<ProfileClass>,
    nickname: Option<String>,
    smdp: Option<String>,
    #[serde(default)]
    enabled: bool,
}

/// Hex with optional spaces or colons (`"3B 9F 95"`, `"3b:9f"`, `"3B9F"`).
fn parse_hex(field: &'static str, s: &str) -> Result<Vec<u8>, ProfileError> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(clean).map_err(|e| invalid(field, format!("bad hex: {e}")))
}

fn parse_key(field: &'static str, s: &str) -> Result<[u8; 16], ProfileError> {
    parse_hex(field, s)?
        .try_into()
        .map_err(|_| invalid(field, "must be 16 bytes (32 hex digits)"))
}

impl TryFrom<RawSlot> for SlotEntry {
    type Error = ProfileError;
    fn try_from(r: RawSlot) -> Result<SlotEntry, ProfileError> {
        let slot = r.slot;
        if !(1..=256).contains(&slot) {
            return Err(ProfileError::SlotRange(slot));
        }
        let wrap = |error| ProfileError::Slot {
            slot,
            error: Box::new(error),
        };
        to_profile(r)
            .map_err(wrap)
            .map(|(state, profile)| SlotEntry {
                slot,
                state,
                profile,
            })
    }
}

fn to_profile(r: RawSlot) -> Result<(SlotState, CardProfile), ProfileError> {
    match r.profile.unwrap_or_default() {
        CardKind::Sim => {
            let base = generated(r.slot);
            apply(r, base)
        }
        CardKind::Usim => {
            let base = generated_usim(r.slot);
            apply(r, base)
        }
        CardKind::Euicc => to_euicc(r),
    }
}

/// An eUICC entry: its own keys (EID, enable time, SM-DP+), the card-wide ones (ATR, T=0,
/// state) and its profiles; identity and key fields belong to the profiles.
fn to_euicc(mut r: RawSlot) -> Result<(SlotState, CardProfile), ProfileError> {
    let slot = r.slot;
    let mut base = generated_euicc(slot);
    let mut params = base.euicc.take().expect("generated eUICC");
    for (field, given) in [
        ("iccid", r.iccid.is_some()),
        ("imsi", r.imsi.is_some()),
        ("ki", r.ki.is_some()),
        ("opc", r.opc.is_some() || r.op.is_some()),
        ("files", !r.files.is_empty()),
    ] {
        if given {
            return Err(invalid(
                field,
                "set it per profile ([[card.profiles]]) on an eUICC",
            ));
        }
    }
    if let Some(e) = &r.eid {
        let d: String = e.chars().filter(|c| !c.is_whitespace()).collect();
        if !euicc::eid_valid(&d) {
            return Err(invalid(
                "eid",
                "32 digits whose SGP.29 check (mod 97 = 1) holds",
            ));
        }
        params.eid = hex::decode(&d)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("eid", "32 digits"))?;
    }
    if let Some(ms) = r.enable_ms {
        if ms > 20_000 {
            return Err(invalid("enable_ms", "at most 20000"));
        }
        params.enable_ms = ms;
    }
    if let Some(dp) = r.default_smdp.take() {
        params.default_smdp = (!dp.is_empty()).then_some(dp);
    }
    if let Some(list) = r.profiles.take() {
        params.profiles = list
            .into_iter()
            .enumerate()
            .map(|(k, rp)| to_euicc_profile(slot, k, rp))
            .collect::<Result<_, _>>()?;
    }
    if let Some(atr) = &r.atr {
        base.atr = parse_hex("atr", atr)?;
    }
    base.t0 = r.t0.clone();
    let enabled = params.profiles.iter().find(|p| p.enabled);
    if let Some(p) = enabled.or(params.profiles.first()) {
        let (atr, t0) = (base.atr.clone(), base.t0.clone());
        base = CardProfile {
            kind: CardKind::Euicc,
            atr,
            t0,
            ..p.card.clone()
        };
    }
    base.euicc = Some(params);
    base.validate()?;
    Ok((r.state, base))
}

fn to_euicc_profile(
    slot: u16,
    k: usize,
    rp: RawEuiccProfile,
) -> Result<EuiccProfile, ProfileError> {
    let mut meta = generated_euicc_profile(slot, k);
    let raw = RawSlot {
        slot,
        profile: Some(CardKind::Usim),
        iccid: rp.iccid,
        imsi: rp.imsi,
        ki: rp.ki,
        opc: rp.opc,
        op: rp.op,
        spn: rp.spn,
        msisdn: rp.msisdn,
        chv1: rp.pin1,
        puk1: rp.puk1,
        adm1: rp.adm1,
        sqn: rp.sqn,
        ..RawSlot::default()
    };
    let (_, card) = apply(raw, meta.card.clone())?;
    meta.card = card;
    if let Some(v) = rp.name {
        meta.name = v;
    }
    if let Some(v) = rp.provider {
        meta.provider = v;
    }
    if let Some(v) = rp.class {
        meta.class = v;
    }
    if let Some(v) = rp.smdp {
        meta.smdp = v;
    }
    meta.nickname = rp.nickname.filter(|n| !n.is_empty());
    meta.enabled = rp.enabled;
    Ok(meta)
}

fn apply(r: RawSlot, base: CardProfile) -> Result<(SlotState, CardProfile), ProfileError> {
    let mut p = base;
    if let Some(atr) = &r.atr {
        p.atr = parse_hex("atr", atr)?;
    }
    if let Some(v) = r.iccid {
        p.iccid = v;
    }
    if let Some(v) = r.imsi {
        p.imsi = v;
    }
    if let Some(ki) = &r.ki {
        p.ki = parse_key("ki", ki)?;
    }
    let opc = match (&r.opc, &r.op) {
        (Some(_), Some(_)) => return Err(invalid("opc", "give opc or op, not both")),
        (Some(opc), None) => Some(parse_key("opc", opc)?),
        (None, Some(op)) => {
            let op = parse_key("op", op)?;
            Some(opc_from_op(&p.ki, &op).ok_or_else(|| invalid("op", "cannot derive OPc"))?)
        }
        (None, None) => None,
    };
    p.algo = match (r.algo, opc) {
        (Some(AlgoName::Xor2g), Some(_)) => {
            return Err(invalid("opc", "only with algo = \"milenage\""))
        }
        (Some(AlgoName::Xor2g), None) if p.kind == CardKind::Usim => {
            return Err(invalid("algo", "a USIM needs milenage"))
        }
        (Some(AlgoName::Xor2g), None) => Algo::Xor2g,
        (Some(AlgoName::Milenage) | None, Some(opc)) => Algo::Milenage { opc },
        (Some(AlgoName::Milenage), None) => {
            return Err(invalid("algo", "milenage needs opc or op"))
        }
        (None, None) => p.algo,
    };
    if let Some(spn) = r.spn {
        p.spn = (!spn.is_empty()).then_some(spn);
    }
    if r.msisdn.is_some() {
        p.msisdn = r.msisdn;
    }
    p.chv1 = r.chv1;
    if let Some(v) = r.puk1 {
        p.usim.puk1 = v;
    }
    if let Some(v) = r.adm1 {
        p.usim.adm1 = v;
    }
    if let Some(v) = &r.sqn {
        if v.is_empty() || v.len() > 12 {
            return Err(invalid("sqn", "1..=12 hex digits"));
        }
        p.usim.sqn = u64::from_str_radix(v, 16).map_err(|e| invalid("sqn", e.to_string()))?;
    }
    if let Some(v) = r.sqn_ind_bits {
        p.usim.ind_bits = v;
    }
    if let Some(v) = r.sqn_delta {
        p.usim.delta = v;
    }
    if let Some(m) = &r.milenage {
        if let Some(rr) = m.r {
            if rr.iter().any(|&x| x > 127) {
                return Err(invalid("milenage.r", "rotations are 0..=127 bits"));
            }
            p.usim.milenage.r = rr;
        }
        if let Some(c) = &m.c {
            for (dst, src) in p.usim.milenage.c.iter_mut().zip(c) {
                *dst = parse_key("milenage.c", src)?;
            }
        }
    }
    p.df_gsm_ef_count = r.df_gsm_ef_count;
    for (path, data) in &r.files {
        let bytes = parse_hex("files", data)?;
        p.files.insert(path.to_ascii_uppercase(), bytes);
    }
    p.t0 = r.t0;
    p.validate()?;
    Ok((r.state, p))
}

impl TryFrom<RawFile> for CardsFile {
    type Error = ProfileError;
    fn try_from(r: RawFile) -> Result<CardsFile, ProfileError> {
        let mut seen = [false; 257];
        let mut card = Vec::with_capacity(r.card.len());
        for raw in r.card {
            let entry = SlotEntry::try_from(raw)?;
            if std::mem::replace(&mut seen[entry.slot as usize], true) {
                return Err(ProfileError::DuplicateSlot(entry.slot));
            }
            card.push(entry);
        }
        card.sort_by_key(|e| e.slot);
        Ok(CardsFile { pool: r.pool, card })
    }
}

impl CardsFile {
    /// Parses and validates a cards file (see the module docs for an example). Omitted card
    /// fields come from [`generated`]; cards are returned sorted by slot.
    pub fn from_toml(text: &str) -> Result<CardsFile, ProfileError> {
        let raw: RawFile = toml::from_str(text)?;
        CardsFile::try_from(raw)
    }

    /// The built-in set: the manual's cards 2, 18, 101 and 256 (SIMs with their ATRs, card
    /// 18's ICCID and card 256's IMSI) and generated cards in slots 1..=32, 100 and 102: SIMs
    /// in the odd slots, USIMs ([`generated_usim`]) in the even ones, slot 20 with the keys of
    /// TS 35.208 test set 1 ([`TS_35_208_SET1_K`], [`TS_35_208_SET1_OPC`]); eUICCs
    /// ([`generated_euicc_with`]) in 33, 34 (three profiles) and 35. Cards 28-31 have an
    /// MSISDN (`+4917000000` + slot), 30 (USIM) and 31 (SIM) PIN1 enabled (`1234`).
    pub fn default_set() -> CardsFile {
        let mut card: Vec<SlotEntry> = (1..=32)
            .chain([100, 101, 102, 256])
            .map(|slot| SlotEntry {
                slot,
                state: SlotState::Normal,
                profile: generated(slot),
            })
            .collect();
        let mut set = |slot: u16, atr: &str, f: &dyn Fn(&mut CardProfile)| {
            let e = card.iter_mut().find(|e| e.slot == slot).expect("slot");
            e.profile.atr = hex::decode(atr.replace(' ', "")).expect("atr");
            // The manual's select responses report 0x30 EFs in DF.GSM.
            e.profile.df_gsm_ef_count = Some(0x30);
            f(&mut e.profile);
        };
        set(
            2,
            "3B 9D 95 80 1F C7 80 31 E0 73 FE 21 13 65 15 09 63 86 83 A1",
            &|_| {},
        );
        set(
            18,
            "3B 9F 95 80 1F C3 80 31 E0 73 FE 21 13 57 86 81 02 86 98 44 18 A8",
            &|p| p.iccid = "89860043191482190636".into(),
        );
        set(
            101,
            "3B 3D 94 00 32 06 01 12 00 00 86 60 61 10 80 00 07",
            &|_| {},
        );
        set(
            256,
            "3B 9E 94 80 1F 47 80 31 A0 73 BE 21 11 66 44 4D 54 22 01 00 26",
            &|p| p.imsi = "460019894013615".into(),
        );
        // USIMs: the even generated slots; slot 20 holds TS 35.208 test set 1's K and OPc, its
        // SQN one step (SEQ + 1, same IND) below the set's, so that vector is accepted.
        for e in card.iter_mut() {
            if e.slot % 2 == 0 && ![2, 18, 256].contains(&e.slot) {
                e.profile = generated_usim(e.slot);
            }
        }
        let demo = &mut card
            .iter_mut()
            .find(|e| e.slot == 20)
            .expect("slot")
            .profile;
        demo.ki = TS_35_208_SET1_K;
        demo.algo = Algo::Milenage {
            opc: TS_35_208_SET1_OPC,
        };
        demo.usim.sqn = 0xFF9B_B4D0_B607 - 32;
        // What a PIN hides and what a card's facts show (issue 20 §2): MSISDNs on 28 (USIM)
        // and 29 (SIM), PIN1 (CHV1) enabled with 1234 on 30 (USIM) and 31 (SIM).
        for e in card.iter_mut() {
            if (28..=31).contains(&e.slot) {
                e.profile.msisdn = Some(format!("+4917000000{:02}", e.slot));
            }
            if matches!(e.slot, 30 | 31) {
                e.profile.chv1 = Some("1234".into());
            }
        }
        // eUICCs: 33 and 35 with two profiles, 34 with three; the first one enabled.
        for (slot, n) in [(33, 2), (34, 3), (35, 2)] {
            card.push(SlotEntry {
                slot,
                state: SlotState::Normal,
                profile: generated_euicc_with(slot, n),
            });
        }
        card.sort_by_key(|e| e.slot);
        CardsFile {
            pool: PoolKnobs::default(),
            card,
        }
    }

    /// Slots 1..=n (n ≤ 256) all populated with [`generated`] cards, for benchmarks.
    pub fn filled(n: u16) -> CardsFile {
        CardsFile {
            pool: PoolKnobs::default(),
            card: (1..=n.min(256))
                .map(|slot| SlotEntry {
                    slot,
                    state: SlotState::Normal,
                    profile: generated(slot),
                })
                .collect(),
        }
    }

    /// The entry of a front-panel slot, if populated.
    pub fn get(&self, slot: u16) -> Option<&SlotEntry> {
        self.card.iter().find(|e| e.slot == slot)
    }
}

/// SplitMix64: a tiny deterministic generator for per-slot keys.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn derive_key(slot: u16, domain: u64) -> [u8; 16] {
    let a = splitmix(domain << 16 | u64::from(slot));
    let b = splitmix(a);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    // The slot in clear makes keys unique per slot by construction.
    k[14..].copy_from_slice(&slot.to_be_bytes());
    k
}

/// Luhn check digit for a digit string (non-digits ignored).
pub fn luhn_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .filter(u8::is_ascii_digit)
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// A deterministic card, unique per slot: ICCID `89494400000000` + slot (5 digits) + Luhn
/// digit (20 digits), IMSI `0010100000` + slot (5 digits), Ki derived from the slot, XOR-2G
/// for odd and Milenage for even slots, SPN `simpool <slot>`, CHV1 disabled, ATR of
/// sysmoSIM-GR1.
pub fn generated(slot: u16) -> CardProfile {
    let payload = format!("89494400000000{slot:05}");
    let iccid = format!("{payload}{}", luhn_digit(&payload));
    let algo = if slot % 2 == 1 {
        Algo::Xor2g
    } else {
        Algo::Milenage {
            opc: derive_key(slot, 0x4F50),
        }
    };
    CardProfile {
        atr: GR1_ATR.to_vec(),
        iccid,
        imsi: format!("0010100000{slot:05}"),
        ki: derive_key(slot, 0x4B69),
        algo,
        spn: Some(format!("simpool {slot}")),
        msisdn: None,
        chv1: None,
        df_gsm_ef_count: None,
        files: BTreeMap::new(),
        t0: T0Quirks::default(),
        kind: CardKind::Sim,
        usim: UsimParams::default(),
        euicc: None,
    }
}

/// K of 3GPP TS 35.208 test set 1 (the default set's slot 20).
pub const TS_35_208_SET1_K: [u8; 16] = [
    0x46, 0x5b, 0x5c, 0xe8, 0xb1, 0x99, 0xb4, 0x9f, 0xaa, 0x5f, 0x0a, 0x2e, 0xe2, 0x38, 0xa6, 0xbc,
];
/// OPc of 3GPP TS 35.208 test set 1.
pub const TS_35_208_SET1_OPC: [u8; 16] = [
    0xcd, 0x63, 0xcb, 0x71, 0x95, 0x4a, 0x9f, 0x4e, 0x48, 0xa5, 0x99, 0x4e, 0x37, 0xa0, 0x2b, 0xaf,
];

/// The ATR of generated eUICCs: as [`USIM_ATR`] with TB3 `82` after T=15 ("eUICC-related
/// functions supported", TS 102 221 §6.3.3) and the historical bytes "simpooleUICC".
pub const EUICC_ATR: [u8; 19] = [
    0x3B, 0x8C, 0x80, 0x3F, 0xC7, 0x82, b's', b'i', b'm', b'p', b'o', b'o', b'l', b'e', b'U', b'I',
    b'C', b'C', 0x64,
];

/// Profile `k` (0-based) of the generated eUICC in `slot`: a USIM with ICCID
/// `8949449` + slot (5 digits) + `00000` + k (2 digits) + Luhn digit, IMSI `001018` + slot +
/// `00` + k,
/// K and OPc derived from slot and k, SPN "simpool eSIM <k+1>", PIN1 disabled; profile name
/// "simpool <slot>/<k+1>", provider "simpool", class operational, its ISD-P
/// [`euicc::isdp_aid`]; profile 0 enabled.
pub fn generated_euicc_profile(slot: u16, k: usize) -> EuiccProfile {
    let payload = format!("8949449{slot:05}00000{:02}", k % 100);
    let iccid = format!("{payload}{}", luhn_digit(&payload));
    let card = CardProfile {
        iccid,
        imsi: format!("001018{slot:05}00{:02}", k % 100),
        ki: derive_key(slot, 0x4B69_0100 + k as u64),
        algo: Algo::Milenage {
            opc: derive_key(slot, 0x4F50_0100 + k as u64),
        },
        spn: Some(format!("simpool eSIM {}", k + 1)),
        ..generated_usim(slot)
    };
    EuiccProfile {
        card,
        isdp_aid: euicc::isdp_aid(k),
        name: format!("simpool {slot}/{}", k + 1),
        provider: "simpool".into(),
        class: ProfileClass::Operational,
        nickname: None,
        smdp: "testsmdpplus1.example.com".into(),
        enabled: k == 0,
    }
}

/// A generated eUICC in `slot` with `n` profiles ([`generated_euicc_profile`], the first one
/// enabled): EID `8904903200000000000000` + slot (5 digits) + `000` + check digits,
/// [`EUICC_ATR`], enabling takes [`euicc::DEFAULT_ENABLE_MS`]. The card-wide fields are those of
/// the enabled profile.
pub fn generated_euicc_with(slot: u16, n: usize) -> CardProfile {
    let eid =
        euicc::eid_with_check(&format!("8904903200000000000000{slot:05}000")).expect("30 digits");
    let profiles: Vec<EuiccProfile> = (0..n).map(|k| generated_euicc_profile(slot, k)).collect();
    CardProfile {
        kind: CardKind::Euicc,
        atr: EUICC_ATR.to_vec(),
        euicc: Some(Box::new(EuiccParams {
            eid,
            profiles: profiles.clone(),
            enable_ms: euicc::DEFAULT_ENABLE_MS,
            default_smdp: None,
            root_smds: euicc::ROOT_SMDS.into(),
        })),
        ..profiles[0].card.clone()
    }
}

/// [`generated_euicc_with`] two profiles.
pub fn generated_euicc(slot: u16) -> CardProfile {
    generated_euicc_with(slot, 2)
}

/// [`generated`] as a USIM: same ICCID, IMSI, Ki and SPN; Milenage (OPc derived from the slot),
/// [`USIM_ATR`], SQN 0, PIN1 disabled (`1234`), PUK1 `12345678`, ADM1 `88888888`.
pub fn generated_usim(slot: u16) -> CardProfile {
    CardProfile {
        kind: CardKind::Usim,
        atr: USIM_ATR.to_vec(),
        algo: Algo::Milenage {
            opc: derive_key(slot, 0x4F50),
        },
        ..generated(slot)
    }
}

// The BCD codecs of EF.ICCID and EF.IMSI are the cards' file format, shared with the daemon
// (which reads them): they live in `crate::identity`.
pub use crate::identity::{decode_iccid, decode_imsi, encode_iccid, encode_imsi};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_vectors() {
        assert_eq!(
            hex::encode_upper(encode_iccid("89860043191482190636")),
            "98680034914128916063"
        );
        assert_eq!(
            decode_iccid(&hex::decode("98680034914128916063").unwrap()),
            "89860043191482190636"
        );
        assert_eq!(
            hex::encode_upper(encode_imsi("460019894013615")),
            "084906108949106351"
        );
        assert_eq!(
            decode_imsi(&hex::decode("084906108949106351").unwrap()).as_deref(),
            Some("460019894013615")
        );
    }

    #[test]
    fn even_imsi_and_short_iccid() {
        let e = encode_imsi("00101123456789");
        assert_eq!(hex::encode_upper(e), "0801101021436587F9");
        assert_eq!(decode_imsi(&e).as_deref(), Some("00101123456789"));
        let i = encode_iccid("8949440000000000011");
        assert_eq!(i[9], 0xF1);
        assert_eq!(decode_iccid(&i), "8949440000000000011");
        assert_eq!(decode_imsi(&[0xFF; 9]), None);
        assert_eq!(decode_imsi(&[0x00; 9]), None);
        assert_eq!(decode_imsi(&[0x08, 0x49]), None);
        assert_eq!(decode_imsi(&[]), None);
    }

    #[test]
    fn luhn() {
        assert_eq!(luhn_digit("7992739871"), 3);
        let g = generated(17);
        assert_eq!(g.iccid.len(), 20);
        let (payload, check) = g.iccid.split_at(19);
        assert_eq!(luhn_digit(payload).to_string(), check);
    }

    #[test]
    fn generated_unique_and_valid() {
        let all: Vec<CardProfile> = (1..=256).map(generated).collect();
        for p in &all {
            p.validate().unwrap();
        }
        let mut ids: Vec<_> = all.iter().map(|p| p.iccid.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 256);
        let mut kis: Vec<_> = all.iter().map(|p| p.ki).collect();
        kis.sort();
        kis.dedup();
        assert_eq!(kis.len(), 256);
        assert_eq!(generated(3).algo, Algo::Xor2g);
        assert!(matches!(generated(4).algo, Algo::Milenage { .. }));
        assert_eq!(generated(5), generated(5));
    }

    #[test]
    fn default_set_shape() {
        let s = CardsFile::default_set();
        let slots: Vec<u16> = s.card.iter().map(|e| e.slot).collect();
        let want: Vec<u16> = (1..=35).chain([100, 101, 102, 256]).collect();
        assert_eq!(slots, want);
        for e in &s.card {
            e.profile.validate().unwrap();
        }
        let mut imsis: Vec<_> = s.card.iter().map(|e| &e.profile.imsi).collect();
        imsis.sort();
        imsis.dedup();
        assert_eq!(imsis.len(), s.card.len());
        assert_eq!(s.get(18).unwrap().profile.iccid, "89860043191482190636");
        assert_eq!(s.get(256).unwrap().profile.imsi, "460019894013615");
        assert_eq!(s.get(101).unwrap().profile.atr.len(), 17);
        assert!(s.get(36).is_none());
        assert!(
            s.get(34)
                .unwrap()
                .profile
                .euicc
                .as_ref()
                .unwrap()
                .profiles
                .len()
                == 3
        );
        assert_eq!(CardsFile::filled(256).card.len(), 256);
    }

    #[test]
    fn from_toml_errors() {
        let e = |t: &str| CardsFile::from_toml(t).unwrap_err();
        assert!(matches!(
            e("[[card]]\nslot = 0"),
            ProfileError::SlotRange(0)
        ));
        assert!(matches!(
            e("[[card]]\nslot = 257"),
            ProfileError::SlotRange(257)
        ));
        assert!(matches!(
            e("[[card]]\nslot = 3\n[[card]]\nslot = 3"),
            ProfileError::DuplicateSlot(3)
        ));
        assert!(matches!(
            e("[[card]]\nslot = 3\nbogus = 1"),
            ProfileError::Toml(_)
        ));
        assert!(matches!(e("[pool]\nbogus = 1"), ProfileError::Toml(_)));
        for bad in [
            "atr = \"3B\"",
            "atr = \"3B9F9Z\"",
            "atr = \"00 11 22\"",
            "iccid = \"89x1\"",
            "imsi = \"123\"",
            "ki = \"0011\"",
            "algo = \"milenage\"\nopc = \"00\"",
            "algo = \"milenage\"",
            "algo = \"xor2g\"\nopc = \"000102030405060708090a0b0c0d0e0f\"",
            "chv1 = \"12\"",
            "spn = \"a_b\"",
            "files = { \"3F00/7F20/6F99\" = \"00\" }",
            "files = { \"3F00/7F10/6F3A\" = \"0011\" }",
            "files = { \"3F00/7F20\" = \"0011\" }",
        ] {
            let text = format!("[[card]]\nslot = 3\n{bad}");
            let err = CardsFile::from_toml(&text).unwrap_err();
            assert!(
                matches!(err, ProfileError::Slot { slot: 3, .. }),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            e("[[card]]\nslot = 3\nalgo = \"comp128v1\""),
            ProfileError::Toml(_)
        ));
    }

    #[test]
    fn from_toml_defaults_and_op() {
        let f = CardsFile::from_toml(
            "[[card]]\nslot = 9\n[[card]]\nslot = 4\nop = \"00112233445566778899aabbccddeeff\"\nspn = \"\"",
        )
        .unwrap();
        assert_eq!(f.card[1].profile, generated(9));
        let p = &f.card[0].profile;
        assert_eq!(p.spn, None);
        let want = opc_from_op(
            &p.ki,
            &hex::decode("00112233445566778899aabbccddeeff")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.algo, Algo::Milenage { opc: want });
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = decode_iccid(&bytes);
            let _ = decode_imsi(&bytes);
        }

        #[test]
        fn imsi_roundtrip(s in "[0-9]{6,15}") {
            proptest::prop_assert_eq!(decode_imsi(&encode_imsi(&s)), Some(s));
        }

        #[test]
        fn iccid_roundtrip(s in "[0-9]{1,20}") {
            proptest::prop_assert_eq!(decode_iccid(&encode_iccid(&s)), s);
        }
    }
}
