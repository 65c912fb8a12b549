//! A3/A8 back ends for RUN GSM ALGORITHM.
//!
//! Only XOR-2G and GSM-Milenage are offered. COMP128 is deliberately absent: the only
//! readily available implementation (libosmocore) is GPL-2.0+ and must not be copied into
//! this MIT project.

use milenage::Milenage;

/// The A3/A8 algorithm of a simulated card.
///
/// In a cards file this is `algo = "xor2g"` or `algo = "milenage"` plus `opc = "‹32 hex›"`
/// (or `op`, converted to OPc when the file is loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algo {
    /// 3GPP TS 51.010-1 test algorithm: SRES ‖ Kc = (Ki ⊕ RAND)[0..12].
    Xor2g,
    /// GSM-Milenage (3GPP TS 33.102 §6.8.1.2, conversion functions c2/c3).
    Milenage { opc: [u8; 16] },
}

impl Algo {
    /// The name used in cards files.
    pub fn name(&self) -> &'static str {
        match self {
            Algo::Xor2g => "xor2g",
            Algo::Milenage { .. } => "milenage",
        }
    }
}

/// Runs A3/A8: returns (SRES, Kc).
pub fn run_gsm(algo: &Algo, ki: &[u8; 16], rand: &[u8; 16]) -> ([u8; 4], [u8; 8]) {
    let mut sres = [0u8; 4];
    let mut kc = [0u8; 8];
    match algo {
        Algo::Xor2g => {
            for i in 0..4 {
                sres[i] = ki[i] ^ rand[i];
            }
            for i in 0..8 {
                kc[i] = ki[4 + i] ^ rand[4 + i];
            }
        }
        Algo::Milenage { opc } => {
            let mut m = Milenage::new_with_opc(*ki, *opc);
            let (res, ck, ik, _ak) = m.f2345(rand);
            // c2: fold the 8-byte RES into 4 bytes.
            for i in 0..4 {
                sres[i] = res[i] ^ res[4 + i];
            }
            // c3: fold CK and IK into the 64-bit Kc.
            for i in 0..8 {
                kc[i] = ck[i] ^ ck[8 + i] ^ ik[i] ^ ik[8 + i];
            }
        }
    }
    (sres, kc)
}

/// OPc from K and OP (for cards files that give `op` instead of `opc`).
pub fn opc_from_op(k: &[u8; 16], op: &[u8; 16]) -> Option<[u8; 16]> {
    Milenage::new_with_op(*k, *op).ok().map(|m| *m.opc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn xor2g_test_ok_vector() {
        // libosmocore tests/auth/xor2g_test.ok
        let ki: [u8; 16] = core::array::from_fn(|i| i as u8);
        let rand: [u8; 16] = core::array::from_fn(|i| (i as u8) << 4);
        let (sres, kc) = run_gsm(&Algo::Xor2g, &ki, &rand);
        assert_eq!(sres, h::<4>("00112233"));
        assert_eq!(kc, h::<8>("445566778899aabb"));
    }

    #[test]
    fn gsm_test_c_xor_vector() {
        // libosmocore tests/auth/gsm_test.c, XOR
        let ki = h::<16>("00112233445566778899aabbccddeeff");
        let rand = h::<16>("0123456789abcdeffedcba9876543210");
        let (sres, kc) = run_gsm(&Algo::Xor2g, &ki, &rand);
        assert_eq!(sres, h::<4>("01326754"));
        assert_eq!(kc, h::<8>("cdfeab9876451023"));
    }

    #[test]
    fn milenage_test_ok_vector() {
        // libosmocore tests/auth/milenage_test.ok: K = OPc = 00..0f, RAND = 0
        let k: [u8; 16] = core::array::from_fn(|i| i as u8);
        let rand = [0u8; 16];
        let mut m = Milenage::new_with_opc(k, k);
        let (res, _, _, _) = m.f2345(&rand);
        assert_eq!(res, h::<8>("e9fc88ccc8a35381"));
        let (sres, kc) = run_gsm(&Algo::Milenage { opc: k }, &k, &rand);
        assert_eq!(sres, h::<4>("215fdb4d"));
        assert_eq!(kc, h::<8>("6de816a759a42912"));
    }

    #[test]
    fn opc_from_op_test_set_1() {
        // 3GPP TS 35.208 §4.3, test set 1: K, OP and the OPc computed from them.
        let k = h::<16>("465b5ce8b199b49faa5f0a2ee238a6bc");
        let op = h::<16>("cdc202d5123e20f62b6d676ac72cb318");
        let opc = opc_from_op(&k, &op).unwrap();
        assert_eq!(opc, h::<16>("cd63cb71954a9f4e48a5994e37a02baf"));
    }
}
