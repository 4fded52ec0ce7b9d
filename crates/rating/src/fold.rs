//! `resource_usage(...)`: a DataFusion aggregate that folds one resource's month of rollup
//! rows into its usage, so the usage side of rating is one scan with one group per resource.
//! The group key is the resource id alone (with one text column instead of four, grouping
//! went from about 30 % to about 19 % of the usage side in the benchmark's profiles);
//! account, kind and SKU are arguments, and the rare resource
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
//! exact two-step plan (see `usage.rs`). For the hour buckets the minutes of the open hour
//! are OR-ed, so a minute in two rows of the hour counts once; the per-label minute buckets
//! add each row's minutes, relying on the rows of one resource-hour holding disjoint minutes
//! (the aggregator deduplicates by resource and minute).

use std::collections::HashMap;
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
use smallvec::SmallVec;
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

/// The month (first hour, hours) `udaf` folds, if it is a [`resource_usage_udaf`].
pub fn resource_usage_month(udaf: &AggregateUDF) -> Option<(i64, usize)> {
    udaf.inner()
        .downcast_ref::<ResourceUsageUdaf>()
        .map(|fold| (fold.month.first_hour, fold.month.hours))
}

/// One resource-hour seen in two places: the fast fold cannot prove it counts it once.
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
        write!(f, " {SPLIT_HOUR}")
    }
}

/// As its message: a Ballista executor reports a task's error by its debug text.
impl fmt::Debug for SplitHour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for SplitHour {}

/// A rollup row the fold cannot use, with what identifies it.
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

/// As its message, like [`SplitHour`]'s.
impl fmt::Debug for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BadRow {}

/// Whether `error` (anywhere in its chain) is a [`SplitHour`].
pub fn is_split_hour(error: &DataFusionError) -> bool {
    external::<SplitHour>(error).is_some()
        // From an executor of another process (Ballista) the error arrives as its text.
        || error.to_string().contains(SPLIT_HOUR)
}

/// The end of a [`SplitHour`]'s message.
const SPLIT_HOUR: &str = "is in more than one place in the lake";

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
            texts: Texts::default(),
            sums: ResourceSums::default(),
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
            texts: Texts::default(),
            batch: BatchTexts::default(),
            groups: Vec::new(),
        }))
    }
}

/// A resource's usage under one account, kind and SKU: what
/// [`crate::usage::ResourceUsage`] is built from, and (with the other parts of its
/// resource) the aggregate's state between partial and final aggregation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Fold {
    /// Bit `i` of word `i / 64`: hour `i` of the month was seen.
    hours_seen: Vec<u64>,
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

/// One resource's folds, one per (account, kind, SKU) it had in the month (almost always
/// one): what the aggregate returns, serialised, parts sorted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResourceFolds {
    pub parts: Vec<FoldPart>,
}

/// The usage of one resource under one account, kind and SKU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldPart {
    pub account_id: String,
    pub kind: String,
    pub sku: String,
    pub fold: Fold,
}

impl ResourceFolds {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|error| DataFusionError::External(Box::new(error)))
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|error| DataFusionError::External(Box::new(error)))
    }
}

/// The text values one accumulator has seen, each stored once; sums refer to them by id.
/// **Why.** Every row names its account, kind, SKU, zone and labels, and a resource's sums
/// are revisited once per hour file: comparing a row's text with a copy kept in each
/// resource's sums cost a cache miss per text per row, most of the fold's time. This table
/// is small (a few values per account) and stays in cache, and each batch's texts are
/// turned into ids once per distinct value ([`BatchTexts`]), so rows compare integers.
#[derive(Debug, Default)]
struct Texts {
    ids: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    values: Vec<Box<str>>,
}

impl Texts {
    fn id(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        // More than 4 billion distinct texts in one month would need more memory than
        // the aggregation has long before this saturates.
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(text.into());
        self.ids.insert(text.into(), id);
        id
    }

    fn get(&self, id: u32) -> &str {
        self.values.get(id as usize).map_or("", |text| text)
    }
}

/// The ids of one batch's texts, a column per text argument, a value per row.
#[derive(Debug, Default)]
struct BatchTexts {
    account_id: Vec<u32>,
    kind: Vec<u32>,
    sku: Vec<u32>,
    labels: Vec<u32>,
    zone: Vec<u32>,
    /// Scratch for [`TextColumn::ids`], kept to reuse its allocation.
    seen: HashMap<u128, u32, foldhash::fast::RandomState>,
}

impl BatchTexts {
    fn read(&mut self, inputs: &Inputs, texts: &mut Texts) {
        inputs
            .account_id
            .ids(texts, &mut self.seen, &mut self.account_id);
        inputs.kind.ids(texts, &mut self.seen, &mut self.kind);
        inputs.sku.ids(texts, &mut self.seen, &mut self.sku);
        inputs.labels.ids(texts, &mut self.seen, &mut self.labels);
        inputs.zone.ids(texts, &mut self.seen, &mut self.zone);
    }
}

/// What a resource's usage is summed under: account, kind and SKU, as text ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    account_id: u32,
    kind: u32,
    sku: u32,
}

impl Identity {
    fn of(account_id: &str, kind: &str, sku: &str, texts: &mut Texts) -> Self {
        Self {
            account_id: texts.id(account_id),
            kind: texts.id(kind),
            sku: texts.id(sku),
        }
    }

    fn of_row(row: &Row) -> Self {
        Self {
            account_id: row.account_id,
            kind: row.kind,
            sku: row.sku,
        }
    }
}

/// A resource's sums in one accumulator: under its first (account, kind, SKU) inline,
/// under any other (a plan change within the month) after it.
#[derive(Debug, Default)]
struct ResourceSums {
    first: Option<(Identity, Sums)>,
    others: Vec<(Identity, Sums)>,
}

impl ResourceSums {
    fn add(&mut self, row: &Row, texts: &Texts) -> Result<()> {
        self.sums_of(Identity::of_row(row)).add(row, texts)
    }

    /// The sums under `identity`, new if there are none yet.
    fn sums_of(&mut self, identity: Identity) -> &mut Sums {
        let first = self
            .first
            .get_or_insert_with(|| (identity, Sums::default()));
        if first.0 == identity {
            return &mut first.1;
        }
        let index = match self.others.iter().position(|(other, _)| *other == identity) {
            Some(index) => index,
            None => {
                self.others.push((identity, Sums::default()));
                self.others.len() - 1
            }
        };
        &mut self.others[index].1
    }

    /// Adds another accumulator's folds of the same resource.
    fn merge(&mut self, other: ResourceFolds, texts: &mut Texts) -> Result<()> {
        for part in other.parts {
            let identity = Identity::of(&part.account_id, &part.kind, &part.sku, texts);
            let theirs = Sums::from_fold(part.fold, texts)?;
            self.sums_of(identity).merge(theirs, texts)?;
        }
        Ok(())
    }

    /// The sums as text; `finish` also sorts parts and buckets (the final result).
    fn closed_folds(&mut self, texts: &Texts, finish: bool) -> ResourceFolds {
        let mut parts: Vec<FoldPart> = self
            .first
            .iter_mut()
            .chain(&mut self.others)
            .map(|(identity, sums)| FoldPart {
                account_id: texts.get(identity.account_id).to_owned(),
                kind: texts.get(identity.kind).to_owned(),
                sku: texts.get(identity.sku).to_owned(),
                fold: sums.closed_fold(texts, finish),
            })
            .collect();
        if finish {
            parts.sort_by(|a, b| {
                (&a.account_id, &a.kind, &a.sku).cmp(&(&b.account_id, &b.kind, &b.sku))
            });
        }
        ResourceFolds { parts }
    }
}

/// Words of the hours-seen bitset: 768 hours, more than the longest month (745).
const HOUR_WORDS: usize = 12;

/// The sums of one resource under one identity while rows are added: a [`Fold`] with its
/// texts as ids and its hour bitset inline, so adding a row stays within the sums.
#[derive(Debug, Default)]
struct Sums {
    hours_seen: [u64; HOUR_WORDS],
    /// The hour rows are being added to, closed into `hour_buckets` when another starts.
    open: Option<OpenHour>,
    /// Inline: every row closes an hour into these, and a pointer to elsewhere in memory
    /// was a cache miss per row (a resource has one or two buckets of each).
    hour_buckets: SmallVec<[HourBucket; 2]>,
    minute_buckets: SmallVec<[LabelMinutes; 1]>,
    present_minutes: i64,
    /// Outbound external, outbound internal, inbound bytes and size-byte-minutes.
    meters: [i128; 4],
    first_hour: i64,
    last_hour: i64,
    zone: u32,
    labels: u32,
    max_gpus: u16,
    rollup_rows: i64,
}

/// A [`MinuteBucket`] with its labels as a text id.
#[derive(Clone, Copy, Debug)]
struct LabelMinutes {
    labels: u32,
    gpus: u16,
    minutes: [i64; ResourceState::COUNT],
}

#[derive(Clone, Copy, Debug)]
struct OpenHour {
    index: usize,
    masks: [u64; ResourceState::COUNT],
    gpus: u16,
}

/// One input row, read from the argument columns, its texts as ids into [`Texts`].
struct Row<'a> {
    inputs: &'a Inputs<'a>,
    /// The row's position in its batch.
    index: usize,
    account_id: u32,
    kind: u32,
    sku: u32,
    /// Unix hours.
    hour: i64,
    hour_index: usize,
    gpus: u16,
    labels: u32,
    zone: u32,
    masks: [u64; ResourceState::COUNT],
    meters: [u64; 4],
}

impl Row<'_> {
    fn resource_id(&self) -> &str {
        self.inputs.resource_id.value(self.index)
    }

    fn bad(&self, detail: String) -> DataFusionError {
        DataFusionError::External(Box::new(BadRow {
            account_id: self.inputs.account_id.value(self.index).to_owned(),
            resource_id: self.resource_id().to_owned(),
            detail,
        }))
    }
}

impl Sums {
    fn is_empty(&self) -> bool {
        self.rollup_rows == 0
    }

    fn seen(&self, index: usize) -> bool {
        self.hours_seen
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn add(&mut self, row: &Row, texts: &Texts) -> Result<()> {
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
                        resource_id: Some(row.resource_id().to_owned()),
                        hour_index: row.hour_index,
                    })));
                }
                let word = self
                    .hours_seen
                    .get_mut(row.hour_index / 64)
                    .ok_or_else(|| {
                        row.bad(format!("hour {} is beyond any month", row.hour_index))
                    })?;
                *word |= 1 << (row.hour_index % 64);
                self.open = Some(OpenHour {
                    index: row.hour_index,
                    masks: row.masks,
                    gpus: row.gpus,
                });
            }
        }

        let minutes = row.masks.map(|mask| i64::from(mask.count_ones()));
        let labels = row.labels;
        match self
            .minute_buckets
            .iter_mut()
            .find(|bucket| bucket.gpus == row.gpus && bucket.labels == labels)
        {
            Some(bucket) => add_minutes(&mut bucket.minutes, &minutes),
            None => self.minute_buckets.push(LabelMinutes {
                labels,
                gpus: row.gpus,
                minutes,
            }),
        }

        for (sum, meter) in self.meters.iter_mut().zip(row.meters) {
            *sum = sum
                .checked_add(i128::from(meter))
                .ok_or_else(|| row.bad("a monthly sum overflows".to_owned()))?;
        }

        let zone = row.zone;
        if self.is_empty() {
            self.first_hour = row.hour;
            self.last_hour = row.hour;
            self.zone = zone;
            self.labels = labels;
        } else {
            self.first_hour = self.first_hour.min(row.hour);
            self.take_last(row.hour, zone, labels, texts);
        }
        self.max_gpus = self.max_gpus.max(row.gpus);
        self.rollup_rows += 1;
        Ok(())
    }

    /// Keeps the zone and labels of the latest hour; within one hour, the largest.
    fn take_last(&mut self, hour: i64, zone: u32, labels: u32, texts: &Texts) {
        if hour > self.last_hour {
            self.last_hour = hour;
            self.zone = zone;
            self.labels = labels;
        } else if hour == self.last_hour {
            if texts.get(zone) > texts.get(self.zone) {
                self.zone = zone;
            }
            if texts.get(labels) > texts.get(self.labels) {
                self.labels = labels;
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

    /// Adds another accumulator's sums of the same resource and identity.
    fn merge(&mut self, mut other: Sums, texts: &Texts) -> Result<()> {
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
        for (sum, add) in self.meters.iter_mut().zip(other.meters) {
            *sum = sum.checked_add(add).ok_or_else(|| {
                DataFusionError::Execution("a monthly usage sum overflows".to_owned())
            })?;
        }
        self.first_hour = self.first_hour.min(other.first_hour);
        self.take_last(other.last_hour, other.zone, other.labels, texts);
        self.max_gpus = self.max_gpus.max(other.max_gpus);
        self.rollup_rows += other.rollup_rows;
        Ok(())
    }

    /// The sums as a [`Fold`], the open hour closed; `finish` sorts the buckets.
    fn closed_fold(&mut self, texts: &Texts, finish: bool) -> Fold {
        self.close_hour();
        let words = self
            .hours_seen
            .iter()
            .rposition(|word| *word != 0)
            .map_or(0, |last| last + 1);
        let mut fold = Fold {
            hours_seen: self.hours_seen[..words].to_vec(),
            hour_buckets: self.hour_buckets.to_vec(),
            minute_buckets: self
                .minute_buckets
                .iter()
                .map(|bucket| MinuteBucket {
                    labels: texts.get(bucket.labels).to_owned(),
                    gpus: bucket.gpus,
                    minutes: bucket.minutes,
                })
                .collect(),
            present_minutes: self.present_minutes,
            out_external_bytes: self.meters[0],
            out_internal_bytes: self.meters[1],
            in_bytes: self.meters[2],
            size_byte_minutes: self.meters[3],
            first_hour: self.first_hour,
            last_hour: self.last_hour,
            zone: texts.get(self.zone).to_owned(),
            labels: texts.get(self.labels).to_owned(),
            max_gpus: self.max_gpus,
            rollup_rows: self.rollup_rows,
        };
        if finish {
            fold.hour_buckets
                .sort_by_key(|bucket| (bucket.states_seen, bucket.gpus));
            fold.minute_buckets
                .sort_by(|a, b| (&a.labels, a.gpus).cmp(&(&b.labels, b.gpus)));
        }
        fold
    }

    fn from_fold(fold: Fold, texts: &mut Texts) -> Result<Self> {
        let mut hours_seen = [0; HOUR_WORDS];
        hours_seen
            .get_mut(..fold.hours_seen.len())
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "{NAME}: a state with {} hour words, more than a month's {HOUR_WORDS}",
                    fold.hours_seen.len()
                ))
            })?
            .copy_from_slice(&fold.hours_seen);
        Ok(Self {
            hours_seen,
            open: None,
            hour_buckets: fold.hour_buckets.into(),
            minute_buckets: fold
                .minute_buckets
                .iter()
                .map(|bucket| LabelMinutes {
                    labels: texts.id(&bucket.labels),
                    gpus: bucket.gpus,
                    minutes: bucket.minutes,
                })
                .collect(),
            present_minutes: fold.present_minutes,
            meters: [
                fold.out_external_bytes,
                fold.out_internal_bytes,
                fold.in_bytes,
                fold.size_byte_minutes,
            ],
            first_hour: fold.first_hour,
            last_hour: fold.last_hour,
            zone: texts.id(&fold.zone),
            labels: texts.id(&fold.labels),
            max_gpus: fold.max_gpus,
            rollup_rows: fold.rollup_rows,
        })
    }
}

fn add_minutes(sum: &mut [i64; ResourceState::COUNT], add: &[i64; ResourceState::COUNT]) {
    for (sum, add) in sum.iter_mut().zip(add) {
        *sum += add;
    }
}

/// Text columns arrive as Utf8 or Utf8View, depending on the reader.
enum TextColumn<'a> {
    Utf8(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> TextColumn<'a> {
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

    /// The id of each row's text in `ids`, looking up each distinct text once: a row with
    /// the text of the row before it takes its id, and for string views a view seen
    /// before in the batch (`seen`) names the same text (views of a Parquet dictionary's
    /// value are equal, and a short text is its own view).
    fn ids(
        &self,
        texts: &mut Texts,
        seen: &mut HashMap<u128, u32, foldhash::fast::RandomState>,
        ids: &mut Vec<u32>,
    ) {
        ids.clear();
        match self {
            Self::Utf8(strings) => {
                let mut previous: Option<(&str, u32)> = None;
                for text in strings.iter().map(Option::unwrap_or_default) {
                    let id = match previous {
                        Some((before, id)) if before == text => id,
                        _ => texts.id(text),
                    };
                    previous = Some((text, id));
                    ids.push(id);
                }
            }
            Self::View(strings) => {
                seen.clear();
                let mut previous: Option<(u128, u32)> = None;
                for (row, view) in strings.views().iter().enumerate() {
                    let id = match previous {
                        Some((before, id)) if before == *view => id,
                        _ => *seen
                            .entry(*view)
                            .or_insert_with(|| texts.id(strings.value(row))),
                    };
                    previous = Some((*view, id));
                    ids.push(id);
                }
            }
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
    account_id: TextColumn<'a>,
    resource_id: TextColumn<'a>,
    kind: TextColumn<'a>,
    sku: TextColumn<'a>,
    hour_start: &'a TimestampMicrosecondArray,
    gpus: &'a UInt16Array,
    labels: TextColumn<'a>,
    zone: TextColumn<'a>,
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
        let text = |position: usize| TextColumn::new(&values[position], ARGUMENTS[position]);
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

    /// Row `row`, its texts' ids from `ids` (read from this batch).
    fn row<'b>(&'b self, row: usize, ids: &BatchTexts, month: MonthHours) -> Result<Row<'b>> {
        let mut read = Row {
            inputs: self,
            index: row,
            account_id: ids.account_id[row],
            kind: ids.kind[row],
            sku: ids.sku[row],
            hour: 0,
            hour_index: 0,
            gpus: self.gpus.value(row),
            labels: ids.labels[row],
            zone: ids.zone[row],
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

/// Sums of many groups: what the hash aggregation drives.
struct FoldGroups {
    month: MonthHours,
    texts: Texts,
    batch: BatchTexts,
    groups: Vec<ResourceSums>,
}

impl fmt::Debug for FoldGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FoldGroups({} groups)", self.groups.len())
    }
}

fn binary(groups: Vec<ResourceSums>, texts: &Texts, finish: bool) -> Result<ArrayRef> {
    let mut builder = BinaryBuilder::new();
    for mut group in groups {
        builder.append_value(group.closed_folds(texts, finish).to_bytes()?);
    }
    Ok(Arc::new(builder.finish()))
}

fn binary_states(states: &[ArrayRef]) -> Result<&BinaryArray> {
    states
        .first()
        .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| DataFusionError::Internal(format!("{NAME}: state is not binary")))
}

fn filtered_out(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_some_and(|filter| !filter.is_valid(row) || !filter.value(row))
}

impl GroupsAccumulator for FoldGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups
            .resize_with(total_num_groups, ResourceSums::default);
        let inputs = Inputs::new(values)?;
        self.batch.read(&inputs, &mut self.texts);
        for (row, &group) in group_indices.iter().enumerate() {
            if !filtered_out(opt_filter, row) {
                self.groups[group].add(&inputs.row(row, &self.batch, self.month)?, &self.texts)?;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        binary(emit_to.take_needed(&mut self.groups), &self.texts, true)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = emit_to.take_needed(&mut self.groups);
        Ok(vec![binary(groups, &self.texts, false)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups
            .resize_with(total_num_groups, ResourceSums::default);
        let states = binary_states(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            let theirs = ResourceFolds::from_bytes(states.value(row))?;
            self.groups[group].merge(theirs, &mut self.texts)?;
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
        let mut texts = Texts::default();
        let mut batch = BatchTexts::default();
        batch.read(&inputs, &mut texts);
        let mut builder = BinaryBuilder::new();
        for row in 0..values.first().map_or(0, |column| column.len()) {
            let mut sums = ResourceSums::default();
            if !filtered_out(opt_filter, row) {
                sums.add(&inputs.row(row, &batch, self.month)?, &texts)?;
            }
            builder.append_value(sums.closed_folds(&texts, false).to_bytes()?);
        }
        Ok(vec![Arc::new(builder.finish())])
    }

    /// An estimate: DataFusion asks after every batch, so it must not walk the groups.
    /// A resource holds one set of sums with a few buckets; the text table is small.
    fn size(&self) -> usize {
        let per_group =
            size_of::<ResourceSums>() + 2 * size_of::<HourBucket>() + size_of::<LabelMinutes>();
        self.groups.capacity() * per_group + self.texts.values.len() * 64
    }
}

/// One group's sums, for plans that aggregate without group indices.
#[derive(Debug)]
struct FoldAccumulator {
    month: MonthHours,
    texts: Texts,
    sums: ResourceSums,
}

impl Accumulator for FoldAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let inputs = Inputs::new(values)?;
        let mut batch = BatchTexts::default();
        batch.read(&inputs, &mut self.texts);
        for row in 0..values.first().map_or(0, |column| column.len()) {
            self.sums
                .add(&inputs.row(row, &batch, self.month)?, &self.texts)?;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let folds = self.sums.closed_folds(&self.texts, true);
        Ok(ScalarValue::Binary(Some(folds.to_bytes()?)))
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let folds = self.sums.closed_folds(&self.texts, false);
        Ok(vec![ScalarValue::Binary(Some(folds.to_bytes()?))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = binary_states(states)?;
        for row in 0..states.len() {
            let theirs = ResourceFolds::from_bytes(states.value(row))?;
            self.sums.merge(theirs, &mut self.texts)?;
        }
        Ok(())
    }
}
