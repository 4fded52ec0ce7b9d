//! UTC minutes and hours.
//!
//! Samples describe a whole minute and rollups a whole hour, so both are integers counted
//! from the Unix epoch. That makes "which hour is this minute in" a division and keeps
//! timestamps with seconds out of the data entirely.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC minute: the minute a sample describes, counted from the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minute(i64);

/// A UTC clock hour, counted from the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(i64);

/// Why a text is not a minute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinuteError {
    #[error("'{0}' is not an RFC 3339 UTC timestamp such as 2026-10-01T13:45:00Z")]
    NotATimestamp(String),
    #[error("'{0}' is not at the start of a minute: seconds and fractions must be zero")]
    NotAligned(String),
    #[error("'{0}' is not an hour partition value such as 2026-10-01T13")]
    NotAnHour(String),
}

impl Minute {
    /// 0000-01-01T00:00Z and 9999-12-31T23:59Z: the minutes RFC 3339 can write, so the
    /// ones a sample may carry in either wire encoding.
    pub const FIRST_WRITABLE: Self = Self(-62_167_219_200 / 60);
    pub const LAST_WRITABLE: Self = Self(253_402_300_740 / 60);

    pub const fn from_unix_minutes(minutes: i64) -> Self {
        Self(minutes)
    }

    pub const fn unix_minutes(self) -> i64 {
        self.0
    }

    /// The minute that starts at `at`; an error unless `at` is exactly on a minute.
    pub fn from_datetime(at: DateTime<Utc>) -> Result<Self, MinuteError> {
        if at.second() != 0 || at.nanosecond() != 0 {
            return Err(MinuteError::NotAligned(at.to_rfc3339()));
        }
        Ok(Self(at.timestamp().div_euclid(60)))
    }

    /// The minute that contains `at` (for clocks, which are never aligned).
    pub fn containing(at: DateTime<Utc>) -> Self {
        Self(at.timestamp().div_euclid(60))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0 * 60, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    pub const fn hour(self) -> Hour {
        Hour(self.0.div_euclid(60))
    }

    /// 0..60: the bit of this minute in its hour's minute masks.
    pub const fn minute_of_hour(self) -> u32 {
        self.0.rem_euclid(60) as u32
    }

    pub const fn plus(self, minutes: i64) -> Self {
        Self(self.0 + minutes)
    }
}

impl Hour {
    pub const fn from_unix_hours(hours: i64) -> Self {
        Self(hours)
    }

    pub const fn unix_hours(self) -> i64 {
        self.0
    }

    pub const fn first_minute(self) -> Minute {
        Minute(self.0 * 60)
    }

    /// The first minute after this hour.
    pub const fn end_minute(self) -> Minute {
        Minute((self.0 + 1) * 60)
    }

    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }

    pub const fn previous(self) -> Self {
        Self(self.0 - 1)
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        self.first_minute().to_datetime()
    }

    /// The hour that contains `at`.
    pub fn containing(at: DateTime<Utc>) -> Self {
        Minute::containing(at).hour()
    }

    /// Microseconds since the epoch, as the rollups' `hour_start` column stores it.
    pub const fn timestamp_micros(self) -> i64 {
        self.0 * 3_600_000_000
    }

    pub const fn from_timestamp_micros(micros: i64) -> Self {
        Self(micros.div_euclid(3_600_000_000))
    }

    /// The lake's partition value, `YYYY-MM-DDTHH` (UTC): sorts like the hours it names.
    pub fn partition_value(self) -> String {
        let at = self.to_datetime();
        match at.year() {
            // Formatted directly: chrono's `format` parses its pattern on every call, and
            // rating names hours in each of a month's ~127,000 line items' lineage.
            year @ 0..=9999 => format!(
                "{year:04}-{:02}-{:02}T{:02}",
                at.month(),
                at.day(),
                at.hour()
            ),
            _ => at.format("%Y-%m-%dT%H").to_string(),
        }
    }

    pub fn parse_partition_value(text: &str) -> Result<Self, MinuteError> {
        let parsed = NaiveDateTime::parse_from_str(&format!("{text}:00"), "%Y-%m-%dT%H:%M")
            .map_err(|_| MinuteError::NotAnHour(text.to_owned()))?;
        Ok(Self::containing(parsed.and_utc()))
    }
}

impl fmt::Display for Minute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_datetime().format("%Y-%m-%dT%H:%M:%SZ"))
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_datetime().format("%Y-%m-%dT%H:00Z"))
    }
}

impl FromStr for Minute {
    type Err = MinuteError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let at = DateTime::parse_from_rfc3339(text)
            .map_err(|_| MinuteError::NotATimestamp(text.to_owned()))?;
        Self::from_datetime(at.with_timezone(&Utc))
            .map_err(|_| MinuteError::NotAligned(text.to_owned()))
    }
}

impl Serialize for Minute {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Minute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writable_minutes_are_those_rfc_3339_writes_and_reads() {
        for minute in [Minute::FIRST_WRITABLE, Minute::LAST_WRITABLE] {
            let text = minute.to_string();
            assert_eq!(text.len(), "2026-10-01T13:45:00Z".len(), "{text}");
            assert_eq!(text.parse::<Minute>(), Ok(minute));
        }
        let beyond = Minute::from_unix_minutes(Minute::LAST_WRITABLE.unix_minutes() + 1);
        assert!(beyond.to_string().parse::<Minute>().is_err());
    }

    #[test]
    fn minute_round_trips_through_text() {
        let minute: Minute = "2026-10-25T01:59:00Z".parse().expect("valid minute");
        assert_eq!(minute.to_string(), "2026-10-25T01:59:00Z");
        assert_eq!(minute.minute_of_hour(), 59);
        assert_eq!(minute.hour().partition_value(), "2026-10-25T01");
        assert_eq!(
            Hour::parse_partition_value("2026-10-25T01").expect("valid hour"),
            minute.hour()
        );
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let minute: Minute = "2026-10-25T03:00:00+02:00".parse().expect("valid minute");
        assert_eq!(minute.to_string(), "2026-10-25T01:00:00Z");
    }

    #[test]
    fn unaligned_minutes_are_refused() {
        let error = "2026-10-01T00:00:30Z"
            .parse::<Minute>()
            .expect_err("seconds set");
        assert!(matches!(error, MinuteError::NotAligned(_)));
        assert!("yesterday".parse::<Minute>().is_err());
    }

    #[test]
    fn minutes_before_the_epoch_fall_in_the_right_hour() {
        let minute = Minute::from_unix_minutes(-1);
        assert_eq!(minute.hour(), Hour::from_unix_hours(-1));
        assert_eq!(minute.minute_of_hour(), 59);
    }
}
