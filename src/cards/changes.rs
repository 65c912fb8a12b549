//! Which commands change what simpool knows of a card (its ICCID and IMSI), so that the card
//! layer reads them again at the card's next start: an eUICC's profile enabled, disabled or
//! deleted (ES10c through STORE DATA, SGP.22 §5.7), and a file written (UPDATE BINARY, as
//! pySim-prog and pySim-shell write EF.ICCID and EF.IMSI of programmable cards; any other
//! write the guard knows, too). Sans-IO.

use super::guard::Kind;

/// The answer `resp` (`data ‖ SW1 SW2`) to a command the guard classified as `kind`
/// ([`super::guard::classify`], which knows every command that writes a card: UPDATE BINARY/RECORD,
/// ES10 Enable/Disable/DeleteProfile, …): whether the card accepted something that can
/// change its ICCID or IMSI. A refused command changes nothing.
pub fn changes_identity(kind: Kind, resp: &[u8]) -> bool {
    let [.., sw1, _] = resp else {
        return false;
    };
    // 61xx: the answer waits for GET RESPONSE; 9Fxx: the same on a GSM SIM.
    matches!(kind, Kind::Writes(_)) && matches!(sw1, 0x90 | 0x61 | 0x9F)
}

#[cfg(test)]
mod tests {
    use crate::cards::guard::classify;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn changes_identity(cmd: &[u8], resp: &[u8]) -> bool {
        super::changes_identity(classify(cmd), resp)
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
