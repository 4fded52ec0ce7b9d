//! Tariff v1 (`schemas/tariff.v1.schema.json`): the typed form of a tariff file (TOML).
//!
//! A tariff prices products, each matched by SKU id and resource kind. A product has any
//! of three kinds of charge:
//! - **time** charges (`[[products.time]]`): a price per hour or per month times a time
//!   quantity of a chosen granularity, with state factors, caps and minimums;
//! - a **traffic** charge (`[products.traffic]`): an included allowance of chosen meters
//!   and a price for the overage;
//! - a **storage** charge (`[products.storage]`): a price per unit and month on the
//!   occupied size.
//!
//! Nothing in it names a provider: the four reference tariffs of BILLING.md differ only in
//! values. Money and factors are written as strings (`"0.006"`) so that no float ever
//! touches them.
//!
//! # Growing the language
//! Every struct refuses unknown fields, so a typo is an error and never a silently free
//! product. New capabilities arrive as new *optional* fields or new enum values whose
//! absence means today's behaviour, so every v1 file keeps its meaning: for example a
//! billing `interval` on time charges (T2 daily/weekly/monthly), a charge priced as a
//! percentage of another (H6 backups), monthly products independent of usage (C4),
//! reservations and commitments (C5, C6) as new top-level tables. Contract data that
//! differs per account (chosen intervals, enabled backups, reservations bought) belongs in
//! the contracts file, which refers to the tariff by `id`. A change that alters the
//! meaning of an existing field is a new schema, `tally.tariff.v2`.

pub mod check;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::sample::{ResourceKind, ResourceState};
use crate::units::ByteUnit;

/// The `schema` value of every v1 tariff file.
pub const SCHEMA_V1: &str = "tally.tariff.v1";

/// One version of one provider's price list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// Always `tally.tariff.v1`: the file format, so an older Tally refuses a newer file.
    pub schema: String,
    /// Stable id that contracts refer to, e.g. `hetzner-cloud`. Several files may share an
    /// id with different `effective_from` dates: they are versions of one tariff.
    pub id: String,
    /// This version's name; every line item carries it (`x_tariff_version`).
    pub version: String,
    /// The first day (in `time_zone`) this version applies to. A month is rated with the
    /// version of the latest `effective_from` on or before the month's first day.
    pub effective_from: NaiveDate,
    /// The provider's name, as FOCUS `ProviderName`.
    pub provider: String,
    /// ISO 4217 code of the currency of every price, e.g. `EUR`.
    pub currency: String,
    /// IANA time zone whose calendar months are the billing months (`Europe/Berlin`
    /// months have 743, 744 or 745 hours across DST changes).
    pub time_zone: String,
    /// How the invoice is totalled; absent: BILLING.md's default rule.
    #[serde(default)]
    pub invoice: InvoicePolicy,
    /// The price list. A resource whose (SKU, kind) is not listed is an error when rated,
    /// never a free resource.
    pub products: Vec<Product>,
    /// Monthly flat products that accounts book in their contracts, independent of
    /// metered usage (C4 managing and licences, C7 add-ons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    /// Reservations accounts may order (C5): a monthly contingent of hours of one product,
    /// paid whether used or not, consumed by all of the account's instances of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<Reservation>,
    /// How prepaid accounts are run on this tariff (T5, T6); absent: the tariff has no
    /// prepaid accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepaid: Option<Prepaid>,
}

/// The rules for accounts that pay in advance from a balance (T5, T6). Each hour's charge
/// is debited from the balance once the hour is over; what happens when it cannot be is
/// prescribed here, in hours after the hour whose charge the balance could not cover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepaid {
    /// The BILLING.md rule(s) this implements, carried by every budget event.
    pub rule: String,
    /// The smallest and largest top-up accepted (T5: 10 to 1000).
    #[serde(with = "crate::money::string")]
    pub top_up_min: Decimal,
    #[serde(with = "crate::money::string")]
    pub top_up_max: Decimal,
    /// Starting servers needs a balance covering this many hours of each (T5: 24).
    pub start_cover_hours: u32,
    /// Once the balance has run out: servers are stopped at once, frozen after
    /// `freeze_after_hours` and terminated after `terminate_after_hours` (T5: at the latest
    /// 72 h), unless funds return first.
    pub freeze_after_hours: u32,
    pub terminate_after_hours: u32,
    /// When funds return, the unpaid charges of at most this many hours before are
    /// debited (T5: 12); older unpaid charges are written off.
    pub retroactive_hours: u32,
    /// A paying account is warned once a server has been stopped this long (T6: 16).
    pub stopped_warning_hours: u32,
    /// A trial account's server is frozen once it has been stopped this long (T6: 4).
    pub trial_freeze_after_stopped_hours: u32,
    /// A server is frozen once it has been stopped this long (T6: 7 days).
    pub max_stopped_hours: u32,
    /// Configurations that need a larger starting budget than the cover (T5: 96 h of an
    /// 8-GPU infinityai), released once the server runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub minimum_start: Vec<MinimumStart>,
}

/// A starting budget of `hours` × the configuration's hourly price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumStart {
    pub sku: String,
    /// The GPU count of the configuration.
    pub gpus: u16,
    pub hours: u32,
}

/// A monthly flat product booked by contract (C4, C7): each calendar month in which the
/// booking is active is charged in full, whatever the usage. A booking tied to a resource
/// is charged for the months in which that resource has usage, so it is billed for the
/// month in which the resource is deleted and not renewed after it (C4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The id contracts book it by.
    pub sku: String,
    /// Human words for FOCUS `ChargeDescription`.
    pub description: String,
    /// The BILLING.md rule(s) this implements, carried in `x_rule`.
    pub rule: String,
    /// Price per calendar month and unit booked.
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
}

/// A reservation (C5): bound to a product, not an instance. Each month of its term holds a
/// contingent of days-in-month × 24 hours per instance reserved (prorated by days in the
/// first and last month; the term starts at 00:00 of the order day in the tariff's time
/// zone), charged at `price` per hour whether used or not. The hours billed by the
/// product's time charge `covers`, of all the account's resources, consume it; what is
/// left expires at the month's end and usage beyond it stays pay-per-use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The id contracts order it by.
    pub name: String,
    /// Human words for FOCUS `ChargeDescription`.
    pub description: String,
    /// The BILLING.md rule(s) this implements, carried in `x_rule`.
    pub rule: String,
    /// The product whose hours it covers.
    pub sku: String,
    pub kind: ResourceKind,
    /// The name of that product's time charge it covers; the charge must bill hours
    /// additively (per minute or per started hour, without caps or minimums).
    pub covers: String,
    /// Price per contingent hour.
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    /// The terms on offer, in months (C5: 12, 24, 36).
    pub terms_months: Vec<u32>,
}

/// How an invoice is totalled. The default is BILLING.md's rule: lines keep full
/// precision, their sum is rounded once, half-up, to 2 decimals; each line is shown
/// rounded and the difference between the shown lines and the total is reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicePolicy {
    /// Decimal places of the total and of the displayed line amounts.
    #[serde(default = "default_decimal_places")]
    pub decimal_places: u32,
    /// How amounts are rounded to `decimal_places`.
    #[serde(default = "default_money_rounding")]
    pub rounding: MoneyRounding,
    /// Whether the total sums the lines at full precision or as rounded.
    #[serde(default = "default_line_amounts")]
    pub line_amounts: LineAmounts,
}

impl Default for InvoicePolicy {
    fn default() -> Self {
        Self {
            decimal_places: default_decimal_places(),
            rounding: default_money_rounding(),
            line_amounts: default_line_amounts(),
        }
    }
}

/// Cents: every reference provider invoices in whole cents.
const fn default_decimal_places() -> u32 {
    2
}

/// Commercial rounding, as BILLING.md prescribes for all four reference providers.
const fn default_money_rounding() -> MoneyRounding {
    MoneyRounding::HalfUp
}

/// BILLING.md: "each line item keeps full precision and only the invoice total is rounded".
const fn default_line_amounts() -> LineAmounts {
    LineAmounts::FullPrecision
}

/// A rounding rule for money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyRounding {
    /// Commercial rounding: a half rounds away from zero (0.125 → 0.13).
    HalfUp,
    /// Banker's rounding: a half rounds to the even digit (0.125 → 0.12).
    HalfEven,
}

/// What the invoice total adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineAmounts {
    /// Lines at full precision; only the total is rounded (H9: 1000 × 0.004 = 4.00).
    FullPrecision,
    /// Each line rounded first; the total is the sum of the rounded lines.
    Rounded,
}

/// One product (SKU) of the tariff and its charges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// The SKU id the meters report (`sku` column of the rollups).
    pub sku: String,
    /// The resource kind the meters report; a SKU id may be reused across kinds.
    pub kind: ResourceKind,
    /// Human words for FOCUS `ChargeDescription`.
    pub description: String,
    /// Labels whose values, with the SKU, make one line for all resources sharing them
    /// (C3: one line per flavor and operating system, hours summed over the VMs).
    /// Empty (the default): one line per resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Charges for time; each gives its own line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time: Vec<TimeCharge>,
    /// Charge for traffic beyond an allowance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficCharge>,
    /// Charge for stored size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageCharge>,
    /// Charges that are a share of one of the product's time charges (H6: backups are
    /// 20 % of the server's charge for the month).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub surcharges: Vec<Surcharge>,
}

/// A share of another charge of the same resource and month.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Surcharge {
    /// Names the line (e.g. `backups`).
    pub name: String,
    /// The BILLING.md rule(s) this implements, carried in `x_rule`.
    pub rule: String,
    /// The name of the product's time charge it is a share of, after caps and minimums.
    pub of: String,
    /// The share, e.g. `"0.20"`.
    pub factor: DecimalText,
    /// Only resources whose contract enables this option pay it (H6: `backups`);
    /// absent: every resource of the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option: Option<String>,
}

/// The unit a price is per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PricePer {
    /// The price is per hour; the quantity is in hours.
    Hour,
    /// The price is per day; with `started_periods` only.
    Day,
    /// The price is per week; with `started_periods` only.
    Week,
    /// The price is per calendar month; the quantity is in months.
    Month,
    /// The price is per year; with `started_periods` only.
    Year,
}

/// How a resource's contract pays for it (T2); contracts name it per resource.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Pay-per-use, accounted in the month of the usage: every tariff's default.
    #[default]
    Hourly,
    /// Paid in advance per day of the contract.
    Daily,
    /// Paid in advance per week of the contract.
    Weekly,
    /// Paid in advance per month of the contract.
    Monthly,
    /// Paid in advance per year of the contract.
    Yearly,
}

impl Interval {
    pub const ALL: [Self; 5] = [
        Self::Hourly,
        Self::Daily,
        Self::Weekly,
        Self::Monthly,
        Self::Yearly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }

    /// The unit a `started_periods` price of this interval is per; none for hourly.
    pub fn period(self) -> Option<PricePer> {
        match self {
            Self::Hourly => None,
            Self::Daily => Some(PricePer::Day),
            Self::Weekly => Some(PricePer::Week),
            Self::Monthly => Some(PricePer::Month),
            Self::Yearly => Some(PricePer::Year),
        }
    }

    fn is_hourly(&self) -> bool {
        *self == Self::Hourly
    }
}

/// How time becomes a billed quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeQuantity {
    /// Hours with fractions from the billable minutes, each weighted by its state's factor
    /// (C1: 2:30 + 1:30 + 2 × 0:45 + 12:15 = 17.75 h). Needs `per = "hour"`.
    Minutes,
    /// Every started clock hour with a billable minute counts in full, at the factor of
    /// the most expensive state seen in that hour (T2 hourly, T3, N2). Needs `per = "hour"`.
    StartedHours,
    /// The billable minutes of the month / 60, rounded up once (H1). Needs `per = "hour"`.
    CeilTotalHours,
    /// Started billable hours / hours of the calendar month, in months (H3: a floating IP
    /// for half of a 672-hour month costs half the monthly price). Needs `per = "month"`.
    MonthFraction,
    /// One for a month with any billable minute (monthly flat add-ons, C7: charged in full
    /// for every started month). Needs `per = "month"`.
    StartedMonths,
    /// Every started period of the resource's contract interval (T2: day, week, month or
    /// year, counted from the contract's start in the tariff's time zone), paid in full
    /// in the month the period starts, at the largest factor among the states seen in the
    /// period's hours of that month. `per` is the interval's unit.
    StartedPeriods,
}

/// A price for time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeCharge {
    /// Names the line (e.g. `server`, `windows licence`); unique within the product.
    pub name: String,
    /// The BILLING.md rule(s) this implements, carried in `x_rule` (e.g. `H1/H2`).
    pub rule: String,
    /// The contract interval this charge is for (T2): it applies only to resources whose
    /// contract names this interval. Absent: `hourly`, the pay-per-use default.
    #[serde(default, skip_serializing_if = "Interval::is_hourly")]
    pub interval: Interval,
    /// Price per `per` (per GPU if `per_gpu`).
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    /// What `price` is per.
    pub per: PricePer,
    /// How time becomes the billed quantity.
    pub quantity: TimeQuantity,
    /// Factor per state, e.g. `{ running = "1", stopped = "0.35" }`. A state not listed
    /// is not billed (C2: only `running` for standard flavors). With `started_hours`, an
    /// hour is charged at the largest factor among the states seen in it (T3).
    pub states: BTreeMap<ResourceState, DecimalText>,
    /// The price is per GPU: a server with n GPUs pays n × `price` (T1).
    #[serde(default)]
    pub per_gpu: bool,
    /// Explicit prices of whole configurations by GPU count, replacing n × `price`
    /// (T1: infinityai-a100 with 8 GPUs = 7.67/h). Keys are GPU counts; needs `per_gpu`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configuration_prices: BTreeMap<String, DecimalText>,
    /// Only usage with these label values pays this charge (e.g. `{ os = "windows" }` for
    /// an OS surcharge). Empty (the default): all usage of the product.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub when_labels: BTreeMap<String, String>,
    /// The month's charge of one resource is min(cap, amount) (H1, H7).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub monthly_cap: Option<Decimal>,
    /// At most this many hours a month are charged per resource (N2: 672); needs an
    /// hourly quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hours: Option<u32>,
    /// A resource-month with any charge costs at least this much.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub minimum_monthly: Option<Decimal>,
}

/// A decimal written as a string in the tariff file (factors, configuration prices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecimalText(#[serde(with = "crate::money::string")] pub Decimal);

/// How an overage is turned into billed units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// The exact fraction (T4, N4).
    Exact,
    /// Every started unit in full (H4: 0.8 TB beyond the allowance → 1 TB).
    Ceil,
}

/// What an allowance is counted per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowanceScope {
    /// Per resource and month (H4: 20 TB per server).
    Resource,
    /// Per GPU of the resource and month, by its largest GPU count in the month (T4).
    Gpu,
}

/// A traffic meter of the rollups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficCounter {
    /// Outbound bytes to destinations outside the network zone (`out_external_bytes`).
    OutExternal,
    /// Outbound bytes within the zone or to the provider's services (`out_internal_bytes`).
    OutInternal,
    /// Inbound bytes (`in_bytes`).
    In,
}

/// Traffic: an allowance and a price for what is beyond it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficCharge {
    /// The BILLING.md rule(s) this implements, carried in `x_rule`.
    pub rule: String,
    /// The meters that are charged, summed (all four reference tariffs: `["out_external"]`,
    /// since inbound and internal traffic are free).
    pub counters: Vec<TrafficCounter>,
    /// Included per month, in `included_unit`, per `included_per`.
    #[serde(with = "crate::money::string")]
    pub included: Decimal,
    /// Unit of `included`.
    pub included_unit: ByteUnit,
    /// Whether `included` is per resource or per GPU.
    pub included_per: AllowanceScope,
    /// Prorate the allowance over this many hours: included × billed_hours / N, where
    /// billed_hours are the hours the product's first time charge billed, at most N
    /// (N4: 1 TiB at 336 of 672 h → 512 GiB). Absent: not prorated (T4, H4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prorate_over_hours: Option<u32>,
    /// Price per `unit` beyond the allowance; or give `tiers` instead.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub price: Option<Decimal>,
    /// Prices by how many units beyond the allowance, instead of one `price`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// How `tiers` price the units (default: graduated).
    #[serde(default, skip_serializing_if = "TierMode::is_graduated")]
    pub tier_mode: TierMode,
    /// Unit of `price`, of the tiers' bounds and prices.
    pub unit: ByteUnit,
    /// How the overage becomes billed units.
    pub rounding: Rounding,
    /// Shares of the month's allowance whose use is announced (H4: 0.75 and 1), each
    /// once per resource and month by `tally watch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify_shares: Vec<DecimalText>,
}

/// One price band: the units up to `up_to` (from the previous band's bound) cost `price`
/// each. The last band has no bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub up_to: Option<Decimal>,
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
}

/// How tiers price a quantity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// Each unit at the price of the band it falls in.
    #[default]
    Graduated,
    /// Every unit at the price of the band the whole quantity falls in.
    Volume,
}

impl TierMode {
    fn is_graduated(&self) -> bool {
        *self == Self::Graduated
    }
}

/// How stored size becomes a quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageAccounting {
    /// Unit-hours from the size of every minute (size-minutes / 60), each hour priced at
    /// `price / hours_per_month`, at most `hours_per_month` hours a month (N5: GiB-hours at
    /// 0.03 / 672, at most 672 h).
    UnitHours,
    /// Unit-months: size-minutes / minutes of the calendar month, i.e. the size averaged
    /// over the whole month, so a snapshot kept for half the month at a constant size pays
    /// half the monthly price of that size (H5: per GB and month, prorated by the fraction
    /// of the month it existed).
    MonthFraction,
}

/// A price for stored size (snapshots, volumes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageCharge {
    /// The BILLING.md rule(s) this implements, carried in `x_rule`.
    pub rule: String,
    /// Price per `unit` and month.
    #[serde(with = "crate::money::string")]
    pub price: Decimal,
    /// Unit of the occupied size that `price` is per.
    pub unit: ByteUnit,
    /// How size over time becomes the quantity.
    pub accounting: StorageAccounting,
    /// For `unit_hours` (and only there): the hours a month's price is divided by, which
    /// are also the most hours charged in a month (N5: 672).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_per_month: Option<u32>,
    /// A resource-month with stored data costs at least this much (N5: 0.01 per snapshot).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::money::optional_string"
    )]
    pub minimum_monthly: Option<Decimal>,
}

impl Tariff {
    /// The monthly product of a booking, if the tariff sells it.
    pub fn subscription(&self, sku: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|item| item.sku == sku)
    }

    /// The reservation of this name, if the tariff offers it.
    pub fn reservation(&self, name: &str) -> Option<&Reservation> {
        self.reservations.iter().find(|item| item.name == name)
    }

    /// The product of a SKU and kind, if the tariff sells it.
    pub fn product(&self, sku: &str, kind: ResourceKind) -> Option<&Product> {
        self.products
            .iter()
            .find(|product| product.sku == sku && product.kind == kind)
    }
}

impl TimeCharge {
    /// The factor of `state`; zero for a state that is not billed.
    pub fn factor(&self, state: ResourceState) -> Decimal {
        self.states
            .get(&state)
            .map_or(Decimal::ZERO, |factor| factor.0)
    }

    /// Whether the charge applies to usage with these labels.
    pub fn applies_to(&self, labels: &BTreeMap<String, String>) -> bool {
        self.when_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}
