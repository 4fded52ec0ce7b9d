//! Prepaid budgets (T5, T6): the balance hour by hour, what happens when it runs out, and
//! whether servers may start.
//!
//! **Charges.** An hour's charge is how much the month's bill grew with that hour
//! ([`replay`](crate::replay)), debited from the balance once the hour is over (its usage
//! is then known). A charge is paid whole or not at all.
//!
//! **Running out** (T5, the tariff's `[prepaid]` hours): when the balance cannot pay an
//! hour's charge, the budget is exhausted at that hour's end; the account's servers are
//! stopped at once, frozen `freeze_after_hours` later and terminated
//! `terminate_after_hours` later (T5: at the latest 72 h), each a notice for the
//! provider's control plane to act on. The charges of the hours that follow are
//! recorded unpaid. When funds return, the unpaid charges of at most
//! `retroactive_hours` before that hour are debited, oldest first; older ones are
//! written off. Once nothing within reach is unpaid, the budget is restored.
//!
//! **Stopped servers** (T6, from the metered states): a server stopped for whole hours is
//! frozen after `trial_freeze_after_stopped_hours` on a trial account, its paying owner
//! is warned after `stopped_warning_hours`, and any server is frozen after
//! `max_stopped_hours`.
//!
//! **Starting servers** (T5): the balance must cover `start_cover_hours` of each server
//! to be started at its running price, or the configuration's minimum starting budget
//! where the tariff sets one (96 h × 7.67 for an 8-GPU infinityai), whichever is more.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_model::tariff::{Interval, Prepaid, PricePer, Tariff};
use tally_model::{Hour, ResourceKind, ResourceState};

use crate::error::{Error, Result};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::notice::{Notice, NoticeKind};
use crate::replay::HourView;

/// An account's budget from its first replayed hour to the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    pub account_id: String,
    /// Tally's ledger entries (charges, unpaid, retroactive charges, write-offs), in order.
    pub entries: Vec<LedgerEntry>,
    pub notices: Vec<Notice>,
    /// After the last hour.
    pub balance: Decimal,
    /// The hour whose charge the balance could not pay, while that lasts.
    pub exhausted_since: Option<Hour>,
    /// Unpaid charges since the budget ran out (none written off yet).
    pub unpaid: Decimal,
    /// Of those, what a top-up right after the last hour would charge: the unpaid hours
    /// within `retroactive_hours` of it (T5: 12 h); the rest would be written off.
    pub retroactive_due: Decimal,
    /// The first hour replayed.
    pub first_hour: Option<Hour>,
    /// The last hour replayed and its charge: the rate the balance is spent at.
    pub last_hour: Option<Hour>,
    pub last_charge: Decimal,
}

impl Timeline {
    /// The first hour whose charge the balance will not cover if the last hour's charge
    /// repeats: when the budget runs out at the current rate. `None` when nothing is
    /// being spent (or the budget is already exhausted: see `exhausted_since`).
    pub fn runs_out(&self) -> Option<Hour> {
        let last = self.last_hour?;
        if self.exhausted_since.is_some() || self.last_charge <= Decimal::ZERO {
            return None;
        }
        let covered = (self.balance / self.last_charge).floor();
        let covered = i64::try_from(covered).ok()?;
        Some(Hour::from_unix_hours(last.unix_hours() + 1 + covered))
    }
}

/// Per server, the whole hours it has been stopped in a row, and since when.
#[derive(Clone, Copy, Debug)]
struct StoppedRun {
    since: Hour,
    hours: u32,
}

/// Replays the budget of `account_id` over `views` (consecutive hours, possibly over
/// several months) with the account's `top_ups` (in time order).
pub fn timeline(
    account_id: &str,
    trial: bool,
    policy: &Prepaid,
    views: &[HourView],
    top_ups: &[&LedgerEntry],
) -> Timeline {
    let mut timeline = Timeline {
        account_id: account_id.to_owned(),
        ..Timeline::default()
    };
    let mut next_top_up = 0;
    let mut unpaid: Vec<(Hour, Decimal)> = Vec::new();
    // The servers the exhaustion stopped, which later freeze and terminate.
    let mut stopped_by_budget: Vec<String> = Vec::new();
    let mut stopped_runs: BTreeMap<String, StoppedRun> = BTreeMap::new();
    let rule = policy.rule.as_str();
    for view in views {
        let hour = view.hour;
        let hour_end = hour.next().to_datetime();
        // Top-ups that arrived before the hour ended pay for it.
        while let Some(top_up) = top_ups
            .get(next_top_up)
            .filter(|top_up| top_up.at < hour_end)
        {
            next_top_up += 1;
            credit(
                &mut timeline,
                policy,
                &mut unpaid,
                &mut stopped_by_budget,
                top_up,
            );
        }
        let charge = view.charge;
        let hour_text = hour.partition_value();
        if timeline.exhausted_since.is_none() && charge <= timeline.balance {
            timeline.balance -= charge;
            if !charge.is_zero() {
                timeline.entries.push(entry(
                    account_id,
                    hour,
                    EntryKind::Charge,
                    charge,
                    hour_end,
                    Some(timeline.balance),
                ));
            }
        } else {
            if timeline.exhausted_since.is_none() {
                timeline.exhausted_since = Some(hour);
                timeline.notices.push(
                    Notice::new(
                        NoticeKind::BudgetExhausted,
                        account_id,
                        None,
                        &hour_text,
                        hour_end,
                        rule,
                        format!(
                            "the balance of {} cannot pay the charge of {} for hour {hour_text}: servers are stopped now, frozen in {} h and terminated in {} h unless funds return",
                            timeline.balance.normalize(),
                            charge.normalize(),
                            policy.freeze_after_hours,
                            policy.terminate_after_hours
                        ),
                    )
                    .with("balance", timeline.balance.normalize())
                    .with("charge", charge.normalize()),
                );
                stopped_by_budget = view
                    .servers
                    .iter()
                    .map(|server| server.resource_id.clone())
                    .collect();
                timeline.notices.extend(state_changes(
                    account_id,
                    &stopped_by_budget,
                    &hour_text,
                    hour_end,
                    rule,
                    "stopped",
                    "budget exhausted",
                ));
            }
            // The hour that ran the balance out, and every one after it until funds
            // return: recorded, charged later within reach (T5) or written off.
            if !charge.is_zero() {
                unpaid.push((hour, charge));
                timeline.entries.push(entry(
                    account_id,
                    hour,
                    EntryKind::Unpaid,
                    charge,
                    hour_end,
                    Some(timeline.balance),
                ));
            }
        }
        if let Some(exhausted) = timeline.exhausted_since {
            let since = hour.unix_hours() - exhausted.unix_hours();
            for (after, to) in [
                (policy.freeze_after_hours, "frozen"),
                (policy.terminate_after_hours, "terminated"),
            ] {
                if since != i64::from(after) || after == 0 {
                    continue;
                }
                timeline.notices.extend(state_changes(
                    account_id,
                    &stopped_by_budget,
                    &hour_text,
                    hour_end,
                    rule,
                    to,
                    &format!("budget exhausted {after} h ago"),
                ));
            }
        }
        stopped_servers(&mut timeline, &mut stopped_runs, view, trial, policy, rule);
        timeline.first_hour.get_or_insert(hour);
        timeline.last_hour = Some(hour);
        timeline.last_charge = charge;
    }
    // Top-ups after the last hour replayed count too (the ledger holds only what has been
    // paid): a customer who just topped up may start servers now. A later run, replaying
    // those hours, credits them at the same point: before the charge of their hour.
    for top_up in &top_ups[next_top_up..] {
        credit(
            &mut timeline,
            policy,
            &mut unpaid,
            &mut stopped_by_budget,
            top_up,
        );
    }
    timeline.unpaid = unpaid.iter().map(|(_, amount)| amount).sum();
    if let Some(last) = timeline.last_hour {
        let reach = last.unix_hours() + 1 - i64::from(policy.retroactive_hours);
        timeline.retroactive_due = unpaid
            .iter()
            .filter(|(hour, _)| hour.unix_hours() >= reach)
            .map(|(_, amount)| amount)
            .sum();
    }
    timeline
}

/// A top-up: the balance grows and, if the budget was exhausted, the unpaid hours within
/// reach are charged.
fn credit(
    timeline: &mut Timeline,
    policy: &Prepaid,
    unpaid: &mut Vec<(Hour, Decimal)>,
    stopped_by_budget: &mut Vec<String>,
    top_up: &LedgerEntry,
) {
    timeline.balance += top_up.amount;
    if timeline.exhausted_since.is_some() {
        funds_returned(timeline, policy, unpaid, top_up.at);
        if timeline.exhausted_since.is_none() {
            stopped_by_budget.clear();
        }
    }
}

/// Funds came back at `at` while exhausted: charge the unpaid hours within reach, oldest
/// first, and write off the older ones (T5).
fn funds_returned(
    timeline: &mut Timeline,
    policy: &Prepaid,
    unpaid: &mut Vec<(Hour, Decimal)>,
    at: DateTime<Utc>,
) {
    let account_id = timeline.account_id.clone();
    let reach = Hour::from_unix_hours(
        Hour::containing(at).unix_hours() - i64::from(policy.retroactive_hours),
    );
    let mut paid = 0;
    for (hour, amount) in unpaid.iter() {
        if *hour < reach {
            timeline.entries.push(entry(
                &account_id,
                *hour,
                EntryKind::WriteOff,
                *amount,
                at,
                Some(timeline.balance),
            ));
        } else if *amount <= timeline.balance {
            timeline.balance -= *amount;
            timeline.entries.push(entry(
                &account_id,
                *hour,
                EntryKind::RetroactiveCharge,
                *amount,
                at,
                Some(timeline.balance),
            ));
        } else {
            break;
        }
        paid += 1;
    }
    unpaid.drain(..paid);
    if unpaid.is_empty() {
        let since = timeline
            .exhausted_since
            .take()
            .map(|hour| hour.partition_value())
            .unwrap_or_default();
        let key = Hour::containing(at).partition_value();
        timeline.notices.push(
            Notice::new(
                NoticeKind::BudgetRestored,
                &account_id,
                None,
                &key,
                at,
                &policy.rule,
                format!(
                    "funds returned: the balance is {} after charging the unpaid hours of the last {} h; servers may be started again (exhausted since {since})",
                    timeline.balance.normalize(),
                    policy.retroactive_hours
                ),
            )
            .with("balance", timeline.balance.normalize()),
        );
    }
}

/// T6: servers stopped for whole hours in a row.
fn stopped_servers(
    timeline: &mut Timeline,
    runs: &mut BTreeMap<String, StoppedRun>,
    view: &HourView,
    trial: bool,
    policy: &Prepaid,
    rule: &str,
) {
    let hour_end = view.hour.next().to_datetime();
    let stopped_only = |states: crate::usage::StatesSeen| {
        states.contains(ResourceState::Stopped) && states.states().count() == 1
    };
    runs.retain(|resource, _| {
        view.servers
            .iter()
            .any(|server| &server.resource_id == resource && stopped_only(server.states_seen))
    });
    for server in view
        .servers
        .iter()
        .filter(|server| stopped_only(server.states_seen))
    {
        let run = runs
            .entry(server.resource_id.clone())
            .or_insert(StoppedRun {
                since: view.hour,
                hours: 0,
            });
        run.hours += 1;
        let since = run.since.partition_value();
        let account_id = timeline.account_id.clone();
        if trial && run.hours == policy.trial_freeze_after_stopped_hours {
            timeline.notices.push(state_change(
                &account_id,
                &server.resource_id,
                &since,
                hour_end,
                rule,
                "frozen",
                format!("trial account: stopped for {} h", run.hours),
            ));
        }
        if !trial && run.hours == policy.stopped_warning_hours {
            timeline.notices.push(
                Notice::new(
                    NoticeKind::StoppedServerCost,
                    &account_id,
                    Some(&server.resource_id),
                    &since,
                    hour_end,
                    rule,
                    format!(
                        "server {} has been stopped for {} h since {since} and still costs money",
                        server.resource_id, run.hours
                    ),
                )
                .with("stopped_hours", run.hours)
                .with("sku", &server.sku),
            );
        }
        if run.hours == policy.max_stopped_hours {
            timeline.notices.push(state_change(
                &account_id,
                &server.resource_id,
                &since,
                hour_end,
                rule,
                "frozen",
                format!("stopped for the longest allowed, {} h", run.hours),
            ));
        }
    }
}

/// The same state change for each of `servers` (what a budget prescribes).
fn state_changes<'a>(
    account_id: &'a str,
    servers: &'a [String],
    key: &'a str,
    at: DateTime<Utc>,
    rule: &'a str,
    to: &'a str,
    reason: &'a str,
) -> impl Iterator<Item = Notice> + 'a {
    servers
        .iter()
        .map(move |server| state_change(account_id, server, key, at, rule, to, reason.to_owned()))
}

fn state_change(
    account_id: &str,
    resource_id: &str,
    key: &str,
    at: DateTime<Utc>,
    rule: &str,
    to: &str,
    reason: String,
) -> Notice {
    Notice::new(
        NoticeKind::ServerStateChanged,
        account_id,
        Some(resource_id),
        &format!("{key}/{to}"),
        at,
        rule,
        format!("server {resource_id} is to be {to}: {reason}"),
    )
    .with("to", to)
    .with("reason", reason)
}

fn entry(
    account_id: &str,
    hour: Hour,
    kind: EntryKind,
    amount: Decimal,
    at: DateTime<Utc>,
    balance: Option<Decimal>,
) -> LedgerEntry {
    let hour = hour.partition_value();
    LedgerEntry {
        id: format!("{account_id}/{hour}/{}", kind.as_str()),
        at,
        account_id: account_id.to_owned(),
        entry: kind,
        amount,
        hour: Some(hour),
        balance,
    }
}

/// Servers an account wants to start: `count` of a template (SKU) with `gpus` GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    pub sku: String,
    pub gpus: u16,
    pub count: u32,
}

impl std::str::FromStr for StartRequest {
    type Err = String;

    /// `SKU[/GPUS][×N]` (or `*N`): `infinityai-a100/8`, `powerai-4090×2`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        // Not `x`: template names contain it (cx22).
        let (template, count) = match text.rsplit_once(['×', '*']) {
            Some((template, count))
                if count.chars().all(|c| c.is_ascii_digit()) && !count.is_empty() =>
            {
                (
                    template,
                    count.parse::<u32>().map_err(|e| format!("'{text}': {e}"))?,
                )
            }
            _ => (text, 1),
        };
        let (sku, gpus) = match template.split_once('/') {
            Some((sku, gpus)) => (
                sku,
                gpus.parse::<u16>()
                    .map_err(|_| format!("'{text}': GPU count '{gpus}' is not a number"))?,
            ),
            None => (template, 1),
        };
        if sku.is_empty() || count == 0 || gpus == 0 {
            return Err(format!(
                "'{text}' is not TEMPLATE[/GPUS][×N] with a template name, GPUS ≥ 1 and N ≥ 1"
            ));
        }
        Ok(Self {
            sku: sku.to_owned(),
            gpus,
            count,
        })
    }
}

/// The answer to "may these servers start?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartDecision {
    pub allowed: bool,
    pub balance: Decimal,
    pub required: Decimal,
    /// For people: the figures and the rule.
    pub reason: String,
}

/// T5: may `requests` start with `timeline`'s balance under `tariff`?
pub fn check_start(
    tariff: &Tariff,
    timeline: &Timeline,
    requests: &[StartRequest],
) -> Result<StartDecision> {
    let fail = |detail: String| Error::Budget {
        account_id: timeline.account_id.clone(),
        detail,
    };
    let policy = tariff.prepaid.as_ref().ok_or_else(|| {
        fail(format!(
            "tariff '{}' has no [prepaid] section: its accounts are not prepaid",
            tariff.id
        ))
    })?;
    if let Some(since) = timeline.exhausted_since {
        return Ok(StartDecision {
            allowed: false,
            balance: timeline.balance,
            required: timeline.unpaid,
            reason: format!(
                "refused: the budget is exhausted since hour {} ({} unpaid); top up first ({})",
                since.partition_value(),
                timeline.unpaid.normalize(),
                policy.rule
            ),
        });
    }
    let mut required = Decimal::ZERO;
    let mut parts = Vec::new();
    for request in requests {
        let hourly = running_price(tariff, &request.sku, request.gpus).map_err(&fail)?;
        let cover = hourly * Decimal::from(policy.start_cover_hours);
        let minimum = policy
            .minimum_start
            .iter()
            .find(|minimum| minimum.sku == request.sku && minimum.gpus == request.gpus)
            .map(|minimum| (minimum.hours, hourly * Decimal::from(minimum.hours)));
        let (each, how) = match minimum {
            Some((hours, amount)) if amount > cover => (
                amount,
                format!("minimum starting budget {hours} h × {}", hourly.normalize()),
            ),
            _ => (
                cover,
                format!("{} h × {}", policy.start_cover_hours, hourly.normalize()),
            ),
        };
        required += each * Decimal::from(request.count);
        parts.push(format!(
            "{}× {}/{} GPU: {how} = {} each",
            request.count,
            request.sku,
            request.gpus,
            each.normalize()
        ));
    }
    let allowed = timeline.balance >= required;
    Ok(StartDecision {
        allowed,
        balance: timeline.balance,
        required,
        reason: format!(
            "{}: balance {} {} required {} ({}; {})",
            if allowed { "allowed" } else { "refused" },
            timeline.balance.normalize(),
            if allowed {
                "covers the"
            } else {
                "is less than the"
            },
            required.normalize(),
            parts.join("; "),
            policy.rule
        ),
    })
}

/// The hourly price of a configuration while running (T1: per GPU or the configuration's
/// own price, times the running factor).
fn running_price(tariff: &Tariff, sku: &str, gpus: u16) -> std::result::Result<Decimal, String> {
    let product = [ResourceKind::GpuServer, ResourceKind::Server]
        .into_iter()
        .find_map(|kind| tariff.product(sku, kind))
        .ok_or_else(|| format!("tariff '{}' sells no server template '{sku}'", tariff.id))?;
    let charge = product
        .time
        .iter()
        .find(|charge| charge.interval == Interval::Hourly && charge.per == PricePer::Hour)
        .ok_or_else(|| {
            format!(
                "template '{sku}' has no hourly price in tariff '{}'",
                tariff.id
            )
        })?;
    let (price, _) = crate::price::unit_price(charge, gpus)?;
    Ok(price * charge.factor(ResourceState::Running))
}
