//! A month replayed hour by hour: what the bill was after each hour.
//!
//! Budgets (T5) debit each hour's charge, cost alerts (H10) fire when the month's bill
//! crosses a threshold and traffic notices (H4) when a server's used traffic crosses a
//! share of its allowance: all three need the month *so far*, not the month. Rather than a
//! second, hourly price model, the month's own pricing ([`price::price_account`]) is
//! applied to the usage of the month's first hours: the charge of an hour is how much the
//! month's bill grew with it. So every tariff rule (started hours, caps, periods paid in
//! advance, allowances, minimums, surcharges) holds hour by hour for free, and an
//! account's hourly charges always add up to its invoice's lines.
//!
//! A charge can be negative: an allowance prorated by billed hours (N4) grows with
//! them, so traffic charged early can be covered later; the budget credits it back.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_model::tariff::{Interval, Tariff};
use tally_model::{Hour, ResourceKind};

use crate::contracts::AccountContract;
use crate::error::{Error, Result};
use crate::month::BillingMonth;
use crate::price::{self, AccountInputs};
use crate::usage::{HourStates, LabelHour, ResourceUsage, StatesSeen};

/// The account's month after one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourView {
    pub hour: Hour,
    /// The month's bill (lines at full precision, summed) with this hour's usage.
    pub month_to_date: Decimal,
    /// What this hour added to it.
    pub charge: Decimal,
    /// The servers (kinds `server`, `gpu_server`) with usage in this hour.
    pub servers: Vec<ServerHour>,
    /// Every resource whose product has a traffic allowance, once it has usage.
    pub traffic: Vec<TrafficUse>,
}

/// One server in one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHour {
    pub resource_id: String,
    pub sku: String,
    pub states_seen: StatesSeen,
    pub gpus: u16,
}

/// A resource's traffic so far in the month against its allowance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficUse {
    pub resource_id: String,
    pub sku: String,
    /// Bytes the traffic charge counts, so far.
    pub used_bytes: Decimal,
    /// Bytes included for the whole month (a prorated allowance, N4, as if the
    /// resource were billed to the month's end).
    pub included_bytes: Decimal,
}

/// Replays `month` of one account from its first hour up to `until` (exclusive): one
/// view per hour. `rows` are the account's label-hours of the month, in hour order.
pub fn replay_month(
    tariff: &Tariff,
    month: &BillingMonth,
    contract: &AccountContract,
    rows: &[&LabelHour],
    until: Hour,
) -> Result<Vec<HourView>> {
    let fail = |resource_id: &str, detail: String| Error::Pricing {
        account_id: contract.account_id.clone(),
        resource_id: resource_id.to_owned(),
        detail,
    };
    // Sorted like the month's usage: by resource, kind and SKU.
    let mut usages: BTreeMap<(String, &'static str, String), ResourceUsage> = BTreeMap::new();
    let mut resource_hours: BTreeMap<(String, String), Vec<HourStates>> = BTreeMap::new();
    let mut views: Vec<HourView> = Vec::new();
    let mut previous = Decimal::ZERO;
    let mut next_row = 0;
    let mut hour = month.first_hour();
    while hour < month.end_hour() && hour < until {
        let from = next_row;
        while next_row < rows.len() && rows[next_row].hour == hour {
            next_row += 1;
        }
        if next_row < rows.len() && rows[next_row].hour < hour {
            return Err(fail(
                &rows[next_row].resource_id,
                "label-hours out of hour order".to_owned(),
            ));
        }
        // An hour without usage changes nothing the pricing sees: the bill stands.
        if from == next_row
            && let Some(last) = views.last()
        {
            let traffic = last.traffic.clone();
            views.push(HourView {
                hour,
                month_to_date: previous,
                charge: Decimal::ZERO,
                servers: Vec::new(),
                traffic,
            });
            hour = hour.next();
            continue;
        }
        // This hour's rows by resource, kind and SKU (they come sorted so).
        let mut by_resource: BTreeMap<(String, &'static str, String), Vec<&LabelHour>> =
            BTreeMap::new();
        for row in &rows[from..next_row] {
            by_resource
                .entry((row.resource_id.clone(), row.kind.as_str(), row.sku.clone()))
                .or_default()
                .push(row);
        }
        let mut servers = Vec::new();
        for (key, hour_rows) in by_resource {
            let first = hour_rows[0];
            let usage = usages
                .entry(key.clone())
                .or_insert_with(|| ResourceUsage::empty(first));
            let states = usage
                .add_hour(&hour_rows)
                .map_err(|detail| fail(&key.0, detail))?;
            if contract.terms(&key.0).interval != Interval::Hourly {
                resource_hours
                    .entry((key.0.clone(), key.2.clone()))
                    .or_default()
                    .push(states);
            }
            if matches!(first.kind, ResourceKind::Server | ResourceKind::GpuServer) {
                servers.push(ServerHour {
                    resource_id: key.0,
                    sku: key.2,
                    states_seen: states.states_seen,
                    gpus: states.gpus,
                });
            }
        }
        let account_usages: Vec<&ResourceUsage> = usages.values().collect();
        let lines = price::price_account(
            tariff,
            month,
            &AccountInputs {
                contract,
                usages: &account_usages,
                resource_hours: &resource_hours,
            },
        )?;
        let month_to_date = lines.iter().try_fold(Decimal::ZERO, |sum, line| {
            sum.checked_add(line.billed_cost)
                .ok_or_else(|| fail("", "the month's bill overflows".to_owned()))
        })?;
        let traffic = traffic_uses(tariff, month, &account_usages)
            .map_err(|(resource, detail)| fail(&resource, detail))?;
        views.push(HourView {
            hour,
            month_to_date,
            charge: month_to_date - previous,
            servers,
            traffic,
        });
        previous = month_to_date;
        hour = hour.next();
    }
    Ok(views)
}

fn traffic_uses(
    tariff: &Tariff,
    month: &BillingMonth,
    usages: &[&ResourceUsage],
) -> std::result::Result<Vec<TrafficUse>, (String, String)> {
    let mut uses = Vec::new();
    for usage in usages {
        let Some(traffic) = tariff
            .product(&usage.sku, usage.kind)
            .and_then(|product| product.traffic.as_ref())
        else {
            continue;
        };
        let fail = |detail: String| (usage.resource_id.clone(), detail);
        let used_bytes = price::traffic_used_bytes(traffic, usage).map_err(fail)?;
        let (included_bytes, _) =
            price::traffic_included_bytes(traffic, usage.max_gpus, Decimal::from(month.hours()))
                .map_err(fail)?;
        uses.push(TrafficUse {
            resource_id: usage.resource_id.clone(),
            sku: usage.sku.clone(),
            used_bytes,
            included_bytes,
        });
    }
    Ok(uses)
}
