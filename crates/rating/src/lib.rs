//! `tally rate`: a month of hourly rollups, the accounts' contracts and the tariffs in;
//! FOCUS line items and per-account invoices out.
//!
//! # The flow
//! Each step lives in the file of its name:
//! 1. [`tariff`]: read and check the tariff files (TOML, `tally.tariff.v1`); errors name
//!    the file, line and field. Several files of one tariff id are its versions; a month
//!    is rated with the version in force on its first day.
//! 2. [`contracts`]: which account is on which tariff, with what credit.
//! 3. [`usage`]: DataFusion SQL over the lake's `rollups/hour=…/` files, pruned to the
//!    month (a calendar month in the tariff's time zone, see [`month`]): per resource the
//!    hours by states seen and GPU count, the minutes by label set, traffic and size.
//! 4. [`price`]: the tariff applied to that usage in `Decimal` only (no float touches
//!    money; an overflow is an error), giving FOCUS line items that each name the
//!    BILLING.md rule, the tariff version and the rollup rows they come from.
//! 5. [`invoice`]: per account, lines summed unrounded and the total rounded once;
//!    displayed lines, the rounding difference and the credit are reported.
//! 6. [`write`](mod@write): `line_items/month=YYYY-MM/line_items.parquet` and
//!    `invoices/month=YYYY-MM/invoices.{jsonl,csv}` (every account's invoice in one
//!    file a format), temp file → fsync → rename.
//!
//! Rating is a pure function of the rollups, contracts and tariff versions: re-running it
//! gives byte-identical files, however the rollups are split over files.
//!
//! Usage that no contract covers, and SKUs that the tariff does not sell, are errors:
//! nothing is ever silently unbilled.
//!
//! [`mod@sql`] gives analysts the lake's tables (`tally sql`); [`watch`] settles prepaid
//! budgets ([`budget`], [`ledger`]) and sends notices ([`notice`], [`deliver`]) from the
//! month replayed hour by hour ([`replay`]).

pub mod bookings;
pub mod budget;
pub mod compare;
pub mod contracts;
pub mod correction;
pub mod deliver;
pub mod distributed;
pub mod error;
pub mod explain;
pub mod fold;
pub mod invoice;
pub mod ledger;
pub mod month;
pub mod notice;
pub mod price;
pub mod replay;
pub mod sql;
pub mod tariff;
pub mod usage;
pub mod watch;
pub mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use rust_decimal::Decimal;
use tally_model::tariff::{Interval, Tariff};

pub use distributed::Engine;
pub use error::{Error, Result};
pub use tally_lake::Lake;
pub use tariff::check_tariff;

use crate::month::BillingMonth;

/// The reference tariffs of BILLING.md, as shipped: `(file name, TOML text)`.
pub fn reference_tariffs() -> [(&'static str, &'static str); 4] {
    [
        (
            "trooper-ai.toml",
            include_str!("../tariffs/trooper-ai.toml"),
        ),
        ("vps-672.toml", include_str!("../tariffs/vps-672.toml")),
        (
            "hetzner-cloud.toml",
            include_str!("../tariffs/hetzner-cloud.toml"),
        ),
        ("centron.toml", include_str!("../tariffs/centron.toml")),
    ]
}

/// What to rate.
#[derive(Clone, Debug)]
pub struct RateRequest {
    /// The lake with `rollups/hour=…/`.
    pub lake: Lake,
    /// Billing month `YYYY-MM`, in each tariff's time zone.
    pub month: String,
    pub tariffs: Vec<PathBuf>,
    pub contracts: PathBuf,
    /// Where `line_items/` and `invoices/` are written (the lake, usually).
    pub out: Lake,
    /// Freeze the month once written (H8): later runs write corrections only.
    pub issue: bool,
    /// Explain this account's invoice line by line instead of writing anything.
    pub explain: Option<String>,
    /// Where the usage queries run: here, or on a Ballista cluster.
    pub engine: Engine,
}

/// One invoice in brief.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceSummary {
    pub account_id: String,
    pub tariff_id: String,
    pub currency: String,
    pub lines: usize,
    pub total: Decimal,
    pub amount_due: Decimal,
}

/// What one `rate` run did.
#[derive(Clone, Debug)]
pub struct RateReport {
    pub month: String,
    /// One per account with a non-empty invoice, by account id.
    pub invoices: Vec<InvoiceSummary>,
    /// Line items written, over all accounts.
    pub line_items: usize,
    /// Where the line items are (a path or a URL).
    pub line_items_file: String,
    /// Where `invoices/month=YYYY-MM/` is.
    pub invoices_dir: String,
    /// Every file written, in the order written.
    pub written: Vec<String>,
    /// Whether the month is issued (by this run or an earlier one).
    pub issued: bool,
    /// For a month issued earlier: the correction round this run wrote, if anything
    /// changed; `invoices` are then that round's correction invoices.
    pub correction_round: Option<u32>,
    /// With [`RateRequest::explain`]: the explanation; nothing was written.
    pub explanation: Option<String>,
}

/// One time zone's month and the usage in it.
struct ZoneUsage {
    month: BillingMonth,
    usages: Vec<usage::ResourceUsage>,
    /// Hour by hour, the resources on contracts paid per period (T2), by (resource, SKU).
    resource_hours: BTreeMap<(String, String), Vec<usage::HourStates>>,
}

/// One account to price: its contract, its tariff version and its zone's usage.
struct AccountToPrice<'a> {
    account_id: &'a String,
    contract: &'a contracts::AccountContract,
    tariff: &'a Tariff,
    zone: &'a ZoneUsage,
}

/// One account priced: its invoice and, if asked for, the explanation.
struct PricedAccount {
    invoice: invoice::Invoice,
    explanation: Option<String>,
}

impl AccountToPrice<'_> {
    /// The account's run of the zone's usage (sorted by account).
    fn usages(&self) -> &[usage::ResourceUsage] {
        let usages = &self.zone.usages;
        let from = usages.partition_point(|usage| &usage.account_id < self.account_id);
        let to = usages.partition_point(|usage| &usage.account_id <= self.account_id);
        &usages[from..to]
    }

    /// Appends the account's lines to `items` and returns its invoice; none if nothing is
    /// billable. `explain`: the account whose invoice is to be explained.
    fn price(
        &self,
        explain: Option<&String>,
        items: &mut Vec<tally_model::LineItem>,
    ) -> Result<Option<PricedAccount>> {
        let ZoneUsage {
            month,
            resource_hours,
            ..
        } = self.zone;
        let account_id = self.account_id;
        let account_usage: Vec<&usage::ResourceUsage> = self.usages().iter().collect();
        let start = items.len();
        price::price_account_into(
            self.tariff,
            month,
            &price::AccountInputs {
                contract: self.contract,
                usages: &account_usage,
                resource_hours,
            },
            items,
        )?;
        let lines = &items[start..];
        if lines.is_empty() {
            return Ok(None);
        }
        let invoice = invoice::build_invoice(
            account_id,
            self.tariff,
            month,
            lines,
            self.contract.credit.unwrap_or_default(),
        )?;
        let explanation = (explain == Some(account_id))
            .then(|| explain::explain(&invoice, lines, &account_usage));
        Ok(Some(PricedAccount {
            invoice,
            explanation,
        }))
    }
}

/// A month priced in memory: what [`rate`] writes, before anything is written.
#[derive(Clone, Debug)]
pub struct PricedMonth<'t> {
    pub line_items: Vec<tally_model::LineItem>,
    /// One per account with lines, by account id.
    pub invoices: Vec<invoice::Invoice>,
    /// Every account's tariff version and month, also of accounts without lines (their
    /// corrections need them). The tariffs are the caller's: copied, every account held
    /// a whole tariff of its own.
    pub billing: BTreeMap<String, (&'t Tariff, BillingMonth)>,
    /// The explanation of [`RateRequest::explain`]'s account, if it has an invoice.
    pub explanation: Option<String>,
}

/// Prices `request.month` with `tariffs` (the request's own tariff files are not read):
/// usage from the lake, one usage query per tariff time zone.
pub async fn price_month<'t>(
    request: &RateRequest,
    tariffs: &'t [Tariff],
) -> Result<PricedMonth<'t>> {
    // Each stage's log line says how long the job has run: where its time goes.
    let started = Instant::now();
    let contracts = contracts::load_contracts(&request.contracts)?;
    let first_day = month::first_day(&request.month)?;

    // Each account's tariff version: the one in force on the month's first day.
    let mut plans: Vec<(&String, &contracts::AccountContract, &Tariff)> = Vec::new();
    for (account_id, contract) in &contracts {
        let tariff =
            tariff::version_for(tariffs, &contract.tariff_id, first_day).ok_or_else(|| {
                Error::NoTariff {
                    account_id: account_id.clone(),
                    tariff_id: contract.tariff_id.clone(),
                    month: request.month.clone(),
                }
            })?;
        plans.push((account_id, contract, tariff));
    }

    // Months are calendar months in each tariff's time zone: one usage query per zone.
    // Every loaded tariff's zone is queried, so usage of accounts without a contract is
    // found even when no contract uses that zone.
    let mut usage_by_zone: BTreeMap<&str, ZoneUsage> = BTreeMap::new();
    for tariff in tariffs {
        if usage_by_zone.contains_key(tariff.time_zone.as_str()) {
            continue;
        }
        let zone = tariff::time_zone(tariff).map_err(|detail| Error::Tariff {
            path: PathBuf::from(&tariff.id),
            detail,
        })?;
        let month = BillingMonth::new(&request.month, zone)?;
        let rollups = usage::MonthRollups::open_on(&request.lake, &month, &request.engine).await?;
        let usages = rollups.usage().await?;
        // Resources paid per period of their contract (T2) are priced hour by hour: all of
        // the zone's are read in one query.
        // The usage is sorted by account: a contract is looked up once per account.
        let periodic: Vec<(String, String)> = usages
            .chunk_by(|a, b| a.account_id == b.account_id)
            .filter_map(|run| Some((run, contracts.get(&run.first()?.account_id)?)))
            .flat_map(|(run, contract)| {
                run.iter()
                    .filter(|usage| contract.terms(&usage.resource_id).interval != Interval::Hourly)
            })
            .map(|usage| (usage.resource_id.clone(), usage.sku.clone()))
            .collect();
        let resource_hours = rollups.resource_hours(&periodic).await?;
        tracing::info!(
            time_zone = %tariff.time_zone,
            month = %month.label,
            hours = month.hours(),
            resources = usages.len(),
            periodic = periodic.len(),
            seconds = started.elapsed().as_secs_f64(),
            "usage summed"
        );
        usage_by_zone.insert(
            &tariff.time_zone,
            ZoneUsage {
                month,
                usages,
                resource_hours,
            },
        );
    }
    // Usage nobody is billed for is an error, not a silent gap in revenue.
    let unbilled = usage_by_zone
        .values()
        .flat_map(|zone| zone.usages.chunk_by(|a, b| a.account_id == b.account_id))
        .filter_map(|run| run.first())
        .find(|usage| !contracts.contains_key(&usage.account_id));
    if let Some(usage) = unbilled {
        return Err(Error::NoContract {
            account_id: usage.account_id.clone(),
            month: request.month.clone(),
        });
    }

    let mut priced = PricedMonth {
        line_items: Vec::new(),
        invoices: Vec::new(),
        billing: BTreeMap::new(),
        explanation: None,
    };
    let mut accounts = Vec::with_capacity(plans.len());
    for (account_id, contract, tariff) in plans {
        // Every loaded tariff's zone was queried above; a miss would be a bug, and
        // skipping the account would leave it unbilled.
        let zone = usage_by_zone
            .get(tariff.time_zone.as_str())
            .ok_or_else(|| Error::Tariff {
                path: PathBuf::from(&tariff.id),
                detail: format!("time zone {} was not queried", tariff.time_zone),
            })?;
        priced
            .billing
            .insert(account_id.clone(), (tariff, zone.month.clone()));
        accounts.push(AccountToPrice {
            account_id,
            contract,
            tariff,
            zone,
        });
    }
    // Accounts are priced independently: on every core, in chunks, kept in account order.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = accounts.len().div_ceil(threads).max(1);
    let explain = request.explain.as_ref();
    type Chunk = (Vec<tally_model::LineItem>, Vec<PricedAccount>);
    let chunks: Vec<Result<Chunk>> = std::thread::scope(|scope| {
        let workers: Vec<_> = accounts
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    // About a line per resource and one more per account: sized once.
                    let resources: usize = part.iter().map(|account| account.usages().len()).sum();
                    let mut items = Vec::with_capacity(resources + part.len());
                    let mut priced = Vec::with_capacity(part.len());
                    for account in part {
                        priced.extend(account.price(explain, &mut items)?);
                    }
                    Ok((items, priced))
                })
            })
            .collect();
        workers
            .into_iter()
            // A panic is a bug: it goes on as it would have without threads.
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let chunks = chunks.into_iter().collect::<Result<Vec<_>>>()?;
    // Sized once: grown line by line, the month's ~500-byte lines were copied at each
    // doubling.
    priced
        .line_items
        .reserve_exact(chunks.iter().map(|(items, _)| items.len()).sum());
    priced
        .invoices
        .reserve_exact(chunks.iter().map(|(_, accounts)| accounts.len()).sum());
    for (items, accounts) in chunks {
        priced.line_items.extend(items);
        for account in accounts {
            if account.explanation.is_some() {
                priced.explanation = account.explanation;
            }
            priced.invoices.push(account.invoice);
        }
    }
    tracing::info!(
        line_items = priced.line_items.len(),
        invoices = priced.invoices.len(),
        seconds = started.elapsed().as_secs_f64(),
        "priced"
    );
    drop(accounts);
    drop_aside(usage_by_zone.into_values().collect::<Vec<_>>());
    Ok(priced)
}

/// Frees `value` on a thread of its own. **Why:** a month's usage and lines are millions
/// of small allocations; freeing them took the job's one thread a few tenths of a second
/// (`benches/BENCHMARKS.md`) that nothing needs to wait for. If no thread can be started,
/// `value` is freed here.
fn drop_aside<T: Send + 'static>(value: T) {
    // A spawn that fails drops its closure, and `value` with it.
    let _freeing = std::thread::Builder::new()
        .name("tally-free".to_owned())
        .spawn(move || drop(value));
}

/// Rates one month and writes its line items and invoices.
pub async fn rate(request: &RateRequest) -> Result<RateReport> {
    let started = Instant::now();
    let tariffs = tariff::load_tariffs(&request.tariffs)?;
    let PricedMonth {
        line_items,
        invoices,
        billing,
        explanation,
    } = price_month(request, &tariffs).await?;
    let out = &request.out;
    let mut invoices_key = write::invoices_key(&request.month);
    let mut report = RateReport {
        month: request.month.clone(),
        invoices: Vec::new(),
        line_items: line_items.len(),
        line_items_file: out.location(&write::line_items_key(&request.month, "line_items")),
        invoices_dir: out.location(&invoices_key),
        written: Vec::new(),
        issued: request.issue,
        correction_round: None,
        explanation: None,
    };
    if let Some(account_id) = &request.explain {
        // A dry run: nothing is written.
        report.explanation = Some(explanation.unwrap_or_else(|| {
            format!(
                "account {account_id} has no invoice for {}: no contract, or nothing billable",
                request.month
            )
        }));
        report.invoices = invoices.iter().map(summary).collect();
        return Ok(report);
    }
    let mut written = Vec::new();
    match correction::read_issued(out, &request.month)? {
        None => {
            // The line items and the invoices are independent files: written side by side.
            // Neither commits the run; the issue record, written after both, does.
            let (line_items_key, invoice_keys) = std::thread::scope(|scope| {
                let line_items_key = scope.spawn(|| {
                    write::write_line_items(out, &request.month, "line_items", &line_items)
                });
                let invoice_keys = write::write_invoices(out, &invoices_key, &invoices);
                // A panic is a bug: it goes on as it would have without the thread.
                let line_items_key = line_items_key
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (line_items_key, invoice_keys)
            });
            written.push(line_items_key?);
            written.extend(invoice_keys?);
            if request.issue {
                let issued = correction::Issued {
                    month: request.month.clone(),
                    corrections: 0,
                    lines: line_items,
                };
                written.push(write::write_issued(out, &issued)?);
                drop_aside(issued);
            } else {
                drop_aside(line_items);
            }
            report.invoices = invoices.iter().map(summary).collect();
            drop_aside(invoices);
            tracing::info!(
                files = written.len(),
                seconds = started.elapsed().as_secs_f64(),
                "written"
            );
        }
        Some(mut issued) => {
            // The issued files stay as they were: only differences are written (H8).
            report.issued = true;
            let round = issued.corrections + 1;
            let corrections = correction::corrections(&issued.lines, &line_items, round)?;
            report.line_items = corrections.len();
            if corrections.is_empty() {
                tracing::info!(month = %request.month, "issued month unchanged: no corrections");
                return Ok(report);
            }
            let name = format!("corrections-{round:03}");
            let line_items_key = write::write_line_items(out, &request.month, &name, &corrections)?;
            report.line_items_file = out.location(&line_items_key);
            written.push(line_items_key);
            let mut by_account: BTreeMap<&str, Vec<tally_model::LineItem>> = BTreeMap::new();
            for line in &corrections {
                by_account
                    .entry(line.billing_account_id.as_str())
                    .or_default()
                    .push(line.clone());
            }
            let mut correction_invoices = Vec::new();
            for (account_id, lines) in by_account {
                let (tariff, month) = match billing.get(account_id) {
                    Some((tariff, month)) => (tariff, month),
                    None => {
                        return Err(Error::NoContract {
                            account_id: account_id.to_owned(),
                            month: request.month.clone(),
                        });
                    }
                };
                correction_invoices.push(invoice::build_invoice(
                    account_id,
                    tariff,
                    month,
                    &lines,
                    Decimal::ZERO,
                )?);
            }
            invoices_key = format!("{invoices_key}/{name}");
            report.invoices_dir = out.location(&invoices_key);
            written.extend(write::write_invoices(
                out,
                &invoices_key,
                &correction_invoices,
            )?);
            issued.corrections = round;
            issued.lines.extend(corrections);
            written.push(write::write_issued(out, &issued)?);
            report.invoices = correction_invoices.iter().map(summary).collect();
            report.correction_round = Some(round);
        }
    }
    report.written = written.iter().map(|key| out.location(key)).collect();
    Ok(report)
}

fn summary(invoice: &invoice::Invoice) -> InvoiceSummary {
    InvoiceSummary {
        account_id: invoice.account_id.clone(),
        tariff_id: invoice.tariff_id.clone(),
        currency: invoice.currency.clone(),
        lines: invoice.lines.len(),
        total: invoice.total,
        amount_due: invoice.amount_due,
    }
}

/// Runs one SQL statement over the lake (`tally sql`; tables in [`sql`](mod@sql)).
pub async fn sql(lake: &Lake, query: &str) -> Result<Vec<RecordBatch>> {
    sql::query(lake, query).await
}

/// Batches as a text table, for printing query results.
pub fn format_batches(batches: &[RecordBatch]) -> Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
