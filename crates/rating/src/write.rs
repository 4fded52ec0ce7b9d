//! Writing line items (Parquet) and invoices (JSON Lines, CSV), atomically and
//! reproducibly: the same inputs give byte-identical files.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_lake::Lake;
use tally_model::LineItem;
use tally_model::line_item::{line_item_arrow_schema, line_items_to_batch};

use crate::correction::{Issued, issued_key};
use crate::error::{Error, Result};
use crate::invoice::{CSV_HEADER, Invoice, push_csv_rows};

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

/// Rows of line items converted to Arrow at a time (a multiple of the Parquet writer's
/// 1,024-row write batches).
const LINE_ITEM_BATCH_ROWS: usize = 8 * 1024;

/// Writes `line_items/month=YYYY-MM/<name>.parquet` to `out`: `line_items` for the
/// month's lines, `corrections-NNN` for a correction round (H8). Returns its key.
pub fn write_line_items(out: &Lake, month: &str, name: &str, items: &[LineItem]) -> Result<String> {
    let key = line_items_key(month, name);
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by("tally line items v1".to_owned())
        .build();
    let parquet_error = |source| Error::Parquet {
        path: PathBuf::from(out.location(&key)),
        source,
    };
    let mut writer = ArrowWriter::try_new(Vec::new(), line_item_arrow_schema(), Some(properties))
        .map_err(parquet_error)?;
    // Batch by batch: a batch's columns are still in the cache when the writer encodes
    // them, where the month's as one batch (tens of megabytes) were not.
    for chunk in items.chunks(LINE_ITEM_BATCH_ROWS) {
        writer
            .write(&line_items_to_batch(chunk)?)
            .map_err(parquet_error)?;
    }
    let bytes = writer.into_inner().map_err(parquet_error)?;
    out.put(&key, bytes)?;
    Ok(key)
}

/// The month's invoices as JSON Lines: one invoice object per line, by account.
pub const INVOICES_JSONL: &str = "invoices.jsonl";
/// The month's invoices as CSV: each account's lines, then its totals.
pub const INVOICES_CSV: &str = "invoices.csv";

/// Writes [`INVOICES_JSONL`] and [`INVOICES_CSV`] under `directory` (the key of
/// `invoices/month=YYYY-MM`, or of a correction round's directory below it). **Why two
/// files a month, not two per account:** a provider with 100,000 accounts would create
/// 200,000 files (objects, on a bucket) every run; on this machine's ext4, 20,000 took
/// 2.5–11 s, more than the rest of the job after summing usage. Invoices of an earlier
/// run that this run no longer produces (per-account files of earlier versions among them)
/// are removed, so the directory is a function of this run's inputs alone. Returns the
/// keys written.
pub fn write_invoices(out: &Lake, directory: &str, invoices: &[Invoice]) -> Result<Vec<String>> {
    // One text after the other: `rate` writes the line items beside them, which take
    // about as long as both together; a thread each put three threads on two cores.
    let jsonl = invoices_jsonl(invoices)?;
    let mut csv = String::from(CSV_HEADER);
    for invoice in invoices {
        push_csv_rows(invoice, &mut csv);
    }
    let files = vec![
        (format!("{directory}/{INVOICES_JSONL}"), jsonl),
        (format!("{directory}/{INVOICES_CSV}"), csv.into_bytes()),
    ];
    let written: Vec<String> = files.iter().map(|(key, _)| key.clone()).collect();
    out.put_many(files)?;
    remove_stale_invoices(out, directory, &written)?;
    Ok(written)
}

fn invoices_jsonl(invoices: &[Invoice]) -> Result<Vec<u8>> {
    let mut jsonl = Vec::with_capacity(invoices.len() * 2048);
    for invoice in invoices {
        serde_json::to_writer(&mut jsonl, invoice).map_err(|e| Error::Io {
            action: format!("serialise the invoice of {}", invoice.account_id),
            source: std::io::Error::other(e),
        })?;
        jsonl.push(b'\n');
    }
    Ok(jsonl)
}

/// The invoices of an [`INVOICES_JSONL`] file (read from `location`), in file order. A
/// line that is not an invoice object is an error naming the file and the line.
pub fn parse_invoices(location: &str, bytes: &[u8]) -> Result<Vec<serde_json::Value>> {
    let mut invoices = Vec::new();
    for (index, line) in bytes.split(|byte| *byte == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |detail: String| Error::Io {
            action: format!("read the invoice on line {} of {location}", index + 1),
            source: std::io::Error::other(detail),
        };
        let invoice: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        if !invoice["account_id"].is_string() {
            return Err(bad("not an invoice: no text field account_id".to_owned()));
        }
        invoices.push(invoice);
    }
    Ok(invoices)
}

/// The invoices in a local invoices directory's [`INVOICES_JSONL`], by account id.
pub fn read_invoices(directory: &Path) -> Result<BTreeMap<String, serde_json::Value>> {
    let path = directory.join(INVOICES_JSONL);
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        action: format!("read {}", path.display()),
        source,
    })?;
    Ok(parse_invoices(&path.display().to_string(), &bytes)?
        .into_iter()
        .map(|invoice| {
            (
                invoice["account_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                invoice,
            )
        })
        .collect())
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

/// Removes `*.jsonl`, `*.json` and `*.csv` directly in `directory` that are not in
/// `keep`; names starting with `_` (the issue record) are not invoices.
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
            && [".jsonl", ".json", ".csv"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
            && !name.starts_with('_');
        if is_invoice && !keep.contains(key.as_str()) {
            tracing::info!(file = %out.location(&key), "removing an invoice no longer produced");
            out.delete(&key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_invoice_line_is_an_error_naming_file_and_line() {
        let bytes = b"{\"account_id\":\"a\"}\n{\"account_id\":\"b\"}\nnot json\n";
        let error = super::parse_invoices("lake/invoices.jsonl", bytes)
            .expect_err("line 3 is broken")
            .to_string();
        assert!(
            error.starts_with("cannot read the invoice on line 3 of lake/invoices.jsonl: "),
            "{error}"
        );
        let error = super::parse_invoices("x.jsonl", b"{\"total\":\"1\"}\n")
            .expect_err("no account")
            .to_string();
        assert!(
            error.contains("line 1 of x.jsonl: not an invoice"),
            "{error}"
        );
        let invoices =
            super::parse_invoices("x.jsonl", b"{\"account_id\":\"a\"}\n\n").expect("one invoice");
        assert_eq!(invoices.len(), 1);
    }
}
