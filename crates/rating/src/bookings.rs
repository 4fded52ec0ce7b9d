//! What accounts book by contract rather than meter: monthly products (C4 managing and
//! licences, C7 add-ons) and contingents of hours paid whether used or not, from the
//! tariff's reservations (C5) or the account's own commitments (C6).
//!
//! A contingent's hours are taken off the pay-per-use lines of the charge it covers, in
//! line order, so those lines show only the usage beyond it; the contingent's own line
//! says how many of its hours were used and how many expired at the month's end.

use chrono::{Months, NaiveDate};
use rust_decimal::Decimal;
use tally_model::line_item::{ChargeCategory, ChargeFrequency, LineItem};
use tally_model::tariff::Tariff;
use tally_model::{Hour, ResourceKind};

use crate::contracts::AccountContract;
use crate::month::BillingMonth;
use crate::price::{AccountInputs, charge_period, lineage, local_day_start, mul};
use crate::tariff::coverable;

/// A month's contingent of hours of one time charge.
pub(crate) struct Contingent {
    description: String,
    rule: String,
    sku: String,
    kind: ResourceKind,
    covers: String,
    price: Decimal,
    hours: Decimal,
    /// How the hours came about, for `x_rule`.
    basis: String,
    /// The days of the term in the month, for the charge period.
    first_day: NaiveDate,
    end_day: NaiveDate,
}

/// Days of `[start, end)` that fall in the month, as (first day, end day, count).
fn days_in_month(
    month: &BillingMonth,
    start: NaiveDate,
    end: NaiveDate,
) -> Option<(NaiveDate, NaiveDate, i64)> {
    let first = start.max(month.first_day);
    let last = end.min(month.next_first_day());
    (first < last).then(|| (first, last, (last - first).num_days()))
}

fn term_end(start: NaiveDate, months: u32) -> Result<NaiveDate, String> {
    start
        .checked_add_months(Months::new(months))
        .ok_or_else(|| format!("a term of {months} months from {start} is beyond the calendar"))
}

/// The account's contingents in the month: reservations first, then commitments, each
/// in the order of the contract.
pub(crate) fn contingents(
    tariff: &Tariff,
    month: &BillingMonth,
    contract: &AccountContract,
) -> Result<Vec<Contingent>, String> {
    let mut contingents = Vec::new();
    for order in &contract.reservations {
        let reservation = tariff.reservation(&order.reservation).ok_or_else(|| {
            format!(
                "the contract orders reservation '{}', which tariff '{}' does not offer",
                order.reservation, tariff.id
            )
        })?;
        if !reservation.terms_months.contains(&order.term_months) {
            return Err(format!(
                "reservation '{}' is offered for {:?} months, not {}",
                reservation.name, reservation.terms_months, order.term_months
            ));
        }
        let end = term_end(order.order_date, order.term_months)?;
        let Some((first_day, end_day, days)) = days_in_month(month, order.order_date, end) else {
            continue;
        };
        let quantity = Decimal::from(order.quantity);
        let hours = mul(Decimal::from(days * 24), quantity, "contingent")?;
        contingents.push(Contingent {
            description: format!(
                "{} ({} × {} months from {})",
                reservation.description, order.quantity, order.term_months, order.order_date
            ),
            rule: reservation.rule.clone(),
            sku: reservation.sku.clone(),
            kind: reservation.kind,
            covers: reservation.covers.clone(),
            price: reservation.price,
            hours,
            basis: format!("{days} days × 24 h × {} instances", order.quantity),
            first_day,
            end_day,
        });
    }
    for commitment in &contract.commitments {
        coverable(tariff, &commitment.sku, commitment.kind, &commitment.covers)
            .map_err(|message| format!("commitment '{}': {message}", commitment.name))?;
        let end = term_end(commitment.start, commitment.term_months)?;
        let Some((first_day, end_day, days)) = days_in_month(month, commitment.start, end) else {
            continue;
        };
        // A month the term covers only in part commits only its share of the hours.
        let hours = mul(
            commitment.hours_per_month,
            Decimal::from(days),
            "commitment",
        )?
        .checked_div(Decimal::from(month.days()))
        .ok_or_else(|| "commitment hours overflow".to_owned())?;
        contingents.push(Contingent {
            description: format!(
                "Commitment {} ({} h/month of {} for {} months from {})",
                commitment.name,
                commitment.hours_per_month.normalize(),
                commitment.sku,
                commitment.term_months,
                commitment.start
            ),
            rule: "C6".to_owned(),
            sku: commitment.sku.clone(),
            kind: commitment.kind,
            covers: commitment.covers.clone(),
            price: commitment.price,
            hours,
            basis: format!(
                "{} h/month × {days}/{} days",
                commitment.hours_per_month.normalize(),
                month.days()
            ),
            first_day,
            end_day,
        });
    }
    Ok(contingents)
}

impl Contingent {
    /// Takes the contingent's hours off the pay-per-use lines of the charge it covers and
    /// returns its own line.
    pub(crate) fn apply(
        &self,
        tariff: &Tariff,
        month: &BillingMonth,
        contract: &AccountContract,
        time_lines: &mut [((usize, usize), LineItem)],
    ) -> Result<LineItem, String> {
        let covered = tariff
            .products
            .iter()
            .position(|product| product.sku == self.sku && product.kind == self.kind)
            .and_then(|product_index| {
                tariff.products[product_index]
                    .time
                    .iter()
                    .position(|charge| charge.name == self.covers)
                    .map(|charge_index| (product_index, charge_index))
            })
            .ok_or_else(|| {
                format!(
                    "{}: the tariff has no time charge '{}' of '{}'",
                    self.description, self.covers, self.sku
                )
            })?;
        let mut remaining = self.hours;
        for (charge, line) in time_lines.iter_mut() {
            if *charge != covered || remaining.is_zero() || line.pricing_quantity <= Decimal::ZERO {
                continue;
            }
            let taken = remaining.min(line.pricing_quantity);
            remaining -= taken;
            line.pricing_quantity -= taken;
            line.billed_cost -= mul(taken, line.list_unit_price, "covered amount")?;
            line.x_rule = format!(
                "{}; {} h covered by {}",
                line.x_rule,
                taken.normalize(),
                self.description
            );
        }
        let used = self.hours - remaining;
        let start = local_day_start(month, self.first_day)?;
        let end = local_day_start(month, self.end_day)?;
        let (period_start, period_end) = charge_period(
            month,
            Hour::containing(start),
            Hour::containing(end).previous(),
        );
        Ok(LineItem {
            billing_account_id: contract.account_id.clone(),
            billing_period_start: month.start,
            billing_period_end: month.end,
            charge_period_start: period_start,
            charge_period_end: period_end,
            charge_category: ChargeCategory::Purchase,
            charge_class: None,
            charge_frequency: ChargeFrequency::Recurring,
            charge_description: self.description.clone(),
            resource_id: None,
            resource_type: Some(self.kind.as_str().to_owned()),
            sku_id: self.sku.clone(),
            region_id: None,
            consumed_quantity: used,
            consumed_unit: "Hours".to_owned(),
            pricing_quantity: self.hours,
            pricing_unit: "Hours".to_owned(),
            list_unit_price: self.price,
            billed_cost: mul(self.hours, self.price, "contingent amount")?,
            billing_currency: tariff.currency.clone(),
            provider_name: tariff.provider.clone(),
            x_rule: format!(
                "{}: contingent {} h ({}), {} h used by '{}', {} h expired",
                self.rule,
                self.hours.normalize(),
                self.basis,
                used.normalize(),
                self.covers,
                remaining.normalize()
            ),
            x_tariff_id: tariff.id.clone(),
            x_tariff_version: tariff.version.clone(),
            x_lineage: format!("contract of {}", contract.account_id),
        })
    }
}

/// The month's lines of the account's monthly products (C4, C7).
pub(crate) fn subscription_lines(
    tariff: &Tariff,
    month: &BillingMonth,
    inputs: &AccountInputs<'_>,
) -> Result<Vec<LineItem>, String> {
    let contract = inputs.contract;
    let mut lines = Vec::new();
    for booking in &contract.subscriptions {
        let product = tariff.subscription(&booking.sku).ok_or_else(|| {
            format!(
                "the contract books '{}', which tariff '{}' does not sell",
                booking.sku, tariff.id
            )
        })?;
        let end = booking.end.unwrap_or(NaiveDate::MAX);
        if days_in_month(month, booking.start, end).is_none() {
            continue;
        }
        let mut note = format!(
            "booked from {}{}, every month of the booking in full",
            booking.start,
            booking
                .end
                .map(|end| format!(" until {end}"))
                .unwrap_or_default()
        );
        let mut first_hour = month.first_hour();
        let mut last_hour = month.end_hour().previous();
        let mut rows = 0;
        if let Some(resource_id) = &booking.resource_id {
            // Tied to a resource: charged for the months it has usage in, so for the
            // month it is deleted in and not after (C4).
            let usages: Vec<_> = inputs
                .usages
                .iter()
                .filter(|usage| &usage.resource_id == resource_id)
                .collect();
            if usages.is_empty() {
                continue;
            }
            first_hour = usages
                .iter()
                .map(|usage| usage.first_hour)
                .min()
                .unwrap_or(first_hour);
            last_hour = usages
                .iter()
                .map(|usage| usage.last_hour)
                .max()
                .unwrap_or(last_hour);
            rows = usages.iter().map(|usage| usage.rollup_rows).sum();
            note = format!("{note}, for {resource_id}, which exists this month");
        }
        let quantity = Decimal::from(booking.quantity);
        let (start, end) = charge_period(month, month.first_hour(), month.end_hour().previous());
        lines.push(LineItem {
            billing_account_id: contract.account_id.clone(),
            billing_period_start: month.start,
            billing_period_end: month.end,
            charge_period_start: start,
            charge_period_end: end,
            charge_category: ChargeCategory::Purchase,
            charge_class: None,
            charge_frequency: ChargeFrequency::Recurring,
            charge_description: product.description.clone(),
            resource_id: booking.resource_id.clone(),
            resource_type: None,
            sku_id: product.sku.clone(),
            region_id: None,
            consumed_quantity: quantity,
            consumed_unit: "Months".to_owned(),
            pricing_quantity: quantity,
            pricing_unit: "Months".to_owned(),
            list_unit_price: product.price,
            billed_cost: mul(product.price, quantity, "subscription amount")?,
            billing_currency: tariff.currency.clone(),
            provider_name: tariff.provider.clone(),
            x_rule: format!("{}: {note}", product.rule),
            x_tariff_id: tariff.id.clone(),
            x_tariff_version: tariff.version.clone(),
            x_lineage: if rows > 0 {
                lineage(first_hour, last_hour, rows)
            } else {
                format!("contract of {}", contract.account_id)
            },
        });
    }
    Ok(lines)
}
