//! The GSM 11.11 (3GPP TS 51.011) file system of a simulated SIM and the execution of its
//! class-`A0` commands. T=0 framing lives in [`super::card`]; this module sees whole commands
//! (header + incoming data) and answers with outgoing data + status word.
//!
//! Policies where the spec leaves a choice:
//! - READ/UPDATE BINARY outside the file: offset ≥ size → `6B 00`; offset inside but
//!   offset + length beyond the end → `67 XX` with XX = bytes left from the offset (so the
//!   terminal can re-issue with XX). Length `00` means 256.
//! - RUN GSM ALGORITHM with a current DF other than DF.GSM → `94 00`.
//! - SAT commands (TERMINAL PROFILE, ENVELOPE, FETCH, TERMINAL RESPONSE) → `6D 00`: the card
//!   has no SIM Toolkit and its EF.SST says so.
//! - GET RESPONSE: a successful one consumes the pending response; a failed one (`67 XX`,
//!   `6B 00`) keeps it so the terminal can retry; every other command discards it.
//! - INVALIDATE on an invalidated EF and REHABILITATE on a valid one → `98 10`.
//! - UPDATE RECORD on a cyclic EF: only PREVIOUS mode (else `6B 00`); the oldest record is
//!   overwritten and becomes record 1. Unknown record modes → `6B 00`.
//! - Successful UNBLOCK CHV1 leaves CHV1 enabled; a wrong CHV presentation forgets a previous
//!   successful verification.
//! - 7F21 (DCS1800) is an alias of DF.GSM; its select response reports FID 7F20.
//! - DF.GSM reports the profile's `df_gsm_ef_count` as its number of EFs when set (the
//!   manual's real cards report `30`), else the real count.
//! - No ADM code exists: ADM-protected operations always answer `98 04`.
//! - CHV2 = `1234`, UNBLOCK CHV2 = `12345678`, UNBLOCK CHV1 = `12345678` (fixed); CHV1 from the
//!   profile (`1234` when disabled).

use super::algo::{run_gsm, Algo};
use super::auth::{c2_c3, Milenage, MilenageConsts};
use super::profile::{encode_iccid, encode_imsi, CardProfile};

/// Status word.
pub type Sw = [u8; 2];

pub const SW_OK: Sw = [0x90, 0x00];
pub const SW_NO_EF: Sw = [0x94, 0x00];
pub const SW_OUT_OF_RANGE: Sw = [0x94, 0x02];
pub const SW_NOT_FOUND: Sw = [0x94, 0x04];
pub const SW_INCONSISTENT: Sw = [0x94, 0x08];
pub const SW_ACCESS: Sw = [0x98, 0x04];
pub const SW_CHV_CONTRADICTION: Sw = [0x98, 0x08];
pub const SW_INVALIDATION: Sw = [0x98, 0x10];
pub const SW_BLOCKED: Sw = [0x98, 0x40];
pub const SW_MAX_REACHED: Sw = [0x98, 0x50];
pub const SW_P1P2: Sw = [0x6B, 0x00];
pub const SW_UNKNOWN_INS: Sw = [0x6D, 0x00];
pub const SW_WRONG_CLASS: Sw = [0x6E, 0x00];
pub const SW_TECHNICAL: Sw = [0x6F, 0x00];

/// `67 XX`: wrong P3, XX = the correct length (`00` if unknown or 256).
pub fn sw_p3(correct: usize) -> Sw {
    [0x67, if correct > 0xFF { 0 } else { correct as u8 }]
}

/// Default CHV1 (used when the profile enables CHV1 without a value, and as the stored
/// value while CHV1 is disabled).
pub const DEFAULT_CHV1: &str = "1234";
/// CHV2 of every simulated card.
pub const DEFAULT_CHV2: &str = "1234";
/// UNBLOCK CHV1 and UNBLOCK CHV2 of every simulated card.
pub const DEFAULT_UNBLOCK: &str = "12345678";
const CHV_TRIES: u8 = 3;
const UNBLOCK_TRIES: u8 = 10;

// Access-condition nibbles (51.011 §9.3).
const ALW: u8 = 0x0;
const CHV1: u8 = 0x1;
const CHV2: u8 = 0x2;
const ADM: u8 = 0x4;
const NEV: u8 = 0xF;

const MF_FID: u16 = 0x3F00;
const GSM_FID: u16 = 0x7F20;
const DCS1800_FID: u16 = 0x7F21;

/// The result of one command: outgoing data (only on success) and the status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub data: Vec<u8>,
    pub sw: Sw,
}

impl Answer {
    fn sw(sw: Sw) -> Answer {
        Answer {
            data: Vec::new(),
            sw,
        }
    }
    fn data(data: Vec<u8>) -> Answer {
        Answer { data, sw: SW_OK }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ac {
    read: u8,
    update: u8,
    increase: u8,
    rehab: u8,
    inval: u8,
}

/// The usual ACs: no INCREASE; REHABILITATE CHV1 for CHV1-readable files, ADM otherwise;
/// INVALIDATE ADM.
fn ac(read: u8, update: u8) -> Ac {
    Ac {
        read,
        update,
        increase: NEV,
        rehab: if read == CHV1 { CHV1 } else { ADM },
        inval: ADM,
    }
}

#[derive(Debug, Clone)]
enum Body {
    Transparent(Vec<u8>),
    /// Records in logical order: for cyclic EFs index 0 is record 1, the most recent.
    Linear {
        rec_len: usize,
        recs: Vec<Vec<u8>>,
    },
    Cyclic {
        rec_len: usize,
        recs: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
struct Ef {
    body: Body,
    ac: Ac,
    valid: bool,
    readable_invalid: bool,
    increase_allowed: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Df { ef_count: Option<u8> },
    Ef(Ef),
}

#[derive(Debug, Clone)]
struct Node {
    fid: u16,
    parent: usize,
    children: Vec<usize>,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                fid: MF_FID,
                parent: 0,
                children: Vec::new(),
                kind: Kind::Df { ef_count: None },
            }],
        }
    }

    fn add(&mut self, parent: usize, fid: u16, kind: Kind) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            fid,
            parent,
            children: Vec::new(),
            kind,
        });
        self.nodes[parent].children.push(i);
        i
    }

    fn df(&mut self, parent: usize, fid: u16) -> usize {
        self.add(parent, fid, Kind::Df { ef_count: None })
    }

    fn ef(&mut self, parent: usize, fid: u16, body: Body, ac: Ac) -> usize {
        self.add(
            parent,
            fid,
            Kind::Ef(Ef {
                body,
                ac,
                valid: true,
                readable_invalid: false,
                increase_allowed: false,
            }),
        )
    }

    fn tr(&mut self, parent: usize, fid: u16, data: Vec<u8>, ac: Ac) -> usize {
        self.ef(parent, fid, Body::Transparent(data), ac)
    }

    fn lin(&mut self, parent: usize, fid: u16, n: usize, rec: Vec<u8>, ac: Ac) -> usize {
        let rec_len = rec.len();
        self.ef(
            parent,
            fid,
            Body::Linear {
                rec_len,
                recs: vec![rec; n],
            },
            ac,
        )
    }

    fn cyc(&mut self, parent: usize, fid: u16, n: usize, rec: Vec<u8>, ac: Ac) -> usize {
        let rec_len = rec.len();
        self.ef(
            parent,
            fid,
            Body::Cyclic {
                rec_len,
                recs: vec![rec; n],
            },
            ac,
        )
    }

    fn child(&self, parent: usize, fid: u16) -> Option<usize> {
        let fid = if fid == DCS1800_FID { GSM_FID } else { fid };
        self.nodes[parent]
            .children
            .iter()
            .copied()
            .find(|&c| self.nodes[c].fid == fid)
    }

    fn is_df(&self, i: usize) -> bool {
        matches!(self.nodes[i].kind, Kind::Df { .. })
    }

    /// Resolves `3F00/7F20/6F07` (hex FIDs, `/`-separated, from the MF).
    fn resolve(&self, path: &str) -> Option<usize> {
        let mut parts = path.split('/');
        if parse_fid(parts.next()?)? != MF_FID {
            return None;
        }
        let mut cur = 0;
        for p in parts {
            if !self.is_df(cur) {
                return None;
            }
            cur = self.child(cur, parse_fid(p)?)?;
        }
        Some(cur)
    }

    fn ef_mut(&mut self, i: usize) -> &mut Ef {
        match &mut self.nodes[i].kind {
            Kind::Ef(e) => e,
            Kind::Df { .. } => unreachable!("node {i} is a DF"),
        }
    }

    /// Replaces an EF's content: transparent EFs take any non-empty length, record EFs a
    /// whole number (1..=254) of records of their record length.
    fn set_content(&mut self, path: &str, data: &[u8]) -> Result<(), String> {
        let i = self
            .resolve(path)
            .ok_or_else(|| format!("no such file {path:?}"))?;
        let Kind::Ef(ef) = &mut self.nodes[i].kind else {
            return Err(format!("{path:?} is a DF, not an EF"));
        };
        match &mut ef.body {
            Body::Transparent(d) => {
                if data.is_empty() || data.len() > 0xFFFF {
                    return Err(format!("{path:?}: content must be 1..=65535 bytes"));
                }
                *d = data.to_vec();
            }
            Body::Linear { rec_len, recs } | Body::Cyclic { rec_len, recs } => {
                let n = data.len() / *rec_len;
                if !data.len().is_multiple_of(*rec_len) || n == 0 || n > 254 {
                    return Err(format!(
                        "{path:?}: content must be 1..=254 records of {} bytes",
                        rec_len
                    ));
                }
                *recs = data.chunks(*rec_len).map(<[u8]>::to_vec).collect();
            }
        }
        Ok(())
    }
}

fn parse_fid(s: &str) -> Option<u16> {
    if s.len() != 4 {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

fn ff(n: usize) -> Vec<u8> {
    vec![0xFF; n]
}

/// EF.SPN: display condition `01`, then the name (GSM-7 default alphabet, unpacked; the
/// profile only admits characters coded as in ASCII), `FF`-padded to 16 bytes.
pub(super) fn spn_content(spn: Option<&str>) -> Vec<u8> {
    let mut v = ff(17);
    if let Some(s) = spn {
        v[0] = 0x01;
        for (d, c) in v[1..].iter_mut().zip(s.bytes()) {
            *d = c & 0x7F;
        }
    }
    v
}

const ALPHA_LEN: usize = 16;

/// An ADN-style record (alpha id, BCD number, CCP, EXT) holding `number` (`+` = international).
pub(super) fn adn_record(number: Option<&str>) -> Vec<u8> {
    let mut r = ff(ALPHA_LEN + 14);
    if let Some(num) = number {
        let intl = num.starts_with('+');
        let digits: Vec<u8> = num
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .take(20)
            .collect();
        let bcd = &mut r[ALPHA_LEN + 2..ALPHA_LEN + 12];
        for (i, d) in digits.iter().enumerate() {
            let b = &mut bcd[i / 2];
            *b = if i % 2 == 0 {
                (*b & 0xF0) | d
            } else {
                (*b & 0x0F) | (d << 4)
            };
        }
        r[ALPHA_LEN] = (digits.len().div_ceil(2) + 1) as u8;
        r[ALPHA_LEN + 1] = if intl { 0x91 } else { 0x81 };
    }
    r
}

/// EF.LOCI: TMSI unset, LAI from the IMSI's MCC and 2-digit MNC, LAC FFFE, LU status
/// "not updated".
pub(super) fn loci_content(imsi: &str) -> Vec<u8> {
    let d: Vec<u8> = imsi
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let mut v = vec![
        0xFF, 0xFF, 0xFF, 0xFF, 0x64, 0xF0, 0x10, 0xFF, 0xFE, 0xFF, 0x01,
    ];
    if d.len() >= 5 {
        v[4] = (d[1] << 4) | d[0];
        v[5] = 0xF0 | d[2];
        v[6] = (d[4] << 4) | d[3];
    }
    v
}

/// Services 1–4, 5 (AoC), 7, 9, 12, 13, 15, 16, 17, 43, 44, 45 allocated and activated;
/// no SIM Toolkit.
const SST: [u8; 12] = [
    0xFF, 0x33, 0xC3, 0xF3, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF0, 0x03,
];

fn build_tree(p: &CardProfile) -> Tree {
    let mut t = Tree::new();
    let mf = 0;
    t.tr(mf, 0x2FE2, encode_iccid(&p.iccid).to_vec(), ac(ALW, NEV));

    let tel = t.df(mf, 0x7F10);
    let adn = t.lin(tel, 0x6F3A, 10, adn_record(None), ac(CHV1, CHV1));
    // ADN is invalidated/rehabilitated with CHV2 to switch FDN mode (51.011 §11.5.1).
    t.ef_mut(adn).ac.inval = CHV2;
    t.ef_mut(adn).ac.rehab = CHV2;
    t.ef_mut(adn).readable_invalid = true;
    t.lin(tel, 0x6F3B, 10, adn_record(None), ac(CHV1, CHV2));
    let mut sms = ff(176);
    sms[0] = 0x00;
    t.lin(tel, 0x6F3C, 10, sms, ac(CHV1, CHV1));
    let m = t.lin(tel, 0x6F40, 2, adn_record(None), ac(CHV1, CHV1));
    if let Body::Linear { recs, .. } = &mut t.ef_mut(m).body {
        recs[0] = adn_record(p.msisdn.as_deref());
    }
    t.lin(tel, 0x6F42, 1, ff(40), ac(CHV1, CHV1));
    t.tr(tel, 0x6F43, ff(2), ac(CHV1, CHV1));
    t.cyc(tel, 0x6F44, 5, adn_record(None), ac(CHV1, CHV1));

    let gsm = t.df(mf, GSM_FID);
    if let Kind::Df { ef_count } = &mut t.nodes[gsm].kind {
        *ef_count = p.df_gsm_ef_count;
    }
    t.tr(gsm, 0x6F05, vec![0x01, 0xFF], ac(ALW, CHV1));
    t.tr(gsm, 0x6F07, encode_imsi(&p.imsi).to_vec(), ac(CHV1, ADM));
    let mut kc = ff(9);
    kc[8] = 0x07;
    t.tr(gsm, 0x6F20, kc, ac(CHV1, CHV1));
    t.tr(gsm, 0x6F30, ff(24), ac(CHV1, CHV1));
    t.tr(gsm, 0x6F31, vec![0x05], ac(CHV1, ADM));
    t.tr(gsm, 0x6F37, vec![0, 0, 0], ac(CHV1, CHV2));
    t.tr(gsm, 0x6F38, SST.to_vec(), ac(CHV1, ADM));
    // EF.ACM: the cyclic EF that INCREASE works on.
    let acm = t.cyc(gsm, 0x6F39, 5, vec![0, 0, 0], ac(CHV1, CHV2));
    t.ef_mut(acm).ac.increase = CHV1;
    t.ef_mut(acm).increase_allowed = true;
    t.tr(gsm, 0x6F3E, ff(8), ac(CHV1, ADM));
    t.tr(gsm, 0x6F3F, ff(8), ac(CHV1, ADM));
    t.tr(
        gsm,
        0x6F41,
        vec![0xFF, 0xFF, 0xFF, 0x00, 0x00],
        ac(CHV1, CHV2),
    );
    t.tr(gsm, 0x6F46, spn_content(p.spn.as_deref()), ac(ALW, ADM));
    t.tr(gsm, 0x6F74, ff(16), ac(CHV1, CHV1));
    t.tr(gsm, 0x6F78, vec![0x00, 0x01], ac(CHV1, ADM));
    t.tr(gsm, 0x6F7B, ff(12), ac(CHV1, CHV1));
    t.tr(gsm, 0x6F7E, loci_content(&p.imsi), ac(CHV1, CHV1));
    t.tr(gsm, 0x6FAD, vec![0x00, 0x00, 0x00, 0x02], ac(ALW, ADM));
    t.tr(gsm, 0x6FAE, vec![0x03], ac(ALW, ADM));
    t.tr(gsm, 0x6F60, ff(40), ac(CHV1, CHV1));
    t.tr(gsm, 0x6F61, ff(40), ac(CHV1, ADM));
    t.tr(gsm, 0x6F62, ff(40), ac(CHV1, ADM));
    // 112 and 911, BCD like ADN numbers (`11 F2 FF`; the reference page's `11 2F FF` has the
    // filler nibble on the wrong side).
    t.tr(
        gsm,
        0x6FB7,
        vec![0x11, 0xF2, 0xFF, 0x19, 0xF1, 0xFF],
        ac(ALW, ADM),
    );

    for (path, data) in &p.files {
        if let Err(e) = t.set_content(path, data) {
            log::warn!("card profile: file override ignored: {e}");
        }
    }
    t
}

#[derive(Debug, Clone)]
struct Secret {
    code: [u8; 8],
    left: u8,
    max: u8,
}

impl Secret {
    fn new(code: &str, max: u8) -> Secret {
        Secret {
            code: chv_field(code),
            left: max,
            max,
        }
    }
    fn status(&self) -> u8 {
        0x80 | self.left
    }
}

/// A CHV as the 8-byte field of VERIFY: ASCII digits, `FF`-padded.
pub fn chv_field(code: &str) -> [u8; 8] {
    let mut f = [0xFF; 8];
    for (d, c) in f.iter_mut().zip(code.bytes()) {
        *d = c;
    }
    f
}

/// The state of one simulated GSM SIM: files (persistent for the card's lifetime), CHVs and
/// the volatile selection/verification state.
#[derive(Debug, Clone)]
pub struct GsmSim {
    tree: Tree,
    gsm: usize,
    cur_df: usize,
    cur_ef: Option<usize>,
    /// Index into the current EF's records.
    rec_ptr: Option<usize>,
    chv: [Secret; 2],
    unblock: [Secret; 2],
    chv1_enabled: bool,
    verified: [bool; 2],
    pending: Option<Vec<u8>>,
    algo: Algo,
    ki: [u8; 16],
    /// Milenage constants of the profile (standard ones unless the cards file sets others).
    consts: MilenageConsts,
}

enum Op {
    Read,
    Update,
    Increase,
    Rehab,
    Inval,
}

impl GsmSim {
    /// Builds the card from a profile. Never fails: invalid pieces are skipped with a log
    /// line ([`CardProfile::validate`] reports them as errors).
    pub fn new(p: &CardProfile) -> GsmSim {
        let tree = build_tree(p);
        let gsm = tree.child(0, GSM_FID).expect("DF.GSM");
        GsmSim {
            tree,
            gsm,
            cur_df: 0,
            cur_ef: None,
            rec_ptr: None,
            chv: [
                Secret::new(p.chv1.as_deref().unwrap_or(DEFAULT_CHV1), CHV_TRIES),
                Secret::new(DEFAULT_CHV2, CHV_TRIES),
            ],
            unblock: [
                Secret::new(DEFAULT_UNBLOCK, UNBLOCK_TRIES),
                Secret::new(DEFAULT_UNBLOCK, UNBLOCK_TRIES),
            ],
            chv1_enabled: p.chv1.is_some(),
            verified: [false; 2],
            pending: None,
            algo: p.algo.clone(),
            ki: p.ki,
            consts: p.usim.milenage.clone(),
        }
    }

    /// Card reset: MF selected, no EF, CHV verifications forgotten, no pending response.
    /// File contents and CHV counters persist.
    pub fn reset(&mut self) {
        self.cur_df = 0;
        self.cur_ef = None;
        self.rec_ptr = None;
        self.verified = [false; 2];
        self.pending = None;
    }

    /// Current content of an EF (transparent content or concatenated records, record 1 first),
    /// e.g. `"3F00/7F20/6F07"`; for tests and inspection.
    pub fn read_ef(&self, path: &str) -> Option<Vec<u8>> {
        match &self.tree.nodes[self.tree.resolve(path)?].kind {
            Kind::Ef(ef) => Some(match &ef.body {
                Body::Transparent(d) => d.clone(),
                Body::Linear { recs, .. } | Body::Cyclic { recs, .. } => recs.concat(),
            }),
            Kind::Df { .. } => None,
        }
    }

    /// FID of the current DF (7F20 for DF.GSM, also when selected as 7F21).
    pub fn current_df(&self) -> u16 {
        self.tree.nodes[self.cur_df].fid
    }

    /// FID of the current EF, if any.
    pub fn current_ef(&self) -> Option<u16> {
        self.cur_ef.map(|i| self.tree.nodes[i].fid)
    }

    pub fn chv1_enabled(&self) -> bool {
        self.chv1_enabled
    }

    /// Executes one command: `hdr` = CLA INS P1 P2 P3; `data` = the P3 incoming bytes of an
    /// incoming command, empty otherwise. Outgoing data come back only with `90 00`.
    pub fn execute(&mut self, hdr: &[u8; 5], data: &[u8]) -> Answer {
        let pending = self.pending.take();
        if hdr[0] != 0xA0 {
            return Answer::sw(SW_WRONG_CLASS);
        }
        let [_, ins, p1, p2, p3] = *hdr;
        // Direct callers may pass any data; the T=0 layer already enforces these lengths.
        let fixed = match ins {
            0xA4 => 2,
            0x32 => 3,
            0x20 | 0x26 | 0x28 => 8,
            0x24 | 0x2C | 0x88 => 16,
            _ => data.len(),
        };
        if data.len() != fixed {
            return Answer::sw(sw_p3(fixed));
        }
        let r = match ins {
            0xA4 => self.select(p1, p2, data),
            0xF2 => self.status(p1, p2, p3),
            0xB0 => self.read_binary(p1, p2, p3),
            0xD6 => self.update_binary(p1, p2, data),
            0xB2 => self.read_record(p1, p2, p3),
            0xDC => self.update_record(p1, p2, data),
            0xA2 => self.seek(p1, p2, data),
            0x32 => self.increase(p1, p2, data),
            0x20 => self.verify(p1, p2, data),
            0x24 => self.change(p1, p2, data),
            0x26 => self.enable_disable(p1, p2, data, false),
            0x28 => self.enable_disable(p1, p2, data, true),
            0x2C => self.unblock(p1, p2, data),
            0x04 => self.invalidate(p1, p2, p3, false),
            0x44 => self.invalidate(p1, p2, p3, true),
            0x88 => self.run_gsm_algorithm(p1, p2, data),
            0xFA => check_p1p2(p1, p2).map(|_| Answer::sw(SW_OK)),
            0xC0 => {
                let r = get_response(pending.as_deref(), p1, p2, p3);
                if r.is_err() {
                    self.pending = pending;
                }
                r
            }
            _ => Err(SW_UNKNOWN_INS),
        };
        r.unwrap_or_else(Answer::sw)
    }

    /// Sets the pending response and answers `9F xx`.
    fn respond_later(&mut self, body: Vec<u8>) -> Result<Answer, Sw> {
        let sw = [0x9F, body.len() as u8];
        self.pending = Some(body);
        Ok(Answer::sw(sw))
    }

    fn df_body(&self, i: usize) -> Vec<u8> {
        let n = &self.tree.nodes[i];
        let dfs = n.children.iter().filter(|&&c| self.tree.is_df(c)).count() as u8;
        let efs = match n.kind {
            Kind::Df { ef_count: Some(c) } => c,
            _ => n.children.len() as u8 - dfs,
        };
        let fchar = if self.chv1_enabled { 0x13 } else { 0x93 };
        let ty = if i == 0 { 0x01 } else { 0x02 };
        let [fh, fl] = n.fid.to_be_bytes();
        vec![
            0x00,
            0x00,
            0x00,
            0x00,
            fh,
            fl,
            ty,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x0A,
            fchar,
            dfs,
            efs,
            0x04,
            0x00,
            self.chv[0].status(),
            self.unblock[0].status(),
            self.chv[1].status(),
            self.unblock[1].status(),
            0x00,
        ]
    }

    fn ef_body(&self, i: usize) -> Vec<u8> {
        let n = &self.tree.nodes[i];
        let Kind::Ef(ef) = &n.kind else {
            unreachable!()
        };
        let (size, structure, rl) = match &ef.body {
            Body::Transparent(d) => (d.len(), 0x00, 0),
            Body::Linear { rec_len, recs } => (rec_len * recs.len(), 0x01, *rec_len),
            Body::Cyclic { rec_len, recs } => (rec_len * recs.len(), 0x03, *rec_len),
        };
        let inc = if structure == 0x03 && ef.increase_allowed {
            0x40
        } else {
            0x00
        };
        let status = u8::from(ef.valid) | if ef.readable_invalid { 0x04 } else { 0 };
        let [sh, sl] = (size as u16).to_be_bytes();
        let [fh, fl] = n.fid.to_be_bytes();
        let a = ef.ac;
        vec![
            0x00,
            0x00,
            sh,
            sl,
            fh,
            fl,
            0x04,
            inc,
            (a.read << 4) | a.update,
            (a.increase << 4) | 0x0F,
            (a.rehab << 4) | a.inval,
            status,
            0x02,
            structure,
            rl as u8,
        ]
    }

    fn select(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        check_p1p2(p1, p2)?;
        let fid = u16::from_be_bytes([data[0], data[1]]);
        let t = &self.tree;
        let cur = self.cur_df;
        let parent = t.nodes[cur].parent;
        let norm = if fid == DCS1800_FID { GSM_FID } else { fid };
        let found = if fid == MF_FID {
            Some(0)
        } else if norm == t.nodes[cur].fid {
            Some(cur)
        } else if let Some(c) = t.child(cur, fid) {
            Some(c)
        } else if cur != 0 && norm == t.nodes[parent].fid {
            Some(parent)
        } else if cur != 0 {
            t.child(parent, fid).filter(|&c| t.is_df(c))
        } else {
            None
        };
        let i = found.ok_or(SW_NOT_FOUND)?;
        self.rec_ptr = None;
        if self.tree.is_df(i) {
            self.cur_df = i;
            self.cur_ef = None;
            let body = self.df_body(i);
            self.respond_later(body)
        } else {
            self.cur_ef = Some(i);
            let body = self.ef_body(i);
            self.respond_later(body)
        }
    }

    fn status(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        check_p1p2(p1, p2)?;
        let body = self.df_body(self.cur_df);
        let n = ne(p3);
        if n > body.len() {
            return Err(sw_p3(body.len()));
        }
        Ok(Answer::data(body[..n].to_vec()))
    }

    fn allowed(&self, nibble: u8) -> bool {
        match nibble {
            ALW => true,
            CHV1 => !self.chv1_enabled || self.verified[0],
            CHV2 => self.verified[1],
            _ => false,
        }
    }

    /// The current EF after the common checks: selected, AC, invalidation.
    fn ef_for(&mut self, op: Op) -> Result<usize, Sw> {
        let i = self.cur_ef.ok_or(SW_NO_EF)?;
        let Kind::Ef(ef) = &self.tree.nodes[i].kind else {
            return Err(SW_NO_EF);
        };
        let (nib, needs_valid) = match op {
            Op::Read => (ef.ac.read, !ef.readable_invalid),
            Op::Update => (ef.ac.update, !ef.readable_invalid),
            Op::Increase => (ef.ac.increase, true),
            Op::Rehab => (ef.ac.rehab, false),
            Op::Inval => (ef.ac.inval, false),
        };
        if !self.allowed(nib) {
            return Err(SW_ACCESS);
        }
        if needs_valid && !ef.valid {
            return Err(SW_INVALIDATION);
        }
        Ok(i)
    }

    fn transparent(&mut self, op: Op) -> Result<&mut Vec<u8>, Sw> {
        let i = self.cur_ef.ok_or(SW_NO_EF)?;
        if !matches!(self.tree.ef_mut(i).body, Body::Transparent(_)) {
            return Err(SW_INCONSISTENT);
        }
        let i = self.ef_for(op)?;
        match &mut self.tree.ef_mut(i).body {
            Body::Transparent(d) => Ok(d),
            _ => unreachable!(),
        }
    }

    fn read_binary(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        let d = self.transparent(Op::Read)?;
        let r = binary_range(d.len(), p1, p2, ne(p3))?;
        Ok(Answer::data(d[r].to_vec()))
    }

    fn update_binary(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let d = self.transparent(Op::Update)?;
        let r = binary_range(d.len(), p1, p2, data.len())?;
        d[r].copy_from_slice(data);
        Ok(Answer::sw(SW_OK))
    }

    /// The current EF as a record EF: (index, cyclic?, record length, record count).
    fn record_ef(&mut self, op: Op) -> Result<(usize, bool, usize, usize), Sw> {
        let i = self.cur_ef.ok_or(SW_NO_EF)?;
        let (cyclic, rl, n) = match &self.tree.ef_mut(i).body {
            Body::Transparent(_) => return Err(SW_INCONSISTENT),
            Body::Linear { rec_len, recs } => (false, *rec_len, recs.len()),
            Body::Cyclic { rec_len, recs } => (true, *rec_len, recs.len()),
        };
        self.ef_for(op)?;
        Ok((i, cyclic, rl, n))
    }

    fn recs(&mut self, i: usize) -> &mut Vec<Vec<u8>> {
        match &mut self.tree.ef_mut(i).body {
            Body::Linear { recs, .. } | Body::Cyclic { recs, .. } => recs,
            Body::Transparent(_) => unreachable!(),
        }
    }

    /// Record addressed by P1/mode (51.011 §8.5): returns (index, new record pointer).
    fn address(
        &self,
        cyclic: bool,
        n: usize,
        p1: u8,
        mode: u8,
    ) -> Result<(usize, Option<usize>), Sw> {
        let ptr = self.rec_ptr;
        let i = match mode {
            0x02 => match ptr {
                None => 0,
                Some(p) if p + 1 < n => p + 1,
                Some(_) if cyclic => 0,
                Some(_) => return Err(SW_OUT_OF_RANGE),
            },
            0x03 => match ptr {
                None => n - 1,
                Some(p) if p > 0 => p - 1,
                Some(_) if cyclic => n - 1,
                Some(_) => return Err(SW_OUT_OF_RANGE),
            },
            // Absolute/current do not move the record pointer.
            0x04 if p1 == 0 => return Ok((ptr.ok_or(SW_OUT_OF_RANGE)?, ptr)),
            0x04 if usize::from(p1) <= n => return Ok((usize::from(p1) - 1, ptr)),
            0x04 => return Err(SW_OUT_OF_RANGE),
            _ => return Err(SW_P1P2),
        };
        Ok((i, Some(i)))
    }

    fn read_record(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        let (i, cyclic, rl, n) = self.record_ef(Op::Read)?;
        if ne(p3) != rl {
            return Err(sw_p3(rl));
        }
        let (r, ptr) = self.address(cyclic, n, p1, p2)?;
        self.rec_ptr = ptr;
        let rec = self.recs(i)[r].clone();
        Ok(Answer::data(rec))
    }

    fn update_record(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let (i, cyclic, rl, n) = self.record_ef(Op::Update)?;
        if data.len() != rl {
            return Err(sw_p3(rl));
        }
        if cyclic {
            if p2 != 0x03 {
                return Err(SW_P1P2);
            }
            let recs = self.recs(i);
            recs.pop();
            recs.insert(0, data.to_vec());
            self.rec_ptr = Some(0);
            return Ok(Answer::sw(SW_OK));
        }
        let (r, ptr) = self.address(cyclic, n, p1, p2)?;
        self.rec_ptr = ptr;
        self.recs(i)[r].copy_from_slice(data);
        Ok(Answer::sw(SW_OK))
    }

    fn seek(&mut self, p1: u8, p2: u8, pattern: &[u8]) -> Result<Answer, Sw> {
        if p1 != 0 {
            return Err(SW_P1P2);
        }
        let (ty, mode) = (p2 >> 4, p2 & 0x0F);
        if ty > 1 || mode > 3 {
            return Err(SW_P1P2);
        }
        let i = self.cur_ef.ok_or(SW_NO_EF)?;
        if !matches!(self.tree.ef_mut(i).body, Body::Linear { .. }) {
            return Err(SW_INCONSISTENT);
        }
        let (i, _, rl, n) = self.record_ef(Op::Read)?;
        if pattern.is_empty() || pattern.len() > rl {
            return Err(sw_p3(rl));
        }
        let order: Vec<usize> = match (mode, self.rec_ptr) {
            (0, _) => (0..n).collect(),
            (1, _) => (0..n).rev().collect(),
            (2, p) => (p.map_or(0, |p| p + 1)..n).collect(),
            (_, p) => (0..p.unwrap_or(n)).rev().collect(),
        };
        let recs = self.recs(i);
        let hit = order
            .into_iter()
            .find(|&r| recs[r].starts_with(pattern))
            .ok_or(SW_NOT_FOUND)?;
        self.rec_ptr = Some(hit);
        if ty == 0 {
            Ok(Answer::sw(SW_OK))
        } else {
            self.respond_later(vec![hit as u8 + 1])
        }
    }

    fn increase(&mut self, p1: u8, p2: u8, value: &[u8]) -> Result<Answer, Sw> {
        check_p1p2(p1, p2)?;
        let i = self.cur_ef.ok_or(SW_NO_EF)?;
        let ef = self.tree.ef_mut(i);
        if !matches!(ef.body, Body::Cyclic { .. }) || !ef.increase_allowed {
            return Err(SW_INCONSISTENT);
        }
        let (i, _, rl, _) = self.record_ef(Op::Increase)?;
        let recs = self.recs(i);
        let cur = recs[0].iter().fold(0u128, |a, &b| (a << 8) | u128::from(b));
        let add = value.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b));
        let sum = cur + add;
        if rl < 16 && sum >> (8 * rl) != 0 {
            return Err(SW_MAX_REACHED);
        }
        let new: Vec<u8> = sum.to_be_bytes()[16 - rl.min(16)..].to_vec();
        recs.pop();
        recs.insert(0, new.clone());
        self.rec_ptr = Some(0);
        self.respond_later([new, value.to_vec()].concat())
    }

    /// Presents a code to CHV/UNBLOCK `s` (51.011 §8.9): resets or decrements the counter.
    fn present(s: &mut Secret, code: &[u8]) -> Result<(), Sw> {
        if s.left == 0 {
            return Err(SW_BLOCKED);
        }
        if s.code[..] == *code {
            s.left = s.max;
            Ok(())
        } else {
            s.left -= 1;
            Err(if s.left == 0 { SW_BLOCKED } else { SW_ACCESS })
        }
    }

    fn present_chv(&mut self, k: usize, code: &[u8]) -> Result<(), Sw> {
        let r = Self::present(&mut self.chv[k], code);
        self.verified[k] = r.is_ok();
        r
    }

    /// CHV number from P1/P2 (01 = CHV1, 02 = CHV2).
    fn chv_index(p1: u8, p2: u8) -> Result<usize, Sw> {
        match (p1, p2) {
            (0, 1) => Ok(0),
            (0, 2) => Ok(1),
            _ => Err(SW_P1P2),
        }
    }

    fn verify(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let k = Self::chv_index(p1, p2)?;
        if k == 0 && !self.chv1_enabled {
            return Err(SW_CHV_CONTRADICTION);
        }
        self.present_chv(k, data)?;
        Ok(Answer::sw(SW_OK))
    }

    fn change(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let k = Self::chv_index(p1, p2)?;
        if k == 0 && !self.chv1_enabled {
            return Err(SW_CHV_CONTRADICTION);
        }
        self.present_chv(k, &data[..8])?;
        self.chv[k].code.copy_from_slice(&data[8..16]);
        Ok(Answer::sw(SW_OK))
    }

    fn enable_disable(&mut self, p1: u8, p2: u8, data: &[u8], enable: bool) -> Result<Answer, Sw> {
        if Self::chv_index(p1, p2)? != 0 {
            return Err(SW_P1P2);
        }
        if self.chv1_enabled == enable {
            return Err(SW_CHV_CONTRADICTION);
        }
        self.present_chv(0, data)?;
        self.chv1_enabled = enable;
        Ok(Answer::sw(SW_OK))
    }

    fn unblock(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        // The spec says P2 = 00 for CHV1; pySim sends 01.
        let k = match (p1, p2) {
            (0, 0) | (0, 1) => 0,
            (0, 2) => 1,
            _ => return Err(SW_P1P2),
        };
        Self::present(&mut self.unblock[k], &data[..8])?;
        let chv = &mut self.chv[k];
        chv.code.copy_from_slice(&data[8..16]);
        chv.left = chv.max;
        self.verified[k] = true;
        if k == 0 {
            self.chv1_enabled = true;
        }
        Ok(Answer::sw(SW_OK))
    }

    fn invalidate(&mut self, p1: u8, p2: u8, p3: u8, rehab: bool) -> Result<Answer, Sw> {
        check_p1p2(p1, p2)?;
        if p3 != 0 {
            return Err(sw_p3(0));
        }
        let i = self.ef_for(if rehab { Op::Rehab } else { Op::Inval })?;
        let ef = self.tree.ef_mut(i);
        if ef.valid == rehab {
            return Err(SW_INVALIDATION);
        }
        ef.valid = rehab;
        Ok(Answer::sw(SW_OK))
    }

    fn run_gsm_algorithm(&mut self, p1: u8, p2: u8, rand: &[u8]) -> Result<Answer, Sw> {
        check_p1p2(p1, p2)?;
        if self.cur_df != self.gsm {
            return Err(SW_NO_EF);
        }
        if !self.allowed(CHV1) {
            return Err(SW_ACCESS);
        }
        let rand: [u8; 16] = rand.try_into().map_err(|_| sw_p3(16))?;
        let (sres, kc) = match &self.algo {
            Algo::Milenage { opc } if self.consts != MilenageConsts::default() => {
                c2_c3(&Milenage::new(&self.ki, opc, self.consts.clone()).f2345(&rand))
            }
            _ => run_gsm(&self.algo, &self.ki, &rand),
        };
        self.respond_later([&sres[..], &kc[..]].concat())
    }
}

fn get_response(pending: Option<&[u8]>, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
    let body = pending.ok_or(SW_TECHNICAL)?;
    check_p1p2(p1, p2)?;
    if p3 == 0 || p3 as usize > body.len() {
        return Err(sw_p3(body.len()));
    }
    Ok(Answer::data(body[..p3 as usize].to_vec()))
}

fn check_p1p2(p1: u8, p2: u8) -> Result<(), Sw> {
    if p1 == 0 && p2 == 0 {
        Ok(())
    } else {
        Err(SW_P1P2)
    }
}

/// Expected outgoing length: P3, `00` = 256.
fn ne(p3: u8) -> usize {
    if p3 == 0 {
        256
    } else {
        p3 as usize
    }
}

fn binary_range(size: usize, p1: u8, p2: u8, n: usize) -> Result<std::ops::Range<usize>, Sw> {
    let off = usize::from(u16::from_be_bytes([p1, p2]));
    if off >= size {
        return Err(SW_P1P2);
    }
    if off + n > size {
        return Err(sw_p3(size - off));
    }
    Ok(off..off + n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::generated;

    fn sim() -> GsmSim {
        GsmSim::new(&generated(7))
    }

    fn x(s: &mut GsmSim, hdr: &str, data: &str) -> Answer {
        let h: [u8; 5] = hex::decode(hdr).unwrap().try_into().unwrap();
        s.execute(&h, &hex::decode(data).unwrap())
    }

    #[test]
    fn select_rules() {
        let mut s = sim();
        assert_eq!(x(&mut s, "A0A4000002", "7F10").sw, [0x9F, 0x17]);
        // sibling DF
        assert_eq!(x(&mut s, "A0A4000002", "7F20").sw, [0x9F, 0x17]);
        assert_eq!(s.current_df(), 0x7F20);
        // EF of the MF is not reachable from DF.GSM; selection unchanged
        assert_eq!(x(&mut s, "A0A4000002", "6F07").sw, [0x9F, 0x0F]);
        assert_eq!(x(&mut s, "A0A4000002", "2FE2").sw, SW_NOT_FOUND);
        assert_eq!(s.current_ef(), Some(0x6F07));
        // child of a sibling is not reachable
        assert_eq!(x(&mut s, "A0A4000002", "6F3A").sw, SW_NOT_FOUND);
        // parent
        assert_eq!(x(&mut s, "A0A4000002", "3F00").sw, [0x9F, 0x17]);
        assert_eq!(s.current_ef(), None);
        // alias
        assert_eq!(x(&mut s, "A0A4000002", "7F21").sw, [0x9F, 0x17]);
        assert_eq!(s.current_df(), 0x7F20);
        assert_eq!(x(&mut s, "A0A4000002", "7F21").sw, [0x9F, 0x17]);
    }

    #[test]
    fn df_counts_and_chv_status() {
        let mut s = sim();
        x(&mut s, "A0A4000002", "3F00");
        let b = x(&mut s, "A0C0000017", "").data;
        assert_eq!(&b[4..7], &[0x3F, 0x00, 0x01]);
        assert_eq!(&b[13..17], &[0x93, 0x02, 0x01, 0x04]);
        assert_eq!(&b[18..22], &[0x83, 0x8A, 0x83, 0x8A]);
        x(&mut s, "A0A4000002", "7F10");
        let b = x(&mut s, "A0C0000017", "").data;
        assert_eq!(&b[14..16], &[0x00, 0x07]);
    }

    #[test]
    fn ef_body_imsi_matches_doc_example() {
        let mut s = sim();
        x(&mut s, "A0A4000002", "7F20");
        x(&mut s, "A0A4000002", "6F07");
        let b = x(&mut s, "A0C000000F", "").data;
        assert_eq!(hex::encode_upper(b), "000000096F07040014FF1401020000");
    }

    #[test]
    fn direct_calls_with_wrong_data_length_do_not_panic() {
        let mut s = sim();
        assert_eq!(x(&mut s, "A0A4000002", "3F").sw, [0x67, 0x02]);
        assert_eq!(x(&mut s, "A024000110", "").sw, [0x67, 0x10]);
        assert_eq!(x(&mut s, "A02C000010", "3132").sw, [0x67, 0x10]);
        assert_eq!(x(&mut s, "B0A4000002", "3F00").sw, SW_WRONG_CLASS);
        assert_eq!(x(&mut s, "A0EE000000", "").sw, SW_UNKNOWN_INS);
    }

    /// The tree and `layout::GSM_EFS` (which the cards file checks overrides against) agree.
    #[test]
    fn tree_matches_layout() {
        use crate::sim::layout::{shape, Shape, GSM_EFS};
        let t = build_tree(&generated(1));
        let mut paths = Vec::new();
        let mut stack = vec![(0usize, String::from("3F00"))];
        while let Some((i, path)) = stack.pop() {
            for &c in &t.nodes[i].children {
                let p = format!("{path}/{:04X}", t.nodes[c].fid);
                match &t.nodes[c].kind {
                    Kind::Df { .. } => stack.push((c, p)),
                    Kind::Ef(ef) => {
                        let want = match &ef.body {
                            Body::Transparent(_) => Shape::Transparent,
                            Body::Linear { rec_len, .. } | Body::Cyclic { rec_len, .. } => {
                                Shape::Records { len: *rec_len }
                            }
                        };
                        assert_eq!(shape(&p), Some(want), "{p}");
                        paths.push(p);
                    }
                }
            }
        }
        assert_eq!(paths.len(), GSM_EFS.len());
    }

    #[test]
    fn binary_policy() {
        let mut s = sim();
        x(&mut s, "A0A4000002", "7F20");
        x(&mut s, "A0A4000002", "6FAD");
        assert_eq!(x(&mut s, "A0B0000004", "").data, vec![0, 0, 0, 2]);
        assert_eq!(x(&mut s, "A0B0000104", "").sw, [0x67, 0x03]);
        assert_eq!(x(&mut s, "A0B0000401", "").sw, SW_P1P2);
        assert_eq!(x(&mut s, "A0B0000000", "").sw, [0x67, 0x04]);
    }
}
