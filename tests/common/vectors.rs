//! Test data kept as data, in `tests/vectors/`: the manual's cards (`cards.txt`) and
//! TS 35.208 Milenage test set 1 (`ts35208-set1.txt`). Each value lives once; tests read it here.

use std::sync::LazyLock;

/// `(card, field, value)` rows of `cards.txt`.
static CARDS: LazyLock<Vec<(u16, String, String)>> = LazyLock::new(|| {
    rows(include_str!("../vectors/cards.txt"))
        .map(|r| {
            let [card, field, value] = r[..] else {
                panic!("cards.txt: want `card field value`, got {r:?}");
            };
            (
                card.parse().expect("cards.txt: a card number"),
                field.to_string(),
                value.to_string(),
            )
        })
        .collect()
});

/// The words of each line that is neither empty nor a `#` comment.
fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
}

fn card_field(card: u16, field: &str) -> String {
    CARDS
        .iter()
        .find(|(c, f, _)| *c == card && f == field)
        .map(|(_, _, v)| v.clone())
        .unwrap_or_else(|| panic!("tests/vectors/cards.txt has no {field} for card {card}"))
}

/// A manual card's ATR, upper-case hex.
pub fn atr(card: u16) -> String {
    card_field(card, "atr")
}

/// A manual card's ICCID, as simpool prints it (digits).
pub fn iccid(card: u16) -> String {
    card_field(card, "iccid")
}

/// A manual card's IMSI (digits).
pub fn imsi(card: u16) -> String {
    card_field(card, "imsi")
}

/// EF.ICCID as stored on the card: what READ BINARY answers before `90 00`.
pub fn ef_iccid(card: u16) -> Vec<u8> {
    super::hex(&card_field(card, "ef-iccid"))
}

/// EF.IMSI as stored on the card.
pub fn ef_imsi(card: u16) -> Vec<u8> {
    super::hex(&card_field(card, "ef-imsi"))
}

/// `data ‖ 90 00`: what a card answers to a read of `data`.
pub fn sw9000(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&[0x90, 0x00]);
    v
}

/// The cards `cards.txt` describes, with the fields it gives for each.
pub fn manual_cards() -> Vec<(u16, String, String)> {
    CARDS.clone()
}

/// TS 35.208 test set 1, hex strings as the spec prints them (lower case).
#[derive(Debug, Clone)]
pub struct MilenageSet {
    pub k: String,
    pub rand: String,
    pub sqn: String,
    pub amf: String,
    pub op: String,
    pub opc: String,
    /// f1
    pub mac_a: String,
    /// f1*
    pub mac_s: String,
    /// f2
    pub res: String,
    /// f3
    pub ck: String,
    /// f4
    pub ik: String,
    /// f5
    pub ak: String,
    /// f5*
    pub ak_star: String,
}

/// TS 35.208 test set 1 (`tests/vectors/ts35208-set1.txt`).
pub static SET1: LazyLock<MilenageSet> = LazyLock::new(|| {
    let text = include_str!("../vectors/ts35208-set1.txt");
    let get = |name: &str| -> String {
        rows(text)
            .find(|r| r[0] == name)
            .and_then(|r| r.get(1).map(|v| v.to_string()))
            .unwrap_or_else(|| panic!("ts35208-set1.txt has no {name}"))
    };
    MilenageSet {
        k: get("K"),
        rand: get("RAND"),
        sqn: get("SQN"),
        amf: get("AMF"),
        op: get("OP"),
        opc: get("OPc"),
        mac_a: get("MAC-A"),
        mac_s: get("MAC-S"),
        res: get("RES"),
        ck: get("CK"),
        ik: get("IK"),
        ak: get("AK"),
        ak_star: get("AK*"),
    }
});
