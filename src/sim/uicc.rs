//! The UICC face of a simulated USIM (ETSI TS 102 221, 3GPP TS 31.102): classes `00`/`80`,
//! FCP select responses, `61xx` + GET RESPONSE, PIN1/PUK1/ADM1 and AUTHENTICATE. Like
//! [`super::fs`], it sees whole commands (header + incoming data); [`super::card`] does T=0.
//!
//! Files (FID, SFI): MF with EF.DIR (2F00, 1E), EF.ICCID (2FE2, 02), EF.PL (2F05, 05), EF.ARR
//! (2F06, 06) and ADF.USIM (7FF0, AID [`USIM_AID`]) with EF.LI, EF.ARR, EF.IMSI, EF.Keys,
//! EF.KeysPS, EF.HPPLMN, EF.UST, EF.MSISDN, EF.SPN, EF.EST, EF.START-HFN, EF.THRESHOLD,
//! EF.PLMNwAcT, EF.OPLMNwACT, EF.HPLMNwAcT, EF.ACC, EF.FPLMN, EF.LOCI, EF.AD, EF.PSLOCI and
//! EF.EPSLOCI. Every file is "operational, activated"; access rules are referenced from EF.ARR
//! (tag `8B`) and enforced with the card's PIN1 and ADM1.
//!
//! Policies where the specs leave a choice:
//! - This face has its own selection, files and PINs: the GSM face (class `A0`, DF.GSM) of the
//!   same card is not touched by UICC commands and vice versa (PIN1 and CHV1 start from the same
//!   profile value).
//! - Wrong Le on READ BINARY/RECORD, STATUS, GET RESPONSE → `6C xx` (xx = the right length);
//!   Le shorter than the data for STATUS/GET RESPONSE → the first Le bytes (GET RESPONSE keeps
//!   the rest pending with `61 xx`). Offset beyond the file → `6B 00`; UPDATE past its end →
//!   `67 00`. GET RESPONSE with nothing pending → `69 85`.
//! - SELECT: P2 `04` (FCP) and `00` (treated as `04`) answer `61 xx`; `0C` answers `90 00`.
//!   By FID from the current DF: MF, `7FFF` (current application), the current DF, its
//!   children, its parent and the parent's child DFs; ADF.USIM is also reachable as 7FF0.
//!   Not found → `6A 82`, selection unchanged.
//! - VERIFY/UNBLOCK without data: `90 00` if no verification is needed, else `63 Cx`, or
//!   `69 83` when blocked. A wrong code → `63 Cx` (x left, `63 C0` on the last), then `69 83`.
//!   CHANGE PIN while PIN1 is disabled → `69 84`; ENABLE/DISABLE in the state already set →
//!   `69 85`. A successful UNBLOCK sets the new PIN1, verified and enabled.
//! - AUTHENTICATE needs ADF.USIM selected as the current application (`69 85` otherwise) and
//!   PIN1 (`69 82`). Kc is appended to a 3G answer (service 27 is in EF.UST); the GSM context
//!   (P2 `80`) gives SRES/Kc by c2/c3 (service 38) and also takes `10 RAND 10 AUTN`, ignoring
//!   the AUTN, as pySim's `authenticate --context gsm` sends it.

use super::algo::Algo;
use super::auth::{c2_c3, usim_aka, AuthFailure, Milenage, MilenageConsts, SqnState};
use super::fs::{adn_record, chv_field, loci_content, spn_content, Answer, Sw};
use super::profile::{encode_iccid, encode_imsi, CardProfile};

/// The AID of ADF.USIM (3GPP RID `A000000087`, application code `1002`).
pub const USIM_AID: [u8; 16] = [
    0xA0, 0x00, 0x00, 0x00, 0x87, 0x10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x89, 0x07, 0x09, 0x00, 0x00,
];
/// FID of ADF.USIM.
pub const ADF_USIM_FID: u16 = 0x7FF0;

pub const SW_OK: Sw = [0x90, 0x00];
pub const SW_WRONG_LENGTH: Sw = [0x67, 0x00];
pub const SW_CHANNEL: Sw = [0x68, 0x81];
pub const SW_SECURE_MESSAGING: Sw = [0x68, 0x82];
pub const SW_INCOMPATIBLE: Sw = [0x69, 0x81];
pub const SW_SECURITY: Sw = [0x69, 0x82];
pub const SW_BLOCKED: Sw = [0x69, 0x83];
pub const SW_INVALIDATED: Sw = [0x69, 0x84];
pub const SW_CONDITIONS: Sw = [0x69, 0x85];
pub const SW_NO_EF: Sw = [0x69, 0x86];
pub const SW_WRONG_DATA: Sw = [0x6A, 0x80];
pub const SW_NOT_FOUND: Sw = [0x6A, 0x82];
pub const SW_RECORD_NOT_FOUND: Sw = [0x6A, 0x83];
pub const SW_P1P2: Sw = [0x6A, 0x86];
pub const SW_NO_REFERENCE: Sw = [0x6A, 0x88];
pub const SW_OUT_OF_RANGE: Sw = [0x6B, 0x00];
pub const SW_UNKNOWN_INS: Sw = [0x6D, 0x00];
pub const SW_WRONG_CLASS: Sw = [0x6E, 0x00];
pub const SW_AUTH_MAC: Sw = [0x98, 0x62];

/// PIN key references (TS 102 221 §9.5.1).
pub const KEY_PIN1: u8 = 0x01;
pub const KEY_ADM1: u8 = 0x0A;

const PIN_TRIES: u8 = 3;
const PUK_TRIES: u8 = 10;
const ADM_TRIES: u8 = 10;

/// How a command's data travel in T=0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Terminal → card (P3 = Lc ≥ 1).
    In,
    /// Card → terminal (P3 = Le).
    Out,
    /// Terminal → card, or case 1 when P3 = 0 (VERIFY/UNBLOCK asking for the retry counter).
    InOrNone,
}

/// Checks CLA for UICC commands and tells how `ins` moves its data.
pub fn command(cla: u8, ins: u8) -> Result<Dir, Sw> {
    if cla & 0x40 != 0 {
        // Further logical channels (4X–7X, CX–FX).
        return Err(SW_CHANNEL);
    }
    let proprietary = match cla & 0xF0 {
        0x00 => false,
        0x80 => true,
        _ => return Err(SW_WRONG_CLASS),
    };
    if cla & 0x0C != 0 {
        return Err(SW_SECURE_MESSAGING);
    }
    if cla & 0x03 != 0 {
        return Err(SW_CHANNEL);
    }
    let (dir, prop) = match ins {
        0xA4 => (Dir::In, false),
        0xB0 | 0xB2 | 0xC0 => (Dir::Out, false),
        0xD6 | 0xDC | 0x24 | 0x26 | 0x28 | 0x88 => (Dir::In, false),
        0x20 | 0x2C => (Dir::InOrNone, false),
        0xF2 => (Dir::Out, true),
        _ => return Err(SW_UNKNOWN_INS),
    };
    if prop != proprietary {
        return Err(SW_WRONG_CLASS);
    }
    Ok(dir)
}

/// Access conditions, as EF.ARR rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ac {
    Alw,
    Pin1,
    Adm,
    Nev,
}

/// The EF.ARR records: (READ, UPDATE); DFs use record 1.
const RULES: [(Ac, Ac); 5] = [
    (Ac::Alw, Ac::Adm),
    (Ac::Pin1, Ac::Adm),
    (Ac::Pin1, Ac::Pin1),
    (Ac::Alw, Ac::Nev),
    (Ac::Alw, Ac::Pin1),
];
const ARR_REC_LEN: usize = 40;

/// Security condition data object of an access rule (TS 102 221 §9.2.4).
fn sc_do(ac: Ac) -> Vec<u8> {
    match ac {
        Ac::Alw => vec![0x90, 0x00],
        Ac::Nev => vec![0x97, 0x00],
        Ac::Pin1 => vec![0xA4, 0x06, 0x83, 0x01, KEY_PIN1, 0x95, 0x01, 0x08],
        Ac::Adm => vec![0xA4, 0x06, 0x83, 0x01, KEY_ADM1, 0x95, 0x01, 0x08],
    }
}

/// One EF.ARR record: READ under `read`; UPDATE under `update`; (DE)ACTIVATE under ADM.
fn arr_record(read: Ac, update: Ac) -> Vec<u8> {
    let mut r = vec![0x80, 0x01, 0x01];
    r.extend(sc_do(read));
    r.extend([0x80, 0x01, 0x02]);
    r.extend(sc_do(update));
    r.extend([0x80, 0x01, 0x18]);
    r.extend(sc_do(Ac::Adm));
    r.resize(ARR_REC_LEN, 0xFF);
    r
}

fn arr_index(read: Ac, update: Ac) -> u8 {
    RULES
        .iter()
        .position(|&r| r == (read, update))
        .map_or(1, |i| i as u8 + 1)
}

#[derive(Debug, Clone)]
enum Body {
    Df { aid: Option<Vec<u8>> },
    Transparent(Vec<u8>),
    Linear { rec_len: usize, recs: Vec<Vec<u8>> },
}

#[derive(Debug, Clone)]
struct File {
    fid: u16,
    parent: usize,
    children: Vec<usize>,
    sfi: Option<u8>,
    read: Ac,
    update: Ac,
    body: Body,
}

#[derive(Debug, Clone)]
struct Tree {
    files: Vec<File>,
}

impl Tree {
    fn add(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), body: Body) -> usize {
        let i = self.files.len();
        self.files.push(File {
            fid,
            parent,
            children: Vec::new(),
            sfi,
            read: ac.0,
            update: ac.1,
            body,
        });
        if i != parent {
            self.files[parent].children.push(i);
        }
        i
    }

    fn tr(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), data: Vec<u8>) {
        self.add(parent, fid, sfi, ac, Body::Transparent(data));
    }

    fn lin(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), recs: Vec<Vec<u8>>) {
        let rec_len = recs[0].len();
        self.add(parent, fid, sfi, ac, Body::Linear { rec_len, recs });
    }

    fn is_df(&self, i: usize) -> bool {
        matches!(self.files[i].body, Body::Df { .. })
    }

    fn child(&self, parent: usize, fid: u16) -> Option<usize> {
        self.files[parent]
            .children
            .iter()
            .copied()
            .find(|&c| self.files[c].fid == fid)
    }

    fn by_sfi(&self, df: usize, sfi: u8) -> Option<usize> {
        self.files[df]
            .children
            .iter()
            .copied()
            .find(|&c| self.files[c].sfi == Some(sfi))
    }

    /// The ARR that governs files in `df`: the ADF's own EF.ARR, else the MF's.
    fn arr_fid(&self, df: usize) -> u16 {
        if df != 0 && self.child(df, 0x6F06).is_some() {
            0x6F06
        } else {
            0x2F06
        }
    }
}

/// PLMN (MCC + 2-digit MNC) of an IMSI, BCD as in EF.LOCI.
fn plmn(imsi: &str) -> [u8; 3] {
    let l = loci_content(imsi);
    [l[4], l[5], l[6]]
}

/// Service numbers (TS 31.102 §4.2.8) in EF.UST: SPN (19), PLMNwAcT (20), MSISDN (21), GSM
/// access (27), "shall be set" (33), EST (34), GSM security context (38), OPLMNwAcT (42),
/// HPLMNwAcT (43).
pub const UST_SERVICES: [u8; 9] = [19, 20, 21, 27, 33, 34, 38, 42, 43];

fn service_table(services: &[u8], len: usize) -> Vec<u8> {
    let mut t = vec![0u8; len];
    for &s in services {
        let n = usize::from(s - 1);
        t[n / 8] |= 1 << (n % 8);
    }
    t
}

fn dir_record(label: &[u8]) -> Vec<u8> {
    let mut r = vec![0x61, (4 + USIM_AID.len() + label.len()) as u8, 0x4F, 0x10];
    r.extend(USIM_AID);
    r.extend([0x50, label.len() as u8]);
    r.extend(label);
    r.resize(38, 0xFF);
    r
}

fn build_tree(p: &CardProfile) -> (Tree, usize) {
    use Ac::*;
    let mut t = Tree { files: Vec::new() };
    let mf = t.add(0, 0x3F00, None, (Alw, Adm), Body::Df { aid: None });
    t.lin(
        mf,
        0x2F00,
        Some(0x1E),
        (Alw, Adm),
        vec![dir_record(b"USIM"), vec![0xFF; 38]],
    );
    t.tr(
        mf,
        0x2FE2,
        Some(0x02),
        (Alw, Nev),
        encode_iccid(&p.iccid).to_vec(),
    );
    let mut pl = vec![0xFF; 10];
    pl[..2].copy_from_slice(b"en");
    t.tr(mf, 0x2F05, Some(0x05), (Alw, Pin1), pl.clone());
    let arr: Vec<Vec<u8>> = RULES.iter().map(|&(r, u)| arr_record(r, u)).collect();
    t.lin(mf, 0x2F06, Some(0x06), (Alw, Adm), arr.clone());

    let adf = t.add(
        mf,
        ADF_USIM_FID,
        None,
        (Alw, Adm),
        Body::Df {
            aid: Some(USIM_AID.to_vec()),
        },
    );
    let plmn = plmn(&p.imsi);
    t.tr(adf, 0x6F05, Some(0x02), (Alw, Pin1), pl);
    t.lin(adf, 0x6F06, Some(0x17), (Alw, Adm), arr);
    t.tr(
        adf,
        0x6F07,
        Some(0x07),
        (Pin1, Adm),
        encode_imsi(&p.imsi).to_vec(),
    );
    let mut keys = vec![0xFF; 33];
    keys[0] = 0x07;
    t.tr(adf, 0x6F08, Some(0x08), (Pin1, Pin1), keys.clone());
    t.tr(adf, 0x6F09, Some(0x09), (Pin1, Pin1), keys);
    t.tr(adf, 0x6F31, Some(0x12), (Pin1, Adm), vec![0x05]);
    t.tr(
        adf,
        0x6F38,
        Some(0x04),
        (Pin1, Adm),
        service_table(&UST_SERVICES, 6),
    );
    let mut msisdn = vec![adn_record(None); 2];
    msisdn[0] = adn_record(p.msisdn.as_deref());
    t.lin(adf, 0x6F40, None, (Pin1, Pin1), msisdn);
    t.tr(adf, 0x6F46, None, (Alw, Adm), spn_content(p.spn.as_deref()));
    t.tr(adf, 0x6F56, Some(0x05), (Pin1, Pin1), vec![0x00]);
    t.tr(
        adf,
        0x6F5B,
        Some(0x0F),
        (Pin1, Pin1),
        vec![0xF0, 0, 0, 0xF0, 0, 0],
    );
    t.tr(adf, 0x6F5C, Some(0x10), (Pin1, Adm), vec![0xFF; 3]);
    t.tr(adf, 0x6F60, Some(0x0A), (Pin1, Pin1), vec![0xFF; 40]);
    t.tr(adf, 0x6F61, Some(0x11), (Pin1, Adm), vec![0xFF; 40]);
    // The home PLMN on UTRAN, E-UTRAN and GSM.
    let hplmn = [plmn[0], plmn[1], plmn[2], 0xC0, 0x80];
    t.tr(adf, 0x6F62, Some(0x13), (Pin1, Adm), hplmn.to_vec());
    // Access class from the last IMSI digit (TS 22.011 §4.2).
    let last = p.imsi.bytes().last().map_or(0, |b| (b - b'0') % 10);
    let acc = (1u16 << last).to_be_bytes();
    t.tr(adf, 0x6F78, Some(0x06), (Pin1, Adm), acc.to_vec());
    t.tr(adf, 0x6F7B, Some(0x0D), (Pin1, Pin1), vec![0xFF; 12]);
    t.tr(adf, 0x6F7E, Some(0x0B), (Pin1, Pin1), loci_content(&p.imsi));
    t.tr(
        adf,
        0x6FAD,
        Some(0x03),
        (Alw, Adm),
        vec![0x00, 0x00, 0x00, 0x02],
    );
    // P-TMSI, its signature, RAI (LAI + RAC), status "not updated".
    let mut psloci = vec![0xFF; 7];
    psloci.extend(plmn);
    psloci.extend([0xFF, 0xFE, 0xFF, 0x01]);
    t.tr(adf, 0x6F73, Some(0x0C), (Pin1, Pin1), psloci);
    // GUTI, last visited TAI, status "not updated".
    let mut epsloci = vec![0xFF; 12];
    epsloci.extend(plmn);
    epsloci.extend([0xFF, 0xFE, 0x01]);
    t.tr(adf, 0x6FE3, Some(0x1E), (Pin1, Pin1), epsloci);
    (t, adf)
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

    /// Presents `code`: resets the counter on success, else decrements it.
    fn present(&mut self, code: &[u8]) -> Result<(), Sw> {
        if self.left == 0 {
            return Err(SW_BLOCKED);
        }
        if self.code[..] == *code {
            self.left = self.max;
            Ok(())
        } else {
            self.left -= 1;
            Err([0x63, 0xC0 | self.left])
        }
    }
}

/// A PIN value field: 4..=8 ASCII digits, `FF`-padded to 8 bytes.
fn valid_pin(f: &[u8]) -> bool {
    let n = f.iter().take_while(|b| b.is_ascii_digit()).count();
    (4..=8).contains(&n) && f[n..].iter().all(|&b| b == 0xFF)
}

/// Which secret a VERIFY/UNBLOCK P2 names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Pin1,
    Adm1,
}

/// The UICC/USIM state of a simulated card: files and PIN counters persist for the card's
/// lifetime, selection and verification until the next reset.
#[derive(Debug, Clone)]
pub struct Uicc {
    tree: Tree,
    adf: usize,
    cur_df: usize,
    cur_ef: Option<usize>,
    cur_app: Option<usize>,
    rec_ptr: Option<usize>,
    pin1: Secret,
    puk1: Secret,
    adm1: Secret,
    pin1_enabled: bool,
    pin1_verified: bool,
    adm1_verified: bool,
    pending: Option<Vec<u8>>,
    ki: [u8; 16],
    opc: [u8; 16],
    consts: MilenageConsts,
    sqns: SqnState,
}

impl Uicc {
    /// The UICC face for `p` (whose `algo` should be Milenage; an XOR-2G profile gets OPc = 0).
    pub fn new(p: &CardProfile) -> Uicc {
        let (tree, adf) = build_tree(p);
        let opc = match &p.algo {
            Algo::Milenage { opc } => *opc,
            Algo::Xor2g => [0; 16],
        };
        let u = &p.usim;
        Uicc {
            tree,
            adf,
            cur_df: 0,
            cur_ef: None,
            cur_app: None,
            rec_ptr: None,
            pin1: Secret::new(
                p.chv1.as_deref().unwrap_or(super::fs::DEFAULT_CHV1),
                PIN_TRIES,
            ),
            puk1: Secret::new(&u.puk1, PUK_TRIES),
            adm1: Secret::new(&u.adm1, ADM_TRIES),
            pin1_enabled: p.chv1.is_some(),
            pin1_verified: false,
            adm1_verified: false,
            pending: None,
            ki: p.ki,
            opc,
            consts: u.milenage.clone(),
            sqns: SqnState::new(u.sqn, u.ind_bits, u.delta),
        }
    }

    /// Reset: MF selected, no application, verifications forgotten, nothing pending.
    pub fn reset(&mut self) {
        self.cur_df = 0;
        self.cur_ef = None;
        self.cur_app = None;
        self.rec_ptr = None;
        self.pin1_verified = false;
        self.adm1_verified = false;
        self.pending = None;
    }

    /// Content of an EF by FID path from the MF (`"3F00/7FF0/6F07"`), records concatenated.
    pub fn read_ef(&self, path: &str) -> Option<Vec<u8>> {
        let mut parts = path.split('/');
        if parts.next()? != "3F00" {
            return None;
        }
        let mut cur = 0;
        for p in parts {
            cur = self.tree.child(cur, u16::from_str_radix(p, 16).ok()?)?;
        }
        match &self.tree.files[cur].body {
            Body::Transparent(d) => Some(d.clone()),
            Body::Linear { recs, .. } => Some(recs.concat()),
            Body::Df { .. } => None,
        }
    }

    /// Retries left: (PIN1, PUK1, ADM1).
    pub fn retries(&self) -> (u8, u8, u8) {
        (self.pin1.left, self.puk1.left, self.adm1.left)
    }

    pub fn pin1_enabled(&self) -> bool {
        self.pin1_enabled
    }

    /// The highest SQN the card has accepted.
    pub fn sqn_ms(&self) -> u64 {
        self.sqns.sqn_ms()
    }

    /// FID of the current DF (7FF0 for ADF.USIM) and of the current EF.
    pub fn current(&self) -> (u16, Option<u16>) {
        (
            self.tree.files[self.cur_df].fid,
            self.cur_ef.map(|i| self.tree.files[i].fid),
        )
    }

    /// Executes one command: `hdr` = CLA INS P1 P2 P3; `data` = the P3 incoming bytes of an
    /// incoming command (empty for outgoing ones and case 1). Data come back only with `90 00`,
    /// or with `61 xx` from a GET RESPONSE that leaves xx bytes pending.
    pub fn execute(&mut self, hdr: &[u8; 5], data: &[u8]) -> Answer {
        let pending = self.pending.take();
        let [cla, ins, p1, p2, p3] = *hdr;
        let r = match command(cla, ins) {
            Err(sw) => Err(sw),
            // Direct callers may pass any data; the T=0 layer sends exactly P3 bytes.
            Ok(Dir::In | Dir::InOrNone) if data.len() != usize::from(p3) => Err(SW_WRONG_LENGTH),
            Ok(Dir::In) if data.is_empty() => Err(SW_WRONG_LENGTH),
            Ok(_) => match ins {
                0xA4 => self.select(p1, p2, data),
                0xF2 => self.status(p1, p2, p3),
                0xB0 => self.read_binary(p1, p2, p3),
                0xD6 => self.update_binary(p1, p2, data),
                0xB2 => self.read_record(p1, p2, p3),
                0xDC => self.update_record(p1, p2, data),
                0x20 => self.verify(p1, p2, data),
                0x24 => self.change(p1, p2, data),
                0x26 => self.enable_disable(p1, p2, data, false),
                0x28 => self.enable_disable(p1, p2, data, true),
                0x2C => self.unblock(p1, p2, data),
                0x88 => self.authenticate(p1, p2, data),
                0xC0 => {
                    let r = self.get_response(pending.as_deref(), p1, p2, p3);
                    if r.is_err() {
                        self.pending = pending;
                    }
                    r
                }
                _ => Err(SW_UNKNOWN_INS),
            },
        };
        r.unwrap_or_else(|sw| Answer {
            data: Vec::new(),
            sw,
        })
    }

    /// Keeps `body` for GET RESPONSE and answers `61 xx` (`61 00` = 256).
    fn respond_later(&mut self, body: Vec<u8>) -> Result<Answer, Sw> {
        let sw = [0x61, body.len() as u8];
        self.pending = Some(body);
        Ok(Answer {
            data: Vec::new(),
            sw,
        })
    }

    fn allowed(&self, ac: Ac) -> bool {
        match ac {
            Ac::Alw => true,
            Ac::Pin1 => !self.pin1_enabled || self.pin1_verified,
            Ac::Adm => self.adm1_verified,
            Ac::Nev => false,
        }
    }

    /// FCP template (TS 102 221 §11.1.1.3).
    fn fcp(&self, i: usize) -> Vec<u8> {
        let f = &self.tree.files[i];
        let mut v = Vec::new();
        let mut tlv = |tag: u8, val: &[u8]| {
            v.push(tag);
            v.push(val.len() as u8);
            v.extend_from_slice(val);
        };
        let fid = f.fid.to_be_bytes();
        let arr_df = if self.tree.is_df(i) { i } else { f.parent };
        let arr_fid = self.tree.arr_fid(arr_df).to_be_bytes();
        let arr = [arr_fid[0], arr_fid[1], arr_index(f.read, f.update)];
        match &f.body {
            Body::Df { aid } => {
                tlv(0x82, &[0x78, 0x21]);
                tlv(0x83, &fid);
                if let Some(aid) = aid {
                    tlv(0x84, aid);
                }
                // UICC characteristics: clock stop allowed, no preferred level; class A–C.
                tlv(0xA5, &[0x80, 0x01, 0x71]);
                tlv(0x8A, &[0x05]);
                tlv(0x8B, &arr);
                // PIN status: PS_DO (b8 PIN1 enabled, b7 ADM1 enabled), then the key references.
                let ps = 0x40 | if self.pin1_enabled { 0x80 } else { 0 };
                tlv(
                    0xC6,
                    &[0x90, 0x01, ps, 0x83, 0x01, KEY_PIN1, 0x83, 0x01, KEY_ADM1],
                );
            }
            Body::Transparent(d) => {
                tlv(0x82, &[0x41, 0x21]);
                tlv(0x83, &fid);
                tlv(0xA5, &[0xC0, 0x01, 0x00]);
                tlv(0x8A, &[0x05]);
                tlv(0x8B, &arr);
                tlv(0x80, &(d.len() as u16).to_be_bytes());
                tlv(0x88, &f.sfi.map(|s| vec![s << 3]).unwrap_or_default());
            }
            Body::Linear { rec_len, recs } => {
                tlv(0x82, &[0x42, 0x21, 0x00, *rec_len as u8, recs.len() as u8]);
                tlv(0x83, &fid);
                tlv(0xA5, &[0xC0, 0x01, 0x00]);
                tlv(0x8A, &[0x05]);
                tlv(0x8B, &arr);
                tlv(0x80, &((rec_len * recs.len()) as u16).to_be_bytes());
                tlv(0x88, &f.sfi.map(|s| vec![s << 3]).unwrap_or_default());
            }
        }
        let mut out = vec![0x62, v.len() as u8];
        out.extend(v);
        out
    }

    fn by_fid(&self, fid: u16) -> Option<usize> {
        let t = &self.tree;
        let cur = self.cur_df;
        let parent = t.files[cur].parent;
        if fid == 0x3F00 {
            return Some(0);
        }
        if fid == 0x7FFF {
            return self.cur_app;
        }
        if fid == t.files[cur].fid {
            return Some(cur);
        }
        if let Some(c) = t.child(cur, fid) {
            return Some(c);
        }
        if cur != 0 && fid == t.files[parent].fid {
            return Some(parent);
        }
        if cur != 0 {
            return t.child(parent, fid).filter(|&c| t.is_df(c));
        }
        None
    }

    fn by_path(&self, start: usize, data: &[u8]) -> Option<usize> {
        let mut cur = start;
        for (k, pair) in data.chunks(2).enumerate() {
            let fid = u16::from_be_bytes([pair[0], pair[1]]);
            if !self.tree.is_df(cur) {
                return None;
            }
            cur = match fid {
                0x7FFF if k == 0 => self.cur_app?,
                // Tolerated although a path from the MF should not name it.
                0x3F00 if k == 0 && start == 0 => 0,
                _ => self.tree.child(cur, fid)?,
            };
        }
        Some(cur)
    }

    fn by_aid(&self, aid: &[u8]) -> Option<usize> {
        self.tree
            .files
            .iter()
            .position(|f| matches!(&f.body, Body::Df { aid: Some(a) } if a.starts_with(aid)))
    }

    fn select(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let fcp = match p2 {
            0x00 | 0x04 => true,
            0x0C => false,
            _ => return Err(SW_P1P2),
        };
        let found = match p1 {
            0x00 if data.len() == 2 => self.by_fid(u16::from_be_bytes([data[0], data[1]])),
            0x04 if (5..=16).contains(&data.len()) => self.by_aid(data),
            0x08 | 0x09 if data.len().is_multiple_of(2) => {
                let start = if p1 == 0x08 { 0 } else { self.cur_df };
                self.by_path(start, data)
            }
            0x00 | 0x04 | 0x08 | 0x09 => return Err(SW_WRONG_LENGTH),
            _ => return Err(SW_P1P2),
        };
        let i = found.ok_or(SW_NOT_FOUND)?;
        self.rec_ptr = None;
        if self.tree.is_df(i) {
            self.cur_df = i;
            self.cur_ef = None;
            if i == self.adf {
                self.cur_app = Some(i);
            }
        } else {
            self.cur_df = self.tree.files[i].parent;
            self.cur_ef = Some(i);
        }
        if fcp {
            let body = self.fcp(i);
            self.respond_later(body)
        } else {
            Ok(ok(Vec::new()))
        }
    }

    fn status(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        if p1 > 0x02 {
            return Err(SW_P1P2);
        }
        let body = match p2 {
            0x00 => self.fcp(self.cur_df),
            0x01 => match self.cur_app.map(|a| &self.tree.files[a].body) {
                Some(Body::Df { aid: Some(aid) }) => {
                    let mut v = vec![0x84, aid.len() as u8];
                    v.extend(aid);
                    v
                }
                _ => return Err(SW_CONDITIONS),
            },
            0x0C => return Ok(ok(Vec::new())),
            _ => return Err(SW_P1P2),
        };
        take_le(body, p3)
    }

    fn get_response(
        &mut self,
        pending: Option<&[u8]>,
        p1: u8,
        p2: u8,
        p3: u8,
    ) -> Result<Answer, Sw> {
        let body = pending.ok_or(SW_CONDITIONS)?;
        if (p1, p2) != (0, 0) {
            return Err(SW_P1P2);
        }
        let n = ne(p3);
        if n > body.len() {
            return Err([0x6C, body.len() as u8]);
        }
        if n < body.len() {
            let rest = body[n..].to_vec();
            let sw = [0x61, rest.len() as u8];
            self.pending = Some(rest);
            return Ok(Answer {
                data: body[..n].to_vec(),
                sw,
            });
        }
        Ok(ok(body.to_vec()))
    }

    /// The EF a READ/UPDATE addresses: by SFI (which then becomes the current EF) or current.
    fn target(&mut self, sfi: Option<u8>) -> Result<usize, Sw> {
        match sfi {
            None => self.cur_ef.ok_or(SW_NO_EF),
            Some(s) => {
                let i = self.tree.by_sfi(self.cur_df, s).ok_or(SW_NOT_FOUND)?;
                if self.cur_ef != Some(i) {
                    self.cur_ef = Some(i);
                    self.rec_ptr = None;
                }
                Ok(i)
            }
        }
    }

    fn check_ac(&self, i: usize, update: bool) -> Result<(), Sw> {
        let f = &self.tree.files[i];
        if self.allowed(if update { f.update } else { f.read }) {
            Ok(())
        } else {
            Err(SW_SECURITY)
        }
    }

    /// READ/UPDATE BINARY P1/P2: (SFI, offset).
    fn binary_ref(p1: u8, p2: u8) -> Result<(Option<u8>, usize), Sw> {
        if p1 & 0x80 != 0 {
            if p1 & 0x60 != 0 {
                return Err(SW_P1P2);
            }
            Ok((Some(p1 & 0x1F), usize::from(p2)))
        } else {
            Ok((None, usize::from(u16::from_be_bytes([p1, p2]))))
        }
    }

    fn transparent(&mut self, p1: u8, p2: u8, update: bool) -> Result<(usize, usize), Sw> {
        let (sfi, off) = Self::binary_ref(p1, p2)?;
        let i = self.target(sfi)?;
        if !matches!(self.tree.files[i].body, Body::Transparent(_)) {
            return Err(SW_INCOMPATIBLE);
        }
        self.check_ac(i, update)?;
        Ok((i, off))
    }

    fn bytes(&mut self, i: usize) -> &mut Vec<u8> {
        match &mut self.tree.files[i].body {
            Body::Transparent(d) => d,
            _ => unreachable!("checked transparent"),
        }
    }

    fn read_binary(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        let (i, off) = self.transparent(p1, p2, false)?;
        let d = self.bytes(i);
        if off >= d.len() {
            return Err(SW_OUT_OF_RANGE);
        }
        let n = ne(p3);
        if off + n > d.len() {
            return Err([0x6C, (d.len() - off) as u8]);
        }
        Ok(ok(d[off..off + n].to_vec()))
    }

    fn update_binary(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let (i, off) = self.transparent(p1, p2, true)?;
        let d = self.bytes(i);
        if off >= d.len() {
            return Err(SW_OUT_OF_RANGE);
        }
        if off + data.len() > d.len() {
            return Err(SW_WRONG_LENGTH);
        }
        d[off..off + data.len()].copy_from_slice(data);
        Ok(ok(Vec::new()))
    }

    /// The record EF addressed by P2's SFI: (index, record length, record count).
    fn record_ef(&mut self, p2: u8, update: bool) -> Result<(usize, usize, usize), Sw> {
        let sfi = p2 >> 3;
        let i = self.target((sfi != 0).then_some(sfi))?;
        let Body::Linear { rec_len, recs } = &self.tree.files[i].body else {
            return Err(SW_INCOMPATIBLE);
        };
        let (rl, n) = (*rec_len, recs.len());
        self.check_ac(i, update)?;
        Ok((i, rl, n))
    }

    /// Record addressed by P1 and the mode in P2 (TS 102 221 §11.1.5): (index, new pointer).
    fn address(&self, n: usize, p1: u8, mode: u8) -> Result<(usize, Option<usize>), Sw> {
        let ptr = self.rec_ptr;
        let r = match mode {
            0x02 => match ptr {
                None => 0,
                Some(p) if p + 1 < n => p + 1,
                Some(_) => return Err(SW_RECORD_NOT_FOUND),
            },
            0x03 => match ptr {
                None => n - 1,
                Some(p) if p > 0 => p - 1,
                Some(_) => return Err(SW_RECORD_NOT_FOUND),
            },
            0x04 if p1 == 0 => return Ok((ptr.ok_or(SW_RECORD_NOT_FOUND)?, ptr)),
            0x04 if usize::from(p1) <= n => return Ok((usize::from(p1) - 1, ptr)),
            0x04 => return Err(SW_RECORD_NOT_FOUND),
            _ => return Err(SW_P1P2),
        };
        Ok((r, Some(r)))
    }

    fn recs(&mut self, i: usize) -> &mut Vec<Vec<u8>> {
        match &mut self.tree.files[i].body {
            Body::Linear { recs, .. } => recs,
            _ => unreachable!("checked linear"),
        }
    }

    fn read_record(&mut self, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        let (i, rl, n) = self.record_ef(p2, false)?;
        let (r, ptr) = self.address(n, p1, p2 & 0x07)?;
        if ne(p3) != rl {
            return Err([0x6C, rl as u8]);
        }
        self.rec_ptr = ptr;
        let rec = self.recs(i)[r].clone();
        Ok(ok(rec))
    }

    fn update_record(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let (i, rl, n) = self.record_ef(p2, true)?;
        if data.len() != rl {
            return Err(SW_WRONG_LENGTH);
        }
        let (r, ptr) = self.address(n, p1, p2 & 0x07)?;
        self.rec_ptr = ptr;
        self.recs(i)[r].copy_from_slice(data);
        Ok(ok(Vec::new()))
    }

    fn key(p1: u8, p2: u8) -> Result<Key, Sw> {
        match (p1, p2) {
            (0, KEY_PIN1) => Ok(Key::Pin1),
            (0, KEY_ADM1) => Ok(Key::Adm1),
            (0, _) => Err(SW_NO_REFERENCE),
            _ => Err(SW_P1P2),
        }
    }

    fn verify(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let key = Self::key(p1, p2)?;
        let (secret, verified, needed) = match key {
            Key::Pin1 => (&mut self.pin1, &mut self.pin1_verified, self.pin1_enabled),
            Key::Adm1 => (&mut self.adm1, &mut self.adm1_verified, true),
        };
        if data.is_empty() {
            return if secret.left == 0 {
                Err(SW_BLOCKED)
            } else if *verified || !needed {
                Ok(ok(Vec::new()))
            } else {
                Err([0x63, 0xC0 | secret.left])
            };
        }
        if data.len() != 8 {
            return Err(SW_WRONG_LENGTH);
        }
        let r = secret.present(data);
        *verified = r.is_ok();
        r.map(|_| ok(Vec::new()))
    }

    fn pin1_only(p1: u8, p2: u8) -> Result<(), Sw> {
        match Self::key(p1, p2)? {
            Key::Pin1 => Ok(()),
            Key::Adm1 => Err(SW_NO_REFERENCE),
        }
    }

    fn change(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        Self::pin1_only(p1, p2)?;
        if data.len() != 16 {
            return Err(SW_WRONG_LENGTH);
        }
        if !self.pin1_enabled {
            return Err(SW_INVALIDATED);
        }
        if !valid_pin(&data[8..]) {
            return Err(SW_WRONG_DATA);
        }
        let r = self.pin1.present(&data[..8]);
        self.pin1_verified = r.is_ok();
        r?;
        self.pin1.code.copy_from_slice(&data[8..]);
        Ok(ok(Vec::new()))
    }

    fn enable_disable(&mut self, p1: u8, p2: u8, data: &[u8], enable: bool) -> Result<Answer, Sw> {
        Self::pin1_only(p1, p2)?;
        if data.len() != 8 {
            return Err(SW_WRONG_LENGTH);
        }
        if self.pin1_enabled == enable {
            return Err(SW_CONDITIONS);
        }
        let r = self.pin1.present(data);
        self.pin1_verified = r.is_ok();
        r?;
        self.pin1_enabled = enable;
        Ok(ok(Vec::new()))
    }

    fn unblock(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        Self::pin1_only(p1, p2)?;
        if data.is_empty() {
            return if self.puk1.left == 0 {
                Err(SW_BLOCKED)
            } else {
                Err([0x63, 0xC0 | self.puk1.left])
            };
        }
        if data.len() != 16 {
            return Err(SW_WRONG_LENGTH);
        }
        if !valid_pin(&data[8..]) {
            return Err(SW_WRONG_DATA);
        }
        self.puk1.present(&data[..8])?;
        self.pin1.code.copy_from_slice(&data[8..]);
        self.pin1.left = self.pin1.max;
        self.pin1_verified = true;
        self.pin1_enabled = true;
        Ok(ok(Vec::new()))
    }

    fn authenticate(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        if p1 != 0 || !matches!(p2, 0x80 | 0x81) {
            return Err(SW_P1P2);
        }
        if self.cur_app != Some(self.adf) {
            return Err(SW_CONDITIONS);
        }
        if !self.allowed(Ac::Pin1) {
            return Err(SW_SECURITY);
        }
        let m = Milenage::new(&self.ki, &self.opc, self.consts.clone());
        // GSM context: RAND only, or RAND + an AUTN that is ignored (pySim's `authenticate`
        // sends one in either context).
        let lengths_ok = match p2 {
            0x81 => data.len() == 34,
            _ => data.len() == 17 || data.len() == 34,
        };
        if !lengths_ok {
            return Err(SW_WRONG_LENGTH);
        }
        if data[0] != 16 || (data.len() == 34 && data[17] != 16) {
            return Err(SW_WRONG_DATA);
        }
        let rand: [u8; 16] = data[1..17].try_into().expect("16 bytes");
        if p2 == 0x80 {
            let (sres, kc) = c2_c3(&m.f2345(&rand));
            let mut body = vec![0x04];
            body.extend(sres);
            body.push(0x08);
            body.extend(kc);
            return self.respond_later(body);
        }
        let autn: [u8; 16] = data[18..34].try_into().expect("16 bytes");
        match usim_aka(&m, &mut self.sqns, &rand, &autn) {
            Ok(v) => {
                let (_, kc) = c2_c3(&v);
                let mut body = vec![0xDB, 0x08];
                body.extend(v.res);
                body.push(0x10);
                body.extend(v.ck);
                body.push(0x10);
                body.extend(v.ik);
                body.push(0x08);
                body.extend(kc);
                self.respond_later(body)
            }
            Err(AuthFailure::Mac) => Err(SW_AUTH_MAC),
            Err(AuthFailure::Sync(auts)) => {
                let mut body = vec![0xDC, 0x0E];
                body.extend(auts);
                self.respond_later(body)
            }
        }
    }
}

fn ok(data: Vec<u8>) -> Answer {
    Answer { data, sw: SW_OK }
}

/// Expected outgoing length: P3, `00` = 256.
fn ne(p3: u8) -> usize {
    if p3 == 0 {
        256
    } else {
        usize::from(p3)
    }
}

/// Outgoing data of a fixed body: `6C xx` if Le asks for more, the first Le bytes otherwise.
fn take_le(body: Vec<u8>, p3: u8) -> Result<Answer, Sw> {
    let n = ne(p3);
    if n > body.len() {
        return Err([0x6C, body.len() as u8]);
    }
    Ok(ok(body[..n].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::generated_usim;

    fn x(u: &mut Uicc, hdr: &str, data: &str) -> Answer {
        let h: [u8; 5] = hex::decode(hdr).unwrap().try_into().unwrap();
        u.execute(&h, &hex::decode(data).unwrap())
    }

    #[test]
    fn class_checks() {
        assert_eq!(command(0x00, 0xA4), Ok(Dir::In));
        assert_eq!(command(0x80, 0xF2), Ok(Dir::Out));
        assert_eq!(command(0x00, 0xF2), Err(SW_WRONG_CLASS));
        assert_eq!(command(0x80, 0xA4), Err(SW_WRONG_CLASS));
        assert_eq!(command(0x01, 0xA4), Err(SW_CHANNEL));
        assert_eq!(command(0x40, 0xA4), Err(SW_CHANNEL));
        assert_eq!(command(0x0C, 0xA4), Err(SW_SECURE_MESSAGING));
        assert_eq!(command(0xB0, 0xA4), Err(SW_WRONG_CLASS));
        assert_eq!(command(0x00, 0x12), Err(SW_UNKNOWN_INS));
    }

    #[test]
    fn sfis_unique_per_df_and_arr_records_fit() {
        let u = Uicc::new(&generated_usim(4));
        for (i, f) in u.tree.files.iter().enumerate() {
            if !u.tree.is_df(i) {
                continue;
            }
            let mut sfis: Vec<u8> = f
                .children
                .iter()
                .filter_map(|&c| u.tree.files[c].sfi)
                .collect();
            let n = sfis.len();
            sfis.sort();
            sfis.dedup();
            assert_eq!(sfis.len(), n, "DF {:04X}", f.fid);
        }
        for (r, w) in RULES {
            let rec = arr_record(r, w);
            assert_eq!(rec.len(), ARR_REC_LEN);
        }
    }

    #[test]
    fn direct_calls_with_wrong_data_do_not_panic() {
        let mut u = Uicc::new(&generated_usim(4));
        assert_eq!(x(&mut u, "00A4000002", "3F").sw, SW_WRONG_LENGTH);
        assert_eq!(x(&mut u, "00A4000402", "3F00").sw, [0x61, 0x22]);
        assert_eq!(x(&mut u, "0088008122", "").sw, SW_WRONG_LENGTH);
        assert_eq!(x(&mut u, "0020000100", "31").sw, SW_WRONG_LENGTH);
        assert_eq!(x(&mut u, "00A4080001", "3F").sw, SW_WRONG_LENGTH);
    }
}
