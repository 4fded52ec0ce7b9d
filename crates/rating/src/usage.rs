//! The usage side of rating, on DataFusion: a month of hourly rollups summed per resource.
//!
//! Everything here is SQL over the lake; pricing gets plain integers back.
//!
//! **Why resource-hours first.** One resource's hour may be spread over several rollup
//! rows: a label or zone change within the hour, a GPU resize, or a late restatement in
//! another file. Billing rules that are not additive (every *started* hour, minutes
//! rounded up once a month, caps, minimums) must see each resource-hour exactly once, so
//! the first step ORs the minute masks of all rows of one (account, resource, kind, sku,
//! hour): a minute present in two rows still counts once, and an hour split over two
//! label sets is still one started hour. (A SKU change, such as a resize from cx22 to
//! cx32, is a different product and is priced separately.)
//!
//! **Hour buckets.** Per resource, the hours are then counted by the set of states seen
//! in them and the GPU count (the largest within the hour): pricing takes, per charge,
//! the largest factor of the states in the set (T3: a stopped-then-running hour is a
//! running hour) and the price of that GPU configuration (T1), so no state order is
//! wired into the query.
//!
//! **Minute buckets.** Minutes by state are additive, so a second query keeps them per
//! label set and GPU count: per-minute charges (C1) can then follow a label (C3 groups,
//! OS surcharges) exactly, minute by minute.
//!
//! Traffic and size-minutes are summed as DECIMAL(38, 0), so no sum overflows. The hive
//! partition column `hour` (a `YYYY-MM-DDTHH` string) prunes the scan to the month.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tally_model::rollup::{PARTITION_KEY, rollup_arrow_schema};
use tally_model::{Hour, ResourceKind, ResourceState};

use crate::error::{Error, Result};
use crate::month::BillingMonth;

/// The set of states seen in one hour, bit `i` for [`ResourceState::index`] `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatesSeen(pub u8);

impl StatesSeen {
    pub fn contains(self, state: ResourceState) -> bool {
        self.0 & (1 << state.index()) != 0
    }

    pub fn states(self) -> impl Iterator<Item = ResourceState> {
        ResourceState::ALL
            .into_iter()
            .filter(move |state| self.contains(*state))
    }
}

/// Hours of one resource that saw the same states with the same GPU count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourBucket {
    pub states_seen: StatesSeen,
    pub gpus: u16,
    pub hours: i64,
    /// Minutes per state in these hours, indexed by [`ResourceState::index`].
    pub minutes: [i64; ResourceState::COUNT],
}

/// Minutes of one resource under one label set and GPU count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MinuteBucket {
    /// Canonical label JSON text, or "" for none.
    pub labels: String,
    pub gpus: u16,
    /// Minutes per state, indexed by [`ResourceState::index`].
    pub minutes: [i64; ResourceState::COUNT],
}

/// One resource's usage of one SKU in a month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceUsage {
    pub account_id: String,
    pub resource_id: String,
    pub kind: ResourceKind,
    pub sku: String,
    /// The zone of the resource's last hour in the month.
    pub zone: String,
    /// The labels of the resource's last hour in the month: what charges that are not
    /// per minute select and group by (per-minute charges use [`Self::minute_buckets`]).
    pub labels: String,
    /// The largest GPU count of the month (per-GPU allowances, T4).
    pub max_gpus: u16,
    /// Hours by states seen and GPU count, sorted.
    pub hour_buckets: Vec<HourBucket>,
    /// Minutes by label set and GPU count, sorted.
    pub minute_buckets: Vec<MinuteBucket>,
    /// Minutes in which the resource existed (any state).
    pub present_minutes: i64,
    pub out_external_bytes: i128,
    pub out_internal_bytes: i128,
    pub in_bytes: i128,
    /// Sum over the minutes of the occupied size.
    pub size_byte_minutes: i128,
    pub first_hour: Hour,
    pub last_hour: Hour,
    /// Rollup rows read for this resource: the lineage of its lines.
    pub rollup_rows: i64,
}

impl ResourceUsage {
    /// Minutes per state over the whole month.
    pub fn state_minutes(&self) -> [i64; ResourceState::COUNT] {
        let mut total = [0; ResourceState::COUNT];
        for bucket in &self.hour_buckets {
            for (sum, minutes) in total.iter_mut().zip(bucket.minutes) {
                *sum += minutes;
            }
        }
        total
    }
}

/// A session with the lake's tables registered: `rollups` (partition `hour`) and, if
/// present, `line_items` (partition `month`), and the `popcount` function.
pub async fn lake_session(lake: &Path) -> Result<SessionContext> {
    // FOCUS columns are CamelCase (`BilledCost`): identifiers keep the case they are
    // written in, so analysts need no double quotes (DuckDB resolves them the same way).
    let config =
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let context = SessionContext::new_with_config(config);
    context.register_udf(popcount_udf());
    let rollups = lake.join("rollups");
    if !rollups.is_dir() {
        return Err(Error::NoLake(lake.to_owned()));
    }
    // The schema is given, not inferred: an empty lake (or month) is no usage, not an
    // error, and every file must have the rollup v1 columns.
    let schema = rollup_arrow_schema();
    let options = ParquetReadOptions::default()
        .schema(&schema)
        .table_partition_cols(vec![(PARTITION_KEY.to_owned(), DataType::Utf8)]);
    context
        .register_parquet("rollups", table_url(&rollups), options)
        .await?;
    let line_items = lake.join("line_items");
    if line_items.is_dir() {
        let options = ParquetReadOptions::default()
            .table_partition_cols(vec![("month".to_owned(), DataType::Utf8)]);
        context
            .register_parquet("line_items", table_url(&line_items), options)
            .await?;
    }
    Ok(context)
}

/// A directory as a listing-table URL (the trailing slash makes it a directory).
fn table_url(directory: &Path) -> String {
    format!("{}/", directory.display())
}

/// `popcount(UInt64) -> Int64`: the number of set bits, i.e. the minutes in a minute mask.
pub fn popcount_udf() -> ScalarUDF {
    create_udf(
        "popcount",
        vec![DataType::UInt64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|arguments: &[ColumnarValue]| match arguments.first() {
            Some(ColumnarValue::Array(array)) => {
                let masks = array
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| {
                        DataFusionError::Execution(format!(
                            "popcount takes a UInt64 column, not {}",
                            array.data_type()
                        ))
                    })?;
                let counts: Int64Array = masks
                    .iter()
                    .map(|mask| mask.map(|mask| i64::from(mask.count_ones())))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(counts) as ArrayRef))
            }
            Some(ColumnarValue::Scalar(ScalarValue::UInt64(mask))) => Ok(ColumnarValue::Scalar(
                ScalarValue::Int64(mask.map(|mask| i64::from(mask.count_ones()))),
            )),
            Some(ColumnarValue::Scalar(other)) => Err(DataFusionError::Execution(format!(
                "popcount takes a UInt64, not {}",
                other.data_type()
            ))),
            None => Err(DataFusionError::Execution(
                "popcount takes one argument".to_owned(),
            )),
        }),
    )
}

/// The month's filter on the partition column: only its files are opened.
fn month_filter(month: &BillingMonth) -> String {
    format!(
        "{PARTITION_KEY} >= '{}' AND {PARTITION_KEY} < '{}'",
        month.first_hour().partition_value(),
        month.end_hour().partition_value(),
    )
}

/// Per resource and (states seen, GPU count): hours, minutes, meters and lineage.
pub fn hour_buckets_sql(month: &BillingMonth) -> String {
    format!(
        "WITH resource_hours AS (
           SELECT account_id, resource_id, kind, sku, hour_start,
                  max(gpus) AS gpus, max(zone) AS zone, max(labels) AS labels,
                  bit_or(running_mask) AS r, bit_or(stopped_mask) AS s,
                  bit_or(frozen_mask) AS f, bit_or(active_mask) AS a,
                  sum(CAST(out_external_bytes AS DECIMAL(38, 0))) AS out_external,
                  sum(CAST(out_internal_bytes AS DECIMAL(38, 0))) AS out_internal,
                  sum(CAST(in_bytes AS DECIMAL(38, 0))) AS inbound,
                  sum(CAST(size_byte_minutes AS DECIMAL(38, 0))) AS size_minutes,
                  count(*) AS row_count
           FROM rollups
           WHERE {filter}
           GROUP BY account_id, resource_id, kind, sku, hour_start),
         classified AS (
           SELECT *,
                  CAST((CASE WHEN r <> 0 THEN 1 ELSE 0 END) + (CASE WHEN s <> 0 THEN 2 ELSE 0 END)
                     + (CASE WHEN f <> 0 THEN 4 ELSE 0 END) + (CASE WHEN a <> 0 THEN 8 ELSE 0 END)
                       AS BIGINT) AS states_seen
           FROM resource_hours)
         SELECT account_id, resource_id, kind, sku, states_seen,
                CAST(gpus AS BIGINT) AS gpus,
                count(*) AS hours,
                sum(popcount(r)) AS running_minutes,
                sum(popcount(s)) AS stopped_minutes,
                sum(popcount(f)) AS frozen_minutes,
                sum(popcount(a)) AS active_minutes,
                sum(popcount(r | s | f | a)) AS present_minutes,
                sum(out_external) AS out_external_bytes,
                sum(out_internal) AS out_internal_bytes,
                sum(inbound) AS in_bytes,
                sum(size_minutes) AS size_byte_minutes,
                min(hour_start) AS first_hour, max(hour_start) AS last_hour,
                last_value(zone ORDER BY hour_start) AS last_zone,
                last_value(labels ORDER BY hour_start) AS last_labels,
                sum(row_count) AS rollup_rows
         FROM classified
         GROUP BY account_id, resource_id, kind, sku, states_seen, gpus
         ORDER BY account_id, resource_id, kind, sku, states_seen, gpus",
        filter = month_filter(month),
    )
}

/// Per resource, label set and GPU count: minutes per state (masks OR-ed per hour first).
pub fn minute_buckets_sql(month: &BillingMonth) -> String {
    format!(
        "WITH label_hours AS (
           SELECT account_id, resource_id, kind, sku, labels, gpus, hour_start,
                  bit_or(running_mask) AS r, bit_or(stopped_mask) AS s,
                  bit_or(frozen_mask) AS f, bit_or(active_mask) AS a
           FROM rollups
           WHERE {filter}
           GROUP BY account_id, resource_id, kind, sku, labels, gpus, hour_start)
         SELECT account_id, resource_id, kind, sku, labels, CAST(gpus AS BIGINT) AS gpus,
                sum(popcount(r)) AS running_minutes,
                sum(popcount(s)) AS stopped_minutes,
                sum(popcount(f)) AS frozen_minutes,
                sum(popcount(a)) AS active_minutes
         FROM label_hours
         GROUP BY account_id, resource_id, kind, sku, labels, gpus
         ORDER BY account_id, resource_id, kind, sku, labels, gpus",
        filter = month_filter(month),
    )
}

/// One hour of one resource: the states seen in it and its largest GPU count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourStates {
    pub hour: Hour,
    pub states_seen: StatesSeen,
    pub gpus: u16,
}

/// The hours, in order, of each of `resources` (id, SKU) in `month`: what charges paid
/// per period of a contract (T2) need, since their periods do not follow the calendar.
/// Only the few resources on such contracts are read hour by hour.
pub async fn resource_hours(
    context: &SessionContext,
    month: &BillingMonth,
    resources: &[(String, String)],
) -> Result<BTreeMap<(String, String), Vec<HourStates>>> {
    let mut hours: BTreeMap<(String, String), Vec<HourStates>> = BTreeMap::new();
    if resources.is_empty() {
        return Ok(hours);
    }
    let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let wanted = resources
        .iter()
        .map(|(resource, sku)| format!("({}, {})", quoted(resource), quoted(sku)))
        .collect::<Vec<_>>()
        .join(", ");
    let query = format!(
        "WITH wanted(resource_id, sku) AS (VALUES {wanted})
         SELECT r.resource_id, r.sku, r.hour_start, CAST(max(r.gpus) AS BIGINT) AS gpus,
                CAST((CASE WHEN bit_or(r.running_mask) <> 0 THEN 1 ELSE 0 END)
                   + (CASE WHEN bit_or(r.stopped_mask) <> 0 THEN 2 ELSE 0 END)
                   + (CASE WHEN bit_or(r.frozen_mask) <> 0 THEN 4 ELSE 0 END)
                   + (CASE WHEN bit_or(r.active_mask) <> 0 THEN 8 ELSE 0 END) AS BIGINT)
                  AS states_seen
         FROM rollups r JOIN wanted w ON r.resource_id = w.resource_id AND r.sku = w.sku
         WHERE {filter}
         GROUP BY r.resource_id, r.sku, r.hour_start
         ORDER BY r.resource_id, r.sku, r.hour_start",
        filter = month_filter(month).replace(PARTITION_KEY, &format!("r.{PARTITION_KEY}")),
    );
    let batches = context.sql(&query).await?.collect().await?;
    for batch in &batches {
        let columns = Columns::new(batch)?;
        for row in 0..batch.num_rows() {
            let key = (
                columns.text("resource_id")?.value(row).to_owned(),
                columns.text("sku")?.value(row).to_owned(),
            );
            let states_seen = u8::try_from(columns.int("states_seen", row)?)
                .map_err(|_| columns.bad(row, "states_seen is out of range".to_owned()))?;
            hours.entry(key).or_default().push(HourStates {
                hour: columns.hour("hour_start", row)?,
                states_seen: StatesSeen(states_seen),
                gpus: columns.gpus(row)?,
            });
        }
    }
    Ok(hours)
}

/// The minute columns in [`ResourceState::ALL`] order.
const MINUTE_COLUMNS: [&str; ResourceState::COUNT] = [
    "running_minutes",
    "stopped_minutes",
    "frozen_minutes",
    "active_minutes",
];

/// (account, resource, kind, sku): what identifies one usage.
type UsageKey = (String, String, String, String);

/// Every resource's usage in `month`, sorted by account, resource, kind and SKU.
pub async fn month_usage(
    context: &SessionContext,
    month: &BillingMonth,
) -> Result<Vec<ResourceUsage>> {
    let hour_batches = context
        .sql(&hour_buckets_sql(month))
        .await?
        .collect()
        .await?;
    let minute_batches = context
        .sql(&minute_buckets_sql(month))
        .await?
        .collect()
        .await?;

    let mut usages: BTreeMap<UsageKey, ResourceUsage> = BTreeMap::new();
    for batch in &hour_batches {
        let columns = Columns::new(batch)?;
        for row in 0..batch.num_rows() {
            let key = columns.key(row)?;
            let gpus = columns.gpus(row)?;
            let minutes = columns.minutes(row)?;
            let bucket = HourBucket {
                states_seen: StatesSeen(
                    u8::try_from(columns.int("states_seen", row)?)
                        .map_err(|_| columns.bad(row, "states_seen is out of range".to_owned()))?,
                ),
                gpus,
                hours: columns.int("hours", row)?,
                minutes,
            };
            let first_hour = columns.hour("first_hour", row)?;
            let last_hour = columns.hour("last_hour", row)?;
            let zone = columns.text("last_zone")?.value(row).to_owned();
            let labels = columns.text("last_labels")?.value(row).to_owned();
            let kind = ResourceKind::parse(&key.2).ok_or_else(|| {
                columns.bad(
                    row,
                    format!(
                        "kind '{}' is not one of {:?}",
                        key.2,
                        ResourceKind::ALL.map(ResourceKind::as_str)
                    ),
                )
            })?;
            let usage = usages.entry(key.clone()).or_insert_with(|| ResourceUsage {
                account_id: key.0.clone(),
                resource_id: key.1.clone(),
                kind,
                sku: key.3.clone(),
                zone: zone.clone(),
                labels: labels.clone(),
                max_gpus: 0,
                hour_buckets: Vec::new(),
                minute_buckets: Vec::new(),
                present_minutes: 0,
                out_external_bytes: 0,
                out_internal_bytes: 0,
                in_bytes: 0,
                size_byte_minutes: 0,
                first_hour,
                last_hour,
                rollup_rows: 0,
            });
            // Zone and labels are those of the latest hour over all of the buckets.
            if last_hour >= usage.last_hour {
                usage.zone = zone;
                usage.labels = labels;
            }
            usage.max_gpus = usage.max_gpus.max(gpus);
            usage.first_hour = usage.first_hour.min(first_hour);
            usage.last_hour = usage.last_hour.max(last_hour);
            let overflow = || columns.bad(row, "a monthly sum overflows".to_owned());
            usage.present_minutes = usage
                .present_minutes
                .checked_add(columns.int("present_minutes", row)?)
                .ok_or_else(overflow)?;
            for (sum, name) in [
                (&mut usage.out_external_bytes, "out_external_bytes"),
                (&mut usage.out_internal_bytes, "out_internal_bytes"),
                (&mut usage.in_bytes, "in_bytes"),
                (&mut usage.size_byte_minutes, "size_byte_minutes"),
            ] {
                *sum = sum
                    .checked_add(columns.decimal(name, row)?)
                    .ok_or_else(overflow)?;
            }
            usage.rollup_rows = usage
                .rollup_rows
                .checked_add(columns.int("rollup_rows", row)?)
                .ok_or_else(overflow)?;
            usage.hour_buckets.push(bucket);
        }
    }
    for batch in &minute_batches {
        let columns = Columns::new(batch)?;
        for row in 0..batch.num_rows() {
            let key = columns.key(row)?;
            let bucket = MinuteBucket {
                labels: columns.text("labels")?.value(row).to_owned(),
                gpus: columns.gpus(row)?,
                minutes: columns.minutes(row)?,
            };
            // Both queries read the same rows, so every minute bucket has its usage.
            let usage = usages.get_mut(&key).ok_or_else(|| {
                columns.bad(
                    row,
                    "has minutes but no hours: the lake changed while rating, run again".to_owned(),
                )
            })?;
            usage.minute_buckets.push(bucket);
        }
    }
    Ok(usages.into_values().collect())
}

/// Typed access to a result batch's columns, with errors that name the row.
struct Columns<'a> {
    batch: &'a RecordBatch,
    /// Strings as Utf8 (Parquet strings may come back as Utf8View).
    texts: BTreeMap<&'static str, StringArray>,
}

impl<'a> Columns<'a> {
    const TEXT_COLUMNS: [&'static str; 7] = [
        "account_id",
        "resource_id",
        "kind",
        "sku",
        "labels",
        "last_zone",
        "last_labels",
    ];

    fn new(batch: &'a RecordBatch) -> Result<Self> {
        let mut texts = BTreeMap::new();
        for name in Self::TEXT_COLUMNS {
            let Some(column) = batch.column_by_name(name) else {
                continue;
            };
            let utf8 = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
            let strings = utf8
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| internal(format!("usage column {name} is not text")))?
                .clone();
            texts.insert(name, strings);
        }
        Ok(Self { batch, texts })
    }

    fn column(&self, name: &str) -> Result<&ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| internal(format!("usage column {name} is missing")))
    }

    fn typed<T: 'static>(&self, name: &str) -> Result<&T> {
        let column = self.column(name)?;
        column
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| internal(format!("usage column {name} is {}", column.data_type())))
    }

    fn text(&self, name: &str) -> Result<&StringArray> {
        self.texts
            .get(name)
            .ok_or_else(|| internal(format!("usage column {name} is missing")))
    }

    fn key(&self, row: usize) -> Result<UsageKey> {
        Ok((
            self.text("account_id")?.value(row).to_owned(),
            self.text("resource_id")?.value(row).to_owned(),
            self.text("kind")?.value(row).to_owned(),
            self.text("sku")?.value(row).to_owned(),
        ))
    }

    /// An integer; a SQL NULL (a sum over nothing) is 0.
    fn int(&self, name: &str, row: usize) -> Result<i64> {
        let array = self.typed::<Int64Array>(name)?;
        Ok(if array.is_null(row) {
            0
        } else {
            array.value(row)
        })
    }

    fn decimal(&self, name: &str, row: usize) -> Result<i128> {
        let array = self.typed::<Decimal128Array>(name)?;
        Ok(if array.is_null(row) {
            0
        } else {
            array.value(row)
        })
    }

    fn hour(&self, name: &str, row: usize) -> Result<Hour> {
        let array = self.typed::<TimestampMicrosecondArray>(name)?;
        if array.is_null(row) {
            return Err(self.bad(row, format!("{name} is null")));
        }
        Ok(Hour::from_timestamp_micros(array.value(row)))
    }

    fn gpus(&self, row: usize) -> Result<u16> {
        let gpus = self.int("gpus", row)?;
        u16::try_from(gpus).map_err(|_| self.bad(row, format!("gpus = {gpus} is out of range")))
    }

    fn minutes(&self, row: usize) -> Result<[i64; ResourceState::COUNT]> {
        let mut minutes = [0; ResourceState::COUNT];
        for (slot, name) in minutes.iter_mut().zip(MINUTE_COLUMNS) {
            *slot = self.int(name, row)?;
        }
        Ok(minutes)
    }

    /// An error about the rollups of the resource in `row`.
    fn bad(&self, row: usize, detail: String) -> Error {
        let value = |name| {
            self.text(name)
                .map(|array| array.value(row).to_owned())
                .unwrap_or_default()
        };
        Error::Usage {
            account_id: value("account_id"),
            resource_id: value("resource_id"),
            detail,
        }
    }
}

fn internal(detail: String) -> Error {
    Error::DataFusion(DataFusionError::Internal(detail))
}
