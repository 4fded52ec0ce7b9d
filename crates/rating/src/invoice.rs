//! Invoices: an account's line items, totalled the way BILLING.md prescribes.
//!
//! Lines are summed at full precision and the total is rounded once, half-up (H9: many
//! servers at 0.004 add up exactly). Each line is also shown rounded, and the difference
//! between those shown amounts and the total is reported, never dropped. An account
//! credit is then offset against the total (N6).

use std::fmt::Write;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use tally_model::LineItem;
use tally_model::tariff::{LineAmounts, MoneyRounding, Tariff};

use crate::error::{Error, Result};
use crate::month::BillingMonth;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invoice {
    pub account_id: String,
    pub month: String,
    pub tariff_id: String,
    pub tariff_version: String,
    pub provider: String,
    pub currency: String,
    pub billing_period_start: String,
    pub billing_period_end: String,
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines at full precision.
    pub subtotal: Decimal,
    /// The subtotal rounded half-up: what is owed before credit.
    pub total: Decimal,
    /// Sum of the lines as displayed (each rounded half-up).
    pub displayed_lines_sum: Decimal,
    /// `displayed_lines_sum - total`: the rounding the display introduces.
    pub rounding_difference: Decimal,
    pub credit_applied: Decimal,
    pub amount_due: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    pub description: String,
    pub resource_id: Option<String>,
    pub sku: String,
    pub quantity: Decimal,
    pub unit: String,
    pub unit_price: Decimal,
    /// Full precision.
    pub amount: Decimal,
    /// Rounded half-up for display.
    pub amount_displayed: Decimal,
    pub rule: String,
}

/// `value` rounded to `places` by the tariff's rule.
fn round(value: Decimal, places: u32, rounding: MoneyRounding) -> Decimal {
    let strategy = match rounding {
        MoneyRounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
        MoneyRounding::HalfEven => RoundingStrategy::MidpointNearestEven,
    };
    value.round_dp_with_strategy(places, strategy)
}

/// Builds the invoice of one account from its line items.
pub fn build_invoice(
    account_id: &str,
    tariff: &Tariff,
    month: &BillingMonth,
    items: &[LineItem],
    credit: Decimal,
) -> Result<Invoice> {
    let policy = &tariff.invoice;
    let round = |value| round(value, policy.decimal_places, policy.rounding);
    let overflow = |what: &str| Error::Invoice {
        account_id: account_id.to_owned(),
        detail: format!("the {what} overflows"),
    };
    let lines: Vec<InvoiceLine> = items
        .iter()
        .map(|item| InvoiceLine {
            description: item.charge_description.clone(),
            resource_id: item.resource_id.clone(),
            sku: item.sku_id.clone(),
            quantity: item.pricing_quantity.normalize(),
            unit: item.pricing_unit.clone(),
            unit_price: item.list_unit_price.normalize(),
            amount: item.billed_cost.normalize(),
            amount_displayed: round(item.billed_cost),
            rule: item.x_rule.clone(),
        })
        .collect();
    let mut full_precision = Decimal::ZERO;
    let mut displayed_lines_sum = Decimal::ZERO;
    for line in &lines {
        full_precision = full_precision
            .checked_add(line.amount)
            .ok_or_else(|| overflow("subtotal"))?;
        displayed_lines_sum = displayed_lines_sum
            .checked_add(line.amount_displayed)
            .ok_or_else(|| overflow("sum of displayed lines"))?;
    }
    // BILLING.md: sum at full precision, round once. A tariff may instead sum the lines
    // as displayed; then there is nothing left to round.
    let subtotal = match policy.line_amounts {
        LineAmounts::FullPrecision => full_precision,
        LineAmounts::Rounded => displayed_lines_sum,
    };
    let total = round(subtotal);
    let credit_applied = credit.min(total).max(Decimal::ZERO);
    Ok(Invoice {
        account_id: account_id.to_owned(),
        month: month.label.clone(),
        tariff_id: tariff.id.clone(),
        tariff_version: tariff.version.clone(),
        provider: tariff.provider.clone(),
        currency: tariff.currency.clone(),
        billing_period_start: month.start.to_rfc3339(),
        billing_period_end: month.end.to_rfc3339(),
        lines,
        subtotal: subtotal.normalize(),
        total,
        displayed_lines_sum,
        rounding_difference: displayed_lines_sum - total,
        credit_applied,
        amount_due: total - credit_applied,
    })
}

/// The header of `invoices.csv`.
pub const CSV_HEADER: &str = "account_id,description,resource_id,sku,quantity,unit,unit_price,amount,amount_displayed,rule\n";

/// Appends the invoice to `invoices.csv`'s text: one row per line, then its totals (the
/// label in `description`, the amount in `amount`), each row starting with the account.
pub fn push_csv_rows(invoice: &Invoice, csv: &mut String) {
    // Written in place: building each field as a `String` and joining them was most of
    // the file's time (10,000 invoices, 127,000 lines in the benchmark).
    for line in &invoice.lines {
        push_csv_field(csv, &invoice.account_id);
        for text in [
            line.description.as_str(),
            line.resource_id.as_deref().unwrap_or(""),
            line.sku.as_str(),
        ] {
            csv.push(',');
            push_csv_field(csv, text);
        }
        // Writing to a `String` cannot fail.
        let _ = write!(csv, ",{},", line.quantity);
        push_csv_field(csv, &line.unit);
        let _ = write!(
            csv,
            ",{},{},{},",
            line.unit_price, line.amount, line.amount_displayed
        );
        push_csv_field(csv, &line.rule);
        csv.push('\n');
    }
    for (label, value) in [
        ("subtotal", invoice.subtotal),
        ("total", invoice.total),
        ("rounding_difference", invoice.rounding_difference),
        ("credit_applied", invoice.credit_applied),
        ("amount_due", invoice.amount_due),
    ] {
        push_csv_field(csv, &invoice.account_id);
        let _ = writeln!(csv, ",{label},,,,,,{value},,");
    }
}

/// `text` as one CSV field: quoted (quotes doubled) if it holds a comma, quote or newline.
fn push_csv_field(csv: &mut String, text: &str) {
    if text.contains([',', '"', '\n']) {
        csv.push('"');
        csv.push_str(&text.replace('"', "\"\""));
        csv.push('"');
    } else {
        csv.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The total is the unrounded sum rounded once, whatever the lines.
        #[test]
        fn the_total_is_the_sum_rounded_once(cents in proptest::collection::vec(0i64..100_000_000, 0..40), scale in 0u32..6) {
            let (tariff, month) = tariff_and_month();
            let items: Vec<LineItem> = cents.iter().map(|c| line(Decimal::new(*c, scale))).collect();
            let invoice = build_invoice("a", &tariff, &month, &items, Decimal::ZERO).expect("invoice");
            let sum: Decimal = items.iter().map(|i| i.billed_cost).sum();
            prop_assert_eq!(invoice.total, round(sum, 2, MoneyRounding::HalfUp));
            prop_assert_eq!(invoice.rounding_difference, invoice.displayed_lines_sum - invoice.total);
        }
    }

    /// A reference tariff and October 2026 in Berlin.
    fn tariff_and_month() -> (Tariff, BillingMonth) {
        let tariff =
            crate::tariff::parse_tariff(std::path::Path::new("t"), crate::reference_tariffs()[2].1)
                .expect("tariff");
        let month = BillingMonth::new("2026-10", chrono_tz::Europe::Berlin).expect("month");
        (tariff, month)
    }

    fn line(cost: Decimal) -> LineItem {
        let now = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        LineItem {
            billing_account_id: "a".into(),
            billing_period_start: now,
            billing_period_end: now,
            charge_period_start: now,
            charge_period_end: now,
            charge_category: tally_model::line_item::ChargeCategory::Usage,
            charge_class: None,
            charge_frequency: tally_model::line_item::ChargeFrequency::UsageBased,
            charge_description: "x".into(),
            resource_id: None,
            resource_type: None,
            sku_id: "s".into(),
            region_id: None,
            consumed_quantity: Decimal::ONE,
            consumed_unit: "Hours".into(),
            pricing_quantity: Decimal::ONE,
            pricing_unit: "Hours".into(),
            list_unit_price: cost,
            billed_cost: cost,
            billing_currency: "EUR".into(),
            provider_name: "p".into(),
            x_rule: "r".into(),
            x_tariff_id: "t".into(),
            x_tariff_version: "v".into(),
            x_lineage: "l".into(),
        }
    }

    #[test]
    fn h9_many_small_lines_are_summed_unrounded() {
        let (tariff, month) = tariff_and_month();
        let items: Vec<LineItem> = (0..1000).map(|_| line(Decimal::new(4, 3))).collect();
        let invoice =
            build_invoice("a", &tariff, &month, &items, Decimal::new(150, 2)).expect("invoice");
        assert_eq!(invoice.total, Decimal::new(400, 2)); // 1000 × 0.004 = 4.00, not 1000 × 0.00
        assert_eq!(invoice.displayed_lines_sum, Decimal::ZERO);
        assert_eq!(invoice.rounding_difference, Decimal::new(-400, 2));
        assert_eq!(invoice.credit_applied, Decimal::new(150, 2));
        assert_eq!(invoice.amount_due, Decimal::new(250, 2));
    }

    #[test]
    fn csv_rows_quote_what_needs_quoting_and_end_with_the_totals() {
        let (tariff, month) = tariff_and_month();
        let mut item = line(Decimal::new(1234, 3));
        item.charge_description = "cx22, \"Nürnberg\"".into();
        item.resource_id = Some("vm-1".into());
        let invoice =
            build_invoice("acme,inc", &tariff, &month, &[item], Decimal::ZERO).expect("invoice");
        let mut csv = String::new();
        push_csv_rows(&invoice, &mut csv);
        assert_eq!(
            csv,
            "\"acme,inc\",\"cx22, \"\"Nürnberg\"\"\",vm-1,s,1,Hours,1.234,1.234,1.23,r\n\
             \"acme,inc\",subtotal,,,,,,1.234,,\n\
             \"acme,inc\",total,,,,,,1.23,,\n\
             \"acme,inc\",rounding_difference,,,,,,0.00,,\n\
             \"acme,inc\",credit_applied,,,,,,0,,\n\
             \"acme,inc\",amount_due,,,,,,1.23,,\n"
        );
    }
}
