//! Points in time as the history keeps and prints them: milliseconds since the Unix epoch in
//! the database (sortable integers), RFC 3339 in UTC in JSON and text
//! (`2026-12-02T06:41:13.123Z`). `--since` / `since=` take either a duration back from now
//! (`90s`, `15m`, `2h`, `7d`, `1w`, `1h30m`) or a time (RFC 3339 with any offset, or a date).
//!
//! Hand-written (the civil-date conversion is Howard Hinnant's): a date crate would be a
//! dependency for two functions.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Text that is neither a duration nor a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is no RFC 3339 time (say 2026-12-01T10:00:00Z, 2026-12-01T10:00:00+02:00 or 2026-12-01)")]
    Time(String),
    #[error("{0:?} is no duration (say 90s, 15m, 2h, 7d, 1w or 1h30m)")]
    Duration(String),
    #[error("{0:?} is neither a duration (90s, 15m, 2h, 7d, 1w, 1h30m) nor an RFC 3339 time (2026-12-01T10:00:00Z, 2026-12-01)")]
    Since(String),
}

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub const fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// `self - d`, saturating.
    pub fn before(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// `self + d`, saturating.
    pub fn after(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `20261202T064113Z`: for file names (no colons).
    pub fn compact(self) -> String {
        let (y, mo, d, h, mi, s, _) = self.civil();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
    }

    fn civil(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let secs = (ms_of_day / 1000) as u32;
        (
            y,
            mo,
            d,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            (ms_of_day % 1000) as u32,
        )
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = self.civil();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;

    fn from_str(text: &str) -> Result<Timestamp, TimeError> {
        parse_rfc3339(text).ok_or_else(|| TimeError::Time(text.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// A fixed number of ASCII digits at the front of `s`.
fn digits(s: &mut &[u8], n: usize) -> Option<u32> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s[..n]
        .iter()
        .fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'));
    *s = &s[n..];
    Some(v)
}

fn byte(s: &mut &[u8], want: &[u8]) -> Option<u8> {
    let c = *s.first()?;
    if want.contains(&c) {
        *s = &s[1..];
        Some(c)
    } else {
        None
    }
}

/// RFC 3339 (`T`, `t` or a space between date and time; `Z`, `z` or `±HH:MM`), or a date alone
/// (midnight UTC). A space where the offset's sign belongs is taken for `+`: that is what an
/// unencoded `+` in a URL query turns into.
fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let mut s = text.as_bytes();
    let y = digits(&mut s, 4)?;
    byte(&mut s, b"-")?;
    let mo = digits(&mut s, 2)?;
    byte(&mut s, b"-")?;
    let d = digits(&mut s, 2)?;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(i64::from(y), mo) {
        return None;
    }
    let day_ms = days_from_civil(i64::from(y), mo, d) * 86_400_000;
    if s.is_empty() {
        return Some(Timestamp(day_ms));
    }
    byte(&mut s, b"Tt ")?;
    let h = digits(&mut s, 2)?;
    byte(&mut s, b":")?;
    let mi = digits(&mut s, 2)?;
    byte(&mut s, b":")?;
    let sec = digits(&mut s, 2)?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut ms = 0u32;
    if byte(&mut s, b".").is_some() {
        let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let frac = &s[..n];
        ms = (0..3).fold(0, |acc, i| {
            acc * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'))
        });
        s = &s[n..];
    }
    let offset_min: i64 = match byte(&mut s, b"Zz+- ")? {
        b'Z' | b'z' => 0,
        sign => {
            let oh = digits(&mut s, 2)?;
            byte(&mut s, b":")?;
            let om = digits(&mut s, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
    };
    if !s.is_empty() {
        return None;
    }
    // A leap second (:60) is the last millisecond before the next minute.
    let sec_ms = if sec == 60 { 59_999 } else { sec * 1000 + ms };
    let local = day_ms + i64::from(h * 3600 + mi * 60) * 1000 + i64::from(sec_ms);
    Some(Timestamp(local - offset_min * 60_000))
}

/// `90s`, `15m`, `2h`, `7d`, `1w`, and sums of them (`1h30m`). A bare number is refused: is
/// `90` seconds or days?
pub fn parse_duration(text: &str) -> Result<Duration, TimeError> {
    let err = || TimeError::Duration(text.to_string());
    let mut s = text.as_bytes();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 12 {
            return Err(err());
        }
        let v: u64 = std::str::from_utf8(&s[..n])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(err)?;
        s = &s[n..];
        let unit = match s.first() {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            Some(b'w') => 7 * 86_400,
            _ => return Err(err()),
        };
        s = &s[1..];
        total = v
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(err)?;
    }
    Ok(Duration::from_secs(total))
}

/// Where a history query starts: a duration back from the time of the query, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(Timestamp),
}

impl Since {
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            Since::Ago(d) => now.before(d),
            Since::At(t) => t,
        }
    }
}

impl FromStr for Since {
    type Err = TimeError;

    fn from_str(text: &str) -> Result<Since, TimeError> {
        if let Ok(d) = parse_duration(text) {
            return Ok(Since::Ago(d));
        }
        parse_rfc3339(text)
            .map(Since::At)
            .ok_or_else(|| TimeError::Since(text.to_string()))
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Since::Ago(d) => write!(f, "{}s", d.as_secs()),
            Since::At(t) => t.fmt(f),
        }
    }
}

impl Serialize for Since {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Since, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_and_known_instants() {
        let t: Timestamp = "2026-12-02T06:41:13.123Z".parse().unwrap();
        assert_eq!(t.millis(), 1_796_193_673_123);
        assert_eq!(t.to_string(), "2026-12-02T06:41:13.123Z");
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
        // Every day boundary over four centuries survives the round trip.
        for day in (-200_000i64..200_000).step_by(97) {
            let t = Timestamp::from_millis(day * 86_400_000 + 45_296_789);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t, "{t}");
        }
        assert_eq!(t.compact(), "20261202T064113Z");
    }

    #[test]
    fn rfc3339_offsets_dates_and_refusals() {
        let z: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let plus: Timestamp = "2026-12-01T12:00:00+02:00".parse().unwrap();
        let minus: Timestamp = "2026-12-01T05:30:00-04:30".parse().unwrap();
        let space: Timestamp = "2026-12-01 12:00:00 02:00".parse().unwrap();
        assert_eq!(z, plus);
        assert_eq!(z, minus);
        assert_eq!(z, space);
        let date: Timestamp = "2026-12-01".parse().unwrap();
        assert_eq!(z.millis() - date.millis(), 10 * 3_600_000);
        let frac: Timestamp = "2026-12-01T10:00:00.5z".parse().unwrap();
        assert_eq!(frac.millis() - z.millis(), 500);
        let frac: Timestamp = "2026-12-01T10:00:00.123456789Z".parse().unwrap();
        assert_eq!(frac.millis() - z.millis(), 123);
        for bad in [
            "",
            "2026-13-01",
            "2026-02-29",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00Z",
            "2026-12-01T10:00:00.Z",
            "2026-12-01T10:00:00Zjunk",
            "2026-12-01T10:00:00+0200",
            "26-12-01",
            "yesterday",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?}");
        }
        assert!("2024-02-29".parse::<Timestamp>().is_ok());
    }

    #[test]
    fn durations_and_since() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "90",
            "1x",
            "h",
            "1h30",
            "-1h",
            "99999999999999d",
            "1.5h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let now: Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        assert_eq!(
            "1d".parse::<Since>().unwrap().resolve(now),
            "2026-12-01T00:00:00Z".parse().unwrap()
        );
        assert_eq!(
            "2026-11-01".parse::<Since>().unwrap(),
            Since::At("2026-11-01T00:00:00Z".parse().unwrap())
        );
        let e = "90".parse::<Since>().unwrap_err().to_string();
        assert!(e.contains("neither a duration"), "{e}");
    }
}
