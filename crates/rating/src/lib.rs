//! `tally rate`: a month of hourly rollups, the accounts' contracts and the tariffs in;
//! FOCUS line items and per-account invoices out.
//!
//! The steps, each in the file of its name: [`tariff`] (load and check) → [`contracts`]
//! → [`usage`] (DataFusion SQL over the lake, pruned to the month's `hour` partitions) →
//! [`price`] (Decimal only, every rule named on its line) → [`invoice`] (sum unrounded,
//! round the total once) → [`write`] (Parquet and JSON/CSV, byte-identical on re-runs).
//! Rating is a pure function of the rollups, contracts and tariff versions.

pub mod contracts;
pub mod error;
pub mod invoice;
pub mod month;
pub mod price;
pub mod tariff;
pub mod usage;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use rust_decimal::Decimal;
use tally_model::tariff::Tariff;

pub use error::{Error, Result};
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
    /// Lake root with `rollups/hour=…/`.
    pub lake: PathBuf,
    /// Billing month `YYYY-MM`, in each tariff's time zone.
    pub month: String,
    pub tariffs: Vec<PathBuf>,
    pub contracts: PathBuf,
    /// Where `line_items/` and `invoices/` are written.
    pub out: PathBuf,
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

#[derive(Clone, Debug)]
pub struct RateReport {
    pub month: String,
    pub invoices: Vec<InvoiceSummary>,
    pub line_items: usize,
    pub line_items_file: PathBuf,
    pub invoices_dir: PathBuf,
}

/// Rates one month and writes its line items and invoices.
pub async fn rate(request: &RateRequest) -> Result<RateReport> {
    let tariffs = request
        .tariffs
        .iter()
        .map(|path| check_tariff(path))
        .collect::<Result<Vec<Tariff>>>()?;
    let contracts = contracts::load_contracts(&request.contracts)?;
    let context = usage::lake_session(&request.lake).await?;

    // Months are calendar months in each tariff's time zone: one usage query per zone.
    let mut usage_by_zone: BTreeMap<String, (BillingMonth, Vec<usage::ResourceUsage>)> =
        BTreeMap::new();
    for tariff in &tariffs {
        if usage_by_zone.contains_key(&tariff.time_zone) {
            continue;
        }
        let zone = tariff::time_zone(tariff).map_err(|detail| Error::Tariff {
            path: PathBuf::from(&tariff.id),
            detail,
        })?;
        let month = BillingMonth::new(&request.month, zone)?;
        let usages = usage::month_usage(&context, &month).await?;
        usage_by_zone.insert(tariff.time_zone.clone(), (month, usages));
    }
    // Usage nobody is billed for is an error, not a silent gap in revenue.
    let unbilled = usage_by_zone
        .values()
        .flat_map(|(_, usages)| usages)
        .find(|usage| !contracts.contains_key(&usage.account_id));
    if let Some(usage) = unbilled {
        return Err(Error::NoContract {
            account_id: usage.account_id.clone(),
            month: request.month.clone(),
        });
    }

    let mut line_items = Vec::new();
    let mut invoices = Vec::new();
    for (account_id, contract) in &contracts {
        let no_tariff = || Error::NoTariff {
            account_id: account_id.clone(),
            tariff_id: contract.tariff_id.clone(),
            month: request.month.clone(),
        };
        let zone = &tariffs
            .iter()
            .find(|tariff| tariff.id == contract.tariff_id)
            .ok_or_else(no_tariff)?
            .time_zone;
        let (month, usages) = &usage_by_zone[zone];
        let tariff = tariff::version_for(&tariffs, &contract.tariff_id, month.first_day)
            .ok_or_else(no_tariff)?;
        let account_usage: Vec<&usage::ResourceUsage> = usages
            .iter()
            .filter(|usage| &usage.account_id == account_id)
            .collect();
        let items = price::price_account(tariff, month, &account_usage)?;
        if items.is_empty() {
            continue;
        }
        invoices.push(invoice::build_invoice(
            account_id,
            tariff,
            month,
            &items,
            contract.credit.unwrap_or_default(),
        ));
        line_items.extend(items);
    }
    let line_items_file = write::write_line_items(&request.out, &request.month, &line_items)?;
    let invoices_dir = write::write_invoices(&request.out, &request.month, &invoices)?;
    Ok(RateReport {
        month: request.month.clone(),
        invoices: invoices
            .iter()
            .map(|invoice| InvoiceSummary {
                account_id: invoice.account_id.clone(),
                tariff_id: invoice.tariff_id.clone(),
                currency: invoice.currency.clone(),
                lines: invoice.lines.len(),
                total: invoice.total,
                amount_due: invoice.amount_due,
            })
            .collect(),
        line_items: line_items.len(),
        line_items_file,
        invoices_dir,
    })
}

/// Runs SQL over the lake (`tally sql`): tables `rollups` (partition `hour`) and, once a
/// month was rated, `line_items` (partition `month`).
pub async fn sql(lake: &Path, query: &str) -> Result<Vec<RecordBatch>> {
    let context = usage::lake_session(lake).await?;
    Ok(context.sql(query).await?.collect().await?)
}

/// Batches as a text table.
pub fn format_batches(batches: &[RecordBatch]) -> Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
