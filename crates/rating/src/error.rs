//! The rating job's errors: each names the file, account, resource or line concerned.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tariff {path}: {detail}")]
    Tariff { path: PathBuf, detail: String },
    #[error("contracts {path}: {detail}")]
    Contracts { path: PathBuf, detail: String },
    #[error("month '{0}' is not of the form YYYY-MM")]
    Month(String),
    #[error(
        "account '{account_id}' has usage in {month} but no contract: add it to the contracts file so it is billed"
    )]
    NoContract { account_id: String, month: String },
    #[error(
        "account '{account_id}' is on tariff '{tariff_id}', which no tariff file provides for {month}"
    )]
    NoTariff {
        account_id: String,
        tariff_id: String,
        month: String,
    },
    #[error("account '{account_id}' resource '{resource_id}': {detail}")]
    Pricing {
        account_id: String,
        resource_id: String,
        detail: String,
    },
    #[error("no rollups under {0}: run `tally aggregate` (or `tally demo`) first")]
    NoLake(PathBuf),
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
}
