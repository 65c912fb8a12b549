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
use std::time::Duration;

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
pub const SW_CHAINING: Sw = [0x68, 0x84];
pub const SW_NO_CHANNEL_FREE: Sw = [0x6A, 0x81];
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
    /// Case 1: no data either way (P3 = 0).
    None,
}

/// Number of logical channels: the basic one, 1–3, and the extended 4–19.
pub const CHANNELS: usize = 20;

/// The logical channel a class byte names (TS 102 221 §10.1.1, ISO/IEC 7816-4 §5.1.1), and
/// whether it is a proprietary class (`8X`/`CX`). Chaining and secure messaging are refused.
pub fn channel_of(cla: u8) -> Result<(usize, bool), Sw> {
    let proprietary = cla & 0x80 != 0;
    if cla & 0x40 == 0 {
        // First interindustry coding: b6 must be 0 (`2X`/`3X`/`AX`/`BX` are other classes).
        if cla & 0x20 != 0 {
            return Err(SW_WRONG_CLASS);
        }
        if cla & 0x10 != 0 {
            return Err(SW_CHAINING);
        }
        if cla & 0x0C != 0 {
            return Err(SW_SECURE_MESSAGING);
        }
        Ok((usize::from(cla & 0x03), proprietary))
    } else {
        // Further interindustry coding: b6 secure messaging, b5 chaining, b4–b1 channel − 4.
        if cla & 0x10 != 0 {
            return Err(SW_CHAINING);
        }
        if cla & 0x20 != 0 {
            return Err(SW_SECURE_MESSAGING);
        }
        Ok((4 + usize::from(cla & 0x0F), proprietary))
    }
}

/// Checks the header of a UICC command: the channel its CLA names, and how it moves its data.
/// Whether the channel is open is checked by [`Uicc::execute`].
pub fn command(hdr: &[u8; 5]) -> Result<(usize, Dir), Sw> {
    let [cla, ins, p1, p2, _] = *hdr;
    let (ch, proprietary) = channel_of(cla)?;
    // `prop`: Some(true) proprietary class only, Some(false) interindustry only, None either.
    let (dir, prop) = match ins {
        0xA4 => (Dir::In, Some(false)),
        0xB0 | 0xB2 => (Dir::Out, Some(false)),
        // GET RESPONSE copies the class of the command before it (`8N C0` after STORE DATA).
        0xC0 => (Dir::Out, None),
        0xD6 | 0xDC | 0x24 | 0x26 | 0x28 | 0x88 => (Dir::In, Some(false)),
        0x20 | 0x2C => (Dir::InOrNone, Some(false)),
        // MANAGE CHANNEL: open with the card choosing answers the number (Le = 1).
        0x70 if p1 == 0x00 && p2 == 0x00 => (Dir::Out, Some(false)),
        0x70 => (Dir::None, Some(false)),
        0xF2 => (Dir::Out, Some(true)),
        // STORE DATA (ES10), TERMINAL CAPABILITY.
        0xE2 | 0xAA => (Dir::In, Some(true)),
        _ => return Err(SW_UNKNOWN_INS),
    };
    if prop.is_some_and(|p| p != proprietary) {
        return Err(SW_WRONG_CLASS);
    }
    Ok((ch, dir))
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
const RULES: [(Ac, Ac); 6] = [
    (Ac::Alw, Ac::Adm),
    (Ac::Pin1, Ac::Adm),
    (Ac::Pin1, Ac::Pin1),
    (Ac::Alw, Ac::Nev),
    (Ac::Alw, Ac::Pin1),
    (Ac::Adm, Ac::Adm),
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
    Df {
        aid: Option<Vec<u8>>,
    },
    Transparent(Vec<u8>),
    /// Linear fixed, or cyclic (record 1 is the one written last).
    Linear {
        rec_len: usize,
        recs: Vec<Vec<u8>>,
        cyclic: bool,
    },
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
    /// A security domain of an eUICC (ISD-R, ECASD): selectable by AID only, FCI `6F`.
    sd: bool,
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
            sd: false,
        });
        if i != parent {
            self.files[parent].children.push(i);
        }
        i
    }

    /// A security domain: under the MF for selection purposes, but no child of it.
    fn add_sd(&mut self, aid: &[u8]) -> usize {
        let i = self.files.len();
        self.files.push(File {
            fid: 0,
            parent: 0,
            children: Vec::new(),
            sfi: None,
            read: Ac::Alw,
            update: Ac::Nev,
            body: Body::Df {
                aid: Some(aid.to_vec()),
            },
            sd: true,
        });
        i
    }

    fn tr(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), data: Vec<u8>) {
        self.add(parent, fid, sfi, ac, Body::Transparent(data));
    }

    fn lin(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), recs: Vec<Vec<u8>>) {
        let rec_len = recs[0].len();
        let cyclic = false;
        self.add(
            parent,
            fid,
            sfi,
            ac,
            Body::Linear {
                rec_len,
                recs,
                cyclic,
            },
        );
    }

    fn cyc(&mut self, parent: usize, fid: u16, sfi: Option<u8>, ac: (Ac, Ac), recs: Vec<Vec<u8>>) {
        let rec_len = recs[0].len();
        let cyclic = true;
        self.add(
            parent,
            fid,
            sfi,
            ac,
            Body::Linear {
                rec_len,
                recs,
                cyclic,
            },
        );
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

/// The ISD-R of an eUICC (SGP.02 Annex H / SGP.22 §2.2.1).
pub const ISDR_AID: [u8; 16] = [
    0xA0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x89, 0x00, 0x00, 0x01, 0x00,
];
/// The ECASD of an eUICC.
pub const ECASD_AID: [u8; 16] = [
    0xA0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x89, 0x00, 0x00, 0x02, 0x00,
];

fn ff(n: usize) -> Vec<u8> {
    vec![0xFF; n]
}

/// `n` records of `rec`.
fn recs(n: usize, rec: Vec<u8>) -> Vec<Vec<u8>> {
    vec![rec; n]
}

/// An empty SMS record (status byte 00 = free).
fn sms_free() -> Vec<u8> {
    let mut r = ff(176);
    r[0] = 0x00;
    r
}

/// EF.SMSP (TS 31.102 §4.2.27): no alpha identifier, only the service centre address present
/// (parameter indicators `FD`), a plausible centre in the home country (+<MCC>…).
fn smsp_record(imsi: &str) -> Vec<u8> {
    let mut r = ff(12);
    r.push(0xFD);
    r.extend(ff(12));
    let digits: Vec<u8> = format!("{}0000000", imsi.get(..3).unwrap_or("001"))
        .bytes()
        .map(|b| b - b'0')
        .collect();
    let mut sc = vec![(digits.len().div_ceil(2) + 1) as u8, 0x91];
    for pair in digits.chunks(2) {
        sc.push(pair.get(1).map_or(0xF0, |d| d << 4) | pair[0]);
    }
    sc.resize(12, 0xFF);
    r.extend(sc);
    r.extend([0x00, 0x00, 0xFF]);
    r
}

/// EF.ECC on the UICC face (TS 31.102 §4.2.21): 112 and 911, no alpha, category 0.
fn ecc_records() -> Vec<Vec<u8>> {
    vec![
        vec![0x11, 0xF2, 0xFF, 0x00],
        vec![0x19, 0xF1, 0xFF, 0x00],
        ff(4),
    ]
}

/// Service numbers (TS 31.102 §4.2.8) in EF.UST, each with its files in ADF.USIM: local
/// phone book (1), FDN (2), EXT2 (3), SDN (4), EXT3 (5), OCI/OCT (8), ICI/ICT (9), SMS (10),
/// SMSR (11), SMSP (12), AoC (13), CBMI (15), CBMIR (16), GID1 (17), GID2 (18), SPN (19),
/// PLMNwAcT (20), MSISDN (21), GSM access (27), CBMID (29), "shall be set" (33), EST (34),
/// ACL (35), DCK (36), CNL (37), GSM security context (38), OPLMNwAcT (42), HPLMNwAcT (43),
/// PNN (45), OPL (46), MBDN (47), MWIS (48), CFIS (49), SPDI (51), EHPLMN (71),
/// EHPLMN presentation (73), EPS mobility management (85).
/// Also BDN (6), EXT4 (7), CCP2 (14), EXT5 (44), RPLMN AcT (50), MMS (52, 53) and the 5GS
/// services: mobility management (122), NAS security contexts (123), SUCI calculation by the ME
/// (124), UAC access identities (126).
pub const UST_SERVICES: [u8; 48] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 27, 29, 33, 34, 35,
    36, 37, 38, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 71, 73, 85, 122, 123, 124, 126,
];

/// The UICC file system: MF with EF.DIR, EF.ICCID, EF.PL, EF.ARR, EF.UMPC, DF.TELECOM (phone
/// book, SMS, …) and DF.GSM (what a 2G terminal reads through class `00`), and ADF.USIM with what
/// TS 31.102 makes mandatory, the files of the services EF.UST lists, DF.GSM-ACCESS and
/// DF.PHONEBOOK. An eUICC's face adds ISD-R and ECASD; with no profile enabled it has only the
/// MF's own files (EF.DIR empty, EF.ICCID `FF`).
fn build_tree(p: &CardProfile, faces: Faces) -> (Tree, Option<usize>) {
    use Ac::*;
    let usim = faces != Faces::EuiccBare;
    let mut t = Tree { files: Vec::new() };
    let mf = t.add(0, 0x3F00, None, (Alw, Adm), Body::Df { aid: None });
    let dir = if usim {
        vec![dir_record(b"USIM"), ff(38)]
    } else {
        recs(2, ff(38))
    };
    t.lin(mf, 0x2F00, Some(0x1E), (Alw, Adm), dir);
    let iccid = if usim {
        encode_iccid(&p.iccid).to_vec()
    } else {
        ff(10)
    };
    t.tr(mf, 0x2FE2, Some(0x02), (Alw, Nev), iccid);
    let mut pl = ff(10);
    pl[..2].copy_from_slice(b"en");
    t.tr(mf, 0x2F05, Some(0x05), (Alw, Pin1), pl.clone());
    let arr: Vec<Vec<u8>> = RULES.iter().map(|&(r, u)| arr_record(r, u)).collect();
    t.lin(mf, 0x2F06, Some(0x06), (Alw, Adm), arr.clone());
    // 60 mA, 5 s, UICC suspend supported.
    t.tr(mf, 0x2F08, Some(0x08), (Alw, Adm), vec![0x3C, 0x05, 0x02]);
    if faces != Faces::Usim {
        t.add_sd(&ISDR_AID);
        t.add_sd(&ECASD_AID);
    }
    if !usim {
        return (t, None);
    }
    let plmn = plmn(&p.imsi);
    let mut msisdn = recs(2, adn_record(None));
    msisdn[0] = adn_record(p.msisdn.as_deref());
    let mut kc = ff(9);
    kc[8] = 0x07;

    let tel = t.add(mf, 0x7F10, None, (Alw, Adm), Body::Df { aid: None });
    t.lin(tel, 0x6F06, None, (Alw, Adm), arr.clone());
    t.lin(tel, 0x6F3A, None, (Pin1, Pin1), recs(10, adn_record(None)));
    t.lin(tel, 0x6F3B, None, (Pin1, Adm), recs(10, adn_record(None)));
    t.lin(tel, 0x6F3C, None, (Pin1, Pin1), recs(10, sms_free()));
    t.lin(tel, 0x6F40, None, (Pin1, Pin1), msisdn.clone());
    t.lin(tel, 0x6F42, None, (Pin1, Pin1), vec![smsp_record(&p.imsi)]);
    t.tr(tel, 0x6F43, None, (Pin1, Pin1), vec![0x00, 0xFF]);
    t.cyc(tel, 0x6F44, None, (Pin1, Pin1), recs(5, adn_record(None)));
    t.lin(tel, 0x6F47, None, (Pin1, Pin1), recs(10, sms_report_free()));
    t.lin(tel, 0x6F49, None, (Pin1, Adm), recs(5, adn_record(None)));
    for fid in [0x6F4A, 0x6F4B, 0x6F4C] {
        t.lin(tel, fid, None, (Pin1, Pin1), recs(5, ext_free()));
    }
    unset_files(&mut t, tel, TELECOM_MORE);
    let pb = t.add(tel, 0x5F3A, None, (Alw, Adm), Body::Df { aid: None });
    phonebook(&mut t, pb);

    // DF.GSM as a 2G terminal sees it through a UICC (contents as the SIM face's).
    let gsm = t.add(mf, 0x7F20, None, (Alw, Adm), Body::Df { aid: None });
    t.tr(gsm, 0x6F05, None, (Alw, Pin1), vec![0x01, 0xFF]);
    t.tr(
        gsm,
        0x6F07,
        None,
        (Pin1, Adm),
        encode_imsi(&p.imsi).to_vec(),
    );
    t.tr(gsm, 0x6F20, None, (Pin1, Pin1), kc.clone());
    t.tr(gsm, 0x6F30, None, (Pin1, Pin1), ff(24));
    t.tr(gsm, 0x6F31, None, (Pin1, Adm), vec![0x05]);
    // GSM 11.11 SST: CHV1 disabling, ADN, FDN, SMS, AoC, MSISDN, SMSP, GID1/2, SPN, …
    t.tr(
        gsm,
        0x6F38,
        None,
        (Pin1, Adm),
        vec![0xFF, 0x33, 0xC3, 0xF3, 0x03, 0x00],
    );
    t.tr(gsm, 0x6F3E, None, (Pin1, Adm), ff(8));
    t.tr(gsm, 0x6F3F, None, (Pin1, Adm), ff(8));
    t.tr(gsm, 0x6F46, None, (Alw, Adm), spn_content(p.spn.as_deref()));
    t.tr(gsm, 0x6F74, None, (Pin1, Pin1), ff(16));
    t.tr(
        gsm,
        0x6F78,
        None,
        (Pin1, Adm),
        access_class(&p.imsi).to_vec(),
    );
    t.tr(gsm, 0x6F7B, None, (Pin1, Pin1), ff(12));
    t.tr(gsm, 0x6F7E, None, (Pin1, Pin1), loci_content(&p.imsi));
    t.tr(gsm, 0x6FAD, None, (Alw, Adm), vec![0x00, 0x00, 0x00, 0x02]);
    t.tr(gsm, 0x6FAE, None, (Alw, Adm), vec![0x03]);
    t.tr(
        gsm,
        0x6FB7,
        None,
        (Alw, Adm),
        vec![0x11, 0xF2, 0xFF, 0x19, 0xF1, 0xFF],
    );
    unset_files(&mut t, gsm, GSM_MORE);

    let adf = t.add(
        mf,
        ADF_USIM_FID,
        None,
        (Alw, Adm),
        Body::Df {
            aid: Some(USIM_AID.to_vec()),
        },
    );
    t.tr(adf, 0x6F05, Some(0x02), (Alw, Pin1), pl);
    t.lin(adf, 0x6F06, Some(0x17), (Alw, Adm), arr);
    t.tr(
        adf,
        0x6F07,
        Some(0x07),
        (Pin1, Adm),
        encode_imsi(&p.imsi).to_vec(),
    );
    let mut keys = ff(33);
    keys[0] = 0x07;
    t.tr(adf, 0x6F08, Some(0x08), (Pin1, Pin1), keys.clone());
    t.tr(adf, 0x6F09, Some(0x09), (Pin1, Pin1), keys);
    t.tr(adf, 0x6F2C, None, (Pin1, Pin1), ff(16));
    t.tr(adf, 0x6F31, Some(0x12), (Pin1, Adm), vec![0x05]);
    t.tr(adf, 0x6F32, None, (Pin1, Adm), ff(6));
    // AoC: ACMmax, ACM (cyclic), PUCT; no limit, nothing used.
    t.tr(adf, 0x6F37, None, (Pin1, Pin1), vec![0, 0, 0]);
    t.tr(
        adf,
        0x6F38,
        Some(0x04),
        (Pin1, Adm),
        service_table(&UST_SERVICES, 16),
    );
    t.cyc(adf, 0x6F39, None, (Pin1, Pin1), recs(1, vec![0, 0, 0]));
    t.lin(adf, 0x6F3B, None, (Pin1, Adm), recs(10, adn_record(None)));
    t.lin(adf, 0x6F3C, None, (Pin1, Pin1), recs(10, sms_free()));
    t.tr(adf, 0x6F3E, None, (Pin1, Adm), ff(8));
    t.tr(adf, 0x6F3F, None, (Pin1, Adm), ff(8));
    t.lin(adf, 0x6F40, None, (Pin1, Pin1), msisdn);
    t.tr(
        adf,
        0x6F41,
        None,
        (Pin1, Pin1),
        vec![0xFF, 0xFF, 0xFF, 0x00, 0x00],
    );
    t.lin(adf, 0x6F42, None, (Pin1, Pin1), vec![smsp_record(&p.imsi)]);
    t.tr(adf, 0x6F43, None, (Pin1, Pin1), vec![0x00, 0xFF]);
    t.tr(adf, 0x6F45, None, (Pin1, Pin1), ff(10));
    t.tr(adf, 0x6F46, None, (Alw, Adm), spn_content(p.spn.as_deref()));
    t.lin(adf, 0x6F47, None, (Pin1, Pin1), recs(10, sms_report_free()));
    t.tr(adf, 0x6F48, Some(0x0E), (Pin1, Adm), ff(10));
    t.lin(adf, 0x6F49, None, (Pin1, Adm), recs(5, adn_record(None)));
    t.lin(adf, 0x6F4B, None, (Pin1, Pin1), recs(5, ext_free()));
    t.lin(adf, 0x6F4C, None, (Pin1, Adm), recs(5, ext_free()));
    t.tr(adf, 0x6F50, None, (Pin1, Pin1), ff(8));
    t.tr(adf, 0x6F56, Some(0x05), (Pin1, Pin1), vec![0x00]);
    // EF.ACL: no APN in the list.
    let mut acl = ff(32);
    acl[0] = 0x00;
    t.tr(adf, 0x6F57, None, (Pin1, Pin1), acl);
    t.tr(
        adf,
        0x6F5B,
        Some(0x0F),
        (Pin1, Pin1),
        vec![0xF0, 0, 0, 0xF0, 0, 0],
    );
    t.tr(adf, 0x6F5C, Some(0x10), (Pin1, Adm), ff(3));
    t.tr(adf, 0x6F60, Some(0x0A), (Pin1, Pin1), ff(40));
    t.tr(adf, 0x6F61, Some(0x11), (Pin1, Adm), ff(40));
    // The home PLMN on UTRAN, E-UTRAN and GSM.
    let hplmn = [plmn[0], plmn[1], plmn[2], 0xC0, 0x80];
    t.tr(adf, 0x6F62, Some(0x13), (Pin1, Adm), hplmn.to_vec());
    t.tr(
        adf,
        0x6F78,
        Some(0x06),
        (Pin1, Adm),
        access_class(&p.imsi).to_vec(),
    );
    t.tr(adf, 0x6F7B, Some(0x0D), (Pin1, Pin1), ff(12));
    t.tr(adf, 0x6F7E, Some(0x0B), (Pin1, Pin1), loci_content(&p.imsi));
    // Incoming/outgoing call information and timers: cyclic, empty.
    let mut ici = ff(28);
    ici[24..].copy_from_slice(&[0, 0, 0, 0x00]);
    t.cyc(adf, 0x6F80, Some(0x14), (Pin1, Pin1), recs(5, ici));
    let mut oci = ff(27);
    oci[24..].copy_from_slice(&[0, 0, 0]);
    t.cyc(adf, 0x6F81, Some(0x15), (Pin1, Pin1), recs(5, oci));
    t.cyc(adf, 0x6F82, None, (Pin1, Pin1), recs(1, vec![0, 0, 0]));
    t.cyc(adf, 0x6F83, None, (Pin1, Pin1), recs(1, vec![0, 0, 0]));
    t.tr(
        adf,
        0x6FAD,
        Some(0x03),
        (Alw, Adm),
        vec![0x00, 0x00, 0x00, 0x02],
    );
    t.lin(adf, 0x6FB7, Some(0x01), (Alw, Adm), ecc_records());
    // PNN/OPL: one empty network name, no operator PLMN list entries.
    t.lin(adf, 0x6FC5, Some(0x19), (Alw, Adm), recs(1, ff(16)));
    t.lin(adf, 0x6FC6, None, (Alw, Adm), recs(1, ff(8)));
    t.lin(adf, 0x6FC7, None, (Pin1, Pin1), recs(2, adn_record(None)));
    t.lin(adf, 0x6FC8, None, (Pin1, Pin1), recs(2, ext_free()));
    // Mailbox identifiers (voice mail → MBDN record 1), no message waiting, no forwarding.
    t.lin(
        adf,
        0x6FC9,
        None,
        (Pin1, Pin1),
        recs(1, vec![0x01, 0, 0, 0]),
    );
    t.lin(adf, 0x6FCA, None, (Pin1, Pin1), recs(1, vec![0; 5]));
    let mut cfis = ff(16);
    cfis[..2].copy_from_slice(&[0x01, 0x00]);
    t.lin(adf, 0x6FCB, None, (Pin1, Pin1), recs(1, cfis));
    t.tr(adf, 0x6FCD, None, (Alw, Adm), ff(16));
    let mut ehplmn = ff(12);
    ehplmn[..3].copy_from_slice(&plmn);
    t.tr(adf, 0x6FD9, Some(0x1D), (Pin1, Adm), ehplmn);
    t.tr(adf, 0x6FDB, None, (Pin1, Adm), vec![0x00]);
    // P-TMSI, its signature, RAI (LAI + RAC), status "not updated".
    let mut psloci = ff(7);
    psloci.extend(plmn);
    psloci.extend([0xFF, 0xFE, 0xFF, 0x01]);
    t.tr(adf, 0x6F73, Some(0x0C), (Pin1, Pin1), psloci);
    // GUTI, last visited TAI, status "not updated".
    let mut epsloci = ff(12);
    epsloci.extend(plmn);
    epsloci.extend([0xFF, 0xFE, 0x01]);
    t.tr(adf, 0x6FE3, Some(0x1E), (Pin1, Pin1), epsloci);
    // EPS NAS security context: none (KSI "no key available").
    t.lin(adf, 0x6FE4, Some(0x18), (Pin1, Pin1), recs(1, ff(54)));

    unset_files(&mut t, adf, USIM_MORE);

    let access = t.add(adf, 0x5F3B, None, (Alw, Adm), Body::Df { aid: None });
    t.tr(access, 0x4F20, Some(0x01), (Pin1, Pin1), kc.clone());
    t.tr(access, 0x4F52, Some(0x02), (Pin1, Pin1), kc);
    t.tr(access, 0x4F63, None, (Pin1, Adm), ff(10));
    t.tr(access, 0x4F64, None, (Pin1, Adm), vec![0x00]);
    // DF.5GS (TS 31.102 §4.4.11): locations "not updated", no security contexts, SUCI in
    // the clear (null scheme), no routing indicator.
    let g5 = t.add(adf, 0x5FC0, None, (Alw, Adm), Body::Df { aid: None });
    let mut loci5 = ff(13);
    loci5.extend(plmn);
    loci5.extend([0xFF, 0xFF, 0xFE, 0x01]);
    t.tr(g5, 0x4F01, Some(0x01), (Pin1, Pin1), loci5.clone());
    t.tr(g5, 0x4F02, Some(0x02), (Pin1, Pin1), loci5);
    t.lin(g5, 0x4F03, Some(0x03), (Pin1, Pin1), recs(1, ff(57)));
    t.lin(g5, 0x4F04, Some(0x04), (Pin1, Pin1), recs(1, ff(57)));
    t.tr(g5, 0x4F05, Some(0x05), (Pin1, Pin1), ff(68));
    t.tr(g5, 0x4F06, Some(0x06), (Pin1, Adm), vec![0, 0, 0, 0]);
    t.tr(
        g5,
        0x4F07,
        Some(0x07),
        (Pin1, Adm),
        vec![0xA0, 0x02, 0x00, 0x00, 0xA1, 0x00],
    );
    t.lin(g5, 0x4F08, Some(0x08), (Alw, Adm), recs(1, ff(10)));
    t.tr(
        g5,
        0x4F0A,
        Some(0x0A),
        (Pin1, Adm),
        vec![0xF0, 0xFF, 0xFF, 0xFF],
    );
    let pb = t.add(adf, 0x5F3A, None, (Alw, Adm), Body::Df { aid: None });
    phonebook(&mut t, pb);
    (t, Some(adf))
}

/// Files whose content is "not set" (`FF`, records of `FF`): (FID, SFI, record length or 0 for
/// transparent, size or record count).
type Unset = (u16, Option<u8>, usize, usize);

/// DF.GSM beyond the basics: AoC, cell broadcast, DCK, CNL, GPRS, *wAcT, PNN/OPL, mailbox,
/// forwarding, SPDI, EXT6/7.
const GSM_MORE: &[Unset] = &[
    (0x6F37, None, 0, 3),
    (0x6F39, None, 3, 1),
    (0x6F41, None, 0, 5),
    (0x6F45, None, 0, 10),
    (0x6F48, None, 0, 10),
    (0x6F50, None, 0, 8),
    (0x6F2C, None, 0, 16),
    (0x6F32, None, 0, 6),
    (0x6F52, None, 0, 9),
    (0x6F53, None, 0, 14),
    (0x6F60, None, 0, 40),
    (0x6F61, None, 0, 40),
    (0x6F62, None, 0, 40),
    (0x6F63, None, 0, 10),
    (0x6FC5, None, 16, 1),
    (0x6FC6, None, 8, 1),
    (0x6FC7, None, 30, 2),
    (0x6FC8, None, 13, 2),
    (0x6FC9, None, 4, 1),
    (0x6FCA, None, 5, 1),
    (0x6FCB, None, 16, 1),
    (0x6FCC, None, 13, 2),
    (0x6FCD, None, 0, 16),
];

/// DF.TELECOM beyond the basics: CCP, ECCP, BDN, EXT4, CMI.
const TELECOM_MORE: &[Unset] = &[
    (0x6F3D, None, 14, 5),
    (0x6F4F, None, 15, 5),
    (0x6F4D, None, 30, 5),
    (0x6F4E, None, 13, 5),
    (0x6F58, None, 21, 5),
];

/// ADF.USIM files of optional services, present and empty as on many commercial USIMs: EXT5,
/// CCP2, BDN, EXT4, CMI, RPLMNAcTD, NETPAR, EXT7, MMS (MMSN, EXT8, MMSICP, MMSUP, MMSUCP),
/// SPNI, PNNI, UFC, PWS, IPS, ePDG (Id, Selection, emergency ones), FromPreferred, eAKA, OCST,
/// IMSDCI, NASCONFIG.
const USIM_MORE: &[Unset] = &[
    (0x6F4E, None, 13, 5),
    (0x6F4F, Some(0x16), 15, 5),
    (0x6F4D, None, 30, 5),
    (0x6F55, None, 13, 5),
    (0x6F58, None, 21, 5),
    (0x6F65, None, 0, 2),
    (0x6FC4, None, 0, 16),
    (0x6FCC, None, 13, 2),
    (0x6FCE, None, 20, 2),
    (0x6FCF, None, 13, 2),
    (0x6FD0, None, 0, 32),
    (0x6FD1, None, 32, 1),
    (0x6FD2, None, 0, 32),
    (0x6FDE, None, 0, 16),
    (0x6FDF, None, 16, 1),
    (0x6FE6, None, 0, 16),
    (0x6FEC, None, 0, 1),
    (0x6FF1, None, 4, 1),
    (0x6FF3, None, 0, 32),
    (0x6FF4, None, 0, 16),
    (0x6FF5, None, 0, 32),
    (0x6FF6, None, 0, 16),
    (0x6FF7, None, 0, 1),
    (0x6F01, None, 0, 1),
    (0x6F02, None, 0, 8),
    (0x6F0B, None, 0, 8),
    (0x6FE8, None, 0, 16),
];

fn unset_files(t: &mut Tree, df: usize, list: &[Unset]) {
    for &(fid, sfi, rec_len, n) in list {
        if rec_len == 0 {
            t.tr(df, fid, sfi, (Ac::Pin1, Ac::Adm), ff(n));
        } else {
            t.lin(df, fid, sfi, (Ac::Pin1, Ac::Adm), recs(n, ff(rec_len)));
        }
    }
}

/// An empty extension record (EXT1–EXT7).
fn ext_free() -> Vec<u8> {
    let mut r = ff(13);
    r[0] = 0x00;
    r
}

/// An empty EF.SMSR record.
fn sms_report_free() -> Vec<u8> {
    let mut r = ff(30);
    r[0] = 0x00;
    r
}

/// Access class from the last IMSI digit (TS 22.011 §4.2).
fn access_class(imsi: &str) -> [u8; 2] {
    let last = imsi.bytes().last().map_or(0, |b| (b - b'0') % 10);
    (1u16 << last).to_be_bytes()
}

/// A DF.PHONEBOOK (TS 31.102 §4.4.2) with one phone book: EF.PBR pointing at EF.ADN (type 1,
/// `C0`) with 10 entries, and the synchronisation files EF.PSC, EF.CC, EF.PUID.
fn phonebook(t: &mut Tree, pb: usize) {
    use Ac::*;
    let mut pbr = vec![0xA8, 0x05, 0xC0, 0x03, 0x4F, 0x3A, 0x01];
    pbr.resize(20, 0xFF);
    t.lin(pb, 0x4F30, None, (Alw, Adm), recs(1, pbr));
    t.lin(
        pb,
        0x4F3A,
        Some(0x01),
        (Pin1, Pin1),
        recs(10, adn_record(None)),
    );
    t.tr(pb, 0x4F22, None, (Pin1, Pin1), vec![0, 0, 0, 0]);
    t.tr(pb, 0x4F23, None, (Pin1, Pin1), vec![0, 0]);
    t.tr(pb, 0x4F24, None, (Pin1, Pin1), vec![0, 0]);
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
    /// ADF.USIM (`None` on an eUICC with no profile enabled).
    adf: Option<usize>,
    /// The selection of the channel the command runs on (see [`Chan`]): loaded from `chans`
    /// before a command, stored back after it.
    cur_df: usize,
    cur_ef: Option<usize>,
    cur_app: Option<usize>,
    rec_ptr: Option<usize>,
    store: Vec<u8>,
    store_next: Option<u8>,
    /// Open logical channels (0 always).
    chans: Vec<Option<Chan>>,
    /// The channel of the command being executed.
    ch: usize,
    pin1: Secret,
    puk1: Secret,
    adm1: Secret,
    pin1_enabled: bool,
    pin1_verified: bool,
    adm1_verified: bool,
    /// Data for GET RESPONSE, and the channel they belong to.
    pending: Option<(usize, Vec<u8>)>,
    /// How long the card works on the last command (ES10 functions), for NULL bytes.
    busy: Duration,
    ki: [u8; 16],
    opc: [u8; 16],
    consts: MilenageConsts,
    sqns: SqnState,
}

impl Uicc {
    /// The UICC face for `p` (whose `algo` should be Milenage; an XOR-2G profile gets OPc = 0).
    pub fn new(p: &CardProfile) -> Uicc {
        Uicc::build(p, Faces::Usim)
    }

    /// The UICC face of an eUICC: ISD-R and ECASD, and the USIM of `p` (the enabled profile) or
    /// none (no profile enabled: EF.DIR empty, EF.ICCID `FF`).
    pub fn new_euicc(p: &CardProfile, usim: bool) -> Uicc {
        Uicc::build(
            p,
            if usim {
                Faces::EuiccUsim
            } else {
                Faces::EuiccBare
            },
        )
    }

    fn build(p: &CardProfile, faces: Faces) -> Uicc {
        let (tree, adf) = build_tree(p, faces);
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
            store: Vec::new(),
            store_next: None,
            chans: fresh_channels(),
            ch: 0,
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
            busy: Duration::ZERO,
            ki: p.ki,
            opc,
            consts: u.milenage.clone(),
            sqns: SqnState::new(u.sqn, u.ind_bits, u.delta),
        }
    }

    /// Reset: only the basic channel open, MF selected, no application, verifications
    /// forgotten, nothing pending, no STORE DATA blocks kept.
    pub fn reset(&mut self) {
        self.chans = fresh_channels();
        self.load(0);
        self.pin1_verified = false;
        self.adm1_verified = false;
        self.pending = None;
        self.busy = Duration::ZERO;
    }

    /// Makes channel `ch`'s selection the current one.
    fn load(&mut self, ch: usize) {
        let c = self.chans[ch].clone().unwrap_or_default();
        self.ch = ch;
        self.cur_df = c.cur_df;
        self.cur_ef = c.cur_ef;
        self.cur_app = c.cur_app;
        self.rec_ptr = c.rec_ptr;
        self.store = c.store;
        self.store_next = c.store_next;
    }

    /// Stores the current selection back into its channel (if still open).
    fn save(&mut self) {
        if let Some(c) = self.chans.get_mut(self.ch).and_then(Option::as_mut) {
            *c = Chan {
                cur_df: self.cur_df,
                cur_ef: self.cur_ef,
                cur_app: self.cur_app,
                rec_ptr: self.rec_ptr,
                store: std::mem::take(&mut self.store),
                store_next: self.store_next,
            };
        }
    }

    /// Open logical channels, basic channel first.
    pub fn open_channels(&self) -> Vec<usize> {
        (0..CHANNELS).filter(|&c| self.chans[c].is_some()).collect()
    }

    /// FID of the current DF and EF of channel `ch` (`None` if it is closed).
    pub fn current_on(&self, ch: usize) -> Option<(u16, Option<u16>)> {
        let c = self.chans.get(ch)?.as_ref()?;
        Some((
            self.tree.files[c.cur_df].fid,
            c.cur_ef.map(|i| self.tree.files[i].fid),
        ))
    }

    /// How long the card works on the command just executed (an ES10 function's time).
    pub fn take_busy(&mut self) -> Duration {
        std::mem::take(&mut self.busy)
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

    /// FID of the current DF (7FF0 for ADF.USIM) and of the current EF, on the basic channel.
    pub fn current(&self) -> (u16, Option<u16>) {
        self.current_on(0)
            .expect("the basic channel is always open")
    }

    /// Executes one command: `hdr` = CLA INS P1 P2 P3; `data` = the P3 incoming bytes of an
    /// incoming command (empty for outgoing ones and case 1). Data come back only with `90 00`,
    /// or with `61 xx` from a GET RESPONSE that leaves xx bytes pending.
    pub fn execute(&mut self, hdr: &[u8; 5], data: &[u8]) -> Answer {
        self.execute_with(hdr, data, None)
    }

    /// [`execute`](Self::execute) on a card whose ISD-R answers ES10 requests through `isdr`.
    pub fn execute_with(
        &mut self,
        hdr: &[u8; 5],
        data: &[u8],
        isdr: Option<&mut dyn Isdr>,
    ) -> Answer {
        let pending = self.pending.take();
        self.busy = Duration::ZERO;
        let [_, ins, p1, p2, p3] = *hdr;
        let r = match command(hdr) {
            Err(sw) => Err(sw),
            Ok((ch, _)) if self.chans[ch].is_none() => Err(SW_CHANNEL),
            // Direct callers may pass any data; the T=0 layer sends exactly P3 bytes.
            Ok((_, Dir::In | Dir::InOrNone)) if data.len() != usize::from(p3) => {
                Err(SW_WRONG_LENGTH)
            }
            Ok((_, Dir::In)) if data.is_empty() => Err(SW_WRONG_LENGTH),
            Ok((_, Dir::None)) if p3 != 0 => Err(SW_WRONG_LENGTH),
            Ok((ch, _)) if ins == 0x70 => self.manage_channel(ch, p1, p2, p3),
            Ok((ch, _)) => {
                self.load(ch);
                let r = match ins {
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
                    0xE2 => self.store_data(p1, p2, data, isdr),
                    // TERMINAL CAPABILITY: noted, nothing to do for a simulated card.
                    0xAA if (p1, p2) == (0, 0) => Ok(ok(Vec::new())),
                    0xAA => Err(SW_P1P2),
                    0xC0 => {
                        let mine = pending.as_ref().filter(|(c, _)| *c == ch);
                        let r = self.get_response(mine.map(|(_, d)| &d[..]), p1, p2, p3);
                        if r.is_err() {
                            self.pending = pending;
                        }
                        r
                    }
                    _ => Err(SW_UNKNOWN_INS),
                };
                self.save();
                r
            }
        };
        r.unwrap_or_else(|sw| Answer {
            data: Vec::new(),
            sw,
        })
    }

    /// MANAGE CHANNEL (TS 102 221 §11.1.17) issued on channel `from`: open (P1 `00`; P2 `00`
    /// lets the card choose, 1, 2, 3 first) or close (P1 `80`, P2 the channel; `00` = `from`).
    /// A new channel opened from the basic channel starts at the MF, one opened from another
    /// channel takes over that channel's current DF and application.
    fn manage_channel(&mut self, from: usize, p1: u8, p2: u8, p3: u8) -> Result<Answer, Sw> {
        let n = usize::from(p2);
        match p1 {
            0x00 => {
                let ch = if p2 == 0 {
                    if p3 != 1 {
                        return Err([0x6C, 0x01]);
                    }
                    (1..CHANNELS)
                        .find(|&c| self.chans[c].is_none())
                        .ok_or(SW_NO_CHANNEL_FREE)?
                } else if n < CHANNELS {
                    if self.chans[n].is_some() {
                        return Err(SW_CHANNEL);
                    }
                    n
                } else {
                    return Err(SW_CHANNEL);
                };
                let origin = self.chans[from].clone().unwrap_or_default();
                self.chans[ch] = Some(if from == 0 {
                    Chan::default()
                } else {
                    Chan {
                        cur_df: origin.cur_df,
                        cur_app: origin.cur_app,
                        ..Chan::default()
                    }
                });
                let data = if p2 == 0 { vec![ch as u8] } else { Vec::new() };
                Ok(ok(data))
            }
            0x80 => {
                let ch = if p2 == 0 { from } else { n };
                if ch == 0 || ch >= CHANNELS || self.chans[ch].is_none() {
                    return Err(SW_CHANNEL);
                }
                self.chans[ch] = None;
                Ok(ok(Vec::new()))
            }
            _ => Err(SW_P1P2),
        }
    }

    /// STORE DATA (GlobalPlatform, SGP.22 §5.7.2) to the ISD-R selected on this channel: blocks
    /// numbered from 00 in P2, P1 `11` more to come (answered `90 00`), `91` the last one; the
    /// whole request then goes to the ES10 handler and its response waits for GET RESPONSE.
    fn store_data(
        &mut self,
        p1: u8,
        p2: u8,
        data: &[u8],
        isdr: Option<&mut dyn Isdr>,
    ) -> Result<Answer, Sw> {
        let on_isdr = self.cur_app.is_some_and(|a| self.tree.files[a].sd);
        let Some(isdr) = isdr.filter(|_| on_isdr) else {
            return Err(SW_CONDITIONS);
        };
        let last = match p1 {
            0x11 => false,
            0x91 => true,
            _ => {
                self.store.clear();
                self.store_next = None;
                return Err(SW_P1P2);
            }
        };
        if p2 != self.store_next.unwrap_or(0) {
            // A block out of order: the request so far is dropped.
            self.store.clear();
            self.store_next = None;
            return Err(SW_P1P2);
        }
        self.store.extend_from_slice(data);
        if !last {
            self.store_next = Some(p2.wrapping_add(1));
            return Ok(ok(Vec::new()));
        }
        let request = std::mem::take(&mut self.store);
        self.store_next = None;
        let (response, busy) = isdr.es10(&request)?;
        self.busy = busy;
        if response.is_empty() {
            return Ok(ok(Vec::new()));
        }
        self.respond_later(response)
    }

    /// Keeps `body` for GET RESPONSE and answers `61 xx` (`61 00` = 256).
    fn respond_later(&mut self, body: Vec<u8>) -> Result<Answer, Sw> {
        let sw = sw_more(body.len());
        self.pending = Some((self.ch, body));
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
        if f.sd {
            return self.fci_sd(f);
        }
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
            Body::Linear {
                rec_len,
                recs,
                cyclic,
            } => {
                let descriptor = if *cyclic { 0x46 } else { 0x42 };
                tlv(
                    0x82,
                    &[descriptor, 0x21, 0x00, *rec_len as u8, recs.len() as u8],
                );
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

    /// The FCI of a security domain (GlobalPlatform, tag `6F`), as pySim expects it for the
    /// ISD-R: AID, proprietary data (maximum command data length 255) and, for the ISD-R, its
    /// proprietary template with the SGP.22 version (2.2.2).
    fn fci_sd(&self, f: &File) -> Vec<u8> {
        let Body::Df { aid: Some(aid) } = &f.body else {
            return vec![0x6F, 0x00];
        };
        let mut v = vec![0x84, aid.len() as u8];
        v.extend(aid);
        if aid[..] == ISDR_AID[..] {
            v.extend([0xA5, 0x04, 0x9F, 0x65, 0x01, 0xFF]);
            v.extend([0xE0, 0x05, 0x82, 0x03, 0x02, 0x02, 0x02]);
        }
        let mut out = vec![0x6F, v.len() as u8];
        out.extend(v);
        out
    }

    fn by_fid(&self, fid: u16) -> Option<usize> {
        let t = &self.tree;
        // A security domain has no files: FIDs are looked up from the MF.
        let cur = if t.files[self.cur_df].sd {
            0
        } else {
            self.cur_df
        };
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
            if Some(i) == self.adf || self.tree.files[i].sd {
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
            let sw = sw_more(rest.len());
            self.pending = Some((self.ch, rest));
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

    /// The record EF addressed by P2's SFI: (index, record length, record count, cyclic).
    fn record_ef(&mut self, p2: u8, update: bool) -> Result<(usize, usize, usize, bool), Sw> {
        let sfi = p2 >> 3;
        let i = self.target((sfi != 0).then_some(sfi))?;
        let Body::Linear {
            rec_len,
            recs,
            cyclic,
        } = &self.tree.files[i].body
        else {
            return Err(SW_INCOMPATIBLE);
        };
        let (rl, n, cyc) = (*rec_len, recs.len(), *cyclic);
        self.check_ac(i, update)?;
        Ok((i, rl, n, cyc))
    }

    /// Record addressed by P1 and the mode in P2 (TS 102 221 §11.1.5): (index, new pointer).
    /// In a cyclic EF, NEXT after the last record and PREVIOUS before the first wrap around.
    fn address(
        &self,
        n: usize,
        p1: u8,
        mode: u8,
        cyclic: bool,
    ) -> Result<(usize, Option<usize>), Sw> {
        let ptr = self.rec_ptr;
        let r = match mode {
            0x02 => match ptr {
                None => 0,
                Some(p) if p + 1 < n => p + 1,
                Some(_) if cyclic => 0,
                Some(_) => return Err(SW_RECORD_NOT_FOUND),
            },
            0x03 => match ptr {
                None => n - 1,
                Some(p) if p > 0 => p - 1,
                Some(_) if cyclic => n - 1,
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
        let (i, rl, n, cyclic) = self.record_ef(p2, false)?;
        let (r, ptr) = self.address(n, p1, p2 & 0x07, cyclic)?;
        if ne(p3) != rl {
            return Err([0x6C, rl as u8]);
        }
        self.rec_ptr = ptr;
        let rec = self.recs(i)[r].clone();
        Ok(ok(rec))
    }

    fn update_record(&mut self, p1: u8, p2: u8, data: &[u8]) -> Result<Answer, Sw> {
        let (i, rl, n, cyclic) = self.record_ef(p2, true)?;
        if data.len() != rl {
            return Err(SW_WRONG_LENGTH);
        }
        if cyclic {
            // Only PREVIOUS: the oldest record is written and becomes record 1.
            if p2 & 0x07 != 0x03 {
                return Err(SW_P1P2);
            }
            let recs = self.recs(i);
            recs.rotate_right(1);
            recs[0].copy_from_slice(data);
            self.rec_ptr = Some(0);
            return Ok(ok(Vec::new()));
        }
        let (r, ptr) = self.address(n, p1, p2 & 0x07, false)?;
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
        if self.adf.is_none() || self.cur_app != self.adf {
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

/// `61 xx`: xx bytes wait for GET RESPONSE (`61 00`: 256 or more).
fn sw_more(n: usize) -> Sw {
    [0x61, if n >= 256 { 0 } else { n as u8 }]
}

/// The selection and STORE DATA state of one logical channel.
#[derive(Debug, Clone, Default)]
struct Chan {
    cur_df: usize,
    cur_ef: Option<usize>,
    cur_app: Option<usize>,
    rec_ptr: Option<usize>,
    /// STORE DATA blocks received so far, and the number the next one must have.
    store: Vec<u8>,
    store_next: Option<u8>,
}

fn fresh_channels() -> Vec<Option<Chan>> {
    let mut v = vec![None; CHANNELS];
    v[0] = Some(Chan::default());
    v
}

/// The eUICC behind an ISD-R (see [`super::euicc`]).
pub trait Isdr {
    /// One complete ES10 request (the STORE DATA blocks put together). Answers the response
    /// (empty: `90 00` without data) and how long the card works on it, or a status word.
    fn es10(&mut self, request: &[u8]) -> Result<(Vec<u8>, Duration), Sw>;
}

/// Which applications a UICC face holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faces {
    /// A plain USIM.
    Usim,
    /// An eUICC with its enabled profile's USIM.
    EuiccUsim,
    /// An eUICC with no profile enabled.
    EuiccBare,
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
        let c = |cla: u8, ins: u8| command(&[cla, ins, 0, 4, 2]);
        assert_eq!(c(0x00, 0xA4), Ok((0, Dir::In)));
        assert_eq!(c(0x80, 0xF2), Ok((0, Dir::Out)));
        assert_eq!(c(0x00, 0xF2), Err(SW_WRONG_CLASS));
        assert_eq!(c(0x80, 0xA4), Err(SW_WRONG_CLASS));
        assert_eq!(c(0x01, 0xA4), Ok((1, Dir::In)));
        assert_eq!(c(0x83, 0xE2), Ok((3, Dir::In)));
        assert_eq!(c(0x40, 0xA4), Ok((4, Dir::In)));
        assert_eq!(c(0x4F, 0xA4), Ok((19, Dir::In)));
        assert_eq!(c(0xCF, 0xE2), Ok((19, Dir::In)));
        assert_eq!(c(0x81, 0xC0), Ok((1, Dir::Out)));
        assert_eq!(c(0x01, 0xC0), Ok((1, Dir::Out)));
        assert_eq!(c(0x0C, 0xA4), Err(SW_SECURE_MESSAGING));
        assert_eq!(c(0x04, 0xA4), Err(SW_SECURE_MESSAGING));
        assert_eq!(c(0x60, 0xA4), Err(SW_SECURE_MESSAGING));
        assert_eq!(c(0x10, 0xA4), Err(SW_CHAINING));
        assert_eq!(c(0x50, 0xA4), Err(SW_CHAINING));
        assert_eq!(c(0xB0, 0xA4), Err(SW_WRONG_CLASS));
        assert_eq!(c(0x20, 0xA4), Err(SW_WRONG_CLASS));
        assert_eq!(c(0x00, 0x12), Err(SW_UNKNOWN_INS));
        assert_eq!(command(&[0, 0x70, 0, 0, 1]), Ok((0, Dir::Out)));
        assert_eq!(command(&[0, 0x70, 0x80, 1, 0]), Ok((0, Dir::None)));
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
