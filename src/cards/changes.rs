//! Which commands change what simpool knows of a card (its ICCID and IMSI), so that the card
//! layer reads them again at the card's next start: an eUICC's profile enabled, disabled or
//! deleted (ES10c through STORE DATA, SGP.22 §5.7), and a file written (UPDATE BINARY, as
//! pySim-prog and pySim-shell write EF.ICCID and EF.IMSI of programmable cards). Sans-IO.

/// `cmd` as sent (a T=0 TPDU: CLA INS P1 P2 P3 data) and its answer `data ‖ SW1 SW2`: whether
/// the card accepted something that can change its ICCID or IMSI. Any class: a logical
/// channel's bits do not matter. A refused command changes nothing.
pub fn changes_identity(cmd: &[u8], resp: &[u8]) -> bool {
    let [.., sw1, _] = resp else {
        return false;
    };
    // 61xx: the answer waits for GET RESPONSE; 9Fxx: the same on a GSM SIM.
    if !matches!(sw1, 0x90 | 0x61 | 0x9F) || cmd.len() < 4 {
        return false;
    }
    match cmd[1] {
        // UPDATE BINARY.
        0xD6 => true,
        // STORE DATA whose (first) block starts with EnableProfile, DisableProfile or
        // DeleteProfile: BF31, BF32, BF33.
        0xE2 => matches!(cmd.get(5..7), Some([0xBF, 0x31..=0x33])),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::changes_identity;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn profile_changes_on_any_channel_and_writes_count() {
        let enable = h("80E2910014BF3111A00C5A0A98001032547698103214810100");
        assert!(changes_identity(&enable, &h("6106")));
        let on_channel_3 = h("83E2910014BF3111A00C5A0A98001032547698103214810100");
        assert!(changes_identity(&on_channel_3, &h("9000")));
        assert!(changes_identity(&h("81E2910005BF32028000"), &h("6106")));
        assert!(changes_identity(&h("80E2910005BF33028000"), &h("6106")));
        assert!(changes_identity(
            &h("00D600000A98001032547698103214"),
            &h("9000")
        ));
        assert!(changes_identity(&h("A0D6000009084906"), &h("9000")));
    }

    #[test]
    fn reads_refusals_and_other_functions_do_not() {
        // GetEID, ProfileInfoList: read only.
        assert!(!changes_identity(&h("80E2910006BF3E035C015A"), &h("6115")));
        assert!(!changes_identity(&h("80E2910003BF2D00"), &h("6150")));
        // A refused write or enable.
        assert!(!changes_identity(
            &h("00D600000A98001032547698103214"),
            &h("6982")
        ));
        assert!(!changes_identity(&h("80E2910005BF31028000"), &h("6A88")));
        assert!(!changes_identity(
            &h("00B000000A"),
            &h("98001032547698103214 9000".replace(' ', "").as_str())
        ));
        assert!(!changes_identity(&h("80E2"), &h("9000")));
        assert!(!changes_identity(&h("80E2910005BF31028000"), &[]));
    }
}
