//! What-if re-rating (`tally rate --tariff-override FILE --compare`): a past month rated
//! as configured and again with changed tariffs, in memory, and the difference per account
//! and line. Nothing is written. Useful before any price change.
//!
//! An override replaces the version of the tariff with its id that is in force in the
//! month; its `effective_from` must be on or before the month's first day.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use rust_decimal::Decimal;
use tally_model::tariff::Tariff;

use crate::correction::{ChangedLine, changed_lines};
use crate::error::{Error, Result};
use crate::{RateRequest, price_month, tariff};

/// One account's invoice as configured and with the overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountDifference {
    pub account_id: String,
    pub currency: String,
    /// Invoice totals (rounded by the tariff's rule); zero without an invoice.
    pub before: Decimal,
    pub after: Decimal,
    /// The lines billed differently.
    pub lines: Vec<ChangedLine>,
}

/// The month under both tariffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub month: String,
    /// Every account with an invoice in either rating, by id.
    pub accounts: Vec<AccountDifference>,
}

impl Comparison {
    pub fn total_before(&self) -> Decimal {
        self.accounts.iter().map(|account| account.before).sum()
    }

    pub fn total_after(&self) -> Decimal {
        self.accounts.iter().map(|account| account.after).sum()
    }

    /// For people: per account old, new and the difference, the changed lines under each
    /// changed account, and the totals.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{}: {:<24} {:>14} {:>14} {:>14}",
            self.month, "account", "before", "after", "difference"
        );
        for account in &self.accounts {
            let _ = writeln!(
                text,
                "         {:<24} {:>14} {:>14} {:>14} {}",
                account.account_id,
                account.before,
                account.after,
                account.after - account.before,
                account.currency
            );
            for line in &account.lines {
                let _ = writeln!(
                    text,
                    "           {} {} ({}): {} → {}{}",
                    line.resource_id.as_deref().unwrap_or("-"),
                    line.description,
                    line.sku,
                    line.before.normalize(),
                    line.after.normalize(),
                    line.rule_after
                        .as_deref()
                        .map(|rule| format!("  [{rule}]"))
                        .unwrap_or_default()
                );
            }
        }
        let changed = self
            .accounts
            .iter()
            .filter(|account| !account.lines.is_empty())
            .count();
        let _ = writeln!(
            text,
            "         {:<24} {:>14} {:>14} {:>14}  ({changed} of {} accounts changed)",
            "total",
            self.total_before(),
            self.total_after(),
            self.total_after() - self.total_before(),
            self.accounts.len()
        );
        text
    }
}

/// Rates `request.month` with its tariffs and again with `overrides` in their place.
pub async fn compare(request: &RateRequest, overrides: &[PathBuf]) -> Result<Comparison> {
    let configured = tariff::load_tariffs(&request.tariffs)?;
    let replacements = tariff::load_tariffs(overrides)?;
    let first_day = crate::month::first_day(&request.month)?;
    let mut changed: Vec<Tariff> = configured.clone();
    for (replacement, path) in replacements.into_iter().zip(overrides) {
        let refuse = |detail: String| Error::Tariff {
            path: path.clone(),
            detail,
        };
        let Some(in_force) = tariff::version_for(&configured, &replacement.id, first_day) else {
            return Err(refuse(format!(
                "overrides tariff '{}', of which none of the --tariff files has a version in force in {}",
                replacement.id, request.month
            )));
        };
        if replacement.effective_from > first_day {
            return Err(refuse(format!(
                "is effective from {}, after {} begins: it would not apply to the month",
                replacement.effective_from, request.month
            )));
        }
        let replaced = (in_force.id.clone(), in_force.effective_from);
        changed.retain(|tariff| (tariff.id.clone(), tariff.effective_from) != replaced);
        changed.push(replacement);
    }
    let mut request = request.clone();
    request.explain = None;
    let before = price_month(&request, &configured).await?;
    let after = price_month(&request, &changed).await?;

    let mut accounts: BTreeMap<&str, AccountDifference> = BTreeMap::new();
    for (invoices, is_after) in [(&before.invoices, false), (&after.invoices, true)] {
        for invoice in invoices {
            let account =
                accounts
                    .entry(&invoice.account_id)
                    .or_insert_with(|| AccountDifference {
                        account_id: invoice.account_id.clone(),
                        currency: invoice.currency.clone(),
                        before: Decimal::ZERO,
                        after: Decimal::ZERO,
                        lines: Vec::new(),
                    });
            if is_after {
                account.after = invoice.total;
            } else {
                account.before = invoice.total;
            }
        }
    }
    for line in changed_lines(&before.line_items, &after.line_items)? {
        if let Some(account) = accounts.get_mut(line.account_id.as_str()) {
            account.lines.push(line);
        }
    }
    Ok(Comparison {
        month: request.month.clone(),
        accounts: accounts.into_values().collect(),
    })
}
