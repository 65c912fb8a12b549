//! A simulated consumer eUICC (GSMA SGP.22): an ISD-R answering the ES10 functions over STORE
//! DATA, and profiles that are each a USIM with its own ICCID, IMSI, K and OPc. Sans-IO, like
//! [`super::uicc`], which does the file system, the logical channels and the STORE DATA
//! blocks; this module holds what survives a reset (profiles and their states, nicknames,
//! notifications, the default SM-DP+ address) and decodes and answers ES10 requests.
//!
//! Policies where SGP.22 and real cards leave a choice (see the README, "eUICCs"):
//! - Enable/Disable/Delete change the profile states at once (a following GetProfilesInfo shows
//!   them), but the files the terminal sees (EF.ICCID, ADF.USIM, the keys) stay those of the
//!   profile that was enabled at the last reset until the next one: after a reset the card *is*
//!   its enabled profile. With no profile enabled there is no USIM (EF.DIR empty, EF.ICCID `FF`).
//! - Enabling takes [`EuiccParams::enable_ms`] (the card sends NULL procedure bytes meanwhile),
//!   disabling and deleting half of it. The refresh flag is accepted and ignored: no proactive
//!   REFRESH is started (there is no terminal profile through PC/SC).
//! - Each enable, disable and delete adds a notification (next sequence number, the profile's
//!   SM-DP+ address).
//! - An unknown ES10 tag, GetCerts (SGP.32) included, answers `6A 88`; a request that is no
//!   BER TLV `6A 80`.

use std::time::Duration;

use super::ber::{self, Tag, Tlv};
use super::fs::{Answer, GsmSim, Sw};
use super::profile::{encode_iccid, CardProfile};
use super::uicc::{Isdr, Uicc, ISDR_AID};

pub const SW_WRONG_DATA: Sw = [0x6A, 0x80];
pub const SW_NO_REFERENCE: Sw = [0x6A, 0x88];

/// The ISD-P AID of profile `k` (0-based): `A0000005591010FFFFFFFF89000010 00`, `…11 00`, …
pub fn isdp_aid(k: usize) -> [u8; 16] {
    let mut a = ISDR_AID;
    a[14] = 0x10 + (k as u8);
    a
}

/// profileClass of SGP.22.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileClass {
    Test,
    Provisioning,
    #[default]
    Operational,
}

impl ProfileClass {
    fn code(self) -> u8 {
        match self {
            ProfileClass::Test => 0,
            ProfileClass::Provisioning => 1,
            ProfileClass::Operational => 2,
        }
    }
}

/// One profile installed on a simulated eUICC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EuiccProfile {
    /// The USIM this profile is (ICCID, IMSI, K, OPc, SPN, MSISDN, PINs …).
    pub card: CardProfile,
    pub isdp_aid: [u8; 16],
    /// profileName.
    pub name: String,
    /// serviceProviderName.
    pub provider: String,
    pub class: ProfileClass,
    pub nickname: Option<String>,
    /// The SM-DP+ its notifications go to.
    pub smdp: String,
    pub enabled: bool,
}

/// What a cards file (or the built-in set) says about an eUICC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EuiccParams {
    /// 16 bytes, 32 digits with SGP.29 check digits.
    pub eid: [u8; 16],
    pub profiles: Vec<EuiccProfile>,
    /// How long enabling a profile takes (ms): the card sends NULL bytes meanwhile.
    pub enable_ms: u64,
    /// The default SM-DP+ address (EuiccConfiguredAddresses), if any.
    pub default_smdp: Option<String>,
    /// The root SM-DS address.
    pub root_smds: String,
}

/// Default time a profile enable takes.
pub const DEFAULT_ENABLE_MS: u64 = 2000;
/// The root SM-DS of GSMA's test and production systems.
pub const ROOT_SMDS: &str = "lpa.ds.gsma.com";

/// The digits of an EID.
pub fn eid_digits(eid: &[u8; 16]) -> String {
    hex::encode_upper(eid)
}

/// The EID with 30 digits `prefix` (digits only) and its check digits (SGP.29: the 32-digit
/// number mod 97 is 1).
pub fn eid_with_check(prefix30: &str) -> Option<[u8; 16]> {
    if prefix30.len() != 30 || !prefix30.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u128 = prefix30.parse().ok()?;
    let check = 98 - (n * 100 % 97);
    let digits = format!("{prefix30}{check:02}");
    hex::decode(digits).ok()?.try_into().ok()
}

/// Whether 32 digits pass the SGP.29 check.
pub fn eid_valid(digits: &str) -> bool {
    digits.len() == 32
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u128>().is_ok_and(|n| n % 97 == 1)
}

/// NotificationEvent bits (SGP.22 ASN.1: install 0, enable 1, disable 2, delete 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Enable = 1,
    Disable = 2,
    Delete = 3,
}

#[derive(Debug, Clone)]
struct Notification {
    seq: u64,
    event: Event,
    smdp: String,
    iccid: [u8; 10],
}

#[derive(Debug, Clone)]
struct ProfState {
    meta: EuiccProfile,
    iccid: [u8; 10],
    deleted: bool,
}

/// What survives a reset, and answers ES10 requests.
#[derive(Debug, Clone)]
struct Rsp {
    eid: [u8; 16],
    profiles: Vec<ProfState>,
    notifications: Vec<Notification>,
    next_seq: u64,
    default_smdp: Option<String>,
    root_smds: String,
    enable: Duration,
    rng: u64,
}

/// The faces of one profile: its USIM (with the eUICC's ISD-R) and its GSM SIM.
#[derive(Debug, Clone)]
struct Face {
    uicc: Uicc,
    sim: GsmSim,
}

/// One simulated eUICC.
#[derive(Debug, Clone)]
pub struct Euicc {
    /// One per profile, in the order of `rsp.profiles`.
    faces: Vec<Face>,
    /// What the terminal sees with no profile enabled.
    bare: Uicc,
    /// The profile whose files the terminal sees (the one enabled at the last reset).
    active: Option<usize>,
    rsp: Rsp,
}

impl Euicc {
    /// `base` gives what no profile sets (ATR, T=0 quirks); powered off until [`reset`](Self::reset).
    pub fn new(base: &CardProfile, p: &EuiccParams) -> Euicc {
        let faces = p
            .profiles
            .iter()
            .map(|pr| Face {
                uicc: Uicc::new_euicc(&pr.card, true),
                sim: GsmSim::new(&pr.card),
            })
            .collect();
        let profiles = p
            .profiles
            .iter()
            .map(|pr| ProfState {
                meta: pr.clone(),
                iccid: encode_iccid(&pr.card.iccid),
                deleted: false,
            })
            .collect();
        let rng = u64::from_be_bytes(p.eid[8..].try_into().expect("8 bytes"));
        let mut e = Euicc {
            faces,
            bare: Uicc::new_euicc(base, false),
            active: None,
            rsp: Rsp {
                eid: p.eid,
                profiles,
                notifications: Vec::new(),
                next_seq: 1,
                default_smdp: p.default_smdp.clone(),
                root_smds: p.root_smds.clone(),
                enable: Duration::from_millis(p.enable_ms),
                rng,
            },
        };
        e.active = e.rsp.enabled();
        e
    }

    /// Power-on or reset: the enabled profile becomes what the terminal sees; every channel but
    /// the basic one is closed, selections, STORE DATA blocks and verifications forgotten.
    pub fn reset(&mut self) {
        self.active = self.rsp.enabled();
        match self.active {
            Some(i) => {
                let f = &mut self.faces[i];
                f.uicc.reset();
                f.sim.reset();
            }
            None => self.bare.reset(),
        }
    }

    /// A UICC command (classes other than `A0`).
    pub fn execute(&mut self, hdr: &[u8; 5], data: &[u8]) -> Answer {
        let uicc = match self.active {
            Some(i) => &mut self.faces[i].uicc,
            None => &mut self.bare,
        };
        uicc.execute_with(hdr, data, Some(&mut self.rsp))
    }

    /// The GSM face of the profile the terminal sees (`None` with no profile enabled).
    pub fn gsm(&mut self) -> Option<&mut GsmSim> {
        self.active.map(|i| &mut self.faces[i].sim)
    }

    /// The UICC face the terminal sees.
    pub fn uicc(&self) -> &Uicc {
        match self.active {
            Some(i) => &self.faces[i].uicc,
            None => &self.bare,
        }
    }

    /// How long the card works on the command just executed.
    pub fn take_busy(&mut self) -> Duration {
        match self.active {
            Some(i) => self.faces[i].uicc.take_busy(),
            None => self.bare.take_busy(),
        }
    }

    pub fn eid(&self) -> [u8; 16] {
        self.rsp.eid
    }

    /// The ICCID of the profile the terminal sees now (until the next reset).
    pub fn active_iccid(&self) -> Option<&str> {
        self.active
            .map(|i| self.rsp.profiles[i].meta.card.iccid.as_str())
    }

    /// The profile that is enabled now (and that the card will be after the next reset).
    pub fn enabled_profile(&self) -> Option<&CardProfile> {
        self.rsp.enabled().map(|i| &self.rsp.profiles[i].meta.card)
    }

    /// (ICCID, enabled, nickname) of each installed profile.
    pub fn profiles(&self) -> Vec<(String, bool, Option<String>)> {
        self.rsp
            .profiles
            .iter()
            .filter(|p| !p.deleted)
            .map(|p| {
                (
                    p.meta.card.iccid.clone(),
                    p.meta.enabled,
                    p.meta.nickname.clone(),
                )
            })
            .collect()
    }

    /// Sequence numbers of the pending notifications.
    pub fn notifications(&self) -> Vec<u64> {
        self.rsp.notifications.iter().map(|n| n.seq).collect()
    }
}

/// Pads an ICCID from a request (9 or 10 bytes, `F`-padded) to 10 bytes.
fn norm_iccid(v: &[u8]) -> Option<[u8; 10]> {
    if v.is_empty() || v.len() > 10 {
        return None;
    }
    let mut out = [0xFF; 10];
    out[..v.len()].copy_from_slice(v);
    Some(out)
}

/// A BIT STRING with one named bit set (unused-bits octet first, as DER has it).
fn bit_string(bit: u8) -> Vec<u8> {
    vec![7 - bit, 0x80 >> bit]
}

/// Which named bits a BIT STRING's content sets.
fn bits(v: &[u8]) -> Vec<u8> {
    let Some((_, rest)) = v.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, b) in rest.iter().enumerate() {
        for k in 0..8 {
            if b & (0x80 >> k) != 0 {
                out.push((i * 8 + k) as u8);
            }
        }
    }
    out
}

/// Tags listed in a tagList (`5C`): 1- or 2-byte tags back to back.
fn tag_list(v: &[u8]) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut t = Tag::from(v[i]);
        i += 1;
        if t & 0x1F == 0x1F && i < v.len() {
            t = (t << 8) | Tag::from(v[i]);
            i += 1;
        }
        out.push(t);
    }
    out
}

fn result(tag: Tag, code: u8) -> Vec<u8> {
    ber::tlv(tag, &ber::tlv(0x80, &[code]))
}

impl Rsp {
    fn enabled(&self) -> Option<usize> {
        self.profiles
            .iter()
            .position(|p| p.meta.enabled && !p.deleted)
    }

    /// The installed profile a ProfileIdentifier (`5A` ICCID or `4F` ISD-P AID) names.
    fn find(&self, id: &Tlv<'_>) -> Option<usize> {
        let hit = |p: &ProfState| match id.tag {
            0x5A => norm_iccid(id.value) == Some(p.iccid),
            0x4F => p.meta.isdp_aid[..] == *id.value,
            _ => false,
        };
        self.profiles.iter().position(|p| !p.deleted && hit(p))
    }

    fn notify(&mut self, i: usize, event: Event) {
        let p = &self.profiles[i];
        self.notifications.push(Notification {
            seq: self.next_seq,
            event,
            smdp: p.meta.smdp.clone(),
            iccid: p.iccid,
        });
        self.next_seq += 1;
    }

    fn challenge(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for half in out.chunks_mut(8) {
            self.rng = splitmix(self.rng);
            half.copy_from_slice(&self.rng.to_be_bytes());
        }
        out
    }

    /// The ProfileIdentifier inside an Enable/Disable request (`A0 { 5A | 4F }`).
    fn target<'a>(&self, req: &[Tlv<'a>]) -> Result<Option<usize>, Sw> {
        let choice = ber::find(req, 0xA0).ok_or(SW_WRONG_DATA)?;
        let inner = ber::parse(choice).map_err(|_| SW_WRONG_DATA)?;
        let id = inner.first().ok_or(SW_WRONG_DATA)?;
        Ok(self.find(id))
    }

    fn profile_info(&self, p: &ProfState, tags: Option<&[Tag]>) -> Vec<u8> {
        let want = |t: Tag| tags.is_none_or(|l| l.contains(&t));
        let m = &p.meta;
        let mut v = Vec::new();
        let mut put = |t: Tag, val: &[u8]| {
            if want(t) {
                v.extend(ber::tlv(t, val));
            }
        };
        put(0x5A, &p.iccid);
        put(0x4F, &m.isdp_aid);
        put(0x9F70, &[u8::from(m.enabled)]);
        if let Some(n) = &m.nickname {
            put(0x90, n.as_bytes());
        }
        put(0x91, m.provider.as_bytes());
        put(0x92, m.name.as_bytes());
        put(0x95, &[m.class.code()]);
        ber::tlv(0xE3, &v)
    }

    fn dispatch(&mut self, tag: Tag, body: &[u8]) -> Result<(Vec<u8>, Duration), Sw> {
        let req = ber::parse(body).map_err(|_| SW_WRONG_DATA)?;
        let now = |v: Vec<u8>| Ok((v, Duration::ZERO));
        match tag {
            // GetEUICCData (GetEID).
            0xBF3E => now(ber::tlv(0xBF3E, &ber::tlv(0x5A, &self.eid))),
            0xBF20 => {
                let mut v = ber::tlv(0x82, &[2, 2, 2]);
                v.extend(ber::tlv(0xA9, &ber::tlv(0x04, &CI_PKID)));
                v.extend(ber::tlv(0xAA, &ber::tlv(0x04, &CI_PKID)));
                now(ber::tlv(0xBF20, &v))
            }
            0xBF22 => now(euicc_info2()),
            0xBF2D => {
                let tags = ber::find(&req, 0x5C).map(tag_list);
                let criteria = match ber::find(&req, 0xA0) {
                    Some(c) => ber::parse(c).map_err(|_| SW_WRONG_DATA)?.first().copied(),
                    None => None,
                };
                let mut list = Vec::new();
                for (i, p) in self.profiles.iter().enumerate().filter(|(_, p)| !p.deleted) {
                    let hit = match &criteria {
                        None => true,
                        Some(c) if c.tag == 0x95 => c.value == [p.meta.class.code()],
                        Some(c) => self.find(c) == Some(i),
                    };
                    if hit {
                        list.extend(self.profile_info(p, tags.as_deref()));
                    }
                }
                now(ber::tlv(0xBF2D, &ber::tlv(0xA0, &list)))
            }
            0xBF31 => {
                let Some(i) = self.target(&req)? else {
                    return now(result(0xBF31, 1));
                };
                if self.profiles[i].meta.enabled {
                    return now(result(0xBF31, 2));
                }
                if let Some(old) = self.enabled() {
                    self.profiles[old].meta.enabled = false;
                    self.notify(old, Event::Disable);
                }
                self.profiles[i].meta.enabled = true;
                self.notify(i, Event::Enable);
                Ok((result(0xBF31, 0), self.enable))
            }
            0xBF32 => {
                let Some(i) = self.target(&req)? else {
                    return now(result(0xBF32, 1));
                };
                if !self.profiles[i].meta.enabled {
                    return now(result(0xBF32, 2));
                }
                self.profiles[i].meta.enabled = false;
                self.notify(i, Event::Disable);
                Ok((result(0xBF32, 0), self.enable / 2))
            }
            0xBF33 => {
                let id = req.first().ok_or(SW_WRONG_DATA)?;
                let Some(i) = self.find(id) else {
                    return now(result(0xBF33, 1));
                };
                if self.profiles[i].meta.enabled {
                    return now(result(0xBF33, 2));
                }
                self.notify(i, Event::Delete);
                self.profiles[i].deleted = true;
                Ok((result(0xBF33, 0), self.enable / 2))
            }
            0xBF29 => {
                let iccid = ber::find(&req, 0x5A).ok_or(SW_WRONG_DATA)?;
                let name = ber::find(&req, 0x90).ok_or(SW_WRONG_DATA)?;
                let id = Tlv {
                    tag: 0x5A,
                    value: iccid,
                };
                let Some(i) = self.find(&id) else {
                    return now(result(0xBF29, 1));
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    return now(result(0xBF29, 127));
                };
                if name.chars().count() > 64 {
                    return now(result(0xBF29, 127));
                }
                self.profiles[i].meta.nickname = (!name.is_empty()).then(|| name.to_string());
                now(result(0xBF29, 0))
            }
            0xBF28 => {
                let filter = ber::find(&req, 0x81).map(bits);
                let mut list = Vec::new();
                for n in &self.notifications {
                    if filter
                        .as_ref()
                        .is_some_and(|f| !f.contains(&(n.event as u8)))
                    {
                        continue;
                    }
                    let mut v = ber::tlv(0x80, &ber::uint(n.seq));
                    v.extend(ber::tlv(0x81, &bit_string(n.event as u8)));
                    v.extend(ber::tlv(0x0C, n.smdp.as_bytes()));
                    v.extend(ber::tlv(0x5A, &n.iccid));
                    list.extend(ber::tlv(0xBF2F, &v));
                }
                now(ber::tlv(0xBF28, &ber::tlv(0xA0, &list)))
            }
            0xBF30 => {
                let seq = ber::find(&req, 0x80)
                    .and_then(ber::read_uint)
                    .ok_or(SW_WRONG_DATA)?;
                let before = self.notifications.len();
                self.notifications.retain(|n| n.seq != seq);
                let code = if self.notifications.len() < before {
                    0
                } else {
                    1
                };
                now(result(0xBF30, code))
            }
            0xBF2E => {
                let c = self.challenge();
                now(ber::tlv(0xBF2E, &ber::tlv(0x80, &c)))
            }
            0xBF3C => {
                let mut v = Vec::new();
                if let Some(dp) = &self.default_smdp {
                    v.extend(ber::tlv(0x80, dp.as_bytes()));
                }
                v.extend(ber::tlv(0x81, self.root_smds.as_bytes()));
                now(ber::tlv(0xBF3C, &v))
            }
            0xBF3F => {
                let dp = ber::find(&req, 0x80).ok_or(SW_WRONG_DATA)?;
                let Ok(dp) = std::str::from_utf8(dp) else {
                    return now(result(0xBF3F, 127));
                };
                self.default_smdp = (!dp.is_empty()).then(|| dp.to_string());
                now(result(0xBF3F, 0))
            }
            // GetRAT: an empty rules authorisation table.
            0xBF43 => now(ber::tlv(0xBF43, &ber::tlv(0xA0, &[]))),
            _ => Err(SW_NO_REFERENCE),
        }
    }
}

impl Isdr for Rsp {
    fn es10(&mut self, request: &[u8]) -> Result<(Vec<u8>, Duration), Sw> {
        let list = ber::parse(request).map_err(|_| SW_WRONG_DATA)?;
        let [one] = list[..] else {
            return Err(SW_WRONG_DATA);
        };
        self.dispatch(one.tag, one.value)
    }
}

/// The (synthetic) subject key identifier of the GSMA test CI the simulated eUICC trusts.
const CI_PKID: [u8; 20] = [
    0xF5, 0x41, 0x72, 0xBD, 0xF9, 0x8A, 0x95, 0xD6, 0x5C, 0xBE, 0xB8, 0x8A, 0x38, 0xA1, 0xC1, 0x1D,
    0x80, 0x0A, 0x85, 0xC3,
];

/// EUICCInfo2 (SGP.22 §5.7.8): SGP.22 2.3.1 profile version, SVN 2.2.2, firmware 1.0.0, 16 KiB
/// free NVM, USIM and ISIM support, GlobalPlatform 2.3.0, a basic eUICC of the test CI.
fn euicc_info2() -> Vec<u8> {
    let mut v = ber::tlv(0x81, &[2, 3, 1]);
    v.extend(ber::tlv(0x82, &[2, 2, 2]));
    v.extend(ber::tlv(0x83, &[1, 0, 0]));
    v.extend(ber::tlv(
        0x84,
        &[
            0x81, 0x01, 0x00, 0x82, 0x03, 0x00, 0x40, 0x00, 0x83, 0x02, 0x08, 0x00,
        ],
    ));
    v.extend(ber::tlv(0x85, &[0x05, 0x60]));
    v.extend(ber::tlv(0x87, &[2, 3, 0]));
    v.extend(ber::tlv(0x88, &[0x04, 0x90]));
    v.extend(ber::tlv(0xA9, &ber::tlv(0x04, &CI_PKID)));
    v.extend(ber::tlv(0xAA, &ber::tlv(0x04, &CI_PKID)));
    v.extend(ber::tlv(0x8B, &[0x01]));
    v.extend(ber::tlv(0x04, &[0, 0, 1]));
    v.extend(ber::tlv(0x0C, b"SIMPOOL-TEST"));
    ber::tlv(0xBF22, &v)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eid_check_digits() {
        // The reference page's example EID.
        let e = eid_with_check("890490320000000000000000123456").unwrap();
        assert_eq!(eid_digits(&e), "89049032000000000000000012345644");
        assert!(eid_valid("89049032000000000000000012345644"));
        assert!(!eid_valid("89049032000000000000000012345645"));
    }

    #[test]
    fn bit_strings() {
        assert_eq!(bit_string(1), vec![0x06, 0x40]);
        assert_eq!(bit_string(3), vec![0x04, 0x10]);
        assert_eq!(bits(&[0x05, 0x60]), vec![1, 2]);
        assert_eq!(
            tag_list(&[0x5A, 0x9F, 0x70, 0x90]),
            vec![0x5A, 0x9F70, 0x90]
        );
    }
}
