//! Writing line items (Parquet) and invoices (JSON, CSV), atomically and reproducibly:
//! the same inputs give byte-identical files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_model::LineItem;
use tally_model::line_item::line_items_to_batch;

use crate::correction::{Issued, issued_path};
use crate::error::{Error, Result};
use crate::invoice::{Invoice, invoice_csv};

fn io_error(action: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, source }
}

/// Writes `path` through a temporary file next to it, fsync and rename, then fsyncs the
/// directory so the rename itself survives a crash. Readers see the old file or the new
/// one, never half of one.
fn write_atomically(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(directory).map_err(io_error(format!("create {}", directory.display())))?;
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mut file = File::create(&temp).map_err(io_error(format!("create {}", temp.display())))?;
    write(&mut file)?;
    file.sync_all()
        .map_err(io_error(format!("fsync {}", temp.display())))?;
    fs::rename(&temp, path).map_err(io_error(format!("rename {} into place", path.display())))?;
    sync_directory(directory)
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> Result<()> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(format!("fsync directory {}", directory.display())))
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> Result<()> {
    Ok(()) // directories cannot be opened for fsync on this platform
}

/// `line_items/month=YYYY-MM/<name>.parquet` under `out`.
pub fn line_items_path(out: &Path, month: &str, name: &str) -> PathBuf {
    out.join("line_items")
        .join(format!("month={month}"))
        .join(format!("{name}.parquet"))
}

/// `invoices/month=YYYY-MM/` under `out`.
pub fn invoices_dir(out: &Path, month: &str) -> PathBuf {
    out.join("invoices").join(format!("month={month}"))
}

/// Writes `line_items/month=YYYY-MM/<name>.parquet` under `out`: `line_items` for the
/// month's lines, `corrections-NNN` for a correction round (H8).
pub fn write_line_items(
    out: &Path,
    month: &str,
    name: &str,
    items: &[LineItem],
) -> Result<PathBuf> {
    let path = line_items_path(out, month, name);
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

/// `<account>.json` and `.csv` in `directory` (`invoices/month=YYYY-MM/`, or a
/// correction round's directory below it). Invoices of an earlier run that this run no
/// longer produces are removed, so the directory is a function of this run's inputs
/// alone. Returns the files written.
pub fn write_invoices(directory: &Path, invoices: &[Invoice]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity(2 * invoices.len());
    let mut taken = HashSet::new();
    for invoice in invoices {
        let name = sanitize(&invoice.account_id);
        let mut json = serde_json::to_vec_pretty(invoice).map_err(|e| Error::Io {
            action: format!("serialise the invoice of {}", invoice.account_id),
            source: std::io::Error::other(e),
        })?;
        json.push(b'\n');
        let json_path = directory.join(format!("{name}.json"));
        // Two account ids that differ only in characters a file name cannot hold would
        // overwrite one another: refuse, rather than lose an invoice.
        if !taken.insert(json_path.clone()) {
            return Err(Error::Invoice {
                account_id: invoice.account_id.clone(),
                detail: format!(
                    "its file name {} is taken by another account; rename one of the accounts",
                    json_path.display()
                ),
            });
        }
        files.push((json_path, json));
        files.push((
            directory.join(format!("{name}.csv")),
            invoice_csv(invoice).into_bytes(),
        ));
    }
    write_all_atomically(directory, &files)?;
    let written: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
    remove_stale_invoices(directory, &written)?;
    Ok(written)
}

/// Writes many files into `directory` as [`write_atomically`] writes one, with the
/// costs shared: every file goes to a temporary name first, the temporary files are
/// fsynced by a few threads at once (the file system commits them together), renamed
/// into place, and the directory is fsynced once. Each file is still old or new after a
/// crash, never half of one.
fn write_all_atomically(directory: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    const SYNC_THREADS: usize = 8;
    fs::create_dir_all(directory).map_err(io_error(format!("create {}", directory.display())))?;
    let temp_of = |path: &Path| {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        path.with_file_name(name)
    };
    let chunk = files.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<()> {
                    for (path, bytes) in part {
                        let temp = temp_of(path);
                        let mut file = File::create(&temp)
                            .map_err(io_error(format!("create {}", temp.display())))?;
                        file.write_all(bytes)
                            .map_err(io_error(format!("write {}", temp.display())))?;
                        file.sync_all()
                            .map_err(io_error(format!("fsync {}", temp.display())))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker.join().unwrap_or_else(|_| {
                Err(Error::Io {
                    action: format!("write files into {}", directory.display()),
                    source: std::io::Error::other("a writer thread panicked"),
                })
            })
        })
    })?;
    for (path, _) in files {
        fs::rename(temp_of(path), path)
            .map_err(io_error(format!("rename {} into place", path.display())))?;
    }
    sync_directory(directory)
}

/// Writes the month's issue record (H8), last of a run's files: it commits the run.
pub fn write_issued(out: &Path, issued: &Issued) -> Result<PathBuf> {
    let path = issued_path(out, &issued.month);
    let mut json = serde_json::to_vec_pretty(issued).map_err(|e| Error::Io {
        action: format!("serialise the issue record of {}", issued.month),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    write_atomically(&path, |file| {
        file.write_all(&json)
            .map_err(io_error(format!("write {}", path.display())))
    })?;
    Ok(path)
}

/// Removes `*.json` and `*.csv` in `directory` that are not in `keep`; names starting with
/// `_` (the issue record) are not invoices.
fn remove_stale_invoices(directory: &Path, keep: &[PathBuf]) -> Result<()> {
    let keep: HashSet<&Path> = keep.iter().map(PathBuf::as_path).collect();
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(Error::Io {
                action: format!("list {}", directory.display()),
                source: error,
            });
        }
    };
    for entry in entries {
        let path = entry
            .map_err(io_error(format!("list {}", directory.display())))?
            .path();
        let is_invoice = path
            .extension()
            .is_some_and(|extension| extension == "json" || extension == "csv")
            && !path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('_'));
        if is_invoice && !keep.contains(path.as_path()) {
            tracing::info!(path = %path.display(), "removing an invoice no longer produced");
            fs::remove_file(&path).map_err(io_error(format!("remove {}", path.display())))?;
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
