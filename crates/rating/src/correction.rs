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
//! `invoices/month=YYYY-MM/corrections-NNN/<account>.{json,csv}`. A re-run that changes
//! nothing writes nothing. The record is rewritten last, so a crash part-way through
//! repeats the same round, with the same file names and bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
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

/// `invoices/month=YYYY-MM/_issued.json` under `out`.
pub fn issued_path(out: &Path, month: &str) -> PathBuf {
    out.join("invoices")
        .join(format!("month={month}"))
        .join("_issued.json")
}

/// The month's issue record, if it was issued.
pub fn read_issued(out: &Path, month: &str) -> Result<Option<Issued>> {
    let path = issued_path(out, month);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                action: format!("read {}", path.display()),
                source,
            });
        }
    };
    let issued: Issued = serde_json::from_str(&text).map_err(|error| Error::Io {
        action: format!(
            "read {}: it is not an issue record ({error}); it is never edited by hand",
            path.display()
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

/// The correcting lines of round `round` that take `issued` to `current`, sorted.
pub fn corrections(issued: &[LineItem], current: &[LineItem], round: u32) -> Result<Vec<LineItem>> {
    let before = totals(issued)?;
    let after = totals(current)?;
    let mut keys: Vec<&LineKey> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let zero = Billed::default();
    let mut lines = Vec::new();
    for key in keys {
        let was = before.get(key).unwrap_or(&zero);
        let now = after.get(key).unwrap_or(&zero);
        if was.cost == now.cost && was.pricing_quantity == now.pricing_quantity {
            continue;
        }
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
