//! Writing and reading sealed rollup files.
//!
//! A file is written whole and atomically by the lake (see `tally_lake`): a reader sees a
//! whole file or none. The bytes are a function of the rows alone (sorted rows, fixed
//! writer settings), so a replay writes the same file again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tally_lake::{Lake, Outcome};
use tally_model::rollup::{PARTITION_KEY, batch_to_rows, rows_to_batch, to_file_batch};
use tally_model::{Hour, RollupFileName, RollupRow};

use crate::error::{Error, Result};

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

/// The traffic counters: bytes an hour, nearly every value distinct and its low bits
/// random.
const TRAFFIC_COLUMNS: [&str; 3] = ["out_external_bytes", "out_internal_bytes", "in_bytes"];

/// zstd over dictionaries for every column but the traffic counters, which are
/// delta-encoded and not compressed.
///
/// **Why.** A dictionary does not fit values that are all distinct (the writer gives it up
/// for plain values), and zstd shrinks random 64-bit counters by little (a third in the
/// rating benchmark) at a high cost to read them: zstd was 12 % of the rating job's
/// profile. Delta bit-packing stores them smaller than zstd did (the benchmark's month:
/// 1,139.6 MiB instead of 1,429.8), and the month's usage query took about a fifth less
/// (`benches/BENCHMARKS.md`). Columns that are mostly zero (sizes) or repeat (masks,
/// texts) stay with dictionaries and zstd, where delta bit-packing would make them larger.
fn writer_properties() -> WriterProperties {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(true)
        .set_created_by("tally rollup v1".to_owned());
    for column in TRAFFIC_COLUMNS {
        let column = ColumnPath::from(column);
        properties = properties
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_encoding(column.clone(), Encoding::DELTA_BINARY_PACKED)
            .set_column_compression(column, Compression::UNCOMPRESSED);
    }
    properties.build()
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

/// A rollup file's bytes, as [`write_rows`] would write them, and what it reports.
pub fn encode_rows(rows: &[RollupRow], location: &str) -> Result<(Vec<u8>, Written)> {
    let batch = rows_to_batch(rows)
        .and_then(|batch| to_file_batch(&batch))
        .map_err(|source| Error::Arrow {
            context: format!("building the batch for {location}"),
            source,
        })?;
    let parquet_error = |source: parquet::errors::ParquetError| Error::Parquet {
        location: location.to_owned(),
        source,
    };
    let sink = Checksummed {
        inner: Vec::new(),
        crc: crc32fast::Hasher::new(),
    };
    let mut writer = ArrowWriter::try_new(sink, batch.schema(), Some(writer_properties()))
        .map_err(parquet_error)?;
    writer.write(&batch).map_err(parquet_error)?;
    let Checksummed { inner: bytes, crc } = writer.into_inner().map_err(parquet_error)?;
    let written = Written {
        bytes: bytes.len() as u64,
        crc32: crc.finalize(),
    };
    Ok((bytes, written))
}

/// Writes `rows` to `key` of the lake unless a file is there already (see
/// [`Lake::create`]): a file name of the aggregator's is written once, by the partition's
/// owner, so finding one means that a crash left it or that another instance wrote it.
pub fn write_rows(lake: &Lake, key: &str, rows: &[RollupRow]) -> Result<(Outcome, Written)> {
    let (bytes, written) = encode_rows(rows, &lake.location(key))?;
    Ok((lake.create(key, bytes)?, written))
}

/// Reads every row of a rollup file of the lake.
pub fn read_lake_rows(lake: &Lake, key: &str) -> Result<Vec<RollupRow>> {
    let location = lake.location(key);
    let bytes = lake.get(key)?.ok_or_else(|| Error::Io {
        action: format!("read {location}"),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    decode_rows(bytes::Bytes::from(bytes), &location)
}

/// Reads every row of a rollup file on local disk.
pub fn read_rows(path: &Path) -> Result<Vec<RollupRow>> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        action: format!("open {}", path.display()),
        source,
    })?;
    decode_rows(bytes::Bytes::from(bytes), &path.display().to_string())
}

/// The rows of a rollup file's bytes; `location` names it in errors.
pub fn decode_rows(bytes: bytes::Bytes, location: &str) -> Result<Vec<RollupRow>> {
    let parquet_error = |source| Error::Parquet {
        location: location.to_owned(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            context: format!("reading {location}"),
            source,
        })?;
        rows.extend(batch_to_rows(&batch).map_err(|source| Error::Arrow {
            context: format!("decoding rollup rows of {location}"),
            source,
        })?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{Compression, Encoding};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use tally_model::rollup::{
        DICTIONARY_TEXT_COLUMNS, RollupKey, RollupMeters, RollupRow, text_dictionary_type,
    };
    use tally_model::{Hour, ResourceKind};

    use super::{TRAFFIC_COLUMNS, decode_rows, encode_rows};

    fn hundred_rows() -> Vec<RollupRow> {
        (0..100u64)
            .map(|n| RollupRow {
                key: RollupKey {
                    account_id: format!("a{}", n / 10),
                    resource_id: format!("r{n:03}"),
                    hour: Hour::from_unix_hours(490_000),
                    kind: ResourceKind::Server,
                    sku: "cx22".to_owned(),
                    zone: "fsn1".to_owned(),
                    gpus: 0,
                    labels: String::new(),
                },
                meters: RollupMeters {
                    state_masks: [(1 << 60) - 1, 0, 0, 0],
                    out_external_bytes: n * 7_919,
                    out_internal_bytes: n * 104_729,
                    in_bytes: n * 15_485_863,
                    sample_count: 60,
                    ..RollupMeters::default()
                },
            })
            .collect()
    }

    #[test]
    fn the_traffic_counters_are_delta_encoded_and_the_rest_zstd() {
        let (bytes, _) = encode_rows(&hundred_rows(), "test").expect("encoded");
        let file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut &file, &bytes).expect("written");
        let reader = SerializedFileReader::new(file).expect("a Parquet file");
        let columns = reader.metadata().row_group(0).columns();
        // A misspelt name would leave its column zstd silently: all three must be found.
        let mut traffic = 0;
        for column in columns {
            let name = column.column_path().string();
            if TRAFFIC_COLUMNS.contains(&name.as_str()) {
                traffic += 1;
                assert!(
                    column
                        .encodings()
                        .any(|encoding| encoding == Encoding::DELTA_BINARY_PACKED),
                    "{name}"
                );
                assert_eq!(column.compression(), Compression::UNCOMPRESSED, "{name}");
            } else {
                assert!(
                    matches!(column.compression(), Compression::ZSTD(_)),
                    "{name}: {:?}",
                    column.compression()
                );
            }
        }
        assert_eq!(traffic, TRAFFIC_COLUMNS.len());
    }

    #[test]
    fn arrow_readers_get_the_few_valued_texts_as_dictionaries_and_the_rows_back() {
        let rows = hundred_rows();
        let (bytes, _) = encode_rows(&rows, "test").expect("encoded");
        let bytes = bytes::Bytes::from(bytes);
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).expect("a Parquet file");
        for field in reader.schema().fields() {
            let expected = if DICTIONARY_TEXT_COLUMNS.contains(&field.name().as_str()) {
                text_dictionary_type()
            } else {
                tally_model::rollup::rollup_arrow_schema()
                    .field_with_name(field.name())
                    .expect("a rollup column")
                    .data_type()
                    .clone()
            };
            assert_eq!(field.data_type(), &expected, "{}", field.name());
        }
        assert_eq!(decode_rows(bytes, "test").expect("rows"), rows);
    }
}
