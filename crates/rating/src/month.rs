//! Billing months: calendar months in a tariff's time zone, as UTC instants and hours.

use chrono::{DateTime, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use tally_model::Hour;

use crate::error::{Error, Result};

/// The first day of the month `label` (`YYYY-MM`): the same date in every time zone.
pub fn first_day(label: &str) -> Result<NaiveDate> {
    let not_a_month = || Error::Month {
        month: label.to_owned(),
        detail: "is not of the form YYYY-MM, e.g. 2026-10".to_owned(),
    };
    let day =
        NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").map_err(|_| not_a_month())?;
    // `2026-1` parses as January: only the canonical form names a month.
    if day.format("%Y-%m").to_string() != label {
        return Err(not_a_month());
    }
    Ok(day)
}

/// A billing month: its label, first day, and bounds as UTC instants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingMonth {
    /// `YYYY-MM`.
    pub label: String,
    /// The zone whose calendar the month follows.
    pub time_zone: Tz,
    pub first_day: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The first instant of `day` in `time_zone`: midnight, or, in the few zones whose DST
/// switch skips midnight, the first hour after the gap. `earliest` picks the first of two
/// midnights when the clock goes back over it.
pub fn day_start(time_zone: Tz, day: NaiveDate) -> Option<DateTime<Utc>> {
    (0..3)
        .filter_map(|hour| day.and_hms_opt(hour, 0, 0))
        .find_map(|local| time_zone.from_local_datetime(&local).earliest())
        .map(|start| start.with_timezone(&Utc))
}

impl BillingMonth {
    /// The day after the month's last day.
    pub fn next_first_day(&self) -> NaiveDate {
        self.first_day
            .checked_add_months(Months::new(1))
            .unwrap_or(NaiveDate::MAX)
    }

    /// Days in the month.
    pub fn days(&self) -> i64 {
        (self.next_first_day() - self.first_day).num_days()
    }

    /// The month `label` (`YYYY-MM`) in `time_zone`.
    pub fn new(label: &str, time_zone: Tz) -> Result<Self> {
        let bad = |detail: String| Error::Month {
            month: label.to_owned(),
            detail,
        };
        let not_a_month = || bad("is not of the form YYYY-MM, e.g. 2026-10".to_owned());
        let first_day = first_day(label)?;
        let next = first_day
            .checked_add_months(Months::new(1))
            .ok_or_else(not_a_month)?;
        let midnight = |day: NaiveDate| -> Result<DateTime<Utc>> {
            let start = day_start(time_zone, day)
                .ok_or_else(|| bad(format!("{day} has no start in {time_zone}")))?;
            // The lake is partitioned by UTC hour: a month must start on a whole one.
            if start.timestamp() % 3600 != 0 {
                return Err(bad(format!(
                    "{day} 00:00 in {time_zone} is {start} UTC, not a whole UTC hour; Tally rates whole UTC hours, so use a time zone with a whole-hour offset"
                )));
            }
            Ok(start)
        };
        Ok(Self {
            label: label.to_owned(),
            time_zone,
            first_day,
            start: midnight(first_day)?,
            end: midnight(next)?,
        })
    }

    pub fn first_hour(&self) -> Hour {
        Hour::containing(self.start)
    }

    /// The first hour after the month.
    pub fn end_hour(&self) -> Hour {
        Hour::containing(self.end)
    }

    pub fn hours(&self) -> i64 {
        self.end_hour().unix_hours() - self.first_hour().unix_hours()
    }

    pub fn minutes(&self) -> i64 {
        self.hours() * 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berlin_months_have_743_744_or_745_hours() {
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(
            BillingMonth::new("2026-03", berlin).expect("march").hours(),
            743
        );
        assert_eq!(
            BillingMonth::new("2026-10", berlin)
                .expect("october")
                .hours(),
            745
        );
        assert_eq!(
            BillingMonth::new("2026-07", berlin).expect("july").hours(),
            744
        );
        assert_eq!(
            BillingMonth::new("2026-02", berlin)
                .expect("february")
                .hours(),
            672
        );
        let october = BillingMonth::new("2026-10", berlin).expect("october");
        assert_eq!(october.first_hour().partition_value(), "2026-09-30T22");
        assert!(BillingMonth::new("2026-13", berlin).is_err());
        assert!(BillingMonth::new("2026-1", berlin).is_err());
        let kolkata = BillingMonth::new("2026-10", chrono_tz::Asia::Kolkata)
            .expect_err("half-hour offset")
            .to_string();
        assert!(kolkata.contains("whole UTC hour"), "{kolkata}");
    }
}
