//! What the history records, as typed rows: leases, card events, labels. Each row serializes to
//! the JSON the API and `simpool history --json` print: every key always present, `null` where
//! unknown, enum values in kebab-case (their `Display` is the phrase people read).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// Words stored as text in the database and written in kebab-case in JSON.
macro_rules! word_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $word:literal / $phrase:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word in JSON and in the database.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$variant => $phrase,)+ })
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<$name, UnknownWord> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownWord { what: stringify!($name), word: s.to_string() }),
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.word()))
            }
        }

        impl FromSql for $name {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<$name> {
                v.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

/// A word the history does not know (in a row someone edited, or a newer simpool's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{word:?} is no {what}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
}

word_enum! {
    /// What kind of holder had the card (the card layer's holder, and the front ends to come).
    pub enum HolderKind {
        /// A vpcd reader of the daemon.
        Reader = "reader" / "reader",
        /// A remote osmo-remsim client through the bank.
        Bank = "bank" / "bank client",
        /// A control API request (`apdu`).
        Api = "api" / "API request",
        /// A run of `simpool exec`.
        Exec = "exec" / "exec",
        /// A scan, or an ICCID/IMSI search.
        Scan = "scan" / "scan",
        /// The sim-rest authentication API.
        SimRest = "sim-rest" / "sim-rest",
        /// A reservation with nothing else holding the card.
        Reservation = "reservation" / "reservation",
    }
}

word_enum! {
    /// Why a lease ended.
    pub enum EndReason {
        Released = "released" / "released",
        Expired = "expired" / "expired",
        CardRemoved = "card-removed" / "card removed",
        LinkLost = "link-lost" / "link lost",
        StoppedByAdmin = "stopped-by-admin" / "stopped by an admin",
        DaemonStopped = "daemon-stopped" / "daemon stopped",
        /// Set at start-up on the leases a crash (`kill -9`, power loss) left open; their end
        /// is unknown (`null`).
        DaemonCrashed = "daemon-crashed" / "daemon crashed",
    }
}

word_enum! {
    /// Something that happened to a card outside the counters of a lease.
    pub enum EventKind {
        /// Marked bad (the pool's error indication went out, or a start failed for good).
        MarkedBad = "marked-bad" / "marked bad",
        /// The bad mark was cleared.
        BadCleared = "bad-cleared" / "bad mark cleared",
        Inserted = "inserted" / "inserted",
        Removed = "removed" / "removed",
        /// The pool was sent an error indication for the card.
        ErrorIndication = "error-indication" / "error indication sent",
        /// A guard refused a command, e.g. "would use ADM1's last try" (the detail says which).
        Refused = "refused" / "refused",
    }
}

/// A lease's id in the history (the daemon's, handed out when the lease begins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What is known when a lease begins. ICCID, IMSI, user and the rest may be filled in later:
/// the row is rewritten whole when the lease ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBegan {
    /// 1–256.
    pub card: u16,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub holder_kind: HolderKind,
    /// The holder as the daemon names it: `reader 3`, `bank 1:0 → client 2:0`,
    /// `API request from 127.0.0.1:40710`.
    pub front_end: String,
    pub user: Option<String>,
    pub reservation: Option<u64>,
    pub note: Option<String>,
    pub start: Timestamp,
}

impl LeaseBegan {
    /// A lease of `card` beginning now, nothing else known.
    pub fn now(card: u16, holder_kind: HolderKind, front_end: impl Into<String>) -> LeaseBegan {
        LeaseBegan {
            card,
            iccid: None,
            imsi: None,
            holder_kind,
            front_end: front_end.into(),
            user: None,
            reservation: None,
            note: None,
            start: Timestamp::now(),
        }
    }
}

/// The counters of a lease, read from it when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Exchanges the card answered.
    pub exchanges: u64,
    /// Exchanges that failed (timeouts, link errors: the `6F 00` simpool made up).
    pub errors: u64,
    /// RUN GSM ALGORITHM and AUTHENTICATE commands.
    pub authentications: u64,
    /// VERIFY PIN answered with a wrong-PIN status (`63 Cx`, `98 04`, …).
    pub pin_failures: u64,
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnded {
    pub end: Timestamp,
    pub why: EndReason,
    #[serde(flatten)]
    pub counters: Counters,
}

impl LeaseEnded {
    pub fn now(why: EndReason, counters: Counters) -> LeaseEnded {
        LeaseEnded {
            end: Timestamp::now(),
            why,
            counters,
        }
    }
}

/// One lease as the history shows it. `end` and `why` are `null` while it is held; a lease a
/// crash left open has `why` = `daemon-crashed` and `end` = `null` (unknown).
///
/// JSON: `{"id","card","iccid","imsi","holder_kind","front_end","user","reservation","note",
/// "start","end","why","exchanges","errors","authentications","pin_failures"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    pub id: LeaseId,
    #[serde(flatten)]
    pub began: LeaseBegan,
    pub end: Option<Timestamp>,
    pub why: Option<EndReason>,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Something that happened to a card, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub card: u16,
    pub time: Timestamp,
    pub kind: EventKind,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// Who was refused, who cleared the mark, … where someone was involved.
    pub user: Option<String>,
    /// The lease during which it happened, if any.
    pub lease: Option<LeaseId>,
    /// Why, in words: the pool's reason for an error indication, the guard's refusal
    /// (`would use ADM1's last try`).
    pub detail: Option<String>,
}

impl Event {
    /// An event of `card` now, nothing else known.
    pub fn now(card: u16, kind: EventKind) -> Event {
        Event {
            card,
            time: Timestamp::now(),
            kind,
            iccid: None,
            imsi: None,
            user: None,
            lease: None,
            detail: None,
        }
    }
}

/// One event as the history shows it.
///
/// JSON: `{"id","card","time","kind","iccid","imsi","user","lease","detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// A card's labels, sorted by key (JSON: an object `{"KEY": "VALUE", …}`).
pub type Labels = BTreeMap<String, String>;

/// The longest label key and value.
pub const LABEL_KEY_MAX: usize = 64;
pub const LABEL_VALUE_MAX: usize = 256;

/// A label that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{0:?} is no KEY=VALUE label")]
    NoEquals(String),
    #[error("label key {0:?}: use 1-64 letters, digits, '_', '-' or '.'")]
    Key(String),
    #[error("label {key}: the value is empty (remove a label with --remove {key})")]
    EmptyValue { key: String },
    #[error("label {key}: the value must be at most 256 characters, without control characters")]
    Value { key: String },
}

/// A label, checked: a key of letters, digits, `_`, `-`, `.`; a value of 1–256 characters
/// without control characters (it may contain `=`: `KEY=VALUE` splits at the first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    key: String,
    value: String,
}

impl Label {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Label, LabelError> {
        let key = key.into();
        let value = value.into();
        check_key(&key)?;
        if value.is_empty() {
            return Err(LabelError::EmptyValue { key });
        }
        if value.chars().count() > LABEL_VALUE_MAX || value.chars().any(char::is_control) {
            return Err(LabelError::Value { key });
        }
        Ok(Label { key, value })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Checks a label key (for `--remove KEY` and the like).
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let ok = !key.is_empty()
        && key.len() <= LABEL_KEY_MAX
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(LabelError::Key(key.to_string()))
    }
}

impl FromStr for Label {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Label, LabelError> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| LabelError::NoEquals(s.to_string()))?;
        Label::new(k, v)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Label, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
