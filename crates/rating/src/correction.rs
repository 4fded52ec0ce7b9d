//! Issued months and their corrections (H8).
//!
//! Until a month is issued, rating it again simply replaces its line items and invoices:
//! late usage lands on the month's invoice (H8 allows up to 28 days). `tally rate
//! --issue` freezes the month: it records every line it issued in
//! `invoices/month=YYYY-MM/_issued.json`. From then on the issued files are never
//! rewritten; rating the month again compares the new lines with what was issued (plus
//! earlier corrections) and writes only the differences, as lines with FOCUS
//! `ChargeClass = "Correction"`, in round `n`:
//! `line_items/month=YYYY-MM/corrections-NNN.parquet` and
//! `invoices/month=YYYY-MM/corrections-NNN/invoices.{jsonl,csv}`. A re-run that changes
//! nothing writes nothing. The record is rewritten last, so a crash part-way through
//! repeats the same round, with the same file names and bytes.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_lake::Lake;
use tally_model::LineItem;
use tally_model::line_item::ChargeCategory;

use crate::error::{Error, Result};

/// The FOCUS `ChargeClass` of a correcting line.
pub const CORRECTION: &str = "Correction";

/// What was issued for a month: the lines of the invoices and of every correction since.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub month: String,
    /// Correction rounds written after the issue.
    pub corrections: u32,
    pub lines: Vec<LineItem>,
}

/// The key of `invoices/month=YYYY-MM/_issued.json` in the output lake.
pub fn issued_key(month: &str) -> String {
    format!("invoices/month={month}/_issued.json")
}

/// The month's issue record, if it was issued.
pub fn read_issued(out: &Lake, month: &str) -> Result<Option<Issued>> {
    let key = issued_key(month);
    let Some(bytes) = out.get(&key)? else {
        return Ok(None);
    };
    let issued: Issued = serde_json::from_slice(&bytes).map_err(|error| Error::Io {
        action: format!(
            "read {}: it is not an issue record ({error}); it is never edited by hand",
            out.location(&key)
        ),
        source: std::io::Error::other(error),
    })?;
    Ok(Some(issued))
}

/// What identifies "the same line" across runs: the invoice shows it once.
type LineKey = (
    String,
    Option<String>,
    String,
    String,
    ChargeCategory,
    String,
);

fn key(line: &LineItem) -> LineKey {
    (
        line.billing_account_id.clone(),
        line.resource_id.clone(),
        line.sku_id.clone(),
        line.charge_description.clone(),
        line.charge_category,
        line.x_tariff_id.clone(),
    )
}

/// Sums of what a key has been billed.
#[derive(Default)]
struct Billed<'a> {
    cost: Decimal,
    pricing_quantity: Decimal,
    consumed_quantity: Decimal,
    /// The latest line, whose fields a correction copies.
    line: Option<&'a LineItem>,
}

fn totals<'a>(lines: &'a [LineItem]) -> Result<BTreeMap<LineKey, Billed<'a>>> {
    let mut totals: BTreeMap<LineKey, Billed<'a>> = BTreeMap::new();
    for line in lines {
        let billed = totals.entry(key(line)).or_default();
        let overflow = || Error::Invoice {
            account_id: line.billing_account_id.clone(),
            detail: "issued amounts overflow".to_owned(),
        };
        billed.cost = billed
            .cost
            .checked_add(line.billed_cost)
            .ok_or_else(overflow)?;
        billed.pricing_quantity = billed
            .pricing_quantity
            .checked_add(line.pricing_quantity)
            .ok_or_else(overflow)?;
        billed.consumed_quantity = billed
            .consumed_quantity
            .checked_add(line.consumed_quantity)
            .ok_or_else(overflow)?;
        if line.charge_class.is_none() || billed.line.is_none() {
            billed.line = Some(line);
        }
    }
    Ok(totals)
}

/// What a line key was billed before and after, for every key whose cost or quantity
/// differs, sorted by key.
fn differences<'a>(
    before: &'a [LineItem],
    after: &'a [LineItem],
) -> Result<Vec<(Billed<'a>, Billed<'a>)>> {
    let mut before = totals(before)?;
    let mut after = totals(after)?;
    let mut keys: Vec<LineKey> = before.keys().chain(after.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut changed = Vec::new();
    for key in keys {
        let was = before.remove(&key).unwrap_or_default();
        let now = after.remove(&key).unwrap_or_default();
        if was.cost != now.cost || was.pricing_quantity != now.pricing_quantity {
            changed.push((was, now));
        }
    }
    Ok(changed)
}

/// One line of an invoice that two ratings bill differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedLine {
    pub account_id: String,
    pub resource_id: Option<String>,
    pub sku: String,
    pub description: String,
    pub before: Decimal,
    pub after: Decimal,
    /// The rule and figures of the line as billed after (`None`: no longer billed).
    pub rule_after: Option<String>,
}

/// The lines `after` bills differently from `before` (what-if comparisons), sorted.
pub fn changed_lines(before: &[LineItem], after: &[LineItem]) -> Result<Vec<ChangedLine>> {
    Ok(differences(before, after)?
        .into_iter()
        .filter_map(|(was, now)| {
            let line = now.line.or(was.line)?;
            Some(ChangedLine {
                account_id: line.billing_account_id.clone(),
                resource_id: line.resource_id.clone(),
                sku: line.sku_id.clone(),
                description: line.charge_description.clone(),
                before: was.cost,
                after: now.cost,
                rule_after: now.line.map(|line| line.x_rule.clone()),
            })
        })
        .collect())
}

/// The correcting lines of round `round` that take `issued` to `current`, sorted.
pub fn corrections(issued: &[LineItem], current: &[LineItem], round: u32) -> Result<Vec<LineItem>> {
    let mut lines = Vec::new();
    for (was, now) in differences(issued, current)? {
        let Some(template) = now.line.or(was.line) else {
            continue;
        };
        let mut line = template.clone();
        line.charge_class = Some(CORRECTION.to_owned());
        line.billed_cost = now.cost - was.cost;
        line.pricing_quantity = now.pricing_quantity - was.pricing_quantity;
        line.consumed_quantity = now.consumed_quantity - was.consumed_quantity;
        line.x_rule = format!(
            "H8 correction {round}: billed {} before, {} now ({})",
            was.cost.normalize(),
            now.cost.normalize(),
            match now.line {
                Some(current) => current.x_rule.clone(),
                None => "no longer billed".to_owned(),
            }
        );
        lines.push(line);
    }
    Ok(lines)
}
