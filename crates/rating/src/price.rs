//! Pricing: a tariff applied to one account's usage, giving FOCUS line items.
//!
//! Only `Decimal` arithmetic, every operation checked: an overflow is an error, never a
//! wrapped or saturated amount. Divisions come last (price × minutes / 60, not
//! price × (minutes / 60)), so the only inexact step is the final one.
//!
//! A time charge of one resource is computed in *portions*, one per line it produces:
//! per GPU configuration for per-GPU prices (a resize within the month gives a line per
//! configuration, each at its own price) and, for per-minute charges, per label group
//! (a VM whose `os` label changed pays each minute under the label it had). Products with
//! `group_by` add their portions into one line per (SKU, label values) over all of the
//! account's resources (C3). Caps, hour limits and minimums apply per resource and month;
//! the tariff check only allows them where a charge has one portion per resource.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, Months, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use tally_model::line_item::{ChargeCategory, ChargeFrequency, LineItem};
use tally_model::sample::labels_from_text;
use tally_model::tariff::{
    AllowanceScope, Interval, PricePer, Product, Rounding, StorageAccounting, StorageCharge,
    Surcharge, Tariff, Tier, TierMode, TimeCharge, TimeQuantity, TrafficCharge, TrafficCounter,
};
use tally_model::{Hour, ResourceState};

use crate::bookings;
use crate::contracts::{AccountContract, ResourceTerms};
use crate::error::{Error, Result};
use crate::month::{BillingMonth, day_start};
use crate::usage::{HourStates, ResourceUsage};

type Labels = BTreeMap<String, String>;

/// The portions of one time charge by (label group, GPU configuration), in that order.
/// **Why a vector, not a map:** nearly every resource has one, and a map's node is an
/// allocation of over a kilobyte per charge of every resource.
type Portions = Vec<((String, u16), Portion)>;

/// The value of `key` in `items`, a default one pushed if it has none.
fn value_of<K: PartialEq, V: Default>(items: &mut Vec<(K, V)>, key: K) -> &mut V {
    let index = match items.iter().position(|(item, _)| *item == key) {
        Some(index) => index,
        None => {
            items.push((key, V::default()));
            items.len() - 1
        }
    };
    &mut items[index].1
}

/// What is priced for one account besides its metered usage.
pub struct AccountInputs<'a> {
    pub contract: &'a AccountContract,
    /// All of the account's usage in the month.
    pub usages: &'a [&'a ResourceUsage],
    /// Hour by hour, the resources on contracts paid per period (T2), by (resource, SKU).
    pub resource_hours: &'a BTreeMap<(String, String), Vec<HourStates>>,
}

/// (product index, charge index): which time charge a line bills.
type ChargeRef = (usize, usize);

/// Prices one account's month under `tariff`; lines are sorted.
pub fn price_account(
    tariff: &Tariff,
    month: &BillingMonth,
    inputs: &AccountInputs<'_>,
) -> Result<Vec<LineItem>> {
    let mut lines = Vec::new();
    price_account_into(tariff, month, inputs, &mut lines)?;
    Ok(lines)
}

/// Prices one account's month under `tariff` onto the end of `lines`, its lines sorted;
/// on an error, `lines` is left as it was. (Each of the month's pricing threads appends
/// all its accounts to one vector sized once: a vector per account, grown line by line
/// and copied into the month's, moved each ~500-byte line three times.)
pub fn price_account_into(
    tariff: &Tariff,
    month: &BillingMonth,
    inputs: &AccountInputs<'_>,
    lines: &mut Vec<LineItem>,
) -> Result<()> {
    let start = lines.len();
    let priced = append_account_lines(tariff, month, inputs, lines);
    if priced.is_err() {
        lines.truncate(start);
    }
    priced
}

fn append_account_lines(
    tariff: &Tariff,
    month: &BillingMonth,
    inputs: &AccountInputs<'_>,
    lines: &mut Vec<LineItem>,
) -> Result<()> {
    let contract = inputs.contract;
    let start = lines.len();
    // Time lines stay apart until contingents (C5, C6) have taken their hours off them;
    // most resources have one.
    let mut time_lines: Vec<(ChargeRef, LineItem)> = Vec::with_capacity(inputs.usages.len());
    let mut groups: BTreeMap<GroupKey, Group<'_>> = BTreeMap::new();
    for usage in inputs.usages {
        let fail = |detail: String| Error::Pricing {
            account_id: usage.account_id.clone(),
            resource_id: usage.resource_id.clone(),
            detail,
        };
        let (product_index, product) = tariff
            .products
            .iter()
            .enumerate()
            .find(|(_, product)| product.sku == usage.sku && product.kind == usage.kind)
            .ok_or_else(|| {
                fail(format!(
                    "sku '{}' ({}) is not in tariff '{}' version {}: add it to the tariff, so the usage is billed",
                    usage.sku, usage.kind, tariff.id, tariff.version
                ))
            })?;
        let terms = contract.terms(&usage.resource_id);
        let charges: Vec<(usize, &TimeCharge)> = product
            .time
            .iter()
            .enumerate()
            .filter(|(_, charge)| charge.interval == terms.interval)
            .collect();
        if charges.is_empty() && !product.time.is_empty() {
            return Err(fail(format!(
                "the contract puts it on the {} interval, but tariff '{}' has no {} charge for '{}': add one, or change the contract",
                terms.interval.as_str(),
                tariff.id,
                terms.interval.as_str(),
                usage.sku
            )));
        }
        let context = Context {
            tariff,
            month,
            usage,
            product,
            terms,
            // Only resources paid per period have their hours read (`price_month`): an
            // hourly one is not looked up (the key would be two copied texts).
            hours: if terms.interval == Interval::Hourly {
                &[]
            } else {
                inputs
                    .resource_hours
                    .get(&(usage.resource_id.clone(), usage.sku.clone()))
                    .map_or(&[], Vec::as_slice)
            },
        };
        let mut first_charge_hours = None;
        // Each charge's amount, for surcharges of it (a product has a few charges).
        let mut charged: Vec<(&str, Decimal)> = Vec::new();
        for (charge_index, charge) in charges {
            let portions = context.time_portions(charge).map_err(fail)?;
            if first_charge_hours.is_none() {
                let hours = portions
                    .iter()
                    .try_fold(Decimal::ZERO, |sum, (_, portion)| {
                        add(sum, portion.hours, "billed hours")
                    });
                first_charge_hours = Some(hours.map_err(fail)?);
            }
            for ((group, gpus), portion) in portions {
                let sum = value_of(&mut charged, charge.name.as_str());
                *sum = add(*sum, portion.amount, "charge amount").map_err(fail)?;
                if product.group_by.is_empty() {
                    if let Some(line) = context.time_line(charge, gpus, &portion) {
                        time_lines.push(((product_index, charge_index), line));
                    }
                    continue;
                }
                groups
                    .entry((product_index, group.clone(), charge_index, gpus))
                    .or_insert_with(|| Group::new(product, charge, group, gpus))
                    .add(usage, &portion)
                    .map_err(fail)?;
            }
        }
        for surcharge in &product.surcharges {
            let enabled = surcharge
                .option
                .as_ref()
                .is_none_or(|option| terms.options.contains(option));
            let base = charged
                .iter()
                .find(|(name, _)| *name == surcharge.of)
                .map(|(_, amount)| *amount);
            if let (true, Some(base)) = (enabled, base)
                && let Some(line) = context.surcharge_line(surcharge, base).map_err(fail)?
            {
                lines.push(line);
            }
        }
        if let Some(traffic) = &product.traffic {
            // The allowance is prorated by the hours the product's time was billed (N4);
            // a product sold without a time charge uses the hours the resource existed.
            let billed_hours = match first_charge_hours {
                Some(hours) => hours,
                None => div(
                    Decimal::from(usage.present_minutes),
                    Decimal::from(60),
                    "hours",
                )
                .map_err(fail)?,
            };
            if let Some(line) = context.traffic_line(traffic, billed_hours).map_err(fail)? {
                lines.push(line);
            }
        }
        if let Some(storage) = &product.storage
            && let Some(line) = context.storage_line(storage).map_err(fail)?
        {
            lines.push(line);
        }
    }
    for ((product_index, group_text, charge_index, _), group) in groups {
        if let Some(line) = group.line(tariff, month) {
            time_lines.push(((product_index, charge_index), line));
        } else {
            tracing::debug!(group = %group_text, "group priced at zero: no line");
        }
    }
    // Contingents take hours in line order, so the same usage always gives the same lines.
    time_lines.sort_by(|(_, a), (_, b)| line_order(a, b));
    let account_fail = |detail: String| Error::Pricing {
        account_id: contract.account_id.clone(),
        resource_id: String::new(),
        detail,
    };
    for contingent in bookings::contingents(tariff, month, contract).map_err(account_fail)? {
        lines.push(
            contingent
                .apply(tariff, month, contract, &mut time_lines)
                .map_err(account_fail)?,
        );
    }
    lines.extend(time_lines.into_iter().map(|(_, line)| line));
    lines.extend(bookings::subscription_lines(tariff, month, inputs).map_err(account_fail)?);
    lines[start..].sort_by(line_order);
    Ok(())
}

/// An account's lines in order: by resource, SKU, description and rule. (The key is
/// borrowed: one of copied texts cost four allocations per comparison.)
fn line_order(a: &LineItem, b: &LineItem) -> Ordering {
    fn key(line: &LineItem) -> (Option<&str>, &str, &str, &str) {
        (
            line.resource_id.as_deref(),
            &line.sku_id,
            &line.charge_description,
            &line.x_rule,
        )
    }
    key(a).cmp(&key(b))
}

/// (product index, label group text, charge index, GPU configuration).
type GroupKey = (usize, String, usize, u16);

/// One resource, its product and the month: what every line of it needs.
struct Context<'a> {
    tariff: &'a Tariff,
    month: &'a BillingMonth,
    usage: &'a ResourceUsage,
    product: &'a Product,
    terms: &'a ResourceTerms,
    /// Hour by hour, if the resource is on a contract paid per period.
    hours: &'a [HourStates],
}

/// One line's worth of a time charge for one resource.
#[derive(Clone, Debug, Default)]
struct Portion {
    /// In the unit of the price: hours, or months for monthly prices.
    quantity: Decimal,
    /// Hours billed (for monthly prices: hours of usage), for prorating allowances.
    hours: Decimal,
    amount: Decimal,
    unit_price: Decimal,
    /// How the amount came about, for `x_rule`.
    note: String,
}

/// What a portion is computed from.
#[derive(Clone, Copy, Debug, Default)]
struct TimeInputs {
    /// Σ minutes × factor of their state.
    weighted_minutes: Decimal,
    /// Σ started hours × the largest factor among the states seen in the hour.
    weighted_hours: Decimal,
}

pub(crate) fn checked(value: Option<Decimal>, what: &str) -> Result<Decimal, String> {
    value.ok_or_else(|| format!("decimal overflow computing {what}"))
}

pub(crate) fn mul(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_mul(b), what)
}

pub(crate) fn div(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_div(b), what)
}

pub(crate) fn add(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_add(b), what)
}

/// `key=value` pairs of the `group_by` labels, e.g. `os=linux`; "" if not grouped.
fn group_text(product: &Product, labels: &Labels) -> String {
    product
        .group_by
        .iter()
        .map(|key| format!("{key}={}", labels.get(key).map_or("", String::as_str)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The weighted minutes of one state breakdown under a charge.
fn weighted_minutes(
    charge: &TimeCharge,
    minutes: &[i64; ResourceState::COUNT],
) -> Result<Decimal, String> {
    let mut sum = Decimal::ZERO;
    for state in ResourceState::ALL {
        let weighted = mul(
            Decimal::from(minutes[state.index()]),
            charge.factor(state),
            "minutes",
        )?;
        sum = add(sum, weighted, "minutes")?;
    }
    Ok(sum)
}

/// The bytes a traffic charge counts: its meters summed.
pub(crate) fn traffic_used_bytes(
    traffic: &TrafficCharge,
    usage: &ResourceUsage,
) -> Result<Decimal, String> {
    let mut used_bytes = 0i128;
    for counter in BTreeSet::from_iter(traffic.counters.iter().copied()) {
        let bytes = match counter {
            TrafficCounter::OutExternal => usage.out_external_bytes,
            TrafficCounter::OutInternal => usage.out_internal_bytes,
            TrafficCounter::In => usage.in_bytes,
        };
        used_bytes = used_bytes
            .checked_add(bytes)
            .ok_or_else(|| "traffic overflows".to_owned())?;
    }
    Decimal::try_from_i128_with_scale(used_bytes, 0)
        .map_err(|_| format!("{used_bytes} bytes of traffic do not fit a decimal"))
}

/// The bytes a traffic charge includes for a resource of `max_gpus` GPUs billed for
/// `billed_hours`, and words about how (T4 per GPU, N4 prorated).
pub(crate) fn traffic_included_bytes(
    traffic: &TrafficCharge,
    max_gpus: u16,
    billed_hours: Decimal,
) -> Result<(Decimal, String), String> {
    let mut included = mul(
        traffic.included,
        Decimal::from(traffic.included_unit.bytes()),
        "included traffic",
    )?;
    let mut allowance = format!("{} {}", traffic.included.normalize(), traffic.included_unit);
    if traffic.included_per == AllowanceScope::Gpu {
        included = mul(included, Decimal::from(max_gpus), "included traffic")?;
        allowance = format!("{allowance} per GPU × {max_gpus}");
    }
    if let Some(over) = traffic.prorate_over_hours {
        let over = Decimal::from(over);
        let hours = billed_hours.min(over);
        included = div(
            mul(included, hours, "included traffic")?,
            over,
            "included traffic",
        )?;
        allowance = format!("{allowance} × {}/{over} h", hours.normalize());
    }
    Ok((included, allowance))
}

/// The price of one unit of the charge for a GPU configuration, and words about it.
pub(crate) fn unit_price(charge: &TimeCharge, gpus: u16) -> Result<(Decimal, String), String> {
    if !charge.per_gpu {
        return Ok((charge.price, String::new()));
    }
    if gpus == 0 {
        return Err(format!(
            "time charge '{}' is priced per GPU but the rollups report 0 GPUs",
            charge.name
        ));
    }
    if let Some(explicit) = charge.configuration_prices.get(&gpus.to_string()) {
        return Ok((explicit.0, format!(", configuration price for {gpus} GPUs")));
    }
    Ok((
        mul(charge.price, Decimal::from(gpus), "the per-GPU price")?,
        format!(", {gpus} GPUs × {}", charge.price.normalize()),
    ))
}

impl Context<'_> {
    fn labels(&self, text: &str) -> Result<Labels, String> {
        labels_from_text(text).map_err(|e| format!("labels '{text}' in the rollups: {e}"))
    }

    /// The portions of one time charge.
    fn time_portions(&self, charge: &TimeCharge) -> Result<Portions, String> {
        let usage = self.usage;
        let mut inputs: Vec<((String, u16), TimeInputs)> = Vec::new();
        if charge.quantity == TimeQuantity::StartedPeriods {
            return self.period_portions(charge);
        }
        if charge.quantity == TimeQuantity::Minutes {
            // Minutes are additive: each follows the labels it was metered under.
            for bucket in &usage.minute_buckets {
                let labels = self.labels(&bucket.labels)?;
                if !charge.applies_to(&labels) {
                    continue;
                }
                let gpus = if charge.per_gpu { bucket.gpus } else { 0 };
                let entry = value_of(&mut inputs, (group_text(self.product, &labels), gpus));
                entry.weighted_minutes = add(
                    entry.weighted_minutes,
                    weighted_minutes(charge, &bucket.minutes)?,
                    "minutes",
                )?;
            }
        } else {
            // Started hours, rounding and month fractions are not additive: the resource
            // is one unit, selected and grouped by the labels of its last hour.
            let labels = self.labels(&usage.labels)?;
            if !charge.applies_to(&labels) {
                return Ok(Vec::new());
            }
            let group = group_text(self.product, &labels);
            for bucket in &usage.hour_buckets {
                let gpus = if charge.per_gpu { bucket.gpus } else { 0 };
                let factor = bucket
                    .states_seen
                    .states()
                    .map(|state| charge.factor(state))
                    .max()
                    .unwrap_or(Decimal::ZERO);
                let entry = value_of(&mut inputs, (group.clone(), gpus));
                entry.weighted_hours = add(
                    entry.weighted_hours,
                    mul(Decimal::from(bucket.hours), factor, "hours")?,
                    "hours",
                )?;
                entry.weighted_minutes = add(
                    entry.weighted_minutes,
                    weighted_minutes(charge, &bucket.minutes)?,
                    "minutes",
                )?;
            }
        }
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut portions = Vec::with_capacity(inputs.len());
        for (key, input) in inputs {
            let portion = self.portion(charge, key.1, input)?;
            if !portion.amount.is_zero() {
                portions.push((key, portion));
            }
        }
        Ok(portions)
    }

    /// Every period of the contract that starts in the month, paid in full in advance
    /// (T2) at the largest factor among the states seen in its hours of the month; by
    /// GPU configuration (the largest in the period) for per-GPU prices.
    fn period_portions(&self, charge: &TimeCharge) -> Result<Portions, String> {
        let interval = self.terms.interval;
        let start = self
            .terms
            .start
            .ok_or_else(|| format!("the contract's {} interval has no start", interval.as_str()))?;
        let labels = self.labels(&self.usage.labels)?;
        if !charge.applies_to(&labels) {
            return Ok(Vec::new());
        }
        let group = group_text(self.product, &labels);
        let zone = self.month.time_zone;
        // In the order of `periods`: by GPU configuration, as the portions are sorted.
        let mut portions = Portions::new();
        let mut periods: BTreeMap<u16, (Decimal, Vec<String>)> = BTreeMap::new();
        for index in 0.. {
            let Some(period_start) = period_start(start, zone, interval, index) else {
                return Err(format!(
                    "period {index} of the contract is beyond the calendar"
                ));
            };
            if period_start >= self.month.end {
                break;
            }
            let period_end = period_start_or_max(start, zone, interval, index + 1);
            // Paid when it starts: periods that started before the month were paid then.
            if period_start < self.month.start {
                continue;
            }
            let overlapping = self.hours.iter().filter(|hour| {
                hour.hour.to_datetime() < period_end
                    && hour.hour.next().to_datetime() > period_start
            });
            let (mut factor, mut gpus) = (Decimal::ZERO, 0u16);
            for hour in overlapping {
                for state in hour.states_seen.states() {
                    factor = factor.max(charge.factor(state));
                }
                gpus = gpus.max(hour.gpus);
            }
            if factor.is_zero() {
                continue;
            }
            let gpus = if charge.per_gpu { gpus } else { 0 };
            let entry = periods.entry(gpus).or_default();
            entry.0 = add(entry.0, factor, "periods")?;
            entry.1.push(format!(
                "{} ×{}",
                period_start.with_timezone(&zone).format("%Y-%m-%d %H:%M"),
                factor.normalize()
            ));
        }
        for (gpus, (quantity, starts)) in periods {
            let (price, price_note) = unit_price(charge, gpus)?;
            let unit = pricing_unit(charge.per).to_lowercase();
            portions.push((
                (group.clone(), gpus),
                Portion {
                    quantity,
                    hours: Decimal::ZERO,
                    amount: mul(price, quantity, "amount")?,
                    unit_price: price,
                    note: format!(
                        "{} started {unit} of the {} contract from {}, paid in advance at the largest state factor seen: {}{price_note}",
                        quantity.normalize(),
                        interval.as_str(),
                        start.with_timezone(&zone).format("%Y-%m-%d %H:%M"),
                        starts.join(", ")
                    ),
                },
            ));
        }
        Ok(portions)
    }

    /// A share of one of the resource's charges (H6: backups 20 % of the server).
    fn surcharge_line(
        &self,
        surcharge: &Surcharge,
        base: Decimal,
    ) -> Result<Option<LineItem>, String> {
        let amount = mul(base, surcharge.factor.0, "surcharge")?;
        if amount.is_zero() {
            return Ok(None);
        }
        let mut line = self.base_line(
            format!("{}: {}", self.product.description, surcharge.name),
            format!(
                "{}: {} × {} of '{}'",
                surcharge.rule,
                base.normalize(),
                surcharge.factor.0.normalize(),
                surcharge.of
            ),
        );
        line.charge_frequency = ChargeFrequency::Recurring;
        line.consumed_quantity = base;
        line.consumed_unit = self.tariff.currency.clone();
        line.pricing_quantity = base;
        line.pricing_unit = self.tariff.currency.clone();
        line.list_unit_price = surcharge.factor.0;
        line.billed_cost = amount;
        Ok(Some(line))
    }

    /// Quantity and amount of one portion: granularity, then hour limit, cap, minimum.
    fn portion(
        &self,
        charge: &TimeCharge,
        gpus: u16,
        input: TimeInputs,
    ) -> Result<Portion, String> {
        let (price, price_note) = unit_price(charge, gpus)?;
        let sixty = Decimal::from(60);
        let month_hours = Decimal::from(self.month.hours());
        let TimeInputs {
            weighted_minutes,
            weighted_hours,
        } = input;
        let mut note;
        let (quantity, hours, mut amount) = match charge.quantity {
            TimeQuantity::Minutes => {
                let hours = div(weighted_minutes, sixty, "hours")?;
                let amount = div(mul(price, weighted_minutes, "amount")?, sixty, "amount")?;
                note = format!(
                    "{} h from {weighted_minutes} billable minutes",
                    hours.normalize()
                );
                (hours, hours, amount)
            }
            TimeQuantity::StartedHours | TimeQuantity::CeilTotalHours => {
                let mut hours = if charge.quantity == TimeQuantity::StartedHours {
                    note = format!(
                        "{} started hours at state factors",
                        weighted_hours.normalize()
                    );
                    weighted_hours
                } else {
                    let ceiled = div(weighted_minutes, sixty, "hours")?.ceil();
                    note = format!("{weighted_minutes} minutes rounded up to {ceiled} h");
                    ceiled
                };
                if let Some(max) = charge.max_hours {
                    let max = Decimal::from(max);
                    if hours > max {
                        note = format!("{note}, {max} h cap applied");
                        hours = max;
                    }
                }
                (hours, hours, mul(price, hours, "amount")?)
            }
            TimeQuantity::MonthFraction => {
                let months = div(weighted_hours, month_hours, "month fraction")?;
                note = format!(
                    "{} of {month_hours} hours of the month",
                    weighted_hours.normalize()
                );
                let amount = div(mul(price, weighted_hours, "amount")?, month_hours, "amount")?;
                (months, weighted_hours, amount)
            }
            TimeQuantity::StartedPeriods => {
                return Err("started periods are priced per period, not from totals".to_owned());
            }
            TimeQuantity::StartedMonths => {
                let months = if weighted_minutes > Decimal::ZERO {
                    Decimal::ONE
                } else {
                    Decimal::ZERO
                };
                note = "every started month in full".to_owned();
                let hours = div(weighted_minutes, sixty, "hours")?;
                (months, hours, mul(price, months, "amount")?)
            }
        };
        if let Some(cap) = charge.monthly_cap
            && amount > cap
        {
            amount = cap;
            note = format!("{note}, monthly cap {} applied", cap.normalize());
        }
        if let Some(minimum) = charge.minimum_monthly
            && amount > Decimal::ZERO
            && amount < minimum
        {
            amount = minimum;
            note = format!("{note}, monthly minimum {} applied", minimum.normalize());
        }
        Ok(Portion {
            quantity,
            hours,
            amount,
            unit_price: price,
            note: format!("{note}{price_note}"),
        })
    }

    /// A line for one resource, with the FOCUS fields every line shares.
    fn base_line(&self, description: String, rule: String) -> LineItem {
        let usage = self.usage;
        let (start, end) = charge_period(self.month, usage.first_hour, usage.last_hour);
        LineItem {
            billing_account_id: usage.account_id.clone(),
            billing_period_start: self.month.start,
            billing_period_end: self.month.end,
            charge_period_start: start,
            charge_period_end: end,
            charge_category: ChargeCategory::Usage,
            charge_class: None,
            charge_frequency: ChargeFrequency::UsageBased,
            charge_description: description,
            resource_id: Some(usage.resource_id.clone()),
            resource_type: Some(usage.kind.as_str().to_owned()),
            sku_id: usage.sku.clone(),
            region_id: Some(usage.zone.clone()),
            consumed_quantity: Decimal::ZERO,
            consumed_unit: String::new(),
            pricing_quantity: Decimal::ZERO,
            pricing_unit: String::new(),
            list_unit_price: Decimal::ZERO,
            billed_cost: Decimal::ZERO,
            billing_currency: self.tariff.currency.clone(),
            provider_name: self.tariff.provider.clone(),
            x_rule: rule,
            x_tariff_id: self.tariff.id.clone(),
            x_tariff_version: self.tariff.version.clone(),
            x_lineage: lineage(usage.first_hour, usage.last_hour, usage.rollup_rows),
        }
    }

    /// The line of one portion; none for a zero amount (H7: a free product never
    /// appears on the invoice).
    fn time_line(&self, charge: &TimeCharge, gpus: u16, portion: &Portion) -> Option<LineItem> {
        if portion.amount.is_zero() {
            return None;
        }
        let mut line = self.base_line(
            time_description(self.product, charge, "", gpus),
            format!("{}: {}", charge.rule, portion.note),
        );
        line.charge_frequency = charge_frequency(charge);
        line.consumed_quantity = portion.hours;
        line.consumed_unit = "Hours".to_owned();
        line.pricing_quantity = portion.quantity;
        line.pricing_unit = pricing_unit(charge.per).to_owned();
        line.list_unit_price = portion.unit_price;
        line.billed_cost = portion.amount;
        Some(line)
    }

    fn traffic_line(
        &self,
        traffic: &TrafficCharge,
        billed_hours: Decimal,
    ) -> Result<Option<LineItem>, String> {
        let used = traffic_used_bytes(traffic, self.usage)?;
        let unit_bytes = Decimal::from(traffic.unit.bytes());
        let (included, allowance) =
            traffic_included_bytes(traffic, self.usage.max_gpus, billed_hours)?;
        if used <= included {
            return Ok(None);
        }
        let overage_bytes = used - included;
        let exact = div(overage_bytes, unit_bytes, "traffic overage")?;
        let (quantity, mut rounding_note) = match traffic.rounding {
            Rounding::Exact => (exact, String::new()),
            Rounding::Ceil => (
                exact.ceil(),
                format!(", every started {} charged: {}", traffic.unit, exact.ceil()),
            ),
        };
        let (amount, unit_price) = match (traffic.price, traffic.rounding) {
            // One price on the exact fraction: bytes × price / unit, dividing last.
            (Some(price), Rounding::Exact) => (
                div(
                    mul(overage_bytes, price, "traffic amount")?,
                    unit_bytes,
                    "traffic amount",
                )?,
                price,
            ),
            (Some(price), Rounding::Ceil) => (mul(quantity, price, "traffic amount")?, price),
            (None, _) => {
                let (amount, bands) = tiered_amount(quantity, &traffic.tiers, traffic.tier_mode)?;
                rounding_note = format!("{rounding_note}, {bands}");
                let average = if quantity.is_zero() {
                    Decimal::ZERO
                } else {
                    div(amount, quantity, "average unit price")?
                };
                (amount, average)
            }
        };
        let shown = |bytes: Decimal| -> Result<Decimal, String> {
            Ok(div(bytes, unit_bytes, "traffic")?.round_dp(6).normalize())
        };
        let mut line = self.base_line(
            format!(
                "{}: traffic beyond the allowance",
                self.product.description
            ),
            format!(
                "{}: overage {} {unit} beyond {} {unit} included ({allowance}), {} {unit} used{rounding_note}",
                traffic.rule,
                shown(overage_bytes)?,
                shown(included)?,
                shown(used)?,
                unit = traffic.unit,
            ),
        );
        line.consumed_quantity = div(used, unit_bytes, "traffic")?;
        line.consumed_unit = traffic.unit.symbol().to_owned();
        line.pricing_quantity = quantity;
        line.pricing_unit = traffic.unit.symbol().to_owned();
        line.list_unit_price = unit_price;
        line.billed_cost = amount;
        Ok(Some(line))
    }

    fn storage_line(&self, storage: &StorageCharge) -> Result<Option<LineItem>, String> {
        let usage = self.usage;
        if usage.size_byte_minutes == 0 {
            return Ok(None);
        }
        let mut size_minutes = Decimal::try_from_i128_with_scale(usage.size_byte_minutes, 0)
            .map_err(|_| "the size-minutes do not fit a decimal".to_owned())?;
        let unit_bytes = Decimal::from(storage.unit.bytes());
        let sixty = Decimal::from(60);
        let (quantity, unit, mut amount, mut note) = match storage.accounting {
            StorageAccounting::UnitHours => {
                let per_month = Decimal::from(storage.hours_per_month.ok_or_else(|| {
                    "storage accounting unit_hours needs hours_per_month".to_owned()
                })?);
                let mut cap_note = String::new();
                // At most hours_per_month hours a month (N5): a longer month is scaled down,
                // so the size of every hour weighs the same.
                let present = Decimal::from(usage.present_minutes);
                let limit = mul(per_month, sixty, "hour cap")?;
                if present > limit {
                    size_minutes = div(mul(size_minutes, limit, "size")?, present, "size")?;
                    cap_note = format!(", {per_month} h cap applied");
                }
                let unit_minutes = mul(sixty, unit_bytes, "unit")?;
                let unit_hours = div(size_minutes, unit_minutes, "unit-hours")?;
                let amount = div(
                    mul(storage.price, size_minutes, "amount")?,
                    mul(unit_minutes, per_month, "unit")?,
                    "amount",
                )?;
                (
                    unit_hours,
                    format!("{}-Hours", storage.unit),
                    amount,
                    format!(
                        "{} {}-hours at {}/{per_month} per hour{cap_note}",
                        unit_hours.round_dp(6).normalize(),
                        storage.unit,
                        storage.price.normalize()
                    ),
                )
            }
            StorageAccounting::MonthFraction => {
                let unit_month = mul(
                    unit_bytes,
                    Decimal::from(self.month.minutes()),
                    "unit-months",
                )?;
                let unit_months = div(size_minutes, unit_month, "unit-months")?;
                let amount = div(
                    mul(storage.price, size_minutes, "amount")?,
                    unit_month,
                    "amount",
                )?;
                (
                    unit_months,
                    format!("{}-Months", storage.unit),
                    amount,
                    format!(
                        "{} {}-months (size averaged over the {} h month)",
                        unit_months.round_dp(6).normalize(),
                        storage.unit,
                        self.month.hours()
                    ),
                )
            }
        };
        if let Some(minimum) = storage.minimum_monthly
            && amount < minimum
        {
            amount = minimum;
            note = format!("{note}, monthly minimum {} applied", minimum.normalize());
        }
        let mut line = self.base_line(
            format!("{}: storage", self.product.description),
            format!("{}: {note}", storage.rule),
        );
        line.consumed_quantity = quantity;
        line.consumed_unit = unit.clone();
        line.pricing_quantity = quantity;
        line.pricing_unit = unit;
        line.list_unit_price = storage.price;
        line.billed_cost = amount;
        Ok(Some(line))
    }
}

/// The amount of `quantity` units under price bands, and words about it. Graduated: each
/// unit at its band's price; volume: every unit at the price of the band the quantity
/// ends in. With one band both are quantity × price.
pub fn tiered_amount(
    quantity: Decimal,
    tiers: &[Tier],
    mode: TierMode,
) -> Result<(Decimal, String), String> {
    let mut amount = Decimal::ZERO;
    let mut lower = Decimal::ZERO;
    let mut words = Vec::new();
    for tier in tiers {
        // `lower` is the bound of the band below: graduated units of this band are those
        // between it and this band's bound.
        let upper = tier.up_to.unwrap_or(Decimal::MAX);
        match mode {
            TierMode::Graduated => {
                let units = quantity.min(upper) - lower;
                if units > Decimal::ZERO {
                    amount = add(
                        amount,
                        mul(units, tier.price, "tier amount")?,
                        "tier amount",
                    )?;
                    words.push(format!(
                        "{} × {}",
                        units.normalize(),
                        tier.price.normalize()
                    ));
                }
            }
            TierMode::Volume => {
                if quantity <= upper {
                    return Ok((
                        mul(quantity, tier.price, "tier amount")?,
                        format!(
                            "volume tier up to {}: all {} units × {}",
                            tier.up_to
                                .map_or("∞".to_owned(), |up_to| up_to.normalize().to_string()),
                            quantity.normalize(),
                            tier.price.normalize()
                        ),
                    ));
                }
            }
        }
        if quantity <= upper {
            return Ok((amount, format!("graduated tiers: {}", words.join(" + "))));
        }
        lower = upper;
    }
    Err(format!(
        "{} units are beyond the last tier; the last tier must have no up_to",
        quantity.normalize()
    ))
}

/// `"<product>: <charge>"`, with the label group and GPU configuration when they matter.
fn time_description(product: &Product, charge: &TimeCharge, group: &str, gpus: u16) -> String {
    let mut description = product.description.clone();
    if !group.is_empty() {
        description = format!("{description} ({group})");
    }
    description = format!("{description}: {}", charge.name);
    if charge.per_gpu {
        description = format!("{description}, {gpus} GPUs");
    }
    description
}

fn pricing_unit(per: PricePer) -> &'static str {
    match per {
        PricePer::Hour => "Hours",
        PricePer::Day => "Days",
        PricePer::Week => "Weeks",
        PricePer::Month => "Months",
        PricePer::Year => "Years",
    }
}

fn charge_frequency(charge: &TimeCharge) -> ChargeFrequency {
    match charge.quantity {
        TimeQuantity::StartedMonths | TimeQuantity::StartedPeriods => ChargeFrequency::Recurring,
        _ => ChargeFrequency::UsageBased,
    }
}

/// Several resources' time on one line (C3).
struct Group<'a> {
    product: &'a Product,
    charge: &'a TimeCharge,
    group: String,
    gpus: u16,
    account_id: String,
    zones: BTreeSet<String>,
    quantity: Decimal,
    hours: Decimal,
    amount: Decimal,
    unit_price: Decimal,
    resources: usize,
    first_hour: Option<Hour>,
    last_hour: Option<Hour>,
    rows: i64,
}

impl<'a> Group<'a> {
    fn new(product: &'a Product, charge: &'a TimeCharge, group: String, gpus: u16) -> Self {
        Self {
            product,
            charge,
            group,
            gpus,
            account_id: String::new(),
            zones: BTreeSet::new(),
            quantity: Decimal::ZERO,
            hours: Decimal::ZERO,
            amount: Decimal::ZERO,
            unit_price: Decimal::ZERO,
            resources: 0,
            first_hour: None,
            last_hour: None,
            rows: 0,
        }
    }

    fn add(&mut self, usage: &ResourceUsage, portion: &Portion) -> Result<(), String> {
        self.account_id.clone_from(&usage.account_id);
        self.zones.insert(usage.zone.clone());
        self.quantity = add(self.quantity, portion.quantity, "group quantity")?;
        self.hours = add(self.hours, portion.hours, "group hours")?;
        self.amount = add(self.amount, portion.amount, "group amount")?;
        self.unit_price = portion.unit_price;
        self.resources += 1;
        self.rows = self
            .rows
            .checked_add(usage.rollup_rows)
            .ok_or_else(|| "group rollup rows overflow".to_owned())?;
        self.first_hour = Some(
            self.first_hour
                .map_or(usage.first_hour, |hour| hour.min(usage.first_hour)),
        );
        self.last_hour = Some(
            self.last_hour
                .map_or(usage.last_hour, |hour| hour.max(usage.last_hour)),
        );
        Ok(())
    }

    fn line(&self, tariff: &Tariff, month: &BillingMonth) -> Option<LineItem> {
        if self.amount.is_zero() {
            return None;
        }
        let (first, last) = (self.first_hour?, self.last_hour?);
        let (start, end) = charge_period(month, first, last);
        // One zone for the whole group, or none if its resources are spread over several.
        let region_id = match self.zones.len() {
            1 => self.zones.first().cloned(),
            _ => None,
        };
        Some(LineItem {
            billing_account_id: self.account_id.clone(),
            billing_period_start: month.start,
            billing_period_end: month.end,
            charge_period_start: start,
            charge_period_end: end,
            charge_category: ChargeCategory::Usage,
            charge_class: None,
            charge_frequency: charge_frequency(self.charge),
            charge_description: time_description(self.product, self.charge, &self.group, self.gpus),
            resource_id: None,
            resource_type: Some(self.product.kind.as_str().to_owned()),
            sku_id: self.product.sku.clone(),
            region_id,
            consumed_quantity: self.hours,
            consumed_unit: "Hours".to_owned(),
            pricing_quantity: self.quantity,
            pricing_unit: pricing_unit(self.charge.per).to_owned(),
            list_unit_price: self.unit_price,
            billed_cost: self.amount,
            billing_currency: tariff.currency.clone(),
            provider_name: tariff.provider.clone(),
            x_rule: format!(
                "{}: {} {} summed over {} resources of {} {}",
                self.charge.rule,
                self.quantity.normalize(),
                pricing_unit(self.charge.per),
                self.resources,
                self.product.sku,
                self.group
            ),
            x_tariff_id: tariff.id.clone(),
            x_tariff_version: tariff.version.clone(),
            x_lineage: lineage(first, last, self.rows),
        })
    }
}

/// The start of period `index` of a contract that started at `start` (T2): whole days,
/// weeks, months or years later on the calendar of `zone`, so a daily contract keeps its
/// local time of day across DST. A local time the DST switch skips moves an hour on.
fn period_start(
    start: DateTime<Utc>,
    zone: chrono_tz::Tz,
    interval: Interval,
    index: u32,
) -> Option<DateTime<Utc>> {
    let local = start.with_timezone(&zone).naive_local();
    let shifted = match interval {
        Interval::Hourly => return None,
        Interval::Daily => local.checked_add_days(Days::new(u64::from(index)))?,
        Interval::Weekly => local.checked_add_days(Days::new(7 * u64::from(index)))?,
        Interval::Monthly => local.checked_add_months(Months::new(index))?,
        Interval::Yearly => local.checked_add_months(Months::new(index.checked_mul(12)?))?,
    };
    zone.from_local_datetime(&shifted)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(shifted + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|instant| instant.with_timezone(&Utc))
}

fn period_start_or_max(
    start: DateTime<Utc>,
    zone: chrono_tz::Tz,
    interval: Interval,
    index: u32,
) -> DateTime<Utc> {
    period_start(start, zone, interval, index).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The first instant of `day` in the month's zone, for dates in contracts.
pub(crate) fn local_day_start(
    month: &BillingMonth,
    day: NaiveDate,
) -> Result<DateTime<Utc>, String> {
    day_start(month.time_zone, day)
        .ok_or_else(|| format!("{day} has no start in {}", month.time_zone))
}

/// The hours a line covers, within the billing month.
pub(crate) fn charge_period(
    month: &BillingMonth,
    first: Hour,
    last: Hour,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = first.to_datetime().max(month.start);
    let end = last.next().to_datetime().min(month.end);
    (start, end)
}

/// `rollups hour=<first>..<last>, <n> rows`: the partitions (inclusive) and rows read.
pub(crate) fn lineage(first: Hour, last: Hour, rows: i64) -> String {
    format!(
        "rollups hour={}..{}, {rows} rows",
        first.partition_value(),
        last.partition_value()
    )
}
