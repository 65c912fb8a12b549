//! USIM authentication (3GPP TS 33.102): Milenage with configurable constants (3GPP TS 35.206)
//! and the sequence-number check of TS 33.102 Annex C (array of SQNs indexed by IND, Δ limit).
//!
//! Milenage is written out here rather than taken from the `milenage` crate because the crate
//! hard-codes the constants r1..r5 / c1..c5, which operators may change; the tests hold this
//! implementation to the crate and to the TS 35.208 vectors for the standard constants.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;

/// The Milenage rotation (bits) and XOR constants (TS 35.206 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilenageConsts {
    pub r: [u8; 5],
    pub c: [[u8; 16]; 5],
}

impl Default for MilenageConsts {
    /// The standard values: r = 64, 0, 32, 64, 96; c1 = 0, c2..c5 = 1, 2, 4, 8.
    fn default() -> MilenageConsts {
        let c = |v: u8| {
            let mut x = [0u8; 16];
            x[15] = v;
            x
        };
        MilenageConsts {
            r: [64, 0, 32, 64, 96],
            c: [c(0), c(1), c(2), c(4), c(8)],
        }
    }
}

/// Milenage for one subscriber key.
pub struct Milenage {
    aes: Aes128,
    opc: [u8; 16],
    consts: MilenageConsts,
}

/// What f2–f5 give for one RAND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    pub res: [u8; 8],
    pub ck: [u8; 16],
    pub ik: [u8; 16],
    pub ak: [u8; 6],
}

fn xor(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    core::array::from_fn(|i| a[i] ^ b[i])
}

/// Cyclic left rotation of a 128-bit block by `r` bits.
fn rot(x: &[u8; 16], r: u8) -> [u8; 16] {
    u128::from_be_bytes(*x)
        .rotate_left(u32::from(r) % 128)
        .to_be_bytes()
}

impl Milenage {
    pub fn new(k: &[u8; 16], opc: &[u8; 16], consts: MilenageConsts) -> Milenage {
        Milenage {
            aes: Aes128::new(k.into()),
            opc: *opc,
            consts,
        }
    }

    /// OPc = OP ⊕ E_K(OP).
    pub fn opc(k: &[u8; 16], op: &[u8; 16]) -> [u8; 16] {
        let aes = Aes128::new(k.into());
        let mut b = (*op).into();
        aes.encrypt_block(&mut b);
        xor(&b.into(), op)
    }

    fn e(&self, x: &[u8; 16]) -> [u8; 16] {
        let mut b = (*x).into();
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    /// E_K(RAND ⊕ OPc).
    fn temp(&self, rand: &[u8; 16]) -> [u8; 16] {
        self.e(&xor(rand, &self.opc))
    }

    /// OUT1 of f1/f1*: MAC-A is its first half, MAC-S the second.
    fn out1(&self, rand: &[u8; 16], sqn: &[u8; 6], amf: &[u8; 2]) -> [u8; 16] {
        let mut in1 = [0u8; 16];
        in1[..6].copy_from_slice(sqn);
        in1[6..8].copy_from_slice(amf);
        in1[8..14].copy_from_slice(sqn);
        in1[14..].copy_from_slice(amf);
        let t = xor(
            &rot(&xor(&in1, &self.opc), self.consts.r[0]),
            &self.consts.c[0],
        );
        xor(&self.e(&xor(&self.temp(rand), &t)), &self.opc)
    }

    /// f1: MAC-A.
    pub fn f1(&self, rand: &[u8; 16], sqn: &[u8; 6], amf: &[u8; 2]) -> [u8; 8] {
        self.out1(rand, sqn, amf)[..8].try_into().expect("8 bytes")
    }

    /// f1*: MAC-S (resynchronisation).
    pub fn f1star(&self, rand: &[u8; 16], sqn: &[u8; 6], amf: &[u8; 2]) -> [u8; 8] {
        self.out1(rand, sqn, amf)[8..].try_into().expect("8 bytes")
    }

    /// OUT2..OUT5 (k = 2..=5).
    fn out(&self, temp: &[u8; 16], k: usize) -> [u8; 16] {
        let x = xor(
            &rot(&xor(temp, &self.opc), self.consts.r[k - 1]),
            &self.consts.c[k - 1],
        );
        xor(&self.e(&x), &self.opc)
    }

    /// f2 (RES), f3 (CK), f4 (IK), f5 (AK).
    pub fn f2345(&self, rand: &[u8; 16]) -> Vector {
        let temp = self.temp(rand);
        let o2 = self.out(&temp, 2);
        Vector {
            res: o2[8..].try_into().expect("8 bytes"),
            ck: self.out(&temp, 3),
            ik: self.out(&temp, 4),
            ak: o2[..6].try_into().expect("6 bytes"),
        }
    }

    /// f5*: AK for resynchronisation.
    pub fn f5star(&self, rand: &[u8; 16]) -> [u8; 6] {
        self.out(&self.temp(rand), 5)[..6]
            .try_into()
            .expect("6 bytes")
    }
}

/// GSM keys from 3G ones (TS 33.102 §6.8.1.2): c2 (SRES) and c3 (Kc).
pub fn c2_c3(v: &Vector) -> ([u8; 4], [u8; 8]) {
    let sres = core::array::from_fn(|i| v.res[i] ^ v.res[4 + i]);
    let kc = core::array::from_fn(|i| v.ck[i] ^ v.ck[8 + i] ^ v.ik[i] ^ v.ik[8 + i]);
    (sres, kc)
}

/// 48-bit SQN from 6 big-endian bytes.
pub fn sqn_from_bytes(b: &[u8; 6]) -> u64 {
    b.iter().fold(0, |a, &x| (a << 8) | u64::from(x))
}

pub fn sqn_to_bytes(sqn: u64) -> [u8; 6] {
    sqn.to_be_bytes()[2..].try_into().expect("6 bytes")
}

/// Largest IND length accepted (an array of 1024 SEQs).
pub const MAX_IND_BITS: u8 = 10;
/// TS 33.102 Annex C.3.1's suggested Δ.
pub const DEFAULT_DELTA: u64 = 1 << 28;
pub const DEFAULT_IND_BITS: u8 = 5;

/// The USIM's SQN memory (TS 33.102 Annex C.2): SQN = SEQ ‖ IND; one highest SEQ per IND
/// value, and the highest SQN accepted so far (sent back in AUTS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqnState {
    ind_bits: u8,
    delta: u64,
    seq_ms: Vec<u64>,
    sqn_ms: u64,
}

impl SqnState {
    /// `sqn` = the highest SQN accepted so far (0 for a fresh card); `delta` = 0 turns the
    /// Δ check off. `ind_bits` is capped at [`MAX_IND_BITS`].
    pub fn new(sqn: u64, ind_bits: u8, delta: u64) -> SqnState {
        let ind_bits = ind_bits.min(MAX_IND_BITS);
        let sqn = sqn & 0xFFFF_FFFF_FFFF;
        let mut seq_ms = vec![0; 1 << ind_bits];
        let mask = (1u64 << ind_bits) - 1;
        seq_ms[(sqn & mask) as usize] = sqn >> ind_bits;
        SqnState {
            ind_bits,
            delta,
            seq_ms,
            sqn_ms: sqn,
        }
    }

    /// The highest SQN accepted so far.
    pub fn sqn_ms(&self) -> u64 {
        self.sqn_ms
    }

    /// Annex C.2.2: accepts `sqn` if its SEQ is above the SEQ stored for its IND and not more
    /// than Δ above the highest SEQ; then stores it. On failure returns SQN_MS for the AUTS.
    pub fn check(&mut self, sqn: u64) -> Result<(), u64> {
        let mask = (1u64 << self.ind_bits) - 1;
        let (seq, ind) = (sqn >> self.ind_bits, (sqn & mask) as usize);
        let seq_max = self.sqn_ms >> self.ind_bits;
        if seq <= self.seq_ms[ind] {
            return Err(self.sqn_ms);
        }
        if self.delta != 0 && seq > seq_max && seq - seq_max > self.delta {
            return Err(self.sqn_ms);
        }
        self.seq_ms[ind] = seq;
        if seq > seq_max {
            self.sqn_ms = sqn;
        }
        Ok(())
    }
}

/// Why a 3G AUTHENTICATE failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// MAC-A did not match (`98 62`).
    Mac,
    /// SQN out of range: AUTS = (SQN_MS ⊕ AK*) ‖ MAC-S.
    Sync([u8; 14]),
}

/// The USIM side of AKA (TS 33.102 §6.3.3): checks AUTN = SQN⊕AK ‖ AMF ‖ MAC-A against RAND,
/// then the SQN; returns RES/CK/IK/AK or the failure.
pub fn usim_aka(
    m: &Milenage,
    sqns: &mut SqnState,
    rand: &[u8; 16],
    autn: &[u8; 16],
) -> Result<Vector, AuthFailure> {
    let v = m.f2345(rand);
    let sqn: [u8; 6] = core::array::from_fn(|i| autn[i] ^ v.ak[i]);
    let amf: [u8; 2] = [autn[6], autn[7]];
    if m.f1(rand, &sqn, &amf) != autn[8..] {
        return Err(AuthFailure::Mac);
    }
    if let Err(sqn_ms) = sqns.check(sqn_from_bytes(&sqn)) {
        let sqn_ms = sqn_to_bytes(sqn_ms);
        let ak_star = m.f5star(rand);
        let mac_s = m.f1star(rand, &sqn_ms, &[0, 0]);
        let mut auts = [0u8; 14];
        for i in 0..6 {
            auts[i] = sqn_ms[i] ^ ak_star[i];
        }
        auts[6..].copy_from_slice(&mac_s);
        return Err(AuthFailure::Sync(auts));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// TS 35.208 test sets 1, 3 and 4: K, OP, OPc, RAND, SQN, AMF, MAC-A, MAC-S, RES, CK, IK, AK, AK*.
    const SETS: [[&str; 13]; 3] = [
        [
            "465b5ce8b199b49faa5f0a2ee238a6bc",
            "cdc202d5123e20f62b6d676ac72cb318",
            "cd63cb71954a9f4e48a5994e37a02baf",
            "23553cbe9637a89d218ae64dae47bf35",
            "ff9bb4d0b607",
            "b9b9",
            "4a9ffac354dfafb3",
            "01cfaf9ec4e871e9",
            "a54211d5e3ba50bf",
            "b40ba9a3c58b2a05bbf0d987b21bf8cb",
            "f769bcd751044604127672711c6d3441",
            "aa689c648370",
            "451e8beca43b",
        ],
        [
            "fec86ba6eb707ed08905757b1bb44b8f",
            "dbc59adcb6f9a0ef735477b7fadf8374",
            "1006020f0a478bf6b699f15c062e42b3",
            "9f7c8d021accf4db213ccff0c7f71a6a",
            "9d0277595ffc",
            "725c",
            "9cabc3e99baf7281",
            "95814ba2b3044324",
            "8011c48c0c214ed2",
            "5dbdbb2954e8f3cde665b046179a5098",
            "59a92d3b476a0443487055cf88b2307b",
            "33484dc2136b",
            "deacdd848cc6",
        ],
        [
            "9e5944aea94b81165c82fbf9f32db751",
            "223014c5806694c007ca1eeef57f004f",
            "a64a507ae1a2a98bb88eb4210135dc87",
            "ce83dbc54ac0274a157c17f80d017bd6",
            "0b604a81eca8",
            "9e09",
            "74a58220cba84c49",
            "ac2cc74a96871837",
            "f365cd683cd92e96",
            "e203edb3971574f5a94b0d61b816345d",
            "0c4524adeac041c4dd830d20854fc46b",
            "f0b9c08ad02e",
            "6085a86c6f63",
        ],
    ];

    #[test]
    fn ts_35_208_vectors() {
        for s in SETS {
            let k = h::<16>(s[0]);
            assert_eq!(Milenage::opc(&k, &h(s[1])), h::<16>(s[2]));
            let m = Milenage::new(&k, &h(s[2]), MilenageConsts::default());
            let (rand, sqn, amf) = (h(s[3]), h(s[4]), h(s[5]));
            assert_eq!(m.f1(&rand, &sqn, &amf), h::<8>(s[6]));
            assert_eq!(m.f1star(&rand, &sqn, &amf), h::<8>(s[7]));
            let v = m.f2345(&rand);
            assert_eq!(v.res, h::<8>(s[8]));
            assert_eq!(v.ck, h::<16>(s[9]));
            assert_eq!(v.ik, h::<16>(s[10]));
            assert_eq!(v.ak, h::<6>(s[11]));
            assert_eq!(m.f5star(&rand), h::<6>(s[12]));
        }
    }

    #[test]
    fn other_constants_change_every_output() {
        let s = SETS[0];
        let k = h::<16>(s[0]);
        let std = Milenage::new(&k, &h(s[2]), MilenageConsts::default());
        let mut c = MilenageConsts {
            r: [8, 16, 24, 40, 72],
            ..Default::default()
        };
        c.c[0][0] = 0x80;
        c.c[1][0] = 0x40;
        c.c[2][0] = 0x20;
        c.c[3][0] = 0x10;
        c.c[4][0] = 0x08;
        let other = Milenage::new(&k, &h(s[2]), c);
        let (rand, sqn, amf) = (h(s[3]), h(s[4]), h(s[5]));
        assert_ne!(std.f1(&rand, &sqn, &amf), other.f1(&rand, &sqn, &amf));
        assert_ne!(
            std.f1star(&rand, &sqn, &amf),
            other.f1star(&rand, &sqn, &amf)
        );
        let (a, b) = (std.f2345(&rand), other.f2345(&rand));
        assert_ne!(a.res, b.res);
        assert_ne!(a.ck, b.ck);
        assert_ne!(a.ik, b.ik);
        assert_ne!(a.ak, b.ak);
        assert_ne!(std.f5star(&rand), other.f5star(&rand));
    }

    #[test]
    fn rotation() {
        let mut x = [0u8; 16];
        x[15] = 1;
        let r = rot(&x, 8);
        assert_eq!(r[14], 1);
        assert_eq!(rot(&x, 0), x);
        let mut top = [0u8; 16];
        top[0] = 0x80;
        assert_eq!(rot(&top, 1), x);
    }

    #[test]
    fn sqn_array_ind_and_delta() {
        // IND = 5 bits: SQN 32·SEQ + IND.
        let mut s = SqnState::new(0, 5, 1000);
        assert_eq!(s.check(32 + 3), Ok(()));
        assert_eq!(s.check(32 + 3), Err(32 + 3), "replay");
        // Another IND with the same SEQ is fresh (Annex C: out-of-order use of vectors).
        assert_eq!(s.check(32 + 4), Ok(()));
        assert_eq!(s.sqn_ms(), 32 + 3);
        assert_eq!(s.check(64 + 4), Ok(()));
        assert_eq!(s.sqn_ms(), 64 + 4);
        // An older SEQ for an unused IND is still accepted.
        assert_eq!(s.check(32 + 9), Ok(()));
        assert_eq!(s.check(32 + 9), Err(64 + 4));
        // Δ: SEQ may run at most 1000 ahead of the highest.
        assert_eq!(s.check((2 + 1001) * 32), Err(64 + 4));
        assert_eq!(s.check((2 + 1000) * 32), Ok(()));
        // Δ = 0 disables the check.
        let mut s = SqnState::new(0, 5, 0);
        assert_eq!(s.check(0xFFFF_FFFF_FFE0), Ok(()));
        // The initial SQN is the highest accepted one.
        let mut s = SqnState::new(0xff9bb4d0b607, 5, DEFAULT_DELTA);
        assert_eq!(s.check(0xff9bb4d0b607), Err(0xff9bb4d0b607));
        assert_eq!(s.check(0xff9bb4d0b607 + 32), Ok(()));
    }

    #[test]
    fn aka_success_mac_failure_and_resync() {
        let s = SETS[0];
        let k = h::<16>(s[0]);
        let m = Milenage::new(&k, &h(s[2]), MilenageConsts::default());
        let rand = h::<16>(s[3]);
        let sqn = h::<6>(s[4]);
        let amf = h::<2>(s[5]);
        let v = m.f2345(&rand);
        let mut autn = [0u8; 16];
        for i in 0..6 {
            autn[i] = sqn[i] ^ v.ak[i];
        }
        autn[6..8].copy_from_slice(&amf);
        autn[8..].copy_from_slice(&m.f1(&rand, &sqn, &amf));
        let mut st = SqnState::new(sqn_from_bytes(&sqn) - 32, 5, DEFAULT_DELTA);
        let got = usim_aka(&m, &mut st, &rand, &autn).unwrap();
        assert_eq!(got.res, h::<8>(s[8]));
        // replay → AUTS carrying SQN_MS = the SQN just accepted
        let Err(AuthFailure::Sync(auts)) = usim_aka(&m, &mut st, &rand, &autn) else {
            panic!("replay accepted")
        };
        let ak_star = m.f5star(&rand);
        let sqn_ms: [u8; 6] = core::array::from_fn(|i| auts[i] ^ ak_star[i]);
        assert_eq!(sqn_ms, sqn);
        assert_eq!(auts[6..], m.f1star(&rand, &sqn_ms, &[0, 0]));
        autn[15] ^= 1;
        assert_eq!(usim_aka(&m, &mut st, &rand, &autn), Err(AuthFailure::Mac));
    }

    #[test]
    fn c2_c3_match_gsm_milenage() {
        // libosmocore milenage_test: K = OPc = 00..0f, RAND = 0 → SRES 215fdb4d, Kc 6de816a759a42912
        let k: [u8; 16] = core::array::from_fn(|i| i as u8);
        let m = Milenage::new(&k, &k, MilenageConsts::default());
        let (sres, kc) = c2_c3(&m.f2345(&[0; 16]));
        assert_eq!(sres, h::<4>("215fdb4d"));
        assert_eq!(kc, h::<8>("6de816a759a42912"));
    }
}
