//! Writing line items (Parquet) and invoices (JSON, CSV), atomically and reproducibly:
//! the same inputs give byte-identical files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_lake::Lake;
use tally_model::LineItem;
use tally_model::line_item::line_items_to_batch;

use crate::correction::{Issued, issued_key};
use crate::error::{Error, Result};
use crate::invoice::{Invoice, invoice_csv};

/// `line_items/month=YYYY-MM/<name>.parquet` under `out`.
pub fn line_items_path(out: &Path, month: &str, name: &str) -> PathBuf {
    out.join(line_items_key(month, name))
}

/// The key of `line_items/month=YYYY-MM/<name>.parquet` in the output lake.
pub fn line_items_key(month: &str, name: &str) -> String {
    format!("line_items/month={month}/{name}.parquet")
}

/// `invoices/month=YYYY-MM/` under `out`.
pub fn invoices_dir(out: &Path, month: &str) -> PathBuf {
    out.join(invoices_key(month))
}

/// The key of `invoices/month=YYYY-MM` in the output lake.
pub fn invoices_key(month: &str) -> String {
    format!("invoices/month={month}")
}

/// Writes `line_items/month=YYYY-MM/<name>.parquet` to `out`: `line_items` for the
/// month's lines, `corrections-NNN` for a correction round (H8). Returns its key.
pub fn write_line_items(out: &Lake, month: &str, name: &str, items: &[LineItem]) -> Result<String> {
    let key = line_items_key(month, name);
    let batch = line_items_to_batch(items)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by("tally line items v1".to_owned())
        .build();
    let parquet_error = |source| Error::Parquet {
        path: PathBuf::from(out.location(&key)),
        source,
    };
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties))
        .map_err(parquet_error)?;
    writer.write(&batch).map_err(parquet_error)?;
    let bytes = writer.into_inner().map_err(parquet_error)?;
    out.put(&key, bytes)?;
    Ok(key)
}

/// `<account>.json` and `.csv` under `directory` (the key of `invoices/month=YYYY-MM`, or
/// of a correction round's directory below it). Invoices of an earlier run that this run
/// no longer produces are removed, so the directory is a function of this run's inputs
/// alone. Returns the keys written.
pub fn write_invoices(out: &Lake, directory: &str, invoices: &[Invoice]) -> Result<Vec<String>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(2 * invoices.len());
    let mut taken = HashSet::new();
    for invoice in invoices {
        let name = sanitize(&invoice.account_id);
        let mut json = serde_json::to_vec_pretty(invoice).map_err(|e| Error::Io {
            action: format!("serialise the invoice of {}", invoice.account_id),
            source: std::io::Error::other(e),
        })?;
        json.push(b'\n');
        let json_key = format!("{directory}/{name}.json");
        // Two account ids that differ only in characters a file name cannot hold would
        // overwrite one another: refuse, rather than lose an invoice.
        if !taken.insert(json_key.clone()) {
            return Err(Error::Invoice {
                account_id: invoice.account_id.clone(),
                detail: format!(
                    "its file name {} is taken by another account; rename one of the accounts",
                    out.location(&json_key)
                ),
            });
        }
        files.push((json_key, json));
        files.push((
            format!("{directory}/{name}.csv"),
            invoice_csv(invoice).into_bytes(),
        ));
    }
    let written: Vec<String> = files.iter().map(|(key, _)| key.clone()).collect();
    out.put_many(files)?;
    remove_stale_invoices(out, directory, &written)?;
    Ok(written)
}

/// Writes the month's issue record (H8), last of a run's files: it commits the run.
pub fn write_issued(out: &Lake, issued: &Issued) -> Result<String> {
    let key = issued_key(&issued.month);
    let mut json = serde_json::to_vec_pretty(issued).map_err(|e| Error::Io {
        action: format!("serialise the issue record of {}", issued.month),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    out.put(&key, json)?;
    Ok(key)
}

/// Removes `*.json` and `*.csv` directly in `directory` that are not in `keep`; names
/// starting with `_` (the issue record) are not invoices.
fn remove_stale_invoices(out: &Lake, directory: &str, keep: &[String]) -> Result<()> {
    let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
    for key in out.list(directory)? {
        let Some(name) = key
            .strip_prefix(directory)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let is_invoice = !name.contains('/')
            && (name.ends_with(".json") || name.ends_with(".csv"))
            && !name.starts_with('_');
        if is_invoice && !keep.contains(key.as_str()) {
            tracing::info!(file = %out.location(&key), "removing an invoice no longer produced");
            out.delete(&key)?;
        }
    }
    Ok(())
}

fn sanitize(account_id: &str) -> String {
    account_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
