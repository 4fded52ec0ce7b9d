//! `resource_usage(...)`: a DataFusion aggregate that folds one resource's month of rollup
//! rows into its usage, so the usage side of rating is one scan with one group per resource.
//! The group key is the resource id alone (hashing one string column is several times
//! cheaper than hashing four); account, kind and SKU are arguments, and the rare resource
//! that changes one of them within the month gets one [`Fold`] per combination, exactly as
//! grouping by all four would give ([`ResourceFolds`]).
//!
//! **Why a custom aggregate.** Rules that are not additive (every *started* hour, the
//! largest state or GPU count of an hour) must see each resource-hour once, and one hour of
//! a resource may span several rows (a label or GPU change within the hour). Grouping by
//! (resource, hour) first is exact but is a 70-million-group aggregation for 100,000
//! resources, minutes instead of seconds. The fold uses the lake's layout instead: all rows
//! of one resource-hour are in one file (a resource's samples go to one source partition,
//! and readers take one generation of it) and next to each other (files are sorted by
//! account and resource), so each group keeps its current hour open and closes it into the
//! hour buckets when another hour starts.
//!
//! **Why that is safe.** Every fold keeps a bitset of the hours it closed. An hour that comes
//! back after it was closed, or that two partial folds both saw, is reported as a
//! [`SplitHour`] error instead of being counted twice, and the caller falls back to the
//! exact two-step plan (see `usage.rs`). Minutes within the open hour are OR-ed, so a
//! minute in two rows of the hour still counts once.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, StringArray,
    StringViewArray, TimestampMicrosecondArray, UInt16Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use serde::{Deserialize, Serialize};
use tally_model::ResourceState;

use crate::usage::{HourBucket, MinuteBucket, StatesSeen};

/// The aggregate's name in SQL.
pub const NAME: &str = "resource_usage";

/// The arguments, in order: what identifies the row's usage, the hour, what a tariff
/// prices by, the minute masks and the meters.
pub const ARGUMENTS: [&str; 16] = [
    "account_id",
    "resource_id",
    "kind",
    "sku",
    "hour_start",
    "gpus",
    "labels",
    "zone",
    "running_mask",
    "stopped_mask",
    "frozen_mask",
    "active_mask",
    "out_external_bytes",
    "out_internal_bytes",
    "in_bytes",
    "size_byte_minutes",
];

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// `resource_usage` for the month whose first hour is `first_hour` (Unix hours) and that
/// has `hours` hours.
pub fn resource_usage_udaf(first_hour: i64, hours: usize) -> AggregateUDF {
    AggregateUDF::from(ResourceUsageUdaf {
        month: MonthHours { first_hour, hours },
        signature: Signature::any(ARGUMENTS.len(), Volatility::Immutable),
    })
}

/// One resource-hour seen in two places: the fast fold cannot prove it counts it once.
#[derive(Debug)]
pub struct SplitHour {
    /// Known when a row showed it; not when two partial folds did.
    pub resource_id: Option<String>,
    pub hour_index: usize,
}

impl fmt::Display for SplitHour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hour {} of the month", self.hour_index)?;
        if let Some(resource_id) = &self.resource_id {
            write!(f, " of resource '{resource_id}'")?;
        }
        write!(f, " is in more than one place in the lake")
    }
}

impl std::error::Error for SplitHour {}

/// A rollup row the fold cannot use, with what identifies it.
#[derive(Debug)]
pub struct BadRow {
    pub account_id: String,
    pub resource_id: String,
    pub detail: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rollups of account '{}' resource '{}': {}",
            self.account_id, self.resource_id, self.detail
        )
    }
}

impl std::error::Error for BadRow {}

/// Whether `error` (anywhere in its chain) is a [`SplitHour`].
pub fn is_split_hour(error: &DataFusionError) -> bool {
    external::<SplitHour>(error).is_some()
}

/// The [`BadRow`] behind `error`, if that is what it is.
pub fn bad_row(error: &DataFusionError) -> Option<&BadRow> {
    external::<BadRow>(error)
}

fn external<T: std::error::Error + 'static>(error: &DataFusionError) -> Option<&T> {
    match error.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<T>(),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MonthHours {
    first_hour: i64,
    hours: usize,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ResourceUsageUdaf {
    month: MonthHours,
    signature: Signature,
}

impl AggregateUDFImpl for ResourceUsageUdaf {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arguments: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("fold", DataType::Binary, true))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(FoldAccumulator {
            month: self.month,
            fold: ResourceFolds::default(),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(FoldGroups {
            month: self.month,
            folds: Vec::new(),
        }))
    }
}

/// A resource's usage so far: what [`crate::usage::ResourceUsage`] is built from.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Fold {
    /// Bit `i` of word `i / 64`: hour `i` of the month was seen.
    hours_seen: Vec<u64>,
    /// The hour rows are being added to, closed into `hour_buckets` when another starts.
    #[serde(skip)]
    open: Option<OpenHour>,
    pub hour_buckets: Vec<HourBucket>,
    pub minute_buckets: Vec<MinuteBucket>,
    pub present_minutes: i64,
    pub out_external_bytes: i128,
    pub out_internal_bytes: i128,
    pub in_bytes: i128,
    pub size_byte_minutes: i128,
    /// Unix hours of the first and last hour with a row.
    pub first_hour: i64,
    pub last_hour: i64,
    /// Zone and labels of the last hour (the largest, if it has several).
    pub zone: String,
    pub labels: String,
    pub max_gpus: u16,
    pub rollup_rows: i64,
}

/// One resource's folds, one per (account, kind, SKU) it had in the month: almost always
/// one. What the aggregate returns, serialised.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResourceFolds {
    pub parts: Vec<FoldPart>,
    /// The part the last row went to: the next row almost always goes there too.
    #[serde(skip)]
    current: usize,
}

/// The usage of one resource under one account, kind and SKU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldPart {
    pub account_id: String,
    pub kind: String,
    pub sku: String,
    pub fold: Fold,
}

impl FoldPart {
    fn is(&self, account_id: &str, kind: &str, sku: &str) -> bool {
        self.sku == sku && self.account_id == account_id && self.kind == kind
    }
}

impl ResourceFolds {
    fn add(&mut self, row: &Row) -> Result<()> {
        let current = match self.parts.get(self.current) {
            Some(part) if part.is(row.account_id, row.kind, row.sku) => self.current,
            _ => self.part_of(row.account_id, row.kind, row.sku),
        };
        self.current = current;
        self.parts[current].fold.add(row)
    }

    /// The index of the part for (account, kind, SKU), added if new.
    fn part_of(&mut self, account_id: &str, kind: &str, sku: &str) -> usize {
        match self
            .parts
            .iter()
            .position(|part| part.is(account_id, kind, sku))
        {
            Some(index) => index,
            None => {
                self.parts.push(FoldPart {
                    account_id: account_id.to_owned(),
                    kind: kind.to_owned(),
                    sku: sku.to_owned(),
                    fold: Fold::default(),
                });
                self.parts.len() - 1
            }
        }
    }

    /// Adds another partial fold of the same resource.
    fn merge(&mut self, other: ResourceFolds) -> Result<()> {
        for part in other.parts {
            let index = self.part_of(&part.account_id, &part.kind, &part.sku);
            self.parts[index].fold.merge(part.fold)?;
        }
        Ok(())
    }

    /// The finished folds, sorted by account, kind and SKU.
    fn finish(&mut self) {
        for part in &mut self.parts {
            part.fold.finish();
        }
        self.parts.sort_by(|a, b| {
            (&a.account_id, &a.kind, &a.sku).cmp(&(&b.account_id, &b.kind, &b.sku))
        });
    }

    fn encode(&mut self) -> Result<Vec<u8>> {
        for part in &mut self.parts {
            part.fold.close_hour();
        }
        serde_json::to_vec(self).map_err(|error| DataFusionError::External(Box::new(error)))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|error| DataFusionError::External(Box::new(error)))
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenHour {
    index: usize,
    masks: [u64; ResourceState::COUNT],
    gpus: u16,
}

/// One input row, read from the argument columns.
struct Row<'a> {
    account_id: &'a str,
    resource_id: &'a str,
    kind: &'a str,
    sku: &'a str,
    /// Unix hours.
    hour: i64,
    hour_index: usize,
    gpus: u16,
    labels: &'a str,
    zone: &'a str,
    masks: [u64; ResourceState::COUNT],
    meters: [u64; 4],
}

impl Row<'_> {
    fn bad(&self, detail: String) -> DataFusionError {
        DataFusionError::External(Box::new(BadRow {
            account_id: self.account_id.to_owned(),
            resource_id: self.resource_id.to_owned(),
            detail,
        }))
    }
}

impl Fold {
    fn is_empty(&self) -> bool {
        self.rollup_rows == 0
    }

    fn seen(&self, index: usize) -> bool {
        self.hours_seen
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn mark_seen(&mut self, index: usize) {
        if self.hours_seen.len() <= index / 64 {
            self.hours_seen.resize(index / 64 + 1, 0);
        }
        self.hours_seen[index / 64] |= 1 << (index % 64);
    }

    fn add(&mut self, row: &Row) -> Result<()> {
        match &mut self.open {
            Some(open) if open.index == row.hour_index => {
                for (mask, add) in open.masks.iter_mut().zip(row.masks) {
                    *mask |= add;
                }
                open.gpus = open.gpus.max(row.gpus);
            }
            _ => {
                self.close_hour();
                if self.seen(row.hour_index) {
                    return Err(DataFusionError::External(Box::new(SplitHour {
                        resource_id: Some(row.resource_id.to_owned()),
                        hour_index: row.hour_index,
                    })));
                }
                self.mark_seen(row.hour_index);
                self.open = Some(OpenHour {
                    index: row.hour_index,
                    masks: row.masks,
                    gpus: row.gpus,
                });
            }
        }

        let minutes = row.masks.map(|mask| i64::from(mask.count_ones()));
        match self
            .minute_buckets
            .iter_mut()
            .find(|bucket| bucket.gpus == row.gpus && bucket.labels == row.labels)
        {
            Some(bucket) => add_minutes(&mut bucket.minutes, &minutes),
            None => self.minute_buckets.push(MinuteBucket {
                labels: row.labels.to_owned(),
                gpus: row.gpus,
                minutes,
            }),
        }

        let overflow = || row.bad("a monthly sum overflows".to_owned());
        for (sum, meter) in [
            &mut self.out_external_bytes,
            &mut self.out_internal_bytes,
            &mut self.in_bytes,
            &mut self.size_byte_minutes,
        ]
        .into_iter()
        .zip(row.meters)
        {
            *sum = sum.checked_add(i128::from(meter)).ok_or_else(overflow)?;
        }

        if self.is_empty() {
            self.first_hour = row.hour;
            self.last_hour = row.hour;
            row.zone.clone_into(&mut self.zone);
            row.labels.clone_into(&mut self.labels);
        } else {
            self.first_hour = self.first_hour.min(row.hour);
            self.take_last(row.hour, row.zone, row.labels);
        }
        self.max_gpus = self.max_gpus.max(row.gpus);
        self.rollup_rows += 1;
        Ok(())
    }

    /// Keeps the zone and labels of the latest hour; within one hour, the largest.
    fn take_last(&mut self, hour: i64, zone: &str, labels: &str) {
        if hour > self.last_hour {
            self.last_hour = hour;
            if self.zone != zone {
                zone.clone_into(&mut self.zone);
            }
            if self.labels != labels {
                labels.clone_into(&mut self.labels);
            }
        } else if hour == self.last_hour {
            if zone > self.zone.as_str() {
                zone.clone_into(&mut self.zone);
            }
            if labels > self.labels.as_str() {
                labels.clone_into(&mut self.labels);
            }
        }
    }

    /// Counts the open hour in the bucket of its states seen and GPU count.
    fn close_hour(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let mut states_seen = 0u8;
        for (index, mask) in open.masks.iter().enumerate() {
            if *mask != 0 {
                states_seen |= 1 << index;
            }
        }
        let states_seen = StatesSeen(states_seen);
        let minutes = open.masks.map(|mask| i64::from(mask.count_ones()));
        let present = open.masks.iter().fold(0, |all, mask| all | mask);
        self.present_minutes += i64::from(present.count_ones());
        match self
            .hour_buckets
            .iter_mut()
            .find(|bucket| bucket.states_seen == states_seen && bucket.gpus == open.gpus)
        {
            Some(bucket) => {
                bucket.hours += 1;
                add_minutes(&mut bucket.minutes, &minutes);
            }
            None => self.hour_buckets.push(HourBucket {
                states_seen,
                gpus: open.gpus,
                hours: 1,
                minutes,
            }),
        }
    }

    /// Adds another partial fold of the same resource.
    fn merge(&mut self, mut other: Fold) -> Result<()> {
        other.close_hour();
        if other.is_empty() {
            return Ok(());
        }
        self.close_hour();
        if self.is_empty() {
            *self = other;
            return Ok(());
        }
        for (index, (mine, theirs)) in self.hours_seen.iter().zip(&other.hours_seen).enumerate() {
            let both = mine & theirs;
            if both != 0 {
                return Err(DataFusionError::External(Box::new(SplitHour {
                    resource_id: None,
                    hour_index: index * 64 + both.trailing_zeros() as usize,
                })));
            }
        }
        if self.hours_seen.len() < other.hours_seen.len() {
            self.hours_seen.resize(other.hours_seen.len(), 0);
        }
        for (mine, theirs) in self.hours_seen.iter_mut().zip(&other.hours_seen) {
            *mine |= theirs;
        }
        for bucket in other.hour_buckets {
            match self
                .hour_buckets
                .iter_mut()
                .find(|mine| mine.states_seen == bucket.states_seen && mine.gpus == bucket.gpus)
            {
                Some(mine) => {
                    mine.hours += bucket.hours;
                    add_minutes(&mut mine.minutes, &bucket.minutes);
                }
                None => self.hour_buckets.push(bucket),
            }
        }
        for bucket in other.minute_buckets {
            match self
                .minute_buckets
                .iter_mut()
                .find(|mine| mine.gpus == bucket.gpus && mine.labels == bucket.labels)
            {
                Some(mine) => add_minutes(&mut mine.minutes, &bucket.minutes),
                None => self.minute_buckets.push(bucket),
            }
        }
        self.present_minutes += other.present_minutes;
        let overflow = || DataFusionError::Execution("a monthly usage sum overflows".to_owned());
        for (sum, add) in [
            (&mut self.out_external_bytes, other.out_external_bytes),
            (&mut self.out_internal_bytes, other.out_internal_bytes),
            (&mut self.in_bytes, other.in_bytes),
            (&mut self.size_byte_minutes, other.size_byte_minutes),
        ] {
            *sum = sum.checked_add(add).ok_or_else(overflow)?;
        }
        self.first_hour = self.first_hour.min(other.first_hour);
        self.take_last(other.last_hour, &other.zone, &other.labels);
        self.max_gpus = self.max_gpus.max(other.max_gpus);
        self.rollup_rows += other.rollup_rows;
        Ok(())
    }

    /// The finished fold, buckets sorted.
    fn finish(&mut self) {
        self.close_hour();
        self.hour_buckets
            .sort_by_key(|bucket| (bucket.states_seen, bucket.gpus));
        self.minute_buckets
            .sort_by(|a, b| (&a.labels, a.gpus).cmp(&(&b.labels, b.gpus)));
    }
}

fn add_minutes(sum: &mut [i64; ResourceState::COUNT], add: &[i64; ResourceState::COUNT]) {
    for (sum, add) in sum.iter_mut().zip(add) {
        *sum += add;
    }
}

/// Text columns arrive as Utf8 or Utf8View, depending on the reader.
enum Texts<'a> {
    Utf8(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> Texts<'a> {
    fn new(array: &'a ArrayRef, name: &str) -> Result<Self> {
        if let Some(strings) = array.as_string_opt::<i32>() {
            Ok(Self::Utf8(strings))
        } else if let Some(strings) = array.as_string_view_opt() {
            Ok(Self::View(strings))
        } else {
            Err(wrong_type(name, array))
        }
    }

    fn value(&self, row: usize) -> &'a str {
        match self {
            Self::Utf8(strings) => strings.value(row),
            Self::View(strings) => strings.value(row),
        }
    }
}

fn wrong_type(name: &str, array: &ArrayRef) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{NAME}: argument {name} is {}, not the rollup v1 type",
        array.data_type()
    ))
}

fn typed<T: 'static>(values: &[ArrayRef], position: usize) -> Result<&T> {
    values[position]
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| wrong_type(ARGUMENTS[position], &values[position]))
}

/// The argument columns of one batch.
struct Inputs<'a> {
    account_id: Texts<'a>,
    resource_id: Texts<'a>,
    kind: Texts<'a>,
    sku: Texts<'a>,
    hour_start: &'a TimestampMicrosecondArray,
    gpus: &'a UInt16Array,
    labels: Texts<'a>,
    zone: Texts<'a>,
    masks: [&'a UInt64Array; ResourceState::COUNT],
    meters: [&'a UInt64Array; 4],
}

impl<'a> Inputs<'a> {
    fn new(values: &'a [ArrayRef]) -> Result<Self> {
        if values.len() != ARGUMENTS.len() {
            return Err(DataFusionError::Plan(format!(
                "{NAME} takes {} arguments ({}), not {}",
                ARGUMENTS.len(),
                ARGUMENTS.join(", "),
                values.len()
            )));
        }
        let text = |position: usize| Texts::new(&values[position], ARGUMENTS[position]);
        let inputs = Self {
            account_id: text(0)?,
            resource_id: text(1)?,
            kind: text(2)?,
            sku: text(3)?,
            hour_start: typed(values, 4)?,
            gpus: typed(values, 5)?,
            labels: text(6)?,
            zone: text(7)?,
            masks: [
                typed(values, 8)?,
                typed(values, 9)?,
                typed(values, 10)?,
                typed(values, 11)?,
            ],
            meters: [
                typed(values, 12)?,
                typed(values, 13)?,
                typed(values, 14)?,
                typed(values, 15)?,
            ],
        };
        // Rollup v1 columns are all non-null; a null is a broken file, not a zero.
        if let Some((position, _)) = values
            .iter()
            .enumerate()
            .find(|(_, column)| column.null_count() > 0)
        {
            return Err(DataFusionError::Execution(format!(
                "{NAME}: column {} has nulls, which rollup v1 does not allow",
                ARGUMENTS[position]
            )));
        }
        Ok(inputs)
    }

    fn row(&self, row: usize, month: MonthHours) -> Result<Row<'a>> {
        let mut read = Row {
            account_id: self.account_id.value(row),
            resource_id: self.resource_id.value(row),
            kind: self.kind.value(row),
            sku: self.sku.value(row),
            hour: 0,
            hour_index: 0,
            gpus: self.gpus.value(row),
            labels: self.labels.value(row),
            zone: self.zone.value(row),
            masks: self.masks.map(|masks| masks.value(row)),
            meters: self.meters.map(|meters| meters.value(row)),
        };
        let micros = self.hour_start.value(row);
        if micros % MICROS_PER_HOUR != 0 {
            return Err(read.bad(format!(
                "hour_start {micros} µs is not the start of an hour"
            )));
        }
        read.hour = micros.div_euclid(MICROS_PER_HOUR);
        read.hour_index = usize::try_from(read.hour - month.first_hour)
            .ok()
            .filter(|index| *index < month.hours)
            .ok_or_else(|| {
                read.bad(format!(
                    "hour_start {micros} µs is outside the month's {} hours",
                    month.hours
                ))
            })?;
        Ok(read)
    }
}

/// Folds of many groups: what the hash aggregation drives.
struct FoldGroups {
    month: MonthHours,
    folds: Vec<ResourceFolds>,
}

impl fmt::Debug for FoldGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FoldGroups({} groups)", self.folds.len())
    }
}

fn binary(folds: Vec<ResourceFolds>, finish: bool) -> Result<ArrayRef> {
    let mut builder = BinaryBuilder::new();
    for mut fold in folds {
        if finish {
            fold.finish();
        }
        builder.append_value(fold.encode()?);
    }
    Ok(Arc::new(builder.finish()))
}

impl GroupsAccumulator for FoldGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.folds
            .resize_with(total_num_groups, ResourceFolds::default);
        let inputs = Inputs::new(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|filter| !filter.is_valid(row) || !filter.value(row)) {
                continue;
            }
            self.folds[group].add(&inputs.row(row, self.month)?)?;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        binary(emit_to.take_needed(&mut self.folds), true)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![binary(emit_to.take_needed(&mut self.folds), false)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.folds
            .resize_with(total_num_groups, ResourceFolds::default);
        let states = values
            .first()
            .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| DataFusionError::Internal(format!("{NAME}: state is not binary")))?;
        for (row, &group) in group_indices.iter().enumerate() {
            self.folds[group].merge(ResourceFolds::from_bytes(states.value(row))?)?;
        }
        Ok(())
    }

    /// Each row as a state of its own (only used if partial aggregation is skipped: rows
    /// of one resource-hour then meet in `merge_batch` and are reported as split).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let inputs = Inputs::new(values)?;
        let mut builder = BinaryBuilder::new();
        for row in 0..values.first().map_or(0, |column| column.len()) {
            let mut fold = ResourceFolds::default();
            if !opt_filter.is_some_and(|filter| !filter.is_valid(row) || !filter.value(row)) {
                fold.add(&inputs.row(row, self.month)?)?;
            }
            builder.append_value(fold.encode()?);
        }
        Ok(vec![Arc::new(builder.finish())])
    }

    /// An estimate: DataFusion asks after every batch, so it must not walk the groups.
    /// A resource holds one fold: its hour bitset, a few buckets and five short strings.
    fn size(&self) -> usize {
        let per_fold = size_of::<ResourceFolds>()
            + size_of::<FoldPart>()
            + self.month.hours.div_ceil(64) * size_of::<u64>()
            + 2 * size_of::<HourBucket>()
            + 2 * size_of::<MinuteBucket>()
            + 64;
        self.folds.capacity() * per_fold
    }
}

/// One group's fold, for plans that aggregate without group indices.
#[derive(Debug)]
struct FoldAccumulator {
    month: MonthHours,
    fold: ResourceFolds,
}

impl Accumulator for FoldAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let inputs = Inputs::new(values)?;
        for row in 0..values.first().map_or(0, |column| column.len()) {
            self.fold.add(&inputs.row(row, self.month)?)?;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.fold.finish();
        Ok(ScalarValue::Binary(Some(self.fold.encode()?)))
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.fold.encode()?))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = states
            .first()
            .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| DataFusionError::Internal(format!("{NAME}: state is not binary")))?;
        for row in 0..states.len() {
            self.fold
                .merge(ResourceFolds::from_bytes(states.value(row))?)?;
        }
        Ok(())
    }
}
