//! `tally rate --explain ACCOUNT`: every line of one account's invoice with the rule that
//! made it and the usage behind it, so a line can be checked by hand.

use std::fmt::Write;

use rust_decimal::Decimal;
use tally_model::{LineItem, ResourceState};

use crate::invoice::Invoice;
use crate::usage::ResourceUsage;

/// The explanation of `invoice`, whose lines are `items`, from `usages` (the account's).
pub fn explain(invoice: &Invoice, items: &[LineItem], usages: &[&ResourceUsage]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "account {} · {} · tariff {} version {} · {} to {}",
        invoice.account_id,
        invoice.month,
        invoice.tariff_id,
        invoice.tariff_version,
        invoice.billing_period_start,
        invoice.billing_period_end
    );
    for (number, item) in items.iter().enumerate() {
        let _ = writeln!(
            text,
            "\n{}. {} — {} {} × {} = {} {}",
            number + 1,
            item.charge_description,
            item.pricing_quantity.normalize(),
            item.pricing_unit,
            item.list_unit_price.normalize(),
            item.billed_cost.normalize(),
            item.billing_currency
        );
        let _ = writeln!(text, "   rule: {}", item.x_rule);
        let _ = writeln!(
            text,
            "   {} {}, charged {} to {}, from {}",
            match item.charge_category {
                tally_model::line_item::ChargeCategory::Usage => "usage",
                tally_model::line_item::ChargeCategory::Purchase => "purchase",
                tally_model::line_item::ChargeCategory::Credit => "credit",
                tally_model::line_item::ChargeCategory::Adjustment => "adjustment",
            },
            item.resource_id.as_deref().unwrap_or("(several resources)"),
            item.charge_period_start.to_rfc3339(),
            item.charge_period_end.to_rfc3339(),
            item.x_lineage
        );
        // The usage behind it: the resource's, or that of every resource of the SKU for
        // a line that sums several (C3) or a contingent taken off them (C5, C6).
        let behind: Vec<&&ResourceUsage> = usages
            .iter()
            .filter(|usage| match &item.resource_id {
                Some(resource_id) => &usage.resource_id == resource_id,
                None => usage.sku == item.sku_id,
            })
            .collect();
        for usage in behind {
            let _ = writeln!(text, "   usage of {}", describe(usage));
        }
    }
    let _ = writeln!(
        text,
        "\nsubtotal {} (lines at full precision) → total {} {} (rounded once); lines as displayed sum to {} (difference {}); credit {}; due {}",
        invoice.subtotal,
        invoice.total,
        invoice.currency,
        invoice.displayed_lines_sum,
        invoice.rounding_difference,
        invoice.credit_applied,
        invoice.amount_due
    );
    text
}

/// One resource's month in one line: minutes per state, hours by states seen, meters.
fn describe(usage: &ResourceUsage) -> String {
    let minutes = usage.state_minutes();
    let states: Vec<String> = ResourceState::ALL
        .into_iter()
        .filter(|state| minutes[state.index()] > 0)
        .map(|state| format!("{} {} min", state.as_str(), minutes[state.index()]))
        .collect();
    let hours: Vec<String> = usage
        .hour_buckets
        .iter()
        .map(|bucket| {
            let seen: Vec<&str> = bucket
                .states_seen
                .states()
                .map(ResourceState::as_str)
                .collect();
            let gpus = if bucket.gpus > 0 {
                format!(", {} GPUs", bucket.gpus)
            } else {
                String::new()
            };
            format!("{} h [{}{gpus}]", bucket.hours, seen.join("+"))
        })
        .collect();
    let mut line = format!(
        "{} ({} {}, zone {}): {}; started hours {}",
        usage.resource_id,
        usage.kind,
        usage.sku,
        usage.zone,
        states.join(", "),
        hours.join(", ")
    );
    let bytes = |value: i128| Decimal::from_i128_with_scale(value, 0);
    if usage.out_external_bytes + usage.out_internal_bytes + usage.in_bytes > 0 {
        let _ = write!(
            line,
            "; traffic out external {} B, out internal {} B, in {} B",
            bytes(usage.out_external_bytes),
            bytes(usage.out_internal_bytes),
            bytes(usage.in_bytes)
        );
    }
    if usage.size_byte_minutes > 0 {
        let _ = write!(
            line,
            "; size {} byte-minutes",
            bytes(usage.size_byte_minutes)
        );
    }
    let _ = write!(
        line,
        "; {} rollup rows, hours {}..{}",
        usage.rollup_rows,
        usage.first_hour.partition_value(),
        usage.last_hour.partition_value()
    );
    line
}
