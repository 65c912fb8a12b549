//! Values checked once, where they enter (command line, API body, configuration, state file),
//! and carried typed from there on: card numbers, pool addresses, ATRs. Inside they are what
//! they mean (a number known to be 1–256, bytes); hex and words only at the edges.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pool::Slot;

/// A card of the pool by its front-panel number, 1–256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardNo(u16);

/// A number (or word) that is no card of the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("card {0} does not exist: cards are 1-256")]
pub struct NoSuchCard(pub String);

impl CardNo {
    pub const FIRST: CardNo = CardNo(1);
    pub const LAST: CardNo = CardNo(256);

    pub fn new(n: u16) -> Result<CardNo, NoSuchCard> {
        if (1..=256).contains(&n) {
            Ok(CardNo(n))
        } else {
            Err(NoSuchCard(n.to_string()))
        }
    }

    /// For constants and tests: panics outside 1–256 (at compile time in a `const`).
    pub const fn of(n: u16) -> CardNo {
        assert!(n >= 1 && n <= 256, "cards are 1-256");
        CardNo(n)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// 0–255: the card's place in a table of 256 (the slot byte).
    pub fn index(self) -> usize {
        usize::from(self.0 - 1)
    }

    pub fn slot(self) -> Slot {
        Slot((self.0 - 1) as u8)
    }

    /// Every card, 1 to 256.
    pub fn all() -> impl Iterator<Item = CardNo> {
        (1..=256).map(CardNo)
    }
}

impl From<Slot> for CardNo {
    fn from(s: Slot) -> CardNo {
        CardNo(u16::from(s.0) + 1)
    }
}

impl From<CardNo> for u16 {
    fn from(n: CardNo) -> u16 {
        n.0
    }
}

impl TryFrom<u16> for CardNo {
    type Error = NoSuchCard;
    fn try_from(n: u16) -> Result<CardNo, NoSuchCard> {
        CardNo::new(n)
    }
}

impl PartialEq<u16> for CardNo {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for CardNo {
    /// The bare number (widths and alignment apply, as for a number).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CardNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "card {}", self.0)
    }
}

impl FromStr for CardNo {
    type Err = NoSuchCard;
    fn from_str(s: &str) -> Result<CardNo, NoSuchCard> {
        match s.trim().parse::<u16>() {
            Ok(n) => CardNo::new(n),
            Err(_) => Err(NoSuchCard(format!("{s:?}"))),
        }
    }
}

impl Serialize for CardNo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for CardNo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CardNo, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = CardNo;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a card number 1-256")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<CardNo, E> {
                u16::try_from(n)
                    .ok()
                    .and_then(|n| CardNo::new(n).ok())
                    .ok_or_else(|| E::custom(NoSuchCard(n.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<CardNo, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(NoSuchCard(n.to_string()))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// Where the pool is: an address, or the simulated pool built into simpool (`sim`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PoolAddr {
    /// The built-in simulated pool, run in-process.
    Sim,
    /// `HOST:PORT` of a pool on the network.
    Tcp(String),
}

impl PoolAddr {
    /// The factory address of a Lit-K13e-V53 pool.
    pub fn factory() -> PoolAddr {
        PoolAddr::Tcp(crate::pool::FACTORY_ADDRESS.into())
    }

    pub fn is_sim(&self) -> bool {
        matches!(self, PoolAddr::Sim)
    }
}

impl From<&str> for PoolAddr {
    fn from(s: &str) -> PoolAddr {
        match s.trim() {
            "sim" => PoolAddr::Sim,
            a => PoolAddr::Tcp(a.to_string()),
        }
    }
}

impl From<String> for PoolAddr {
    fn from(s: String) -> PoolAddr {
        PoolAddr::from(s.as_str())
    }
}

impl FromStr for PoolAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolAddr, String> {
        if s.trim().is_empty() {
            return Err("empty pool address: want HOST:PORT or sim".into());
        }
        Ok(PoolAddr::from(s))
    }
}

impl fmt::Display for PoolAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolAddr::Sim => f.write_str("sim"),
            PoolAddr::Tcp(a) => f.write_str(a),
        }
    }
}

impl fmt::Debug for PoolAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for PoolAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PoolAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PoolAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A pool opened for use: the address to dial, and the simulator behind `sim` (kept alive as
/// long as this is).
pub struct OpenedPool {
    pub addr: String,
    pub sim: Option<crate::sim::SimPool>,
}

impl PoolAddr {
    /// The address to dial; for `sim`, starts the simulated pool in-process (on loopback, an
    /// ephemeral port) with `cards` (the built-in set without it).
    pub async fn open(
        &self,
        cards: Option<crate::sim::profile::CardsFile>,
    ) -> Result<OpenedPool, String> {
        match self {
            PoolAddr::Tcp(a) => Ok(OpenedPool {
                addr: a.clone(),
                sim: None,
            }),
            PoolAddr::Sim => {
                let cards = cards.unwrap_or_else(crate::sim::profile::CardsFile::default_set);
                let sim =
                    crate::sim::SimPool::start("127.0.0.1:0", cards, crate::sim::Faults::default())
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(OpenedPool {
                    addr: sim.addr().to_string(),
                    sim: Some(sim),
                })
            }
        }
    }
}

/// Bytes that leave simpool as upper-case hex (JSON, text): an ATR, a card's response.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Hex(Vec<u8>);

/// A card's Answer To Reset.
pub type Atr = Hex;

impl Hex {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Hex {
        Hex(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for Hex {
    fn from(b: Vec<u8>) -> Hex {
        Hex(b)
    }
}

impl From<&[u8]> for Hex {
    fn from(b: &[u8]) -> Hex {
        Hex(b.to_vec())
    }
}

impl std::ops::Deref for Hex {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Hex {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&hex::encode_upper(&self.0))
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hex({self})")
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hex, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .map(Hex)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not hex: {e}")))
    }
}

/// Checks an ICCID as simpool takes it (10–20 digits); the error names it.
pub fn check_iccid(s: &str) -> Result<String, String> {
    digits(s, "iccid", 10..=20)
}

/// Checks an eUICC's EID: 32 digits whose SGP.29 check digits hold (the number mod 97 is 1);
/// the error names it.
pub fn check_eid(s: &str) -> Result<String, String> {
    let d = digits(s, "eid", 32..=32)?;
    if d.parse::<u128>().is_ok_and(|n| n % 97 == 1) {
        Ok(d)
    } else {
        Err(format!(
            "eid {s:?}: its check digits are wrong (SGP.29: mod 97 must be 1)"
        ))
    }
}

/// Checks an IMSI as simpool takes it (6–15 digits); the error names it.
pub fn check_imsi(s: &str) -> Result<String, String> {
    digits(s, "imsi", 6..=15)
}

fn digits(s: &str, what: &str, lens: std::ops::RangeInclusive<usize>) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) && lens.contains(&s.len()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{what} {s:?} is not {}-{} digits",
            lens.start(),
            lens.end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_checked_once() {
        assert_eq!(CardNo::new(1).unwrap().slot(), Slot(0));
        assert_eq!(CardNo::from(Slot(255)), CardNo::LAST);
        assert_eq!("18".parse::<CardNo>().unwrap(), 18);
        for bad in ["0", "257", "300", "-1", "x", ""] {
            let e = bad.parse::<CardNo>().unwrap_err().to_string();
            assert!(e.ends_with("does not exist: cards are 1-256"), "{bad}: {e}");
        }
        assert_eq!(CardNo::all().count(), 256);
        assert_eq!(
            format!("card {:>3}|{:<4}|", CardNo::of(7), CardNo::of(18)),
            "card   7|18  |"
        );
        let c: CardNo = serde_json::from_str("256").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "256");
        for bad in ["0", "257", "-3", "\"18\"", "1.5"] {
            assert!(serde_json::from_str::<CardNo>(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<CardNo>("300")
            .unwrap_err()
            .to_string();
        assert!(e.contains("card 300 does not exist"), "{e}");
    }

    #[test]
    fn pool_addresses_and_atrs() {
        assert!("sim".parse::<PoolAddr>().unwrap().is_sim());
        assert_eq!(
            "10.1.2.3:6666".parse::<PoolAddr>().unwrap(),
            PoolAddr::Tcp("10.1.2.3:6666".into())
        );
        assert!("".parse::<PoolAddr>().is_err());
        assert_eq!(PoolAddr::factory().to_string(), "192.168.1.199:6666");
        let atr = Atr::new(vec![0x3B, 0x02, 0x14, 0x50]);
        assert_eq!(serde_json::to_string(&atr).unwrap(), "\"3B021450\"");
        assert_eq!(serde_json::from_str::<Atr>("\"3b021450\"").unwrap(), atr);
        assert!(serde_json::from_str::<Atr>("\"3B0\"").is_err());
        assert!(check_iccid("89860043191482190636").is_ok());
        assert!(check_imsi("460019894013615").is_ok());
        for bad in ["4600198940136150000", "46001x", "12345"] {
            assert!(check_imsi(bad).is_err(), "{bad}");
        }
    }
}
