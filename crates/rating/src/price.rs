//! Pricing: a tariff applied to one account's usage, giving FOCUS line items.
//!
//! Only `Decimal` arithmetic, every operation checked: an overflow is an error, never a
//! wrapped or saturated amount. Divisions come last (price × minutes / 60, not
//! price × (minutes / 60)) so that the only inexact step is the final one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_model::line_item::{ChargeCategory, ChargeFrequency, LineItem};
use tally_model::sample::labels_from_text;
use tally_model::tariff::{
    AllowanceScope, PricePer, Product, Rounding, StorageAccounting, Tariff, TimeCharge,
    TimeQuantity,
};
use tally_model::{Hour, ResourceState};

use crate::error::{Error, Result};
use crate::month::BillingMonth;
use crate::usage::ResourceUsage;

/// Prices `usages` (all of one account) under `tariff` for `month`.
pub fn price_account(
    tariff: &Tariff,
    month: &BillingMonth,
    usages: &[&ResourceUsage],
) -> Result<Vec<LineItem>> {
    let mut lines = Vec::new();
    // Grouped time charges (C3) are summed over resources before pricing.
    let mut groups: BTreeMap<(String, String, usize), Group> = BTreeMap::new();
    for usage in usages {
        let fail = |detail: String| Error::Pricing {
            account_id: usage.account_id.clone(),
            resource_id: usage.resource_id.clone(),
            detail,
        };
        let kind = usage
            .kind
            .ok_or_else(|| fail("rollups carry an unknown resource kind".into()))?;
        let product = tariff.product(&usage.sku, kind).ok_or_else(|| {
            fail(format!(
                "sku '{}' ({kind}) is not in tariff '{}' version {}: add it, so the usage is billed",
                usage.sku, tariff.id, tariff.version
            ))
        })?;
        let labels = labels_from_text(&usage.labels)
            .map_err(|e| fail(format!("labels '{}': {e}", usage.labels)))?;
        let context = Context {
            tariff,
            month,
            usage,
            product,
        };
        let mut billed_hours = None;
        for (index, charge) in product.time.iter().enumerate() {
            if charge
                .when_labels
                .iter()
                .any(|(key, value)| labels.get(key) != Some(value))
            {
                continue;
            }
            let quantity = time_quantity(&context, charge).map_err(fail)?;
            billed_hours.get_or_insert(quantity.hours);
            if product.group_by.is_empty() {
                if let Some(line) = context.time_line(charge, &quantity).map_err(fail)? {
                    lines.push(line);
                }
            } else {
                let values: Vec<String> = product
                    .group_by
                    .iter()
                    .map(|key| format!("{key}={}", labels.get(key).map_or("", String::as_str)))
                    .collect();
                let group = groups
                    .entry((product.sku.clone(), values.join(","), index))
                    .or_insert_with(|| Group {
                        product: Some(product),
                        charge: Some(charge),
                        zone: usage.zone.clone(),
                        ..Group::default()
                    });
                group.add(usage, &quantity).map_err(fail)?;
            }
        }
        if let Some(traffic) = &product.traffic {
            let hours = billed_hours
                .unwrap_or_else(|| Decimal::from(usage.present_minutes) / Decimal::from(60));
            if let Some(line) = context.traffic_line(traffic, hours).map_err(fail)? {
                lines.push(line);
            }
        }
        if let Some(storage) = &product.storage
            && let Some(line) = context.storage_line(storage).map_err(fail)?
        {
            lines.push(line);
        }
    }
    for ((sku, values, _), group) in groups {
        let fail = |detail: String| Error::Pricing {
            account_id: usages
                .first()
                .map(|u| u.account_id.clone())
                .unwrap_or_default(),
            resource_id: format!("group {sku} {values}"),
            detail,
        };
        if let Some(line) = group.line(tariff, month, &values).map_err(fail)? {
            lines.push(line);
        }
    }
    lines.sort_by(|a, b| {
        (&a.resource_id, &a.sku_id, &a.x_rule, &a.charge_description).cmp(&(
            &b.resource_id,
            &b.sku_id,
            &b.x_rule,
            &b.charge_description,
        ))
    });
    Ok(lines)
}

struct Context<'a> {
    tariff: &'a Tariff,
    month: &'a BillingMonth,
    usage: &'a ResourceUsage,
    product: &'a Product,
}

/// A time charge's quantity for one resource.
#[derive(Clone, Debug, Default)]
struct TimeAmount {
    /// In hours (or months for monthly prices).
    quantity: Decimal,
    /// Hours billed, for prorating allowances.
    hours: Decimal,
    amount: Decimal,
    unit_price: Decimal,
    note: String,
}

fn checked(value: Option<Decimal>, what: &str) -> Result<Decimal, String> {
    value.ok_or_else(|| format!("decimal overflow computing {what}"))
}

fn mul(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_mul(b), what)
}

fn div(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_div(b), what)
}

fn add(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, String> {
    checked(a.checked_add(b), what)
}

fn unit_price(charge: &TimeCharge, gpus: u16) -> Result<(Decimal, String), String> {
    if !charge.per_gpu {
        return Ok((charge.price, String::new()));
    }
    if gpus == 0 {
        return Err(format!(
            "'{}' is priced per GPU but the resource reports 0 GPUs",
            charge.name
        ));
    }
    if let Some(explicit) = charge.configuration_prices.get(&gpus.to_string()) {
        return Ok((explicit.0, format!(", configuration price for {gpus} GPUs")));
    }
    Ok((
        mul(charge.price, Decimal::from(gpus), "the per-GPU price")?,
        format!(", {gpus} GPUs × {}", charge.price),
    ))
}

fn time_quantity(context: &Context<'_>, charge: &TimeCharge) -> Result<TimeAmount, String> {
    let usage = context.usage;
    let (price, price_note) = unit_price(charge, usage.gpus)?;
    let mut weighted_minutes = Decimal::ZERO;
    let mut weighted_hours = Decimal::ZERO;
    let mut billable_hours = 0i64;
    for state in ResourceState::ALL {
        let factor = charge.factor(state);
        weighted_minutes = add(
            weighted_minutes,
            mul(
                Decimal::from(usage.minutes[state.index()]),
                factor,
                "minutes",
            )?,
            "minutes",
        )?;
        weighted_hours = add(
            weighted_hours,
            mul(
                Decimal::from(usage.top_state_hours[state.index()]),
                factor,
                "hours",
            )?,
            "hours",
        )?;
        if factor > Decimal::ZERO {
            billable_hours += usage.top_state_hours[state.index()];
        }
    }
    let sixty = Decimal::from(60);
    let month_hours = Decimal::from(context.month.hours());
    let mut note;
    let (quantity, hours, mut amount) = match charge.quantity {
        TimeQuantity::Minutes => {
            let hours = div(weighted_minutes, sixty, "hours")?;
            let amount = div(mul(price, weighted_minutes, "amount")?, sixty, "amount")?;
            note = format!("{hours} h from {weighted_minutes} billable minutes");
            (hours, hours, amount)
        }
        TimeQuantity::StartedHours | TimeQuantity::CeilTotalHours => {
            let mut hours = if charge.quantity == TimeQuantity::StartedHours {
                note = format!("{weighted_hours} started hours at state factors");
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
            let hours = Decimal::from(billable_hours);
            let months = div(hours, month_hours, "month fraction")?;
            note = format!("{hours} of {month_hours} hours of the month");
            (
                months,
                hours,
                div(mul(price, hours, "amount")?, month_hours, "amount")?,
            )
        }
        TimeQuantity::StartedMonths => {
            let months = if weighted_minutes > Decimal::ZERO {
                Decimal::ONE
            } else {
                Decimal::ZERO
            };
            note = "started month".to_owned();
            (
                months,
                Decimal::from(billable_hours),
                mul(price, months, "amount")?,
            )
        }
    };
    if let Some(cap) = charge.monthly_cap
        && amount > cap
    {
        amount = cap;
        note = format!("{note}, monthly cap {cap} applied");
    }
    if let Some(minimum) = charge.minimum_monthly
        && amount > Decimal::ZERO
        && amount < minimum
    {
        amount = minimum;
        note = format!("{note}, monthly minimum {minimum} applied");
    }
    Ok(TimeAmount {
        quantity,
        hours,
        amount,
        unit_price: price,
        note: format!("{note}{price_note}"),
    })
}

fn pricing_unit(per: PricePer) -> &'static str {
    match per {
        PricePer::Hour => "Hours",
        PricePer::Month => "Months",
    }
}

impl Context<'_> {
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
            resource_type: usage.kind.map(|kind| kind.as_str().to_owned()),
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

    fn time_line(
        &self,
        charge: &TimeCharge,
        quantity: &TimeAmount,
    ) -> Result<Option<LineItem>, String> {
        if quantity.amount.is_zero() {
            return Ok(None); // free products (H7 IPv6) and unused time never reach the invoice
        }
        let mut line = self.base_line(
            format!("{}: {}", self.product.description, charge.name),
            format!("{}: {}", charge.rule, quantity.note),
        );
        line.consumed_quantity = quantity.hours;
        line.consumed_unit = "Hours".to_owned();
        line.pricing_quantity = quantity.quantity;
        line.pricing_unit = pricing_unit(charge.per).to_owned();
        line.list_unit_price = quantity.unit_price;
        line.billed_cost = quantity.amount;
        Ok(Some(line))
    }

    fn traffic_line(
        &self,
        traffic: &tally_model::tariff::TrafficCharge,
        billed_hours: Decimal,
    ) -> Result<Option<LineItem>, String> {
        let usage = self.usage;
        let used = Decimal::from_i128_with_scale(usage.out_external_bytes, 0);
        let unit_bytes = Decimal::from(traffic.unit.bytes());
        let mut included = mul(
            traffic.included,
            Decimal::from(traffic.included_unit.bytes()),
            "included traffic",
        )?;
        let mut note = format!("{} {} included", traffic.included, traffic.included_unit);
        if traffic.included_per == AllowanceScope::Gpu {
            included = mul(included, Decimal::from(usage.gpus), "included traffic")?;
            note = format!("{note} per GPU × {}", usage.gpus);
        }
        if let Some(over) = traffic.prorate_over_hours {
            let over = Decimal::from(over);
            let hours = billed_hours.min(over);
            included = div(
                mul(included, hours, "included traffic")?,
                over,
                "included traffic",
            )?;
            note = format!("{note}, prorated {hours}/{over} h");
        }
        if used <= included {
            return Ok(None);
        }
        let overage_bytes = used - included;
        let mut quantity = div(overage_bytes, unit_bytes, "traffic overage")?;
        if traffic.rounding == Rounding::Ceil {
            quantity = quantity.ceil();
            note = format!("{note}, every started {} charged", traffic.unit);
        }
        let mut line = self.base_line(
            format!(
                "{}: outbound traffic beyond the allowance",
                self.product.description
            ),
            format!(
                "{}: {} {} used, {note}",
                traffic.rule,
                div(used, unit_bytes, "traffic")?.normalize(),
                traffic.unit
            ),
        );
        line.consumed_quantity = div(used, unit_bytes, "traffic")?;
        line.consumed_unit = traffic.unit.symbol().to_owned();
        line.pricing_quantity = quantity;
        line.pricing_unit = traffic.unit.symbol().to_owned();
        line.list_unit_price = traffic.price;
        line.billed_cost = if traffic.rounding == Rounding::Ceil {
            mul(quantity, traffic.price, "traffic amount")?
        } else {
            div(
                mul(overage_bytes, traffic.price, "traffic amount")?,
                unit_bytes,
                "traffic amount",
            )?
        };
        Ok(Some(line))
    }

    fn storage_line(
        &self,
        storage: &tally_model::tariff::StorageCharge,
    ) -> Result<Option<LineItem>, String> {
        let usage = self.usage;
        if usage.size_byte_minutes == 0 {
            return Ok(None);
        }
        let size_minutes = Decimal::from_i128_with_scale(usage.size_byte_minutes, 0);
        let unit_bytes = Decimal::from(storage.unit.bytes());
        let sixty = Decimal::from(60);
        let (quantity, unit, mut amount, mut note) = match storage.accounting {
            StorageAccounting::UnitHours => {
                let per_month = Decimal::from(storage.hours_per_month.unwrap_or(1));
                let mut size_minutes = size_minutes;
                let mut note = String::new();
                // At most hours_per_month hours a month (N5): scale down a longer month.
                let present = Decimal::from(usage.present_minutes);
                let limit = mul(per_month, sixty, "hour cap")?;
                if present > limit {
                    size_minutes = div(mul(size_minutes, limit, "size")?, present, "size")?;
                    note = format!(", {per_month} h cap applied");
                }
                let unit_hours = div(size_minutes, mul(sixty, unit_bytes, "unit")?, "unit-hours")?;
                let amount = div(
                    mul(storage.price, size_minutes, "amount")?,
                    mul(mul(sixty, unit_bytes, "unit")?, per_month, "unit")?,
                    "amount",
                )?;
                (
                    unit_hours,
                    format!("{}-Hours", storage.unit),
                    amount,
                    format!(
                        "{} {}-hours at {}/{per_month} per hour{note}",
                        unit_hours.round_dp(6),
                        storage.unit,
                        storage.price
                    ),
                )
            }
            StorageAccounting::MonthFraction => {
                let month_minutes = Decimal::from(self.month.minutes());
                let unit_months = div(
                    size_minutes,
                    mul(unit_bytes, month_minutes, "unit")?,
                    "unit-months",
                )?;
                let amount = div(
                    mul(storage.price, size_minutes, "amount")?,
                    mul(unit_bytes, month_minutes, "unit")?,
                    "amount",
                )?;
                (
                    unit_months,
                    format!("{}-Months", storage.unit),
                    amount,
                    format!(
                        "{} {}-months (average size over the month)",
                        unit_months.round_dp(6),
                        storage.unit
                    ),
                )
            }
        };
        if let Some(minimum) = storage.minimum_monthly
            && amount < minimum
        {
            amount = minimum;
            note = format!("{note}, monthly minimum {minimum} applied");
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

/// Several resources' time on one line (C3).
#[derive(Default)]
struct Group<'a> {
    product: Option<&'a Product>,
    charge: Option<&'a TimeCharge>,
    zone: String,
    account_id: String,
    quantity: Decimal,
    amount: Decimal,
    unit_price: Decimal,
    resources: usize,
    first_hour: Option<Hour>,
    last_hour: Option<Hour>,
    rows: i64,
}

impl<'a> Group<'a> {
    fn add(&mut self, usage: &ResourceUsage, quantity: &TimeAmount) -> Result<(), String> {
        self.account_id = usage.account_id.clone();
        self.quantity = add(self.quantity, quantity.quantity, "group quantity")?;
        self.amount = add(self.amount, quantity.amount, "group amount")?;
        self.unit_price = quantity.unit_price;
        self.resources += 1;
        self.rows += usage.rollup_rows;
        self.first_hour = [self.first_hour, usage.first_hour]
            .into_iter()
            .flatten()
            .min();
        self.last_hour = [self.last_hour, usage.last_hour]
            .into_iter()
            .flatten()
            .max();
        Ok(())
    }

    fn line(
        &self,
        tariff: &Tariff,
        month: &BillingMonth,
        values: &str,
    ) -> Result<Option<LineItem>, String> {
        let (Some(product), Some(charge)) = (self.product, self.charge) else {
            return Ok(None);
        };
        if self.amount.is_zero() {
            return Ok(None);
        }
        let (start, end) = charge_period(month, self.first_hour, self.last_hour);
        Ok(Some(LineItem {
            billing_account_id: self.account_id.clone(),
            billing_period_start: month.start,
            billing_period_end: month.end,
            charge_period_start: start,
            charge_period_end: end,
            charge_category: ChargeCategory::Usage,
            charge_class: None,
            charge_frequency: ChargeFrequency::UsageBased,
            charge_description: format!("{} ({values}): {}", product.description, charge.name),
            resource_id: None,
            resource_type: Some(product.kind.as_str().to_owned()),
            sku_id: product.sku.clone(),
            region_id: Some(self.zone.clone()),
            consumed_quantity: self.quantity,
            consumed_unit: "Hours".to_owned(),
            pricing_quantity: self.quantity,
            pricing_unit: pricing_unit(charge.per).to_owned(),
            list_unit_price: self.unit_price,
            billed_cost: self.amount,
            billing_currency: tariff.currency.clone(),
            provider_name: tariff.provider.clone(),
            x_rule: format!(
                "{}: {} h summed over {} resources of {} {values}",
                charge.rule, self.quantity, self.resources, product.sku
            ),
            x_tariff_id: tariff.id.clone(),
            x_tariff_version: tariff.version.clone(),
            x_lineage: lineage(self.first_hour, self.last_hour, self.rows),
        }))
    }
}

fn charge_period(
    month: &BillingMonth,
    first: Option<Hour>,
    last: Option<Hour>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = first.map_or(month.start, |hour| hour.to_datetime().max(month.start));
    let end = last.map_or(month.end, |hour| hour.next().to_datetime().min(month.end));
    (start, end)
}

fn lineage(first: Option<Hour>, last: Option<Hour>, rows: i64) -> String {
    match (first, last) {
        (Some(first), Some(last)) => format!(
            "rollups hour={}..{} ({rows} rows)",
            first.partition_value(),
            last.partition_value()
        ),
        _ => format!("rollups ({rows} rows)"),
    }
}
