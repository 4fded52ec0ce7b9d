//! Writing and reading sealed rollup files.
//!
//! A file is written to a temporary name, fsynced, renamed into place and its directory
//! fsynced: a reader sees a whole file or none. The bytes are a function of the rows
//! alone (sorted rows, fixed writer settings), so a replay writes the same file again.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tally_model::rollup::{PARTITION_KEY, batch_to_rows, rows_to_batch};
use tally_model::{Hour, RollupFileName, RollupRow};

use crate::error::{Error, Result};
use crate::failpoint;

/// Suffix of files being written; leftovers from a crash are removed at start-up.
pub const TEMP_SUFFIX: &str = ".tmp";

pub use tally_model::rollup::ROLLUPS_DIR;

/// The directory of one hour: `rollups/hour=YYYY-MM-DDTHH`.
pub fn hour_dir(lake: &Path, hour: Hour) -> PathBuf {
    lake.join(ROLLUPS_DIR)
        .join(format!("{PARTITION_KEY}={}", hour.partition_value()))
}

/// The file name of one source partition's generation of an hour.
pub fn file_name(source: &str, partition: i32, generation: u32) -> String {
    RollupFileName {
        source: source.to_owned(),
        partition,
        generation,
    }
    .to_string()
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(true)
        .set_created_by("tally rollup v1".to_owned())
        .build()
}

/// What [`write_rows`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    /// CRC-32 of the file's bytes: a checkpoint's manifest keeps it, so that a damaged
    /// checkpoint is told from a good one (Parquet checks its footer, not its values).
    pub crc32: u32,
}

/// Passes bytes on to a file, summing them as they go.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: io::Write> io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The CRC-32 of a whole file, to compare with the one [`write_rows`] reported.
pub fn file_crc32(path: &Path) -> io::Result<u32> {
    Ok(crc32fast::hash(&fs::read(path)?))
}

/// Writes `rows` atomically to `path` (relative names are resolved against `lake`).
pub fn write_rows(lake: &Path, relative: &Path, rows: &[RollupRow]) -> Result<Written> {
    let path = lake.join(relative);
    let io_error = |action: &str, source: io::Error| Error::Io {
        action: format!("{action} {}", path.display()),
        source,
    };
    let directory = path.parent().unwrap_or(lake);
    fs::create_dir_all(directory).map_err(|e| io_error("create the directory of", e))?;
    let temp = path.with_extension(format!("parquet{TEMP_SUFFIX}"));
    let batch = rows_to_batch(rows).map_err(|source| Error::Arrow {
        context: format!("building the batch for {}", path.display()),
        source,
    })?;
    let file = Checksummed {
        inner: File::create(&temp).map_err(|e| io_error("create", e))?,
        crc: crc32fast::Hasher::new(),
    };
    let parquet_error = |source: parquet::errors::ParquetError| Error::Parquet {
        path: temp.clone(),
        source,
    };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()))
        .map_err(parquet_error)?;
    writer.write(&batch).map_err(parquet_error)?;
    let Checksummed { inner: file, crc } = writer.into_inner().map_err(parquet_error)?;
    file.sync_all().map_err(|e| io_error("fsync", e))?;
    let bytes = file.metadata().map_err(|e| io_error("stat", e))?.len();
    drop(file);
    failpoint::pass(failpoint::PARQUET_WRITTEN);
    fs::rename(&temp, &path).map_err(|e| io_error("rename into place", e))?;
    failpoint::pass(failpoint::PARQUET_RENAMED);
    sync_dir(directory)?;
    Ok(Written {
        bytes,
        crc32: crc.finalize(),
    })
}

/// Reads every row of a rollup file.
pub fn read_rows(path: &Path) -> Result<Vec<RollupRow>> {
    let file = File::open(path).map_err(|source| Error::Io {
        action: format!("open {}", path.display()),
        source,
    })?;
    let parquet_error = |source| Error::Parquet {
        path: path.to_owned(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            context: format!("reading {}", path.display()),
            source,
        })?;
        rows.extend(batch_to_rows(&batch).map_err(|source| Error::Arrow {
            context: format!("decoding rollup rows of {}", path.display()),
            source,
        })?);
    }
    Ok(rows)
}

/// fsyncs a directory so a rename in it survives a power loss.
pub fn sync_dir(directory: &Path) -> Result<()> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| Error::Io {
            action: format!("fsync directory {}", directory.display()),
            source,
        })
}
