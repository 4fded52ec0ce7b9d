//! Writing line items (Parquet) and invoices (JSON, CSV), atomically and reproducibly:
//! the same inputs give byte-identical files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_model::LineItem;
use tally_model::line_item::line_items_to_batch;

use crate::error::{Error, Result};
use crate::invoice::{Invoice, invoice_csv};

fn io_error(action: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, source }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomically(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    if let Some(directory) = path.parent() {
        fs::create_dir_all(directory)
            .map_err(io_error(format!("create {}", directory.display())))?;
    }
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(io_error(format!("create {}", temp.display())))?;
    write(&mut file)?;
    file.sync_all()
        .map_err(io_error(format!("fsync {}", temp.display())))?;
    fs::rename(&temp, path).map_err(io_error(format!("rename {} into place", path.display())))
}

/// `line_items/month=YYYY-MM/line_items.parquet` under `out`.
pub fn write_line_items(out: &Path, month: &str, items: &[LineItem]) -> Result<PathBuf> {
    let path = out
        .join("line_items")
        .join(format!("month={month}"))
        .join("line_items.parquet");
    let batch = line_items_to_batch(items)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by("tally line items v1".to_owned())
        .build();
    write_atomically(&path, |file| {
        let parquet_error = |source| Error::Parquet {
            path: path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(parquet_error)?;
        writer.write(&batch).map_err(parquet_error)?;
        writer.close().map_err(parquet_error)?;
        Ok(())
    })?;
    Ok(path)
}

/// `invoices/month=YYYY-MM/<account>.json` and `.csv` under `out`; returns the directory.
pub fn write_invoices(out: &Path, month: &str, invoices: &[Invoice]) -> Result<PathBuf> {
    let directory = out.join("invoices").join(format!("month={month}"));
    for invoice in invoices {
        let name = sanitize(&invoice.account_id);
        let json = serde_json::to_vec_pretty(invoice).map_err(|e| Error::Io {
            action: format!("serialise the invoice of {}", invoice.account_id),
            source: std::io::Error::other(e),
        })?;
        let json_path = directory.join(format!("{name}.json"));
        write_atomically(&json_path, |file| {
            file.write_all(&json)
                .map_err(io_error(format!("write {}", json_path.display())))
        })?;
        let csv_path = directory.join(format!("{name}.csv"));
        let csv = invoice_csv(invoice);
        write_atomically(&csv_path, |file| {
            file.write_all(csv.as_bytes())
                .map_err(io_error(format!("write {}", csv_path.display())))
        })?;
    }
    Ok(directory)
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
