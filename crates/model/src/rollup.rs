//! Hourly rollup v1 (`schemas/rollup.v1.json`): one resource's hour.
//!
//! A row's key is everything a tariff may price by: the hour, account, resource, kind,
//! SKU, zone, GPU count and labels. A resize or an account move within the hour therefore
//! gives two rows. The meters keep one 60-bit minute mask per state: the popcount is the
//! minutes, OR-ing two masks merges duplicates, and any set bit says the state was seen in
//! that hour (what "charged at the most expensive state seen in the hour" needs).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt16Array,
    UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::minute::Hour;
use crate::sample::{ResourceKind, ResourceState, Sample};

/// The hive partition key of the rollup lake: `rollups/hour=YYYY-MM-DDTHH/`.
pub const PARTITION_KEY: &str = "hour";

/// Where the rollups live under the lake root.
pub const ROLLUPS_DIR: &str = "rollups";

/// A rollup file's name: one source partition's generation of an hour,
/// `<source>-p<NNN>-g<NNNN>.parquet`. A restatement writes the next generation, which holds
/// every row of the one before; readers take the highest generation of each source
/// partition, so a superseded file not yet removed is never counted twice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupFileName {
    pub source: String,
    pub partition: i32,
    pub generation: u32,
}

impl RollupFileName {
    /// The parts of a name written by [`Display`](std::fmt::Display), or `None` for any
    /// other name.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".parquet")?;
        let (rest, generation) = stem.rsplit_once("-g")?;
        let (source, partition) = rest.rsplit_once("-p")?;
        let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if source.is_empty() || !digits(partition) || !digits(generation) {
            return None;
        }
        Some(Self {
            source: source.to_owned(),
            partition: partition.parse().ok()?,
            generation: generation.parse().ok()?,
        })
    }
}

impl std::fmt::Display for RollupFileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-p{:03}-g{:04}.parquet",
            self.source, self.partition, self.generation
        )
    }
}

/// What identifies a rollup row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    // Field order is the lake's sort order: rating prunes by account, then resource.
    pub account_id: String,
    pub resource_id: String,
    pub hour: Hour,
    pub kind: ResourceKind,
    pub sku: String,
    pub zone: String,
    pub gpus: u16,
    /// Canonical label text ([`crate::sample::labels_to_text`]).
    pub labels: String,
}

/// What a rollup row measured. Sums of counters cannot overflow: validation bounds each
/// per-minute value far below `u64::MAX / 60`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RollupMeters {
    /// Per state (indexed by [`ResourceState::index`]): bit `m` is minute `m` of the hour.
    pub state_masks: [u64; ResourceState::COUNT],
    pub out_external_bytes: u64,
    pub out_internal_bytes: u64,
    pub in_bytes: u64,
    /// Sum over the minutes of the occupied size: GiB-hours = this / 60 / 2^30.
    pub size_byte_minutes: u64,
    pub max_size_bytes: u64,
    /// Distinct samples merged into the row; equals the popcount of all masks OR-ed.
    pub sample_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RollupRow {
    pub key: RollupKey,
    pub meters: RollupMeters,
}

impl RollupKey {
    pub fn of(sample: &Sample) -> Self {
        Self {
            account_id: sample.account_id.clone(),
            resource_id: sample.resource_id.clone(),
            hour: sample.minute.hour(),
            kind: sample.kind,
            sku: sample.sku.clone(),
            zone: sample.zone.clone(),
            gpus: sample.gpus,
            labels: sample.labels_text(),
        }
    }
}

impl RollupMeters {
    /// Adds one sample that is not yet in the row (deduplication happens before this).
    pub fn add(&mut self, sample: &Sample) {
        let bit = 1u64 << sample.minute.minute_of_hour();
        debug_assert_eq!(self.all_minutes() & bit, 0, "a minute was added twice");
        self.state_masks[sample.state.index()] |= bit;
        self.out_external_bytes += sample.out_external_bytes;
        self.out_internal_bytes += sample.out_internal_bytes;
        self.in_bytes += sample.in_bytes;
        self.size_byte_minutes += sample.size_bytes;
        self.max_size_bytes = self.max_size_bytes.max(sample.size_bytes);
        self.sample_count += 1;
    }

    /// The minutes of the hour with any sample.
    pub fn all_minutes(&self) -> u64 {
        self.state_masks.iter().fold(0, |all, mask| all | mask)
    }

    pub fn minutes_in(&self, state: ResourceState) -> u32 {
        self.state_masks[state.index()].count_ones()
    }
}

static ROLLUP_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let count = |name: &str| Field::new(name, DataType::UInt64, false);
    let mut fields = vec![
        Field::new(
            "hour_start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        text("account_id"),
        text("resource_id"),
        text("kind"),
        text("sku"),
        text("zone"),
        Field::new("gpus", DataType::UInt16, false),
        text("labels"),
    ];
    fields.extend(ResourceState::ALL.map(|state| count(&mask_column(state))));
    fields.extend([
        count("out_external_bytes"),
        count("out_internal_bytes"),
        count("in_bytes"),
        count("size_byte_minutes"),
        count("max_size_bytes"),
        Field::new("sample_count", DataType::UInt32, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// The column holding a state's minute mask, e.g. `running_mask`.
pub fn mask_column(state: ResourceState) -> String {
    format!("{}_mask", state.as_str())
}

/// The Arrow schema of rollup v1 rows (the partition column `hour` is not stored in the
/// files); the files declare some of its texts as dictionaries ([`to_file_batch`]).
pub fn rollup_arrow_schema() -> SchemaRef {
    ROLLUP_SCHEMA.clone()
}

/// The text columns with few distinct values in a file: an account's rows repeat its id,
/// and there are a handful of kinds, SKUs, zones and label sets. The resource id is not
/// one of them: nearly every row has its own.
pub const DICTIONARY_TEXT_COLUMNS: [&str; 5] = ["account_id", "kind", "sku", "zone", "labels"];

/// The Arrow type of [`DICTIONARY_TEXT_COLUMNS`] in files.
pub fn text_dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

static ROLLUP_FILE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = ROLLUP_SCHEMA
        .fields()
        .iter()
        .map(|field| {
            if DICTIONARY_TEXT_COLUMNS.contains(&field.name().as_str()) {
                field
                    .as_ref()
                    .clone()
                    .with_data_type(text_dictionary_type())
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// The Arrow schema rollup files declare: [`rollup_arrow_schema`] with
/// [`DICTIONARY_TEXT_COLUMNS`] as dictionaries ([`to_file_batch`] says why).
pub fn rollup_file_schema() -> SchemaRef {
    ROLLUP_FILE_SCHEMA.clone()
}

/// `batch` (of [`rollup_arrow_schema`]) as written to files, in [`rollup_file_schema`]:
/// [`DICTIONARY_TEXT_COLUMNS`] as Arrow dictionaries.
///
/// **Why.** Parquet stores these columns dictionary-encoded either way; declaring them as
/// dictionaries in the file's Arrow schema (its `ARROW:schema` metadata) lets an Arrow
/// reader hand over each row's dictionary key as it is stored, instead of writing out a
/// string view per row that the rating job then maps back to an id (together a tenth of
/// the job's profile). Readers that ignore the Arrow schema (DuckDB, Spark) see the same
/// strings as before, and files written before read as they did.
pub fn to_file_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns = ROLLUP_FILE_SCHEMA
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(ROLLUP_FILE_SCHEMA.clone(), columns)
}

/// Rows as one record batch, in the order given.
pub fn rows_to_batch(rows: &[RollupRow]) -> Result<RecordBatch, ArrowError> {
    let text = |field: fn(&RollupRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(field)))
    };
    let count = |field: &dyn Fn(&RollupRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(field)))
    };
    let hours = TimestampMicrosecondArray::from_iter_values(
        rows.iter().map(|row| row.key.hour.timestamp_micros()),
    )
    .with_timezone("UTC");
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(hours),
        text(|row| &row.key.account_id),
        text(|row| &row.key.resource_id),
        text(|row| row.key.kind.as_str()),
        text(|row| &row.key.sku),
        text(|row| &row.key.zone),
        Arc::new(UInt16Array::from_iter_values(
            rows.iter().map(|row| row.key.gpus),
        )),
        text(|row| &row.key.labels),
    ];
    for state in ResourceState::ALL {
        columns.push(count(&|row| row.meters.state_masks[state.index()]));
    }
    columns.extend([
        count(&|row| row.meters.out_external_bytes),
        count(&|row| row.meters.out_internal_bytes),
        count(&|row| row.meters.in_bytes),
        count(&|row| row.meters.size_byte_minutes),
        count(&|row| row.meters.max_size_bytes),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|row| row.meters.sample_count),
        )),
    ]);
    RecordBatch::try_new(rollup_arrow_schema(), columns)
}

/// Reads rows back from a batch with the rollup v1 columns (extra columns are ignored).
pub fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<RollupRow>, ArrowError> {
    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
        batch
            .column_by_name(name)
            .and_then(|array| array.as_any().downcast_ref::<T>())
            .ok_or_else(|| {
                ArrowError::SchemaError(format!("rollup column '{name}' is missing or mistyped"))
            })
    }
    // Text columns as strings, whether a file declared them as dictionaries or not.
    let text = |name: &str| -> Result<StringArray, ArrowError> {
        let mistyped =
            || ArrowError::SchemaError(format!("rollup column '{name}' is missing or mistyped"));
        let array = batch.column_by_name(name).ok_or_else(mistyped)?;
        let strings = match array.data_type() {
            DataType::Dictionary(_, value) if **value == DataType::Utf8 => {
                arrow::compute::cast(array, &DataType::Utf8)?
            }
            _ => Arc::clone(array),
        };
        strings.as_string_opt::<i32>().cloned().ok_or_else(mistyped)
    };
    let count = |name: &str| column::<UInt64Array>(batch, name);
    let hours = column::<TimestampMicrosecondArray>(batch, "hour_start")?;
    let (account, resource, kind, sku, zone, labels) = (
        text("account_id")?,
        text("resource_id")?,
        text("kind")?,
        text("sku")?,
        text("zone")?,
        text("labels")?,
    );
    let gpus = column::<UInt16Array>(batch, "gpus")?;
    let masks = ResourceState::ALL
        .iter()
        .map(|state| count(&mask_column(*state)))
        .collect::<Result<Vec<_>, _>>()?;
    let (out_external, out_internal, inbound, size_minutes, max_size) = (
        count("out_external_bytes")?,
        count("out_internal_bytes")?,
        count("in_bytes")?,
        count("size_byte_minutes")?,
        count("max_size_bytes")?,
    );
    let samples = column::<UInt32Array>(batch, "sample_count")?;
    (0..batch.num_rows())
        .map(|row| {
            let kind_value = ResourceKind::parse(kind.value(row)).ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!(
                    "rollup row {row}: kind '{}' is unknown",
                    kind.value(row)
                ))
            })?;
            if hours.is_null(row) {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "rollup row {row}: hour_start is null"
                )));
            }
            let mut state_masks = [0; ResourceState::COUNT];
            for (mask, column) in state_masks.iter_mut().zip(&masks) {
                *mask = column.value(row);
            }
            Ok(RollupRow {
                key: RollupKey {
                    account_id: account.value(row).to_owned(),
                    resource_id: resource.value(row).to_owned(),
                    hour: Hour::from_timestamp_micros(hours.value(row)),
                    kind: kind_value,
                    sku: sku.value(row).to_owned(),
                    zone: zone.value(row).to_owned(),
                    gpus: gpus.value(row),
                    labels: labels.value(row).to_owned(),
                },
                meters: RollupMeters {
                    state_masks,
                    out_external_bytes: out_external.value(row),
                    out_internal_bytes: out_internal.value(row),
                    in_bytes: inbound.value(row),
                    size_byte_minutes: size_minutes.value(row),
                    max_size_bytes: max_size.value(row),
                    sample_count: samples.value(row),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minute::Minute;

    fn sample(minute: i64, state: ResourceState) -> Sample {
        Sample {
            minute: Minute::from_unix_minutes(minute),
            host: "hv".into(),
            account_id: "acme".into(),
            resource_id: "vm-1".into(),
            kind: ResourceKind::Server,
            sku: "cx22".into(),
            zone: "fsn1".into(),
            state,
            gpus: 0,
            out_external_bytes: 100,
            out_internal_bytes: 5,
            in_bytes: 7,
            size_bytes: 0,
            labels: Default::default(),
        }
    }

    #[test]
    fn file_names_round_trip_and_others_are_not_rollup_files() {
        let name = RollupFileName {
            source: "tally.samples-eu".into(),
            partition: 7,
            generation: 12,
        };
        assert_eq!(name.to_string(), "tally.samples-eu-p007-g0012.parquet");
        assert_eq!(RollupFileName::parse(&name.to_string()), Some(name));
        for other in [
            "import.parquet",
            "tally.samples-p007-g0012.parquet.tmp",
            "tally.samples-p7x-g0012.parquet",
            "-p007-g0012.parquet",
            "tally.samples-p007-g.parquet",
        ] {
            assert_eq!(RollupFileName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn meters_count_minutes_per_state() {
        let mut meters = RollupMeters::default();
        for minute in 0..45 {
            meters.add(&sample(60 * 1000 + minute, ResourceState::Running));
        }
        for minute in 45..60 {
            meters.add(&sample(60 * 1000 + minute, ResourceState::Stopped));
        }
        assert_eq!(meters.minutes_in(ResourceState::Running), 45);
        assert_eq!(meters.minutes_in(ResourceState::Stopped), 15);
        assert_eq!(meters.all_minutes().count_ones(), 60);
        assert_eq!(meters.out_external_bytes, 6000);
        assert_eq!(meters.sample_count, 60);
    }

    #[test]
    fn rows_round_trip_through_arrow() {
        let first = sample(60 * 1000, ResourceState::Running);
        let mut meters = RollupMeters::default();
        meters.add(&first);
        let rows = vec![RollupRow {
            key: RollupKey::of(&first),
            meters,
        }];
        let batch = rows_to_batch(&rows).expect("batch");
        assert_eq!(batch.schema(), rollup_arrow_schema());
        assert_eq!(batch_to_rows(&batch).expect("rows"), rows);

        // As written to files: the low-cardinality texts as dictionaries, read back alike.
        let file_batch = to_file_batch(&batch).expect("file batch");
        assert_eq!(file_batch.schema(), rollup_file_schema());
        for field in file_batch.schema().fields() {
            let dictionary = DICTIONARY_TEXT_COLUMNS.contains(&field.name().as_str());
            assert_eq!(
                field.data_type() == &text_dictionary_type(),
                dictionary,
                "{}",
                field.name()
            );
        }
        assert_eq!(batch_to_rows(&file_batch).expect("rows"), rows);
    }
}
