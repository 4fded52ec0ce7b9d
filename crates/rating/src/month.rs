//! Billing months: calendar months in a tariff's time zone, as UTC instants and hours.

use chrono::{DateTime, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use tally_model::Hour;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingMonth {
    /// `YYYY-MM`.
    pub label: String,
    pub first_day: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl BillingMonth {
    pub fn new(label: &str, time_zone: Tz) -> Result<Self> {
        let bad = || Error::Month(label.to_owned());
        let first_day =
            NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").map_err(|_| bad())?;
        if first_day.format("%Y-%m").to_string() != label {
            return Err(bad());
        }
        let next = first_day
            .checked_add_months(Months::new(1))
            .ok_or_else(bad)?;
        let midnight = |day: NaiveDate| -> Result<DateTime<Utc>> {
            let local = day.and_hms_opt(0, 0, 0).ok_or_else(bad)?;
            // Midnight exists in every IANA zone used for billing; `earliest` covers the
            // few zones whose DST switch is at midnight.
            Ok(time_zone
                .from_local_datetime(&local)
                .earliest()
                .ok_or_else(bad)?
                .with_timezone(&Utc))
        };
        Ok(Self {
            label: label.to_owned(),
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
    }
}
