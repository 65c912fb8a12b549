//! Test data kept as data, in `tests/vectors/`: TS 35.208 Milenage test set 1
//! (`ts35208-set1.txt`). Each value lives once; tests read it here.

use std::sync::LazyLock;

/// The words of each line that is neither empty nor a `#` comment.
fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
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
