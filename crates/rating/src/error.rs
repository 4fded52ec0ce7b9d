//! The rating job's errors: each names the file, account, resource or line concerned,
//! and what to do about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tariff file that cannot be read, parsed or fails a check; `detail` names the line
    /// and field.
    #[error("tariff {path}: {detail}")]
    Tariff { path: PathBuf, detail: String },
    /// Two tariff files claim the same tariff id and effective date.
    #[error(
        "tariffs {first} and {second} are both tariff '{id}' effective from {effective_from}: remove one or give it another effective_from"
    )]
    DuplicateTariffVersion {
        id: String,
        effective_from: chrono::NaiveDate,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("contracts {path}: {detail}")]
    Contracts { path: PathBuf, detail: String },
    #[error("month '{month}': {detail}")]
    Month { month: String, detail: String },
    #[error(
        "account '{account_id}' has usage in {month} but no contract: add it to the contracts file so it is billed"
    )]
    NoContract { account_id: String, month: String },
    #[error(
        "account '{account_id}' is on tariff '{tariff_id}', which no tariff file provides for {month}: pass that tariff's file (with an effective_from on or before the month)"
    )]
    NoTariff {
        account_id: String,
        tariff_id: String,
        month: String,
    },
    /// Rollups that cannot be used as they are.
    #[error("rollups of account '{account_id}' resource '{resource_id}': {detail}")]
    Usage {
        account_id: String,
        resource_id: String,
        detail: String,
    },
    #[error("account '{account_id}' resource '{resource_id}': {detail}")]
    Pricing {
        account_id: String,
        resource_id: String,
        detail: String,
    },
    #[error("invoice of account '{account_id}': {detail}")]
    Invoice { account_id: String, detail: String },
    #[error("no rollups under {0}: run `tally aggregate` (or `tally demo`) first")]
    NoLake(String),
    #[error("the Ballista cluster ({scheduler}): {detail}")]
    Ballista { scheduler: String, detail: String },
    #[error(transparent)]
    Lake(#[from] tally_lake::Error),
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    /// A ledger line that cannot be read; `line` 0 when writing.
    #[error("ledger {path}, line {line}: {detail}")]
    Ledger {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// A line of a state file (the emitted notices) that cannot be read.
    #[error("{path}, line {line}: {detail}")]
    StateFile {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// A budget question that has no answer as asked.
    #[error("budget of account '{account_id}': {detail}")]
    Budget { account_id: String, detail: String },
    /// A notice that could not be delivered; it is delivered again by the next run.
    #[error("delivering notice {id} to {sink}: {detail}")]
    Delivery {
        id: String,
        sink: String,
        detail: String,
    },
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
}
