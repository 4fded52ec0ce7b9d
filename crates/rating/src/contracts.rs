//! Contracts: what is not metered. One JSON file for all accounts:
//!
//! ```json
//! { "accounts": [ {
//!     "account_id": "acme",
//!     "tariff_id": "centron",
//!     "credit": "5.00",
//!     "trial": false,
//!     "cost_alerts": ["50.00", "100.00"],
//!     "resources": [
//!       { "resource_id": "gpu-7", "interval": "monthly", "start": "2026-10-03T10:00:00Z" },
//!       { "resource_id": "cx-1", "options": ["backups"] }
//!     ],
//!     "subscriptions": [
//!       { "sku": "managing", "start": "2026-09-01", "end": "2027-01-01", "resource_id": "vm-3" }
//!     ],
//!     "reservations": [
//!       { "reservation": "c2m4-dedicated", "order_date": "2026-10-15", "term_months": 12 }
//!     ],
//!     "commitments": [
//!       { "name": "k-2026", "sku": "c4m8", "kind": "server", "covers": "flavor",
//!         "hours_per_month": "1000", "price": "0.06", "start": "2026-01-01", "term_months": 12 }
//!     ]
//! } ] }
//! ```
//!
//! - `credit` (default 0) is offset against the invoice total (N6).
//! - `trial` (default false) marks a free-trial account (T6; read by budgets, not rating).
//! - `cost_alerts` (H10) are thresholds of the month's bill so far: `tally watch` sends a
//!   notice the hour the bill first exceeds each.
//! - `resources` lists only resources whose terms differ from the default: `interval`
//!   (T2, default `hourly`; any other interval needs `start`, the instant the contract's
//!   periods are counted from) and `options` the tariff's surcharges ask for (H6
//!   `backups`). A resource not listed is hourly with no options.
//! - `subscriptions` book a tariff's monthly products (C4, C7) from `start` until `end`
//!   (dates in the tariff's time zone, `end` exclusive and optional), `quantity` units
//!   (default 1); with a `resource_id`, only months in which that resource has usage.
//! - `reservations` order a tariff's reservation (C5): the term starts at 00:00 of
//!   `order_date` and lasts `term_months`; `quantity` instances (default 1).
//! - `commitments` (C6) are an account's own minimum purchase: `hours_per_month` of the
//!   product's time charge `covers` at the agreed `price` per hour, billed whether used or
//!   not for `term_months` from `start` (prorated by days in a partial month); hours
//!   beyond the commitment and all hours after the term are pay-per-use.
//!
//! Every field is checked against the account's tariff before anything is rated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_model::ResourceKind;
use tally_model::tariff::{DecimalText, Interval};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contracts {
    pub accounts: Vec<AccountContract>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountContract {
    pub account_id: String,
    pub tariff_id: String,
    #[serde(default, with = "tally_model::money::optional_string")]
    pub credit: Option<Decimal>,
    #[serde(default)]
    pub trial: bool,
    #[serde(default)]
    pub cost_alerts: Vec<DecimalText>,
    #[serde(default)]
    pub resources: Vec<ResourceTerms>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionBooking>,
    #[serde(default)]
    pub reservations: Vec<ReservationOrder>,
    #[serde(default)]
    pub commitments: Vec<Commitment>,
}

/// A resource's terms where they differ from the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTerms {
    pub resource_id: String,
    #[serde(default)]
    pub interval: Interval,
    /// Where the contract's periods are counted from; needed for intervals other than
    /// hourly.
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub options: BTreeSet<String>,
}

/// A monthly product booked (C4, C7).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBooking {
    pub sku: String,
    pub start: NaiveDate,
    /// Exclusive: the first day no longer booked.
    #[serde(default)]
    pub end: Option<NaiveDate>,
    #[serde(default)]
    pub resource_id: Option<String>,
    #[serde(default = "one")]
    pub quantity: u32,
}

/// A reservation ordered (C5).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationOrder {
    /// The tariff's reservation `name`.
    pub reservation: String,
    pub order_date: NaiveDate,
    pub term_months: u32,
    #[serde(default = "one")]
    pub quantity: u32,
}

/// A minimum purchase agreed with the account (C6).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commitment {
    /// Names the line.
    pub name: String,
    pub sku: String,
    pub kind: ResourceKind,
    /// The product's time charge whose hours consume it.
    pub covers: String,
    #[serde(with = "tally_model::money::string")]
    pub hours_per_month: Decimal,
    /// The agreed price per committed hour.
    #[serde(with = "tally_model::money::string")]
    pub price: Decimal,
    pub start: NaiveDate,
    pub term_months: u32,
}

const fn one() -> u32 {
    1
}

impl AccountContract {
    /// The terms of a resource: those listed, or hourly with no options (those have no
    /// resource id). Borrowed: it is asked for every resource of the month.
    pub fn terms(&self, resource_id: &str) -> &ResourceTerms {
        static HOURLY: ResourceTerms = ResourceTerms {
            resource_id: String::new(),
            interval: Interval::Hourly,
            start: None,
            options: BTreeSet::new(),
        };
        self.resources
            .iter()
            .find(|terms| terms.resource_id == resource_id)
            .unwrap_or(&HOURLY)
    }

    /// Checks what can be checked without the tariff.
    fn check(&self) -> std::result::Result<(), String> {
        if self.credit.is_some_and(|credit| credit.is_sign_negative()) {
            return Err("credit must not be negative".to_owned());
        }
        if let Some(alert) = self
            .cost_alerts
            .iter()
            .find(|alert| alert.0 <= Decimal::ZERO)
        {
            return Err(format!("cost alert {} must be positive", alert.0));
        }
        let mut seen = BTreeSet::new();
        for terms in &self.resources {
            if !seen.insert(&terms.resource_id) {
                return Err(format!(
                    "resource '{}' is listed twice under resources",
                    terms.resource_id
                ));
            }
            if terms.interval != Interval::Hourly && terms.start.is_none() {
                return Err(format!(
                    "resource '{}' is on the {} interval but has no start: the contract's periods are counted from it",
                    terms.resource_id,
                    terms.interval.as_str()
                ));
            }
        }
        for booking in &self.subscriptions {
            if booking.end.is_some_and(|end| end <= booking.start) {
                return Err(format!(
                    "subscription '{}' ends ({}) on or before it starts ({})",
                    booking.sku,
                    booking.end.unwrap_or_default(),
                    booking.start
                ));
            }
            if booking.quantity == 0 {
                return Err(format!("subscription '{}' has quantity 0", booking.sku));
            }
        }
        for order in &self.reservations {
            if order.quantity == 0 {
                return Err(format!(
                    "reservation '{}' has quantity 0",
                    order.reservation
                ));
            }
        }
        for commitment in &self.commitments {
            if commitment.term_months == 0
                || commitment.hours_per_month <= Decimal::ZERO
                || commitment.price.is_sign_negative()
            {
                return Err(format!(
                    "commitment '{}' needs term_months > 0, hours_per_month > 0 and a price ≥ 0",
                    commitment.name
                ));
            }
        }
        Ok(())
    }
}

/// Contracts by account id.
pub fn load_contracts(path: &Path) -> Result<BTreeMap<String, AccountContract>> {
    let error = |detail: String| Error::Contracts {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let contracts: Contracts = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    let mut by_account = BTreeMap::new();
    for contract in contracts.accounts {
        contract
            .check()
            .map_err(|detail| error(format!("account '{}': {detail}", contract.account_id)))?;
        let account_id = contract.account_id.clone();
        if by_account.insert(account_id.clone(), contract).is_some() {
            return Err(error(format!("account '{account_id}' has two contracts")));
        }
    }
    Ok(by_account)
}
