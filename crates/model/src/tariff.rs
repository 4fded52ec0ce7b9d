//! Tariff v1 (`schemas/tariff.v1.schema.json`): the typed form of a tariff file (TOML).
//!
//! A tariff prices products by SKU. Each product has any of three kinds of charge:
//! - **time** charges (`[[products.time]]`): a price per hour or per month times a time
//!   quantity with a chosen granularity, state factors, caps and minimums;
//! - a **traffic** charge: an included allowance and a price for the overage;
//! - a **storage** charge: a price per unit and month on the occupied size.
//!
//! Nothing in it names a provider: the four reference tariffs differ only in values.
//! Money is written as strings (`"0.006"`) so no float ever touches it.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::sample::{ResourceKind, ResourceState};
use crate::units::ByteUnit;

/// The `schema` value of every v1 tariff file.
pub const SCHEMA_V1: &str = "tally.tariff.v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// Always `tally.tariff.v1`.
    pub schema: String,
    /// Stable id that contracts refer to, e.g. `hetzner-cloud`.
    pub id: String,
    /// This version's name; line items carry it (`x_tariff_version`).
    pub version: String,
    /// The first day (in `time_zone`) this version applies to; for a month, the version
    /// with the latest `effective_from` on or before the month's first day is used.
    pub effective_from: NaiveDate,
    /// The provider's name, as FOCUS `ProviderName`.
    pub provider: String,
    /// ISO 4217 currency of every price.
    pub currency: String,
    /// IANA time zone of the billing months (`Europe/Berlin` months have 743–745 hours).
    pub time_zone: String,
    #[serde(default)]
    pub invoice: InvoicePolicy,
    pub products: Vec<Product>,
}

/// How an invoice is totalled (BILLING.md: sum unrounded, round the total once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicePolicy {
    /// Decimal places of the total (rounded half-up) and of the displayed lines.
    #[serde(default = "default_decimal_places")]
    pub decimal_places: u32,
}

impl Default for InvoicePolicy {
    fn default() -> Self {
        Self {
            decimal_places: default_decimal_places(),
        }
    }
}

/// Cents.
const fn default_decimal_places() -> u32 {
    2
}

/// One product (SKU) of the tariff and its charges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub sku: String,
    pub kind: ResourceKind,
    /// Words for `ChargeDescription`.
    pub description: String,
    /// Labels whose values, with the SKU, make one line for all resources sharing them
    /// (C3: one line per flavor and operating system). Empty: one line per resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time: Vec<TimeCharge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficCharge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageCharge>,
}

/// The unit a price is per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PricePer {
    Hour,
    Month,
}

/// How time becomes a billed quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeQuantity {
    /// Hours with fractions from the billable minutes, each weighted by its state's factor
    /// (C1: 2:30 + 1:30 + 2 × 0:45 + 12:15 = 17.75 h).
    Minutes,
    /// Every started clock hour with a billable minute, at the factor of the most
    /// expensive state seen in that hour (T2 hourly, T3, N2).
    StartedHours,
    /// Billable minutes of the month / 60, rounded up (H1).
    CeilTotalHours,
    /// Started billable hours / hours of the calendar month, in months (H3).
    MonthFraction,
    /// One per month with any billable minute (monthly flat items, C7).
    StartedMonths,
}

/// A price for time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeCharge {
    /// Names the line (e.g. `server`, `windows licence`).
    pub name: String,
    /// The BILLING.md rule this implements, carried in `x_rule`.
    pub rule: String,
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    pub per: PricePer,
    pub quantity: TimeQuantity,
    /// Factor per state; a state not listed is not billed.
    pub states: BTreeMap<ResourceState, FactorText>,
    /// The price is per GPU (T1).
    #[serde(default)]
    pub per_gpu: bool,
    /// Explicit prices of whole configurations by GPU count, replacing `price` × GPUs
    /// (T1: infinityai-a100 with 8 GPUs = 7.67/h).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configuration_prices: BTreeMap<String, FactorText>,
    /// Only resources with these label values pay this charge (e.g. `{ os = "windows" }`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub when_labels: BTreeMap<String, String>,
    /// The charge is min(cap, amount) (H1, H7).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub monthly_cap: Option<Decimal>,
    /// At most this many hours a month are charged (N2: 672).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hours: Option<u32>,
    /// A month with any charge costs at least this much.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub minimum_monthly: Option<Decimal>,
}

/// A decimal written as a string in the tariff file (factors, configuration prices).
pub type FactorText = DecimalText;

/// A decimal that (de)serialises as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecimalText(#[serde(with = "crate::money::string")] pub Decimal);

/// How an allowance is rounded into billed units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// The exact fraction (T4, N4).
    Exact,
    /// Every started unit in full (H4).
    Ceil,
}

/// Which allowance scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowanceScope {
    Resource,
    Gpu,
}

/// Outbound external traffic: an allowance and a price for what is beyond it. Inbound
/// and internal traffic are never charged by v1 tariffs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficCharge {
    pub rule: String,
    /// Included per month, in `included_unit`.
    #[serde(with = "crate::money::string")]
    pub included: Decimal,
    pub included_unit: ByteUnit,
    pub included_per: AllowanceScope,
    /// Prorate the allowance by the product's billed hours over this many hours
    /// (N4: included × billed_hours / 672). Absent: not prorated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prorate_over_hours: Option<u32>,
    /// Price per `unit` beyond the allowance.
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    pub unit: ByteUnit,
    pub rounding: Rounding,
}

/// How stored size becomes a quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageAccounting {
    /// Unit-hours priced at `price / hours_per_month` each (N5: GiB-hours at 0.03 / 672).
    UnitHours,
    /// The average size over the calendar month in units: size-minutes / minutes of the
    /// month (H5: per GB and month, prorated by the fraction of the month it existed).
    MonthFraction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageCharge {
    pub rule: String,
    /// Price per `unit` and month.
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    pub unit: ByteUnit,
    pub accounting: StorageAccounting,
    /// For `unit_hours`: the hours a month's price is divided by, and the most hours
    /// charged in a month (N5: 672).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_per_month: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub minimum_monthly: Option<Decimal>,
}

impl Tariff {
    pub fn product(&self, sku: &str, kind: ResourceKind) -> Option<&Product> {
        self.products
            .iter()
            .find(|product| product.sku == sku && product.kind == kind)
    }
}

impl TimeCharge {
    pub fn factor(&self, state: ResourceState) -> Decimal {
        self.states
            .get(&state)
            .map_or(Decimal::ZERO, |factor| factor.0)
    }
}
