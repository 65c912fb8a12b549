//! Which cards a command is about: the SELECTION that `reserve`, `exec` and `bind` share.
//!
//! On the command line: `--card LIST` (`18`, `1-32,40`), `--iccid ICCID` and `--imsi IMSI`
//! (repeatable), `--label KEY=VALUE` (repeatable), `--eid EID`, `--all` (every inserted card
//! that is free). In an API body the same keys: `card` (a list string, a number or an array),
//! `iccid`, `imsi` (a string or an array), `label` (an object or an array of `KEY=VALUE`),
//! `eid`, `all`.
//!
//! Criteria of different kinds must all hold (`--card 1-32 --label op=x`: cards 1–32 labelled
//! op=x); several values of one kind are alternatives (`--iccid A --iccid B`: either). A
//! selection that names nothing is refused: "every card" is said with `--all`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::values::{check_iccid, check_imsi, CardNo};

/// A set of cards as `18` or `1-32,40` names it; kept sorted, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CardList(Vec<CardNo>);

impl CardList {
    pub fn new(mut cards: Vec<CardNo>) -> CardList {
        cards.sort();
        cards.dedup();
        CardList(cards)
    }

    pub fn cards(&self) -> &[CardNo] {
        &self.0
    }

    pub fn contains(&self, n: CardNo) -> bool {
        self.0.binary_search(&n).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A card list that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("card list {list:?}: {why}")]
    CardList { list: String, why: String },
    #[error("{0}")]
    Iccid(String),
    #[error("{0}")]
    Imsi(String),
    #[error("eid {0:?} is not 32 digits")]
    Eid(String),
    #[error("{0}")]
    Label(#[from] crate::history::LabelError),
    #[error("no cards selected: name them with --card, --iccid, --imsi, --label, --eid or --all")]
    Nothing,
}

impl FromStr for CardList {
    type Err = SelectionError;
    fn from_str(s: &str) -> Result<CardList, SelectionError> {
        let bad = |why: String| SelectionError::CardList {
            list: s.to_string(),
            why,
        };
        let mut cards = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("an empty entry".into()));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (
                    a.parse::<CardNo>().map_err(|e| bad(e.to_string()))?,
                    b.parse::<CardNo>().map_err(|e| bad(e.to_string()))?,
                ),
                None => {
                    let n = part.parse::<CardNo>().map_err(|e| bad(e.to_string()))?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad(format!("the range {part} is empty")));
            }
            cards.extend(CardNo::all().filter(|n| (lo..=hi).contains(n)));
        }
        Ok(CardList::new(cards))
    }
}

/// Runs as ranges: `1-32,40`.
impl fmt::Display for CardList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let lo = self.0[i];
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1].get() == self.0[j].get() + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j == i {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{}", self.0[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Checks an EID: 32 digits (SGP.29).
pub fn check_eid(s: &str) -> Result<String, SelectionError> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(SelectionError::Eid(s.to_string()))
    }
}

/// Which cards: every criterion given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// `--card LIST`; `None` when not given.
    pub cards: Option<CardList>,
    pub iccids: Vec<String>,
    pub imsis: Vec<String>,
    /// `--label KEY=VALUE`: the card must carry every one.
    pub labels: Vec<(String, String)>,
    pub eid: Option<String>,
    /// `--all`: every inserted card that is free (with other criteria: those that match).
    pub all: bool,
}

impl Selection {
    /// One card by number.
    pub fn card(n: CardNo) -> Selection {
        Selection {
            cards: Some(CardList::new(vec![n])),
            ..Selection::default()
        }
    }

    /// Whether anything was named at all.
    pub fn is_empty(&self) -> bool {
        self.cards.is_none()
            && self.iccids.is_empty()
            && self.imsis.is_empty()
            && self.labels.is_empty()
            && self.eid.is_none()
            && !self.all
    }

    /// Refuses a selection that names nothing.
    pub fn check(self) -> Result<Selection, SelectionError> {
        if self.is_empty() {
            Err(SelectionError::Nothing)
        } else {
            Ok(self)
        }
    }

    /// Whether it asks for what only a card's identity tells (so an unread card may match).
    pub fn needs_identity(&self) -> bool {
        !self.iccids.is_empty() || !self.imsis.is_empty() || self.eid.is_some()
    }

    /// Whether card `card`, with what is known of it, is selected. An unknown ICCID, IMSI or
    /// EID matches no criterion on it.
    pub fn matches(
        &self,
        card: CardNo,
        iccid: Option<&str>,
        imsi: Option<&str>,
        eid: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let one_of = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w == h))
        };
        self.cards.as_ref().is_none_or(|l| l.contains(card))
            && one_of(&self.iccids, iccid)
            && one_of(&self.imsis, imsi)
            && self
                .eid
                .as_ref()
                .is_none_or(|w| eid.is_some_and(|e| e.eq_ignore_ascii_case(w)))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    /// The cards of `rows` it selects, by number: those inserted and free go to `free`, those
    /// it selects but someone holds go to `held` (with the holder), so a caller can say what
    /// blocks it. Cards not inserted are left out (`missing` lists those `--card` named).
    pub fn resolve<'a>(&self, rows: impl IntoIterator<Item = Candidate<'a>>) -> Resolved {
        let mut r = Resolved::default();
        let empty = BTreeMap::new();
        for c in rows {
            let labels = c.labels.unwrap_or(&empty);
            if !self.matches(c.card, c.iccid, c.imsi, c.eid, labels) {
                continue;
            }
            if !c.inserted {
                if self.cards.is_some() {
                    r.missing.push(c.card);
                }
                continue;
            }
            match c.holder {
                Some(h) => r.held.push((c.card, h.to_string())),
                None => r.free.push(c.card),
            }
        }
        r
    }
}

/// One card as [`Selection::resolve`] looks at it (from the daemon's card rows).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub card: CardNo,
    pub inserted: bool,
    /// Who holds it or has it reserved, as shown to people; `None` when free.
    pub holder: Option<&'a str>,
    pub iccid: Option<&'a str>,
    pub imsi: Option<&'a str>,
    pub eid: Option<&'a str>,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// What a selection found among the cards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Inserted, free, selected; by number.
    pub free: Vec<CardNo>,
    /// Selected, but held (or reserved) by someone: the holder as shown.
    pub held: Vec<(CardNo, String)>,
    /// Named by `--card` but no card is in the slot.
    pub missing: Vec<CardNo>,
}

impl Resolved {
    /// Why nothing free was found, for an error message: "card 3 is held by reader 1; …".
    pub fn blocked_by(&self) -> String {
        if self.held.is_empty() && self.missing.is_empty() {
            return "no inserted card matches".into();
        }
        let mut parts: Vec<String> = self
            .held
            .iter()
            .take(8)
            .map(|(n, h)| {
                if h.starts_with("reserved by ") {
                    format!("card {n} is {h}")
                } else {
                    format!("card {n} is held by {h}")
                }
            })
            .collect();
        if self.held.len() > 8 {
            parts.push(format!("{} more held", self.held.len() - 8));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "no card in slot {}",
                CardList::new(self.missing.clone())
            ));
        }
        parts.join("; ")
    }
}

/// The SELECTION options, flattened into the commands that take one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectionArgs {
    /// Cards by number: `18`, `1-32,40`.
    #[arg(long = "card", value_name = "LIST")]
    pub card: Option<CardList>,
    /// The card with this ICCID (repeatable: any of them).
    #[arg(long = "iccid", value_name = "ICCID", value_parser = parse_iccid)]
    pub iccid: Vec<String>,
    /// The card with this IMSI (repeatable: any of them).
    #[arg(long = "imsi", value_name = "IMSI", value_parser = parse_imsi)]
    pub imsi: Vec<String>,
    /// Cards carrying this label (repeatable: all of them).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// The eUICC with this EID.
    #[arg(long = "eid", value_name = "EID", value_parser = parse_eid)]
    pub eid: Option<String>,
    /// Every inserted card that is free.
    #[arg(long = "all")]
    pub all: bool,
}

fn parse_iccid(s: &str) -> Result<String, String> {
    check_iccid(s)
}

fn parse_imsi(s: &str) -> Result<String, String> {
    check_imsi(s)
}

fn parse_eid(s: &str) -> Result<String, String> {
    check_eid(s).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let l: crate::history::Label = s
        .parse()
        .map_err(|e: crate::history::LabelError| e.to_string())?;
    Ok((l.key().to_string(), l.value().to_string()))
}

impl SelectionArgs {
    /// The selection; refused when it names nothing.
    pub fn selection(&self) -> Result<Selection, SelectionError> {
        Selection::from(self.clone()).check()
    }
}

impl From<SelectionArgs> for Selection {
    fn from(a: SelectionArgs) -> Selection {
        Selection {
            cards: a.card,
            iccids: a.iccid,
            imsis: a.imsi,
            labels: a.label,
            eid: a.eid,
            all: a.all,
        }
    }
}

/// The API form: `{"card": "1-32,40", "iccid": [...], "imsi": [...], "label": {...},
/// "eid": "...", "all": false}`; every key optional.
#[derive(Serialize, Deserialize, Default)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    card: Option<CardsWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iccid: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imsi: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<LabelsWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CardsWire {
    One(u16),
    List(String),
    Many(Vec<u16>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LabelsWire {
    Map(BTreeMap<String, String>),
    Pairs(Vec<String>),
}

impl TryFrom<Wire> for Selection {
    type Error = SelectionError;
    fn try_from(w: Wire) -> Result<Selection, SelectionError> {
        let card = |n: u16| {
            CardNo::new(n).map_err(|e| SelectionError::CardList {
                list: n.to_string(),
                why: e.to_string(),
            })
        };
        let cards = match w.card {
            None => None,
            Some(CardsWire::One(n)) => Some(CardList::new(vec![card(n)?])),
            Some(CardsWire::List(s)) => Some(s.parse()?),
            Some(CardsWire::Many(v)) => Some(CardList::new(
                v.into_iter().map(card).collect::<Result<_, _>>()?,
            )),
        };
        let iccids = w
            .iccid
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|s| check_iccid(s).map_err(SelectionError::Iccid))
            .collect::<Result<_, _>>()?;
        let imsis = w
            .imsi
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|s| check_imsi(s).map_err(SelectionError::Imsi))
            .collect::<Result<_, _>>()?;
        let labels = match w.label {
            None => Vec::new(),
            Some(LabelsWire::Map(m)) => m
                .into_iter()
                .map(|(k, v)| {
                    let l = crate::history::Label::new(k, v)?;
                    Ok((l.key().to_string(), l.value().to_string()))
                })
                .collect::<Result<_, SelectionError>>()?,
            Some(LabelsWire::Pairs(v)) => v
                .iter()
                .map(|s| {
                    let l: crate::history::Label = s.parse()?;
                    Ok((l.key().to_string(), l.value().to_string()))
                })
                .collect::<Result<_, SelectionError>>()?,
        };
        let eid = w.eid.as_deref().map(check_eid).transpose()?;
        Ok(Selection {
            cards,
            iccids,
            imsis,
            labels,
            eid,
            all: w.all,
        })
    }
}

impl Serialize for Selection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let many = |v: &[String]| (!v.is_empty()).then(|| OneOrMany::Many(v.to_vec()));
        Wire {
            card: self.cards.as_ref().map(|l| CardsWire::List(l.to_string())),
            iccid: many(&self.iccids),
            imsi: many(&self.imsis),
            label: (!self.labels.is_empty())
                .then(|| LabelsWire::Map(self.labels.iter().cloned().collect())),
            eid: self.eid.clone(),
            all: self.all,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Selection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Selection, D::Error> {
        let w = Wire::deserialize(d)?;
        Selection::try_from(w).map_err(serde::de::Error::custom)
    }
}

/// As a person reads it: `cards 1-32,40, label op=x`.
impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = &self.cards {
            if l.cards().len() == 1 {
                parts.push(format!("card {l}"));
            } else {
                parts.push(format!("cards {l}"));
            }
        }
        if !self.iccids.is_empty() {
            parts.push(format!("ICCID {}", self.iccids.join(" or ")));
        }
        if !self.imsis.is_empty() {
            parts.push(format!("IMSI {}", self.imsis.join(" or ")));
        }
        for (k, v) in &self.labels {
            parts.push(format!("label {k}={v}"));
        }
        if let Some(e) = &self.eid {
            parts.push(format!("EID {e}"));
        }
        if self.all {
            parts.push("all free cards".into());
        }
        if parts.is_empty() {
            f.write_str("no cards")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    fn c(n: u16) -> CardNo {
        CardNo::of(n)
    }

    #[test]
    fn card_lists_parse_and_print_as_ranges() {
        let l: CardList = "1-32,40".parse().unwrap();
        assert_eq!(l.cards().len(), 33);
        assert!(l.contains(c(1)) && l.contains(c(32)) && l.contains(c(40)));
        assert!(!l.contains(c(33)));
        assert_eq!(l.to_string(), "1-32,40");
        assert_eq!("18".parse::<CardList>().unwrap().cards(), &[c(18)]);
        assert_eq!("5,3,4,3".parse::<CardList>().unwrap().to_string(), "3-5");
        assert_eq!("256".parse::<CardList>().unwrap().to_string(), "256");
        for bad in ["", "0", "257", "3-1", "1,,2", "a", "1-", "-3"] {
            assert!(bad.parse::<CardList>().is_err(), "{bad:?}");
        }
        let e = "3-1".parse::<CardList>().unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn criteria_all_hold_values_of_one_kind_are_alternatives() {
        let mut labels = BTreeMap::new();
        labels.insert("op".to_string(), "x".to_string());
        let s = Selection {
            cards: Some("1-10".parse().unwrap()),
            labels: vec![("op".into(), "x".into())],
            ..Default::default()
        };
        assert!(s.matches(c(3), None, None, None, &labels));
        assert!(!s.matches(c(11), None, None, None, &labels));
        assert!(!s.matches(c(3), None, None, None, &BTreeMap::new()));
        let s = Selection {
            iccids: vec!["8949000000000000001".into(), "8949000000000000002".into()],
            ..Default::default()
        };
        assert!(s.matches(c(1), Some("8949000000000000002"), None, None, &labels));
        assert!(!s.matches(c(1), Some("8949000000000000003"), None, None, &labels));
        // An unread card matches no identity criterion.
        assert!(!s.matches(c(1), None, None, None, &labels));
        let s = Selection {
            eid: Some("89049032123451234512345678901235".into()),
            ..Default::default()
        };
        assert!(s.matches(
            c(1),
            None,
            None,
            Some("89049032123451234512345678901235"),
            &labels
        ));
        assert!(!s.matches(c(1), None, None, None, &labels));
        let all = Selection {
            all: true,
            ..Default::default()
        };
        assert!(all.matches(c(200), None, None, None, &labels));
        assert!(Selection::default().check().is_err());
        assert!(all.check().is_ok());
    }

    #[test]
    fn resolve_splits_free_held_and_missing() {
        let s = Selection {
            cards: Some("1-4".parse().unwrap()),
            ..Default::default()
        };
        let cand = |n: u16, inserted: bool, holder: Option<&'static str>| Candidate {
            card: c(n),
            inserted,
            holder,
            iccid: None,
            imsi: None,
            eid: None,
            labels: None,
        };
        let r = s.resolve([
            cand(1, true, None),
            cand(2, true, Some("reader 0 (alice, reservation 3)")),
            cand(3, false, None),
            cand(4, true, None),
            cand(5, true, None),
        ]);
        assert_eq!(r.free, vec![c(1), c(4)]);
        assert_eq!(
            r.held,
            vec![(c(2), "reader 0 (alice, reservation 3)".into())]
        );
        assert_eq!(r.missing, vec![c(3)]);
        let why = r.blocked_by();
        assert!(why.contains("card 2 is held by reader 0 (alice"), "{why}");
        assert!(why.contains("no card in slot 3"), "{why}");
    }

    #[test]
    fn api_form_reads_every_shape_and_refuses_bad_values() {
        let s: Selection = serde_json::from_value(json!({"card": "1-3,7"})).unwrap();
        assert_eq!(s.cards.unwrap().to_string(), "1-3,7");
        let s: Selection = serde_json::from_value(json!({"card": [7, 2]})).unwrap();
        assert_eq!(s.cards.unwrap().cards(), &[c(2), c(7)]);
        let s: Selection = serde_json::from_value(json!({"card": 18})).unwrap();
        assert_eq!(s.cards.unwrap().cards(), &[c(18)]);
        let s: Selection = serde_json::from_value(json!({
            "iccid": "8949000000000000001", "imsi": ["262010000000001"],
            "label": {"op": "x"}, "eid": "89049032123451234512345678901235", "all": true
        }))
        .unwrap();
        assert_eq!(s.iccids, vec!["8949000000000000001"]);
        assert_eq!(s.imsis, vec!["262010000000001"]);
        assert_eq!(s.labels, vec![("op".into(), "x".into())]);
        assert!(s.all && s.eid.is_some());
        let s: Selection = serde_json::from_value(json!({"label": ["a=b", "c=d=e"]})).unwrap();
        assert_eq!(
            s.labels,
            vec![("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
        // Round trip.
        let back: Selection = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for bad in [
            json!({"card": 0}),
            json!({"card": "300"}),
            json!({"card": [1, 999]}),
            json!({"iccid": "12ab"}),
            json!({"imsi": ["1"]}),
            json!({"label": ["novalue"]}),
            json!({"eid": "123"}),
        ] {
            assert!(
                serde_json::from_value::<Selection>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let e = serde_json::from_value::<Selection>(json!({"card": "300"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("300"), "{e}");
        // Nothing named reads as empty (the caller refuses it with a clear error).
        assert!(serde_json::from_value::<Selection>(json!({}))
            .unwrap()
            .is_empty());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sel: SelectionArgs,
    }

    #[test]
    fn command_line_options() {
        let cli = Cli::try_parse_from([
            "x",
            "--card",
            "1-32,40",
            "--iccid",
            "8949000000000000001",
            "--iccid",
            "8949000000000000002",
            "--label",
            "op=x",
            "--label",
            "slot=a",
        ])
        .unwrap();
        let s = cli.sel.selection().unwrap();
        assert_eq!(s.cards.as_ref().unwrap().cards().len(), 33);
        assert_eq!(s.iccids.len(), 2);
        assert_eq!(s.labels.len(), 2);
        assert_eq!(
            s.to_string(),
            "cards 1-32,40, ICCID 8949000000000000001 or 8949000000000000002, label op=x, label slot=a"
        );
        assert!(Cli::try_parse_from(["x", "--card", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--imsi", "abc"]).is_err());
        assert!(Cli::try_parse_from(["x", "--label", "op"]).is_err());
        assert!(Cli::try_parse_from(["x", "--eid", "12"]).is_err());
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(none.sel.selection().unwrap_err(), SelectionError::Nothing);
        let all = Cli::try_parse_from(["x", "--all"]).unwrap();
        assert!(all.sel.selection().unwrap().all);
    }
}
