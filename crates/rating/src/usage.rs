//! The usage side of rating, on DataFusion: a month of hourly rollups summed per resource.
//!
//! The query first merges each resource's rows of one hour (a label or zone change can
//! split an hour across rows; OR-ing the minute masks keeps an hour from counting twice),
//! then sums per resource: minutes per state, started hours by the most expensive state
//! seen in them (running > stopped > frozen > active), traffic and size-minutes (as
//! DECIMAL(38, 0), so the sums cannot overflow), and the hours and rows behind it all.
//! The hive partition column `hour` prunes the scan to the month's files.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tally_model::{Hour, ResourceKind, ResourceState};

use crate::error::{Error, Result};
use crate::month::BillingMonth;

/// One resource's usage in a month (per SKU, zone and label set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    pub account_id: String,
    pub resource_id: String,
    pub kind: Option<ResourceKind>,
    pub sku: String,
    pub zone: String,
    pub labels: String,
    pub gpus: u16,
    /// Minutes per state, indexed by [`ResourceState::index`].
    pub minutes: [i64; ResourceState::COUNT],
    /// Started hours whose most expensive state was this one.
    pub top_state_hours: [i64; ResourceState::COUNT],
    pub present_minutes: i64,
    pub out_external_bytes: i128,
    pub out_internal_bytes: i128,
    pub in_bytes: i128,
    pub size_byte_minutes: i128,
    pub first_hour: Option<Hour>,
    pub last_hour: Option<Hour>,
    pub rollup_rows: i64,
}

/// A session with the lake's tables registered: `rollups` (and `line_items` if present).
pub async fn lake_session(lake: &Path) -> Result<SessionContext> {
    let context = SessionContext::new();
    context.register_udf(popcount_udf());
    let rollups = lake.join("rollups");
    if !rollups.is_dir() {
        return Err(Error::NoLake(lake.to_owned()));
    }
    let options =
        ParquetReadOptions::default().table_partition_cols(vec![("hour".into(), DataType::Utf8)]);
    context
        .register_parquet("rollups", table_url(&rollups), options)
        .await?;
    let line_items = lake.join("line_items");
    if line_items.is_dir() {
        let options = ParquetReadOptions::default()
            .table_partition_cols(vec![("month".into(), DataType::Utf8)]);
        context
            .register_parquet("line_items", table_url(&line_items), options)
            .await?;
    }
    Ok(context)
}

fn table_url(directory: &Path) -> String {
    format!("{}/", directory.display())
}

/// `popcount(UInt64) -> Int64`: the minutes in a minute mask.
fn popcount_udf() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "popcount",
        vec![DataType::UInt64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|arguments: &[ColumnarValue]| match &arguments[0] {
            ColumnarValue::Array(array) => {
                let masks = array
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Execution(
                            "popcount takes a UInt64 column".into(),
                        )
                    })?;
                let counts: Int64Array = masks
                    .iter()
                    .map(|mask| mask.map(|m| i64::from(m.count_ones())))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(counts) as ArrayRef))
            }
            ColumnarValue::Scalar(ScalarValue::UInt64(mask)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Int64(mask.map(|m| i64::from(m.count_ones()))),
            )),
            ColumnarValue::Scalar(other) => Err(datafusion::error::DataFusionError::Execution(
                format!("popcount takes a UInt64, not {}", other.data_type()),
            )),
        }),
    )
}

/// The SQL of one month's usage per resource.
pub fn usage_sql(month: &BillingMonth) -> String {
    format!(
        "WITH hours AS (
           SELECT account_id, resource_id, kind, sku, zone, labels, hour_start,
                  max(gpus) AS gpus,
                  bit_or(running_mask) AS r, bit_or(stopped_mask) AS s,
                  bit_or(frozen_mask) AS f, bit_or(active_mask) AS a,
                  sum(CAST(out_external_bytes AS DECIMAL(38, 0))) AS ext,
                  sum(CAST(out_internal_bytes AS DECIMAL(38, 0))) AS internal,
                  sum(CAST(in_bytes AS DECIMAL(38, 0))) AS inbound,
                  sum(CAST(size_byte_minutes AS DECIMAL(38, 0))) AS size_minutes,
                  count(*) AS row_count
           FROM rollups
           WHERE hour >= '{start}' AND hour < '{end}'
           GROUP BY account_id, resource_id, kind, sku, zone, labels, hour_start)
         SELECT account_id, resource_id, kind, sku, zone, labels,
                CAST(max(gpus) AS BIGINT) AS gpus,
                sum(popcount(r)) AS running_minutes,
                sum(popcount(s)) AS stopped_minutes,
                sum(popcount(f)) AS frozen_minutes,
                sum(popcount(a)) AS active_minutes,
                sum(popcount(r | s | f | a)) AS present_minutes,
                sum(CASE WHEN r <> 0 THEN 1 ELSE 0 END) AS running_hours,
                sum(CASE WHEN r = 0 AND s <> 0 THEN 1 ELSE 0 END) AS stopped_hours,
                sum(CASE WHEN r = 0 AND s = 0 AND f <> 0 THEN 1 ELSE 0 END) AS frozen_hours,
                sum(CASE WHEN r = 0 AND s = 0 AND f = 0 AND a <> 0 THEN 1 ELSE 0 END) AS active_hours,
                sum(ext) AS out_external_bytes, sum(internal) AS out_internal_bytes,
                sum(inbound) AS in_bytes, sum(size_minutes) AS size_byte_minutes,
                min(hour_start) AS first_hour, max(hour_start) AS last_hour,
                sum(row_count) AS rollup_rows
         FROM hours
         GROUP BY account_id, resource_id, kind, sku, zone, labels
         ORDER BY account_id, resource_id, sku, zone, labels",
        start = month.first_hour().partition_value(),
        end = month.end_hour().partition_value(),
    )
}

/// Every resource's usage in `month`, sorted by account and resource.
pub async fn month_usage(
    context: &SessionContext,
    month: &BillingMonth,
) -> Result<Vec<ResourceUsage>> {
    let batches = context.sql(&usage_sql(month)).await?.collect().await?;
    let mut usages = Vec::new();
    for batch in &batches {
        let column = |name: &str| -> Result<&ArrayRef> {
            batch.column_by_name(name).ok_or_else(|| {
                Error::DataFusion(datafusion::error::DataFusionError::Internal(format!(
                    "usage column {name} missing"
                )))
            })
        };
        fn typed<'a, T: 'static>(array: &'a ArrayRef, name: &str) -> Result<&'a T> {
            array.as_any().downcast_ref::<T>().ok_or_else(|| {
                Error::DataFusion(datafusion::error::DataFusionError::Internal(format!(
                    "usage column {name} is {}",
                    array.data_type()
                )))
            })
        }
        // Parquet strings come back as Utf8View; the usage rows want plain strings.
        let text = |name: &str| -> Result<StringArray> {
            let utf8 = datafusion::arrow::compute::cast(column(name)?, &DataType::Utf8)?;
            Ok(typed::<StringArray>(&utf8, name)?.clone())
        };
        let int = |name: &str| -> Result<&Int64Array> { typed(column(name)?, name) };
        let decimal = |name: &str| -> Result<&Decimal128Array> { typed(column(name)?, name) };
        let time =
            |name: &str| -> Result<&TimestampMicrosecondArray> { typed(column(name)?, name) };
        let (account, resource, kind, sku, zone, labels): (
            StringArray,
            StringArray,
            StringArray,
            StringArray,
            StringArray,
            StringArray,
        ) = (
            text("account_id")?,
            text("resource_id")?,
            text("kind")?,
            text("sku")?,
            text("zone")?,
            text("labels")?,
        );
        let minutes = [
            int("running_minutes")?,
            int("stopped_minutes")?,
            int("frozen_minutes")?,
            int("active_minutes")?,
        ];
        let hours = [
            int("running_hours")?,
            int("stopped_hours")?,
            int("frozen_hours")?,
            int("active_hours")?,
        ];
        let (gpus, present, rows) = (int("gpus")?, int("present_minutes")?, int("rollup_rows")?);
        let (ext, internal, inbound, size) = (
            decimal("out_external_bytes")?,
            decimal("out_internal_bytes")?,
            decimal("in_bytes")?,
            decimal("size_byte_minutes")?,
        );
        let (first, last) = (time("first_hour")?, time("last_hour")?);
        for row in 0..batch.num_rows() {
            let value = |array: &Int64Array| {
                if array.is_null(row) {
                    0
                } else {
                    array.value(row)
                }
            };
            let big = |array: &Decimal128Array| {
                if array.is_null(row) {
                    0
                } else {
                    array.value(row)
                }
            };
            let hour = |array: &TimestampMicrosecondArray| {
                (!array.is_null(row)).then(|| Hour::from_timestamp_micros(array.value(row)))
            };
            usages.push(ResourceUsage {
                account_id: account.value(row).to_owned(),
                resource_id: resource.value(row).to_owned(),
                kind: ResourceKind::parse(kind.value(row)),
                sku: sku.value(row).to_owned(),
                zone: zone.value(row).to_owned(),
                labels: labels.value(row).to_owned(),
                gpus: u16::try_from(value(gpus)).unwrap_or(u16::MAX),
                minutes: minutes.map(value),
                top_state_hours: hours.map(value),
                present_minutes: value(present),
                out_external_bytes: big(ext),
                out_internal_bytes: big(internal),
                in_bytes: big(inbound),
                size_byte_minutes: big(size),
                first_hour: hour(first),
                last_hour: hour(last),
                rollup_rows: value(rows),
            });
        }
    }
    Ok(usages)
}
