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
    Array, ArrayRef, BinaryArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};
use tally_lake::Lake;
use tally_model::rollup::{PARTITION_KEY, ROLLUPS_DIR, rollup_arrow_schema, rollup_file_schema};
use tally_model::{Hour, ResourceKind, ResourceState, RollupFileName};

use crate::distributed::{self, Engine};
use crate::error::{Error, Result};
use crate::fold;
use crate::month::BillingMonth;

/// The set of states seen in one hour, bit `i` for [`ResourceState::index`] `i`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourBucket {
    pub states_seen: StatesSeen,
    pub gpus: u16,
    pub hours: i64,
    /// Minutes per state in these hours, indexed by [`ResourceState::index`].
    pub minutes: [i64; ResourceState::COUNT],
}

/// Minutes of one resource under one label set and GPU count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// A directory as a listing-table URL (the trailing slash makes it a directory).
pub fn table_url(directory: &Path) -> String {
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

/// `schema` with its plain text columns read as string views: the reader then points into
/// the decoded pages instead of copying every row's text. Dictionary columns stay
/// dictionaries (each row's key as stored).
fn viewed(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Utf8 => field.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => field.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The month's rollups in a [`MonthRollups`] session.
const MONTH_TABLE: &str = "month_rollups";

/// The rollup files of `month` (as keys of the lake): of each hour directory, the
/// [`current_generation`].
pub fn month_files(lake: &Lake, month: &BillingMonth) -> Result<Vec<String>> {
    let mut directories = Vec::new();
    let mut hour = month.first_hour();
    while hour < month.end_hour() {
        directories.push(format!(
            "{ROLLUPS_DIR}/{PARTITION_KEY}={}",
            hour.partition_value()
        ));
        hour = hour.next();
    }
    let mut files = Vec::new();
    let mut superseded = 0;
    for listed in lake.list_each(&directories)? {
        let current = current_generation(listed);
        files.extend(current.files);
        superseded += current.superseded;
    }
    if superseded > 0 {
        tracing::info!(
            superseded,
            month = %month.label,
            "skipped superseded rollup generations (a restatement's old file not yet removed)"
        );
    }
    files.sort();
    Ok(files)
}

/// The Parquet files of one hour directory that count.
#[derive(Clone, Debug, Default)]
pub struct CurrentFiles {
    pub files: Vec<String>,
    /// Files of an older generation of a source partition that also has a newer one.
    pub superseded: usize,
}

/// Of each source partition's files among `files` (the keys of one hour directory), only
/// the highest generation (a restatement holds every row of the generation before it,
/// which the aggregator removes once its manifest names the new one; a crash in between
/// leaves both, and only the new one counts). Files not named by the aggregator (an
/// import, say) are read as they are.
pub fn current_generation(files: Vec<String>) -> CurrentFiles {
    let mut found = CurrentFiles::default();
    let mut current: BTreeMap<(String, i32), (u32, String)> = BTreeMap::new();
    for file in files {
        let name = file.rsplit('/').next().unwrap_or_default();
        if !name.ends_with(".parquet") {
            continue;
        }
        let Some(parsed) = RollupFileName::parse(name) else {
            found.files.push(file);
            continue;
        };
        let key = (parsed.source, parsed.partition);
        match current.get(&key) {
            Some((generation, _)) if *generation > parsed.generation => found.superseded += 1,
            Some(_) => {
                found.superseded += 1;
                current.insert(key, (parsed.generation, file));
            }
            None => {
                current.insert(key, (parsed.generation, file));
            }
        }
    }
    found
        .files
        .extend(current.into_values().map(|(_, file)| file));
    found.files.sort();
    found
}

/// Lets DataFusion read the lake's files: an object store is registered under its URL.
pub fn register_lake(context: &SessionContext, lake: &Lake) {
    if let Some((url, store)) = lake.object_store() {
        context.runtime_env().register_object_store(&url, store);
    }
}

/// One billing month of the rollup lake, ready to be summed: the month's files (see
/// [`month_files`]) as the table `month_rollups`, with `popcount` and `resource_usage`.
pub struct MonthRollups {
    context: SessionContext,
    month: BillingMonth,
    files: usize,
    engine: Engine,
}

impl MonthRollups {
    /// The month in a session of this process.
    pub async fn open(lake: &Lake, month: &BillingMonth) -> Result<Self> {
        Self::open_on(lake, month, &Engine::InProcess).await
    }

    /// The month in a session whose plans run on `engine`.
    pub async fn open_on(lake: &Lake, month: &BillingMonth, engine: &Engine) -> Result<Self> {
        if !lake.has_any(ROLLUPS_DIR)? {
            return Err(Error::NoLake(lake.to_string()));
        }
        let files = month_files(lake, month)?;
        // Each file is read whole by one partition of the scan: `resource_usage` relies on
        // the rows of a resource-hour coming next to each other (see `fold.rs`).
        let config =
            SessionConfig::new().set_bool("datafusion.optimizer.repartition_file_scans", false);
        let (context, schema) = match engine {
            Engine::InProcess => (
                SessionContext::new_with_config(config),
                // The files' schema: the few-valued texts as the dictionaries the
                // aggregator declares them as (files written before are converted as read).
                viewed(&rollup_file_schema()),
            ),
            // Ballista ships batches over Arrow Flight, which it does not yet do for
            // string views: plain strings there.
            Engine::Ballista { scheduler } => (
                distributed::remote_session(scheduler, config).await?,
                rollup_arrow_schema().as_ref().clone(),
            ),
        };
        register_lake(&context, lake);
        context.register_udf(popcount_udf());
        let hours = usize::try_from(month.hours())
            .map_err(|_| internal(format!("month {} has no hours", month.label)))?;
        context.register_udaf(fold::resource_usage_udaf(
            month.first_hour().unix_hours(),
            hours,
        ));
        if !files.is_empty() {
            let paths: Vec<String> = files.iter().map(|file| lake.table_path(file)).collect();
            let options = ParquetReadOptions::default().schema(&schema);
            let rollups = context.read_parquet(paths, options).await?;
            context.register_table(MONTH_TABLE, rollups.into_view())?;
        }
        Ok(Self {
            context,
            month: month.clone(),
            files: files.len(),
            engine: engine.clone(),
        })
    }

    /// Every resource's usage in the month, sorted by account, resource, kind and SKU.
    pub async fn usage(&self) -> Result<Vec<ResourceUsage>> {
        if self.files == 0 {
            return Ok(Vec::new());
        }
        match self.folded_usage().await {
            Err(Error::DataFusion(error)) if fold::is_split_hour(&error) => {
                tracing::warn!(
                    %error,
                    month = %self.month.label,
                    "a resource-hour is spread over several files: summing the month with the exact two-step plan"
                );
                self.grouped_usage().await
            }
            Err(Error::DataFusion(error)) => Err(match fold::bad_row(&error) {
                Some(bad) => Error::Usage {
                    account_id: bad.account_id.clone(),
                    resource_id: bad.resource_id.clone(),
                    detail: bad.detail.clone(),
                },
                None => match &self.engine {
                    Engine::InProcess => Error::DataFusion(error),
                    // It may be the cluster's (unreachable, an executor lost): say which.
                    Engine::Ballista { scheduler } => Error::Ballista {
                        scheduler: scheduler.clone(),
                        detail: error.to_string(),
                    },
                },
            }),
            other => other,
        }
    }

    /// The result of `sql` on the month, from the session's engine.
    async fn run(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let frame = self.context.sql(sql).await?;
        match &self.engine {
            Engine::InProcess => Ok(frame.collect().await?),
            Engine::Ballista { scheduler } => {
                distributed::collect_on_cluster(frame, scheduler).await
            }
        }
    }

    /// One scan: `resource_usage` folds every resource's rows.
    pub async fn folded_usage(&self) -> Result<Vec<ResourceUsage>> {
        if self.files == 0 {
            return Ok(Vec::new());
        }
        let batches = Arc::new(self.fold_states().await?);
        let first_hour = self.month.first_hour().unix_hours();
        let hours = usize::try_from(self.month.hours())
            .map_err(|_| internal(format!("month {} has no hours", self.month.label)))?;
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let splits = fold::shard_splits(&binary_states(&batches)?, threads)?;
        // Merged in shards of accounts side by side, each shard's usage sorted: the shards
        // one after the other are the month's, sorted. On the runtime's workers, not threads
        // of their own: the scan ran there, and its freed memory is reused where a new
        // thread's allocations fault in fresh pages (which made the merge slower than on
        // one core).
        let tasks: Vec<_> = fold::shards_between(&splits)
            .into_iter()
            .map(|shard| {
                let (from, to) = (shard.from.map(str::to_owned), shard.to.map(str::to_owned));
                let batches = Arc::clone(&batches);
                tokio::spawn(async move {
                    let shard = fold::Shard {
                        from: from.as_deref(),
                        to: to.as_deref(),
                    };
                    let states = binary_states(&batches)?;
                    usages_of(fold::merge_states(&states, first_hour, hours, shard)?)
                })
            })
            .collect();
        let mut shards = Vec::with_capacity(tasks.len());
        for task in tasks {
            shards.push(match task.await {
                Ok(shard) => shard?,
                // A panic is a bug: it goes on as it would have without tasks.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => return Err(internal(format!("merging the usage: {error}"))),
            });
        }
        let mut usages = Vec::with_capacity(shards.iter().map(Vec::len).sum());
        for shard in shards {
            usages.extend(shard);
        }
        Ok(usages)
    }

    /// `resource_usage` as binary states to merge: in this process, one per partition of
    /// the scan (the plan's lowest aggregate, before its partial folds are merged into one
    /// on a single core); on a cluster, its one merged result.
    async fn fold_states(&self) -> Result<Vec<RecordBatch>> {
        match &self.engine {
            Engine::InProcess => {
                let frame = self.context.sql(&folded_usage_sql()).await?;
                let task = Arc::new(frame.task_ctx());
                let plan = frame.create_physical_plan().await?;
                Ok(collect_partitioned(lowest_aggregate(plan), task)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect())
            }
            Engine::Ballista { .. } => self.run(&folded_usage_sql()).await,
        }
    }

    /// The exact plan that assumes nothing about the layout: group by resource-hour
    /// first (a minute in two rows counts once), then by resource. Slow for a large fleet.
    pub async fn grouped_usage(&self) -> Result<Vec<ResourceUsage>> {
        if self.files == 0 {
            return Ok(Vec::new());
        }
        let hour_batches = self.run(&hour_buckets_sql()).await?;
        let minute_batches = self.run(&minute_buckets_sql()).await?;
        let usages = usages_from_buckets(&hour_batches, &minute_batches)?;
        // The fold refuses hours outside the month; so does this plan.
        if let Some(usage) = usages.iter().find(|usage| {
            usage.first_hour < self.month.first_hour() || usage.last_hour >= self.month.end_hour()
        }) {
            return Err(Error::Usage {
                account_id: usage.account_id.clone(),
                resource_id: usage.resource_id.clone(),
                detail: format!(
                    "rows from {} to {} in the files of month {}: a file holds hours other than its directory's",
                    usage.first_hour.partition_value(),
                    usage.last_hour.partition_value(),
                    self.month.label
                ),
            });
        }
        Ok(usages)
    }

    /// The hours, in order, of each of `resources` (id, SKU): what charges paid per
    /// period of a contract (T2) need, since their periods do not follow the calendar.
    /// Only the resources on such contracts are read hour by hour, all in one query.
    pub async fn resource_hours(
        &self,
        resources: &[(String, String)],
    ) -> Result<BTreeMap<(String, String), Vec<HourStates>>> {
        let mut hours: BTreeMap<(String, String), Vec<HourStates>> = BTreeMap::new();
        if resources.is_empty() || self.files == 0 {
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
             FROM {MONTH_TABLE} r JOIN wanted w ON r.resource_id = w.resource_id AND r.sku = w.sku
             GROUP BY r.resource_id, r.sku, r.hour_start
             ORDER BY r.resource_id, r.sku, r.hour_start"
        );
        let batches = self.run(&query).await?;
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
}

impl MonthRollups {
    /// The month's rows of `accounts`, one per (resource, SKU, label set, GPU count, hour)
    /// with the masks OR-ed and the meters summed, in hour order: what replaying a month
    /// hour by hour needs (budgets and notifications, see `replay.rs`).
    pub async fn label_hours(&self, accounts: &[String]) -> Result<Vec<LabelHour>> {
        if accounts.is_empty() || self.files == 0 {
            return Ok(Vec::new());
        }
        let wanted = accounts
            .iter()
            .map(|account| format!("'{}'", account.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let query = format!(
            "SELECT account_id, resource_id, kind, sku, labels, CAST(gpus AS BIGINT) AS gpus,
                    hour_start, max(zone) AS last_zone,
                    bit_or(running_mask) AS running_mask, bit_or(stopped_mask) AS stopped_mask,
                    bit_or(frozen_mask) AS frozen_mask, bit_or(active_mask) AS active_mask,
                    {HOUR_METER_SUMS},
                    count(*) AS rollup_rows
             FROM {MONTH_TABLE}
             WHERE account_id IN ({wanted})
             GROUP BY account_id, resource_id, kind, sku, labels, gpus, hour_start
             ORDER BY hour_start, account_id, resource_id, kind, sku, labels, gpus"
        );
        let batches = self.run(&query).await?;
        let mut rows = Vec::new();
        for batch in &batches {
            let columns = Columns::new(batch)?;
            let masks: Vec<&UInt64Array> = MASK_COLUMNS
                .iter()
                .map(|name| columns.typed::<UInt64Array>(name))
                .collect::<Result<_>>()?;
            for row in 0..batch.num_rows() {
                let (account_id, resource_id, kind, sku) = columns.key(row)?;
                let hour = columns.hour("hour_start", row)?;
                if hour < self.month.first_hour() || hour >= self.month.end_hour() {
                    return Err(columns.bad(
                        row,
                        format!(
                            "a row of hour {} in the files of month {}: a file holds hours other than its directory's",
                            hour.partition_value(),
                            self.month.label
                        ),
                    ));
                }
                rows.push(LabelHour {
                    kind: columns.kind(row, &kind)?,
                    account_id,
                    resource_id,
                    sku,
                    labels: columns.text("labels")?.value(row).to_owned(),
                    zone: columns.text("last_zone")?.value(row).to_owned(),
                    gpus: columns.gpus(row)?,
                    hour,
                    masks: std::array::from_fn(|state| {
                        let array = masks[state];
                        if array.is_null(row) {
                            0
                        } else {
                            array.value(row)
                        }
                    }),
                    out_external_bytes: columns.decimal("out_external_bytes", row)?,
                    out_internal_bytes: columns.decimal("out_internal_bytes", row)?,
                    in_bytes: columns.decimal("in_bytes", row)?,
                    size_byte_minutes: columns.decimal("size_byte_minutes", row)?,
                    rollup_rows: columns.int("rollup_rows", row)?,
                });
            }
        }
        Ok(rows)
    }
}

/// The minute masks in [`ResourceState::ALL`] order.
const MASK_COLUMNS: [&str; ResourceState::COUNT] =
    ["running_mask", "stopped_mask", "frozen_mask", "active_mask"];

/// One resource-hour under one label set and GPU count: its rows' masks OR-ed (a minute
/// in two rows counts once) and meters summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelHour {
    pub account_id: String,
    pub resource_id: String,
    pub kind: ResourceKind,
    pub sku: String,
    pub labels: String,
    pub zone: String,
    pub gpus: u16,
    pub hour: Hour,
    /// Minute masks indexed by [`ResourceState::index`].
    pub masks: [u64; ResourceState::COUNT],
    pub out_external_bytes: i128,
    pub out_internal_bytes: i128,
    pub in_bytes: i128,
    pub size_byte_minutes: i128,
    pub rollup_rows: i64,
}

impl ResourceUsage {
    /// A usage with nothing in it yet, for [`Self::add_hour`].
    pub fn empty(first: &LabelHour) -> Self {
        Self {
            account_id: first.account_id.clone(),
            resource_id: first.resource_id.clone(),
            kind: first.kind,
            sku: first.sku.clone(),
            zone: first.zone.clone(),
            labels: first.labels.clone(),
            max_gpus: 0,
            hour_buckets: Vec::new(),
            minute_buckets: Vec::new(),
            present_minutes: 0,
            out_external_bytes: 0,
            out_internal_bytes: 0,
            in_bytes: 0,
            size_byte_minutes: 0,
            first_hour: first.hour,
            last_hour: first.hour,
            rollup_rows: 0,
        }
    }

    /// Adds one hour of this resource and SKU (all its label sets) exactly as the
    /// month's query sums it: the hour's states and GPU count from the masks of all label
    /// sets OR-ed, the minutes per label set, the meters summed. Hours must come in order.
    pub fn add_hour(&mut self, rows: &[&LabelHour]) -> std::result::Result<HourStates, String> {
        let Some(last) = rows.last() else {
            return Err(format!(
                "resource {}: an hour without rows",
                self.resource_id
            ));
        };
        let mut masks = [0u64; ResourceState::COUNT];
        let mut gpus = 0;
        for row in rows {
            for (mask, row_mask) in masks.iter_mut().zip(row.masks) {
                *mask |= row_mask;
            }
            gpus = gpus.max(row.gpus);
            let minutes = row.masks.map(|mask| i64::from(mask.count_ones()));
            let at = self.minute_buckets.binary_search_by(|bucket| {
                (bucket.labels.as_str(), bucket.gpus).cmp(&(row.labels.as_str(), row.gpus))
            });
            match at {
                Ok(index) => {
                    let bucket = &mut self.minute_buckets[index];
                    for (sum, minutes) in bucket.minutes.iter_mut().zip(minutes) {
                        *sum += minutes;
                    }
                }
                Err(index) => self.minute_buckets.insert(
                    index,
                    MinuteBucket {
                        labels: row.labels.clone(),
                        gpus: row.gpus,
                        minutes,
                    },
                ),
            }
            let overflow = || {
                format!(
                    "hour {}: a monthly sum overflows",
                    row.hour.partition_value()
                )
            };
            for (sum, add) in [
                (&mut self.out_external_bytes, row.out_external_bytes),
                (&mut self.out_internal_bytes, row.out_internal_bytes),
                (&mut self.in_bytes, row.in_bytes),
                (&mut self.size_byte_minutes, row.size_byte_minutes),
            ] {
                *sum = sum.checked_add(add).ok_or_else(overflow)?;
            }
            self.rollup_rows += row.rollup_rows;
        }
        let states_seen = StatesSeen(
            masks
                .iter()
                .enumerate()
                .filter(|(_, mask)| **mask != 0)
                .fold(0, |seen, (state, _)| seen | (1 << state)),
        );
        let minutes = masks.map(|mask| i64::from(mask.count_ones()));
        let at = self
            .hour_buckets
            .binary_search_by(|bucket| (bucket.states_seen, bucket.gpus).cmp(&(states_seen, gpus)));
        match at {
            Ok(index) => {
                let bucket = &mut self.hour_buckets[index];
                bucket.hours += 1;
                for (sum, minutes) in bucket.minutes.iter_mut().zip(minutes) {
                    *sum += minutes;
                }
            }
            Err(index) => self.hour_buckets.insert(
                index,
                HourBucket {
                    states_seen,
                    gpus,
                    hours: 1,
                    minutes,
                },
            ),
        }
        self.present_minutes +=
            i64::from(masks.iter().fold(0, |all, mask| all | mask).count_ones());
        self.max_gpus = self.max_gpus.max(gpus);
        self.first_hour = self.first_hour.min(last.hour);
        self.last_hour = last.hour;
        // The month's query takes the greatest zone and labels of the last hour.
        self.zone = rows
            .iter()
            .map(|row| row.zone.as_str())
            .max()
            .unwrap_or_default()
            .to_owned();
        self.labels = rows
            .iter()
            .map(|row| row.labels.as_str())
            .max()
            .unwrap_or_default()
            .to_owned();
        Ok(HourStates {
            hour: last.hour,
            states_seen,
            gpus,
        })
    }
}

/// The binary values of `batches`' first column: `resource_usage`'s states.
fn binary_states(batches: &[RecordBatch]) -> Result<Vec<&[u8]>> {
    let mut states = Vec::new();
    for batch in batches {
        let column = batch
            .columns()
            .first()
            .ok_or_else(|| internal(format!("{} gave no column", fold::NAME)))?;
        let folds = column
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| internal(format!("{} is not binary", fold::NAME)))?;
        states.extend(folds.iter().flatten());
    }
    Ok(states)
}

/// The lowest aggregate of `plan`: the partial one when the scan has several partitions,
/// whose output is one state per partition. `plan` itself if it has none.
fn lowest_aggregate(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let mut lowest = Arc::clone(&plan);
    let mut node = plan;
    loop {
        if node.is::<AggregateExec>() {
            lowest = Arc::clone(&node);
        }
        let Some(child) = node.children().first().map(|child| Arc::clone(*child)) else {
            return lowest;
        };
        node = child;
    }
}

/// Resources' folds as usage records, one per part, sorted.
fn usages_of(resources: Vec<fold::ResourceFolds>) -> Result<Vec<ResourceUsage>> {
    let mut usages = Vec::with_capacity(resources.len());
    for mut resource in resources {
        let parts = resource.parts.len();
        for (index, part) in resource.parts.into_iter().enumerate() {
            let fold = part.fold;
            // Nearly every resource has one part: its id is moved, not copied.
            let resource_id = if index + 1 == parts {
                std::mem::take(&mut resource.resource_id)
            } else {
                resource.resource_id.clone()
            };
            let Some(kind) = ResourceKind::parse(&part.kind) else {
                return Err(Error::Usage {
                    account_id: part.account_id,
                    resource_id,
                    detail: unknown_kind(&part.kind),
                });
            };
            usages.push(ResourceUsage {
                kind,
                account_id: part.account_id,
                resource_id,
                sku: part.sku,
                zone: fold.zone,
                labels: fold.labels,
                max_gpus: fold.max_gpus,
                hour_buckets: fold.hour_buckets,
                minute_buckets: fold.minute_buckets,
                present_minutes: fold.present_minutes,
                out_external_bytes: fold.out_external_bytes,
                out_internal_bytes: fold.out_internal_bytes,
                in_bytes: fold.in_bytes,
                size_byte_minutes: fold.size_byte_minutes,
                first_hour: Hour::from_unix_hours(fold.first_hour),
                last_hour: Hour::from_unix_hours(fold.last_hour),
                rollup_rows: fold.rollup_rows,
            });
        }
    }
    sort_usages(&mut usages);
    Ok(usages)
}

/// Sorts usage records by account, resource, kind and SKU.
///
/// A stable sort: the folds come in the lake's order (by account and resource), nearly
/// sorted already, which it finds as runs and merges instead of comparing every pair of a
/// quicksort's partitions. The keys are unique, so the order is the same either way.
fn sort_usages(usages: &mut [ResourceUsage]) {
    usages.sort_by(|a, b| {
        (&a.account_id, &a.resource_id, a.kind.as_str(), &a.sku).cmp(&(
            &b.account_id,
            &b.resource_id,
            b.kind.as_str(),
            &b.sku,
        ))
    });
}

/// Every resource's usage folded by `resource_usage`: one row (sorted by the caller).
pub fn folded_usage_sql() -> String {
    format!(
        "SELECT {name}({arguments}) AS usage
         FROM {MONTH_TABLE}",
        name = fold::NAME,
        arguments = fold::ARGUMENTS.join(", "),
    )
}

/// A resource-hour's meters summed over its rows, as DECIMAL(38, 0) so no sum overflows;
/// named as the rollup columns.
const HOUR_METER_SUMS: &str =
    "sum(CAST(out_external_bytes AS DECIMAL(38, 0))) AS out_external_bytes,
    sum(CAST(out_internal_bytes AS DECIMAL(38, 0))) AS out_internal_bytes,
    sum(CAST(in_bytes AS DECIMAL(38, 0))) AS in_bytes,
    sum(CAST(size_byte_minutes AS DECIMAL(38, 0))) AS size_byte_minutes";

/// Per resource and (states seen, GPU count): hours, minutes, meters and lineage.
pub fn hour_buckets_sql() -> String {
    format!(
        "WITH resource_hours AS (
           SELECT account_id, resource_id, kind, sku, hour_start,
                  max(gpus) AS gpus, max(zone) AS zone, max(labels) AS labels,
                  bit_or(running_mask) AS r, bit_or(stopped_mask) AS s,
                  bit_or(frozen_mask) AS f, bit_or(active_mask) AS a,
                  {HOUR_METER_SUMS},
                  count(*) AS row_count
           FROM {MONTH_TABLE}
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
                sum(out_external_bytes) AS out_external_bytes,
                sum(out_internal_bytes) AS out_internal_bytes,
                sum(in_bytes) AS in_bytes,
                sum(size_byte_minutes) AS size_byte_minutes,
                min(hour_start) AS first_hour, max(hour_start) AS last_hour,
                last_value(zone ORDER BY hour_start) AS last_zone,
                last_value(labels ORDER BY hour_start) AS last_labels,
                sum(row_count) AS rollup_rows
         FROM classified
         GROUP BY account_id, resource_id, kind, sku, states_seen, gpus
         ORDER BY account_id, resource_id, kind, sku, states_seen, gpus"
    )
}

/// Per resource, label set and GPU count: minutes per state (masks OR-ed per hour first).
pub fn minute_buckets_sql() -> String {
    format!(
        "WITH label_hours AS (
           SELECT account_id, resource_id, kind, sku, labels, gpus, hour_start,
                  bit_or(running_mask) AS r, bit_or(stopped_mask) AS s,
                  bit_or(frozen_mask) AS f, bit_or(active_mask) AS a
           FROM {MONTH_TABLE}
           GROUP BY account_id, resource_id, kind, sku, labels, gpus, hour_start)
         SELECT account_id, resource_id, kind, sku, labels, CAST(gpus AS BIGINT) AS gpus,
                sum(popcount(r)) AS running_minutes,
                sum(popcount(s)) AS stopped_minutes,
                sum(popcount(f)) AS frozen_minutes,
                sum(popcount(a)) AS active_minutes
         FROM label_hours
         GROUP BY account_id, resource_id, kind, sku, labels, gpus
         ORDER BY account_id, resource_id, kind, sku, labels, gpus"
    )
}

/// One hour of one resource: the states seen in it and its largest GPU count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourStates {
    pub hour: Hour,
    pub states_seen: StatesSeen,
    pub gpus: u16,
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

/// Usage from the exact plan's hour and minute buckets, sorted by key.
fn usages_from_buckets(
    hour_batches: &[RecordBatch],
    minute_batches: &[RecordBatch],
) -> Result<Vec<ResourceUsage>> {
    let mut usages: BTreeMap<UsageKey, ResourceUsage> = BTreeMap::new();
    for batch in hour_batches {
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
            let kind = columns.kind(row, &key.2)?;
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
    for batch in minute_batches {
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

    fn kind(&self, row: usize, kind: &str) -> Result<ResourceKind> {
        ResourceKind::parse(kind).ok_or_else(|| self.bad(row, unknown_kind(kind)))
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

fn unknown_kind(kind: &str) -> String {
    format!(
        "kind '{kind}' is not one of {:?}",
        ResourceKind::ALL.map(ResourceKind::as_str)
    )
}

fn internal(detail: String) -> Error {
    Error::DataFusion(DataFusionError::Internal(detail))
}
