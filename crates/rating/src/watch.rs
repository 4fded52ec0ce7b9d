//! `tally watch`: budgets settled and notices sent, each exactly once.
//!
//! A run replays every account's months hour by hour up to `until` ([`replay`]), settles
//! the prepaid accounts' budgets ([`budget`]), appends what the ledger lacks, and finds
//! the notices: the budgets' (T5–T7), traffic allowances used (H4: the tariff's
//! `notify_shares`) and cost thresholds passed (H10: the contracts' `cost_alerts`).
//! Everything found is a function of the lake, tariffs, contracts and top-ups, so a run
//! can be repeated, from cron or in a loop, at any time.
//!
//! **Exactly once.** Each notice has a stable id. The state directory's `notices.ndjson`
//! lists the notices delivered; a run delivers only the others, in time order, and
//! records each (one append + fsync) after every sink took it. A run stopped between the
//! two delivers that notice again, with the same idempotency key; a torn last line of
//! the log (a stop mid-append) is cut off.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Datelike;
use rust_decimal::Decimal;
use tally_lake::Lake;
use tally_model::Hour;
use tally_model::tariff::Tariff;

use crate::budget::{self, Timeline};
use crate::contracts::{self, AccountContract};
use crate::deliver::Sink;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, LedgerEntry};
use crate::month::{self, BillingMonth};
use crate::notice::{Notice, NoticeKind};
use crate::replay::{self, HourView};
use crate::tariff;
use crate::usage::{LabelHour, MonthRollups};

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub lake: PathBuf,
    pub tariffs: Vec<PathBuf>,
    pub contracts: PathBuf,
    /// The prepaid ledger; without it, no budgets are settled.
    pub ledger: Option<PathBuf>,
    /// The first month (`YYYY-MM`) replayed: budgets start from a zero balance in it.
    pub since: String,
    /// The first hour not replayed: hours before it are sealed in the lake.
    pub until: Hour,
    /// Holds `notices.ndjson`, the notices delivered.
    pub state_dir: PathBuf,
}

/// Everything a run finds, before anything is written or sent.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// The prepaid accounts' budgets, by account.
    pub timelines: BTreeMap<String, Timeline>,
    /// Every notice, in time order (then by id).
    pub notices: Vec<Notice>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct WatchReport {
    pub accounts: usize,
    pub notices_found: usize,
    pub notices_sent: usize,
    pub ledger_entries_written: usize,
    pub timelines: BTreeMap<String, Timeline>,
}

/// Replays, settles and finds; writes and sends nothing.
pub async fn find(request: &WatchRequest) -> Result<Findings> {
    find_with(request, load_ledger(request)?.as_ref()).await
}

fn load_ledger(request: &WatchRequest) -> Result<Option<Ledger>> {
    request.ledger.as_deref().map(Ledger::load).transpose()
}

/// [`find`] with the request's ledger already read.
async fn find_with(request: &WatchRequest, ledger: Option<&Ledger>) -> Result<Findings> {
    let tariffs = tariff::load_tariffs(&request.tariffs)?;
    let contracts = contracts::load_contracts(&request.contracts)?;
    let first_day = month::first_day(&request.since)?;
    // Accounts by the time zone of their tariff (as of the first month; a later version
    // in another zone is an error below).
    let mut zones: BTreeMap<String, Vec<&AccountContract>> = BTreeMap::new();
    for contract in contracts.values() {
        let tariff = version(&tariffs, contract, first_day, &request.since)?;
        zones
            .entry(tariff.time_zone.clone())
            .or_default()
            .push(contract);
    }
    let mut views: BTreeMap<String, Vec<HourView>> = BTreeMap::new();
    let mut findings = Findings::default();
    for (zone_name, accounts) in &zones {
        let zone = zone_name
            .parse::<chrono_tz::Tz>()
            .map_err(|e| Error::Month {
                month: request.since.clone(),
                detail: format!("time zone {zone_name}: {e}"),
            })?;
        let account_ids: Vec<String> = accounts.iter().map(|c| c.account_id.clone()).collect();
        let mut label = request.since.clone();
        loop {
            let month = BillingMonth::new(&label, zone)?;
            if month.start >= request.until.to_datetime() {
                break;
            }
            let rollups = MonthRollups::open(&Lake::from(&request.lake), &month).await?;
            let rows = rollups.label_hours(&account_ids).await?;
            let mut by_account: BTreeMap<&str, Vec<&LabelHour>> = BTreeMap::new();
            for row in &rows {
                by_account.entry(&row.account_id).or_default().push(row);
            }
            for contract in accounts {
                let tariff = version(&tariffs, contract, month.first_day, &label)?;
                if tariff.time_zone != *zone_name {
                    return Err(Error::Tariff {
                        path: PathBuf::from(&tariff.id),
                        detail: format!(
                            "version {} moves the tariff to time zone {}: watch from {label} on",
                            tariff.version, tariff.time_zone
                        ),
                    });
                }
                let rows = by_account
                    .get(contract.account_id.as_str())
                    .map_or(&[][..], Vec::as_slice);
                // Prepaid accounts are replayed every hour (top-ups and deadlines fall
                // in hours without usage); others only where they have usage.
                if rows.is_empty() && tariff.prepaid.is_none() {
                    continue;
                }
                let month_views =
                    replay::replay_month(tariff, &month, contract, rows, request.until)?;
                findings
                    .notices
                    .extend(month_notices(tariff, &month, contract, &month_views));
                views
                    .entry(contract.account_id.clone())
                    .or_default()
                    .extend(month_views);
            }
            let next = month.next_first_day();
            label = format!("{:04}-{:02}", next.year(), next.month());
        }
    }
    if let Some(ledger) = ledger {
        for contract in contracts.values() {
            let tariff = version(&tariffs, contract, first_day, &request.since)?;
            let Some(policy) = &tariff.prepaid else {
                continue;
            };
            let top_ups = ledger.top_ups(&contract.account_id);
            // T5: top-ups within the tariff's bounds; anything else is a bad ledger.
            if let Some(top_up) = top_ups.iter().find(|top_up| {
                top_up.amount < policy.top_up_min || top_up.amount > policy.top_up_max
            }) {
                return Err(Error::Budget {
                    account_id: contract.account_id.clone(),
                    detail: format!(
                        "top-up '{}' of {} in the ledger is outside tariff '{}''s bounds, {} to {} ({})",
                        top_up.id,
                        top_up.amount,
                        tariff.id,
                        policy.top_up_min,
                        policy.top_up_max,
                        policy.rule
                    ),
                });
            }
            let account_views = views
                .get(&contract.account_id)
                .map_or(&[][..], Vec::as_slice);
            let timeline = budget::timeline(
                &contract.account_id,
                contract.trial,
                policy,
                account_views,
                &top_ups,
            );
            findings.notices.extend(timeline.notices.iter().cloned());
            findings
                .timelines
                .insert(contract.account_id.clone(), timeline);
        }
    }
    findings
        .notices
        .sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    Ok(findings)
}

/// One run: find, append to the ledger what it lacks, deliver the notices not yet
/// delivered to every sink.
pub async fn run(request: &WatchRequest, sinks: &[Sink]) -> Result<WatchReport> {
    let ledger = load_ledger(request)?;
    let findings = find_with(request, ledger.as_ref()).await?;
    let mut report = WatchReport {
        accounts: findings.timelines.len(),
        notices_found: findings.notices.len(),
        ..WatchReport::default()
    };
    if let (Some(path), Some(ledger)) = (&request.ledger, &ledger) {
        let settled: Vec<LedgerEntry> = findings
            .timelines
            .values()
            .flat_map(|timeline| timeline.entries.iter().cloned())
            .collect();
        // Entries of the accounts and hours replayed now that the replay no longer makes
        // are cancelled; older hours are left as written.
        let covers = |entry: &LedgerEntry| {
            let hour = entry
                .hour
                .as_deref()
                .and_then(|hour| Hour::parse_partition_value(hour).ok());
            match (findings.timelines.get(&entry.account_id), hour) {
                (Some(timeline), Some(hour)) => {
                    timeline.first_hour.is_some_and(|first| hour >= first) && hour < request.until
                }
                _ => false,
            }
        };
        let missing = ledger.missing(&settled, covers);
        Ledger::append(path, &missing)?;
        report.ledger_entries_written = missing.len();
    }
    let mut log = EmittedLog::open(&request.state_dir)?;
    for notice in &findings.notices {
        if log.contains(&notice.id) {
            continue;
        }
        for sink in sinks {
            sink.deliver(notice).await?;
        }
        log.record(notice)?;
        report.notices_sent += 1;
    }
    report.timelines = findings.timelines;
    Ok(report)
}

/// The tariff version an account is rated with in the month starting `first_day`.
fn version<'a>(
    tariffs: &'a [Tariff],
    contract: &AccountContract,
    first_day: chrono::NaiveDate,
    month: &str,
) -> Result<&'a Tariff> {
    tariff::version_for(tariffs, &contract.tariff_id, first_day).ok_or_else(|| Error::NoTariff {
        account_id: contract.account_id.clone(),
        tariff_id: contract.tariff_id.clone(),
        month: month.to_owned(),
    })
}

/// H4 and H10 over one account's month: the first hour each traffic share and each cost
/// threshold is passed.
fn month_notices(
    tariff: &Tariff,
    month: &BillingMonth,
    contract: &AccountContract,
    views: &[HourView],
) -> Vec<Notice> {
    let mut notices = Vec::new();
    let mut passed: BTreeSet<(String, Decimal)> = BTreeSet::new();
    for view in views {
        let at = view.hour.next().to_datetime();
        for threshold in &contract.cost_alerts {
            let threshold = threshold.0;
            if view.month_to_date > threshold && passed.insert((String::new(), threshold)) {
                notices.push(
                    Notice::new(
                        NoticeKind::CostThresholdExceeded,
                        &contract.account_id,
                        None,
                        &format!("{}/{}", month.label, threshold.normalize()),
                        at,
                        "H10",
                        format!(
                            "the bill of {} is {} {} so far, above the alert at {}",
                            month.label,
                            view.month_to_date.round_dp(2),
                            tariff.currency,
                            threshold.normalize()
                        ),
                    )
                    .with("threshold", threshold.normalize())
                    .with("month_to_date", view.month_to_date.normalize()),
                );
            }
        }
        for used in &view.traffic {
            let Some(traffic) = tariff
                .products
                .iter()
                .find(|product| product.sku == used.sku)
                .and_then(|product| product.traffic.as_ref())
            else {
                continue;
            };
            if used.included_bytes <= Decimal::ZERO {
                continue;
            }
            for share in &traffic.notify_shares {
                let share = share.0;
                if used.used_bytes >= used.included_bytes * share
                    && passed.insert((used.resource_id.clone(), share))
                {
                    let percent = (share * Decimal::from(100)).normalize();
                    notices.push(
                        Notice::new(
                            NoticeKind::TrafficIncludedUsed,
                            &contract.account_id,
                            Some(&used.resource_id),
                            &format!("{}/{percent}", month.label),
                            at,
                            &traffic.rule,
                            format!(
                                "{percent} % of the traffic included in {} is used: {} of {} bytes",
                                month.label, used.used_bytes, used.included_bytes
                            ),
                        )
                        .with("share", share.normalize())
                        .with("used_bytes", used.used_bytes)
                        .with("included_bytes", used.included_bytes),
                    );
                }
            }
        }
    }
    notices
}

/// The notices delivered, by id: `notices.ndjson` in the state directory.
struct EmittedLog {
    path: PathBuf,
    ids: BTreeSet<String>,
}

impl EmittedLog {
    fn open(state_dir: &Path) -> Result<Self> {
        let io = |action: String| move |source| Error::Io { action, source };
        std::fs::create_dir_all(state_dir)
            .map_err(io(format!("create {}", state_dir.display())))?;
        let path = state_dir.join("notices.ndjson");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(io(format!("read {}", path.display()))(source)),
        };
        // A line without its newline is an append cut short: its notice is delivered
        // again (same idempotency key) and recorded anew.
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        if complete < text.len() {
            tracing::warn!(path = %path.display(), "cutting off a torn last line of the emitted log");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(format!("open {}", path.display())))?;
            file.set_len(complete as u64)
                .and_then(|()| file.sync_data())
                .map_err(io(format!("truncate {}", path.display())))?;
        }
        let mut ids = BTreeSet::new();
        for (index, line) in text[..complete].lines().enumerate() {
            let notice: Notice = serde_json::from_str(line).map_err(|e| Error::StateFile {
                path: path.clone(),
                line: index + 1,
                detail: format!("not a notice: {e}"),
            })?;
            ids.insert(notice.id);
        }
        Ok(Self { path, ids })
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn record(&mut self, notice: &Notice) -> Result<()> {
        let io = |source| Error::Io {
            action: format!("append to {}", self.path.display()),
            source,
        };
        let mut line = serde_json::to_string(notice).map_err(|e| Error::Delivery {
            id: notice.id.clone(),
            sink: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.ids.insert(notice.id.clone());
        Ok(())
    }
}
