//! The requests and rows of the control API, which are also what the commands print with
//! `--json`: one Serialize + Deserialize type each, all here (those an operation of the card
//! layer or a reader produces are defined beside it and re-exported). The daemon answers with them, the command
//! line reads the daemon's answers into them (and prints the same rows when it works over a
//! pool connection of its own), and the page reads the same keys. Every key of a row is
//! always present (`null` where unknown): tools rely on it.

use serde::{Deserialize, Serialize};

use crate::pool::{LinkState, SlotState};
use crate::values::{Atr, CardNo, Hex};

pub use crate::bridge::{ReaderCounts, ReaderRow};
pub use crate::cards::facts::{CardType, Facts, PinState, PukState};
pub use crate::cards::ops::{ApduReply, ScanRow, StopRow};
pub use crate::history::{EventRow, Labels, LeaseRow};

/// The body of a stop: `{"force": bool}`; an empty body means no force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default)]
    pub force: bool,
}

/// The body of `POST /api/v1/cards/{n}/apdu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApduRequest {
    /// Commands in hex (spaces and colons allowed).
    pub tpdus: Vec<String>,
    /// Leave the card running after the request (default: stopped).
    #[serde(default)]
    pub keep: bool,
    /// Do what a T=0 application does with `61xx`/`9Fxx` (GET RESPONSE) and `6Cxx` (the
    /// command again with that Le): one final response per command (default: off).
    #[serde(default)]
    pub auto: bool,
    /// This request may use the last try of a PIN, PUK or ADM key (the last-try guard).
    #[serde(default)]
    pub allow_last_try: bool,
}

/// The optional body of `POST /api/v1/scan`: only some cards, only free ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// Only these cards (default: every inserted one).
    #[serde(default)]
    pub cards: Option<Vec<CardNo>>,
    /// Leave out the cards someone holds or that are running (default: list held cards from
    /// what is known).
    #[serde(default)]
    pub free: bool,
}

/// The body of `POST /api/v1/cards/{n}/authenticate`: RAND, and AUTN for the 3G context
/// (without it: 2G, RUN GSM ALGORITHM or the GSM context), 16 bytes each in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    pub rand: String,
    #[serde(default)]
    pub autn: Option<String>,
}

/// What an authentication answered (`POST /api/v1/cards/{n}/authenticate`, `simpool auth
/// --json`). `result` is `success` (3G: `res`, `ck`, `ik`, `kc` if the card gives it; 2G:
/// `sres`, `kc`) or `sync_failure` (`auts`); the other keys are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRow {
    pub card: CardNo,
    pub context: crate::cards::auth::Context,
    pub result: AuthResult,
    pub res: Option<Hex>,
    pub ck: Option<Hex>,
    pub ik: Option<Hex>,
    pub kc: Option<Hex>,
    pub sres: Option<Hex>,
    pub auts: Option<Hex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthResult {
    Success,
    SyncFailure,
}

impl AuthRow {
    pub fn new(card: CardNo, o: &crate::cards::auth::Outcome) -> AuthRow {
        use crate::cards::auth::{Context, Outcome};
        let h = |b: &Vec<u8>| Some(Hex::new(b.clone()));
        let mut row = AuthRow {
            card,
            context: Context::Umts,
            result: AuthResult::Success,
            res: None,
            ck: None,
            ik: None,
            kc: None,
            sres: None,
            auts: None,
        };
        match o {
            Outcome::Umts { res, ck, ik, kc } => {
                row.res = h(res);
                row.ck = h(ck);
                row.ik = h(ik);
                row.kc = kc.as_ref().and_then(h);
            }
            Outcome::SyncFailure { auts } => {
                row.result = AuthResult::SyncFailure;
                row.auts = h(auts);
            }
            Outcome::Gsm { sres, kc } => {
                row.context = Context::Gsm;
                row.sres = h(sres);
                row.kc = h(kc);
            }
        }
        row
    }
}

/// A card as `GET /api/v1/cards` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRow {
    pub card: CardNo,
    /// `null` while the daemon cannot read the slot states (its pool link is down).
    pub state: Option<SlotState>,
    pub holder: Option<String>,
    pub atr: Option<Atr>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// What the card is, as last read (`null` where unknown).
    #[serde(flatten)]
    pub facts: Facts,
    pub exchanges: u64,
    pub errors: u64,
    /// Why simpool marked the card bad on the pool, if it did.
    pub bad: Option<String>,
    /// The last command the card layer's rules refused ("refused: would use ADM1's last try").
    pub refused: Option<String>,
    /// The card's labels (`{}` without any, or without a history).
    #[serde(default)]
    pub labels: Labels,
}

/// A card row as a selection looks at it (`simpool exec` resolves its selection over
/// `GET /api/v1/cards`). (Here, not in `selection`: that would make an import circle.)
impl<'a> From<&'a CardRow> for crate::selection::Candidate<'a> {
    fn from(r: &'a CardRow) -> crate::selection::Candidate<'a> {
        crate::selection::Candidate {
            card: r.card,
            inserted: r.state.is_some_and(|s| s.has_card()),
            holder: r.holder.as_deref(),
            iccid: r.iccid.as_deref(),
            imsi: r.imsi.as_deref(),
            eid: r.facts.eid.as_deref(),
            labels: Some(&r.labels),
        }
    }
}

/// One slot of `simpool status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    pub card: CardNo,
    pub state: SlotState,
    pub holder: Option<String>,
    /// The last command the card layer's rules refused on the card (through the daemon).
    #[serde(default)]
    pub refused: Option<String>,
    /// What the daemon knows the card is (`null` without a daemon, or before it read it).
    #[serde(flatten)]
    pub facts: Facts,
    /// The card's labels (through the daemon; `{}` otherwise).
    #[serde(default)]
    pub labels: Labels,
}

/// `GET /api/v1/history` and `simpool history --json`: the leases and the card events that
/// match, each newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub leases: Vec<LeaseRow>,
    pub events: Vec<EventRow>,
}

/// The body of `PUT /api/v1/cards/{n}/labels`: `remove` these keys, then `set` these labels;
/// with `replace`, the card's labels become exactly `set`. Answered with the card's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub replace: bool,
}

/// The pool link as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkWord {
    Connecting,
    Up,
    Down,
    Closed,
}

impl From<LinkState> for LinkWord {
    fn from(s: LinkState) -> LinkWord {
        match s {
            LinkState::Connecting => LinkWord::Connecting,
            LinkState::Up { .. } => LinkWord::Up,
            LinkState::Down { .. } => LinkWord::Down,
            LinkState::Closed => LinkWord::Closed,
        }
    }
}

impl std::fmt::Display for LinkWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkWord::Connecting => "connecting",
            LinkWord::Up => "up",
            LinkWord::Down => "down",
            LinkWord::Closed => "closed",
        })
    }
}

/// `GET /api/v1/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The pool as configured: `sim`, or HOST:PORT.
    pub address: String,
    /// What the page shows: "built-in simulated pool", or the address.
    pub name: String,
    pub link: LinkWord,
    /// Why the link is not up (what the log said last); `null` while it is up.
    pub cause: Option<String>,
    /// The pool's ID in hex; `null` while the link is down.
    pub id: Option<String>,
    pub version: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The pool's name (as `PoolInfo::name`).
    pub pool: String,
    pub link: LinkWord,
    /// Why the link is not up; `null` while it is up.
    pub cause: Option<String>,
    pub readers: usize,
    pub leases: usize,
    /// Why the daemon is not healthy (only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `simpool info --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoRow {
    pub id: String,
    pub version: String,
}

/// One reader of `simpool read --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRow {
    pub reader: String,
    pub atr: Option<Atr>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub error: Option<String>,
}

/// One instance of `simpool status --all-instances --json`: a daemon of this host, from its
/// configuration file and what its control API answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// NAME of simpool@NAME.service (`simpool` for simpool.service).
    pub instance: String,
    /// Its configuration file.
    pub config: String,
    /// Its control address; `null` when its control API is off.
    pub control: Option<String>,
    /// The pool the daemon names (or, when it does not answer, its file's `pool`).
    pub pool: Option<String>,
    /// Its osmo-remsim bank id, if it is a bank.
    pub bank_id: Option<u16>,
    /// Whether a simpool daemon answered on its control address.
    pub reachable: bool,
    /// Its pool link, when it answered.
    pub link: Option<LinkWord>,
    /// Why it is not reachable, or why its pool link is not up.
    pub error: Option<String>,
}

/// One run of `simpool exec --json` (one card): sorted by card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRow {
    pub card: Option<CardNo>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// The reader's index in pcscd's reader list (what the program got as `{reader}`).
    pub reader: Option<usize>,
    /// Its PC/SC name (`{reader_name}`).
    pub reader_name: Option<String>,
    /// The program's exit code; `null` when it did not run or was killed.
    pub exit: Option<i32>,
    /// How long the program ran.
    pub seconds: Option<f64>,
    pub stdout: String,
    pub stderr: String,
    /// Why the run failed other than by its exit code (card refused, timed out, killed, …).
    pub error: Option<String>,
}

/// The body of `POST /api/v1/reservations`: a selection (see [`crate::selection`]) and
/// `for_s` (default 1 h), `wait_s` (default 0: answer at once), `reader` (bind a free reader
/// to the card), `note`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    #[serde(flatten)]
    pub selection: crate::selection::Selection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
    #[serde(default)]
    pub reader: bool,
    /// With `reader`: the daemon's readers it may take (`simpool exec` names the one it
    /// gives the run); default any free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readers: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The body of `POST /api/v1/reservations/{id}/renew`: the reservation now ends `for_s`
/// seconds from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub for_s: u64,
}

/// A reservation as the API and `simpool reserve --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRow {
    pub id: crate::reservations::ReservationId,
    pub card: CardNo,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// The reader bound to the card for it (`--reader`), its index in pcscd's list of this
    /// daemon's readers, and its PC/SC name.
    pub reader: Option<u16>,
    pub reader_name: Option<String>,
    pub user: String,
    pub note: Option<String>,
    pub since: crate::history::Timestamp,
    pub expires: crate::history::Timestamp,
}

/// Every error answer of the API: `{"error": "…"}`, with the card and its holder when a card
/// is held elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardNo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_daemons_card_rows_carry_their_labels_into_the_selection() {
        let row = |n: u16, labels: &[(&str, &str)]| CardRow {
            card: CardNo::of(n),
            state: Some(crate::pool::SlotState::Inserted),
            holder: None,
            atr: None,
            iccid: None,
            imsi: None,
            exchanges: 0,
            errors: 0,
            bad: None,
            refused: None,
            facts: Default::default(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let rows = [
            row(3, &[("rack", "a1")]),
            row(4, &[("rack", "b2")]),
            row(5, &[]),
        ];
        let s = crate::selection::Selection {
            labels: vec![("rack".into(), "a1".into())],
            ..Default::default()
        };
        let found: Vec<CardNo> = rows
            .iter()
            .map(crate::selection::Candidate::from)
            .filter(|k| {
                s.matches(
                    k.card,
                    k.iccid,
                    k.imsi,
                    k.eid,
                    k.labels.unwrap_or(&std::collections::BTreeMap::new()),
                )
            })
            .map(|k| k.card)
            .collect();
        assert_eq!(found, [CardNo::of(3)]);
    }

    #[test]
    fn rows_keep_every_key_and_read_back() {
        let row = ScanRow {
            card: CardNo::of(7),
            state: SlotState::Inserted,
            atr: None,
            iccid: None,
            imsi: None,
            facts: Facts::default(),
            holder: None,
            error: Some("start failed".into()),
            labels: [("site".to_string(), "lab".to_string())].into(),
        };
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(
            v,
            json!({"card": 7, "state": "inserted", "atr": null, "iccid": null, "imsi": null,
                   "type": null, "spn": null, "msisdn": null, "eid": null,
                   "pin1": {"enabled": null, "verified": null, "tries": null},
                   "puk1": {"tries": null}, "hidden": [],
                   "holder": null, "error": "start failed", "labels": {"site": "lab"}})
        );
        assert_eq!(serde_json::from_value::<ScanRow>(v).unwrap(), row);
        let unknown = serde_json::to_value(SlotState::Unknown(0x12)).unwrap();
        assert_eq!(unknown, json!({"unknown": 18}));
        assert_eq!(
            serde_json::from_value::<SlotState>(unknown).unwrap(),
            SlotState::Unknown(0x12)
        );
        let reply = ApduReply {
            card: CardNo::of(2),
            atr: Atr::new(vec![0x3B, 0x00]),
            responses: vec![Hex::new(vec![0x9F, 0x17])],
            errors: vec![None],
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({"card": 2, "atr": "3B00", "responses": ["9F17"], "errors": [null]})
        );
        // A stop's body: unknown keys and wrong types are refused, not read as "no force".
        assert!(serde_json::from_str::<StopRequest>("{\"force\":1}").is_err());
        assert!(serde_json::from_str::<StopRequest>("{\"forse\":true}").is_err());
        assert!(
            serde_json::from_str::<StopRequest>("{\"force\":true}")
                .unwrap()
                .force
        );
        // Error bodies carry the holder only when there is one.
        let e = ErrorBody {
            error: "x".into(),
            card: None,
            holder: None,
        };
        assert_eq!(serde_json::to_value(e).unwrap(), json!({"error": "x"}));
    }
}
