//! A history query (`simpool history --card --iccid --user --since --limit`,
//! `GET /api/v1/history?card=&iccid=&user=&since=&limit=`) and its SQL. Newest first.

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::time::{Since, Timestamp};

/// Rows a query returns when it names no limit, and the most it may ask for.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 10_000;

/// Filters, all optional, all combined (AND). Deserializes from an API query string
/// (`since` as text: `2h`, `7d`, `2026-12-01T10:00:00Z`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Query {
    pub card: Option<u16>,
    pub iccid: Option<String>,
    pub user: Option<String>,
    /// Leases held at some point since then (begun, ended or still open after it); events
    /// that happened since then.
    pub since: Option<Since>,
    /// 1–10000; 100 when absent.
    pub limit: Option<u32>,
}

/// A query that asks for something that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("card {0} does not exist: cards are 1-256")]
    Card(u16),
    #[error("limit {0}: say 1-10000")]
    Limit(u32),
}

pub(crate) const LEASE_COLUMNS: &str = "id, card, iccid, imsi, holder_kind, front_end, user, \
     reservation, note, start_ms, end_ms, why, exchanges, errors, authentications, pin_failures";

pub(crate) const EVENT_COLUMNS: &str = "id, card, time_ms, kind, iccid, imsi, user, lease, detail";

impl Query {
    pub fn check(&self) -> Result<(), QueryError> {
        if let Some(c) = self.card {
            if !(1..=256).contains(&c) {
                return Err(QueryError::Card(c));
            }
        }
        if let Some(l) = self.limit {
            if !(1..=MAX_LIMIT).contains(&l) {
                return Err(QueryError::Limit(l));
            }
        }
        Ok(())
    }

    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// The filters shared by both tables: `WHERE …` (or nothing) and its parameters.
    fn filters(&self, since_clause: &str, now: Timestamp) -> (String, Vec<Value>) {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        if let Some(c) = self.card {
            clauses.push("card = ?".to_string());
            params.push(Value::Integer(i64::from(c)));
        }
        if let Some(i) = &self.iccid {
            clauses.push("iccid = ?".to_string());
            params.push(Value::Text(i.clone()));
        }
        if let Some(u) = &self.user {
            clauses.push("user = ?".to_string());
            params.push(Value::Text(u.clone()));
        }
        if let Some(s) = self.since {
            let t = s.resolve(now).millis();
            let n = since_clause.matches('?').count();
            clauses.push(format!("({since_clause})"));
            params.extend(std::iter::repeat_n(Value::Integer(t), n));
        }
        let sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (sql, params)
    }

    /// The lease query, relative to `now` (for `since` as a duration).
    pub fn lease_sql(&self, now: Timestamp) -> (String, Vec<Value>) {
        // Held at some point since then: begun after it, ended after it, or still open. A row
        // a crash closed has no end: it counts by its start.
        let (filters, mut params) =
            self.filters("start_ms >= ? OR end_ms >= ? OR why IS NULL", now);
        params.push(Value::Integer(i64::from(self.limit())));
        (
            format!(
                "SELECT {LEASE_COLUMNS} FROM leases{filters} ORDER BY start_ms DESC, id DESC LIMIT ?"
            ),
            params,
        )
    }

    /// The event query, relative to `now`.
    pub fn event_sql(&self, now: Timestamp) -> (String, Vec<Value>) {
        let (filters, mut params) = self.filters("time_ms >= ?", now);
        params.push(Value::Integer(i64::from(self.limit())));
        (
            format!(
                "SELECT {EVENT_COLUMNS} FROM events{filters} ORDER BY time_ms DESC, id DESC LIMIT ?"
            ),
            params,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sql_names_each_filter_once_with_its_parameter() {
        let now = Timestamp::from_millis(10_000_000);
        let (sql, p) = Query::default().lease_sql(now);
        assert!(!sql.contains("WHERE"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY start_ms DESC, id DESC LIMIT ?"),
            "{sql}"
        );
        assert_eq!(p, vec![Value::Integer(100)]);

        let q = Query {
            card: Some(18),
            iccid: Some("8949".into()),
            user: Some("alice".into()),
            since: Some(Since::Ago(Duration::from_secs(60))),
            limit: Some(5),
        };
        let (sql, p) = q.lease_sql(now);
        assert!(
            sql.contains(
                " WHERE card = ? AND iccid = ? AND user = ? AND \
                 (start_ms >= ? OR end_ms >= ? OR why IS NULL) ORDER BY"
            ),
            "{sql}"
        );
        assert_eq!(
            p,
            vec![
                Value::Integer(18),
                Value::Text("8949".into()),
                Value::Text("alice".into()),
                Value::Integer(9_940_000),
                Value::Integer(9_940_000),
                Value::Integer(5),
            ]
        );
        let (sql, p) = q.event_sql(now);
        assert!(
            sql.contains("(time_ms >= ?) ORDER BY time_ms DESC"),
            "{sql}"
        );
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn checks_and_query_strings() {
        assert_eq!(
            Query {
                card: Some(0),
                ..Query::default()
            }
            .check(),
            Err(QueryError::Card(0))
        );
        assert_eq!(
            Query {
                limit: Some(0),
                ..Query::default()
            }
            .check(),
            Err(QueryError::Limit(0))
        );
        assert!(Query {
            card: Some(256),
            limit: Some(10_000),
            ..Query::default()
        }
        .check()
        .is_ok());
        let q: Query = serde_json::from_str(r#"{"card":18,"since":"2h","limit":3}"#).unwrap();
        assert_eq!(q.since, Some(Since::Ago(Duration::from_secs(7200))));
        assert!(serde_json::from_str::<Query>(r#"{"since":"soon"}"#).is_err());
        assert!(serde_json::from_str::<Query>(r#"{"cards":1}"#).is_err());
    }
}
