//! `resource_usage(...)`: a DataFusion aggregate that folds a month of rollup rows into
//! each resource's usage, so the usage side of rating is one scan and one aggregate with
//! no GROUP BY: the aggregate keeps a fold per resource itself, found by the order of the
//! lake's files instead of a hash of each row's resource id (`ResourceIndex`). Account,
//! kind and SKU are arguments, and the rare resource that changes one of them within the
//! month gets one [`Fold`] per combination, exactly as grouping by all four would give
//! ([`ResourceFolds`]). Its state and result are every resource's folds in one binary
//! value ([`merge_states`]).
//!
//! **Why a custom aggregate.** Rules that are not additive (every *started* hour, the
//! largest state or GPU count of an hour) must see each resource-hour once, and one hour of
//! a resource may span several rows (a label or GPU change within the hour). Grouping by
//! (resource, hour) first is exact but is a 70-million-group aggregation for 100,000
//! resources, minutes instead of seconds. The fold uses the lake's layout instead: all rows
//! of one resource-hour are in one file (a resource's samples go to one source partition,
//! and readers take one generation of it) and next to each other (files are sorted by
//! account and resource), so the accumulator keeps the current row's resource-hour open and
//! closes it into that resource's hour buckets when the next row is of another.
//!
//! **Why that is safe.** Every fold keeps the hours it saw (a bitset, see `HoursSeen`).
//! An hour that comes back after it was closed (its rows were not next to each
//! other), or that two partial folds both saw, is reported as a
//! [`SplitHour`] error instead of being counted twice, and the caller falls back to the
//! exact two-step plan (see `usage.rs`). For the hour buckets the minutes of the open hour
//! are OR-ed, so a minute in two rows of the hour counts once; the per-label minute buckets
//! add each row's minutes, relying on the rows of one resource-hour holding disjoint minutes
//! (the aggregator deduplicates by resource and minute).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int32Array, StringArray, StringViewArray,
    TimestampMicrosecondArray, UInt16Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int32Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use hashbrown::HashTable;
use tally_model::ResourceState;

use crate::usage::{HourBucket, MinuteBucket};

mod state;

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
        Ok(Box::new(MonthFold::new(self.month)))
    }
}

/// A resource's usage under one account, kind and SKU, as [`merge_states`] gives it:
/// what [`crate::usage::ResourceUsage`] is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fold {
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
/// one), parts sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceFolds {
    pub resource_id: String,
    pub parts: Vec<FoldPart>,
}

/// The usage of one resource under one account, kind and SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldPart {
    pub account_id: String,
    pub kind: String,
    pub sku: String,
    pub fold: Fold,
}

/// The usage of `shard`'s accounts in `states` (each a `resource_usage` state or result of
/// the month whose first hour is `first_hour` and that has `hours` hours), merged, in the
/// order the resources were first seen; each resource's parts and buckets sorted, so the
/// result does not depend on the order the rows were read in.
///
/// **Why shards.** Merging the scan's partial folds is work per resource; done by one
/// final aggregate it ran on one core while the other waited (`benches/BENCHMARKS.md`).
/// Each shard of accounts is merged on its own, so the shards can be merged side by side,
/// and shards cut at [`shard_splits`] come one after the other in account order.
pub fn merge_states(
    states: &[&[u8]],
    first_hour: i64,
    hours: usize,
    shard: Shard,
) -> Result<Vec<ResourceFolds>> {
    let mut fold = MonthFold::new(MonthHours { first_hour, hours });
    for bytes in states {
        state::merge(&mut fold, bytes, shard)?;
    }
    Ok(state::resource_folds(&mut fold))
}

/// Accounts that cut the usage in `states` into `count` shards of about as many resources,
/// sorted (fewer if there are fewer accounts): shard `i` runs from split `i - 1` to split
/// `i`.
pub fn shard_splits(states: &[&[u8]], count: usize) -> Result<Vec<String>> {
    match states.iter().max_by_key(|state| state.len()) {
        Some(largest) if count > 1 => state::splits(largest, count),
        _ => Ok(Vec::new()),
    }
}

/// The shards that `splits` (as [`shard_splits`] gives them) cut the accounts into, in
/// account order: the first and the last unbounded.
pub fn shards_between(splits: &[String]) -> Vec<Shard<'_>> {
    let bounds: Vec<Option<&str>> = std::iter::once(None)
        .chain(splits.iter().map(|split| Some(split.as_str())))
        .chain([None])
        .collect();
    bounds
        .windows(2)
        .map(|bounds| Shard {
            from: bounds[0],
            to: bounds[1],
        })
        .collect()
}

/// The accounts from `from` up to but not including `to` (unbounded where `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shard<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

impl Shard<'_> {
    /// Every account.
    pub const ALL: Shard<'static> = Shard {
        from: None,
        to: None,
    };

    fn holds(self, account_id: &str) -> bool {
        self.from.is_none_or(|from| from <= account_id) && self.to.is_none_or(|to| account_id < to)
    }
}

/// Texts, each stored once under a dense id: the texts one accumulator has seen (sums refer
/// to them by id), and the resource ids of [`ResourceIndex`].
/// **Why.** Every row names its account, kind, SKU, zone and labels, and a resource's sums
/// are revisited once per hour file: comparing a row's text with a copy kept in each
/// resource's sums cost a cache miss per text per row, most of the fold's time. This table
/// is small (a few values per account) and stays in cache, and each batch's texts are
/// turned into ids once per distinct value ([`BatchTexts`]), so rows compare integers.
///
/// **Why one string for all.** The resource ids of a month are 100,000 texts per
/// accumulator: a box each, and another for a map's key, were 200,000 allocations to make
/// and free per partition of the scan and per shard of the merge (freeing them showed in
/// the profile of the job's tail). The texts are one string, and the map holds only ids.
#[derive(Debug, Default)]
struct Texts {
    /// Every text, one after the other.
    bytes: String,
    /// Where each text ends in `bytes`, by id.
    ends: Vec<usize>,
    /// The ids, found by their texts' hashes.
    ids: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Each text's inline string view, or [`NOT_INLINE`]: a guess is one compare.
    views: Vec<u128>,
}

impl Texts {
    fn id(&mut self, text: &str) -> u32 {
        let hash = self.hasher.hash_one(text);
        let Self {
            bytes,
            ends,
            ids,
            hasher,
            views,
        } = self;
        if let Some(id) = ids.find(hash, |id| text_at(bytes, ends, *id) == text) {
            return *id;
        }
        // More than 4 billion distinct texts in one month would need more memory than
        // the aggregation has long before this saturates.
        let id = u32::try_from(ends.len()).unwrap_or(u32::MAX);
        bytes.push_str(text);
        ends.push(bytes.len());
        views.push(inline_view(text));
        ids.insert_unique(hash, id, |id| hasher.hash_one(text_at(bytes, ends, *id)));
        id
    }

    /// Whether text `id` is the inline view `view`.
    fn is_view(&self, id: u32, view: u128) -> bool {
        self.views.get(id as usize) == Some(&view)
    }

    fn get(&self, id: u32) -> &str {
        text_at(&self.bytes, &self.ends, id)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The texts in the order of their ids.
    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len()).map(|id| text_at(&self.bytes, &self.ends, id as u32))
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.ends.capacity() * size_of::<usize>()
            + self.ids.capacity() * (size_of::<u32>() + 1)
            + self.views.capacity() * size_of::<u128>()
    }
}

/// Text `id` of `bytes` cut at `ends`; empty if there is none.
fn text_at<'t>(bytes: &'t str, ends: &[usize], id: u32) -> &'t str {
    let id = id as usize;
    let start = match id {
        0 => 0,
        _ => ends.get(id - 1).copied().unwrap_or(usize::MAX),
    };
    ends.get(id)
        .and_then(|end| bytes.get(start..*end))
        .unwrap_or("")
}

/// The ids of one batch's texts, a column per text argument, a value per row.
#[derive(Debug, Default)]
struct BatchTexts {
    account_id: Vec<u32>,
    kind: Vec<u32>,
    sku: Vec<u32>,
    labels: Vec<u32>,
    zone: Vec<u32>,
    seen: SeenViews,
    /// Per text argument, in the order above.
    columns: [ColumnMemory; 5],
}

/// What a text column's reading remembers from batch to batch.
#[derive(Debug, Default)]
struct ColumnMemory {
    successors: Successors,
    dictionary: DictionaryIds,
}

/// The text ids of the values of the last dictionary a column came with. **Why.** A
/// Parquet reader hands every batch of a file's column the same dictionary (the column
/// chunk's buffers, in a new array each batch), so its values are given ids once per file,
/// and each row's id is then its key's: no text of a row is looked at.
#[derive(Debug, Default)]
struct DictionaryIds {
    /// Kept so that its buffers' addresses name it: they cannot be freed and another
    /// dictionary's take their place while it is held.
    values: Option<StringArray>,
    ids: Vec<u32>,
}

impl DictionaryIds {
    /// The ids of the dictionary `strings`, by key. Values come in the order the file
    /// first met them, the same every hour: each is guessed to be the text that followed
    /// the value before last time ([`Successors`]).
    fn of(
        &mut self,
        strings: &StringArray,
        texts: &mut Texts,
        successors: &mut Successors,
    ) -> &[u32] {
        if self
            .values
            .as_ref()
            .is_some_and(|known| same_buffers(known, strings))
        {
            return &self.ids;
        }
        self.ids.clear();
        let mut previous: Option<u32> = None;
        self.ids.extend(strings.iter().map(|text| {
            let text = text.unwrap_or_default();
            let guess = previous.map_or(NO_TEXT, |before| successors.of(before));
            let id = if guess != NO_TEXT && texts.get(guess) == text {
                guess
            } else {
                let id = texts.id(text);
                if let Some(before) = previous {
                    successors.set(before, id);
                }
                id
            };
            previous = Some(id);
            id
        }));
        self.values = Some(strings.clone());
        &self.ids
    }
}

/// Whether two string arrays are the same strings in the same buffers.
fn same_buffers(one: &StringArray, other: &StringArray) -> bool {
    one.len() == other.len()
        && one.value_offsets().as_ptr() == other.value_offsets().as_ptr()
        && one.values().as_ptr() == other.values().as_ptr()
}

/// Per text id, the id of the text that followed it last time: in a text column, the next
/// different text; in [`ResourceIndex`], the next resource. **Why.** Every hour file lists
/// its rows in the same order (by account, then resource), so when a row's account differs
/// from the row before's, it is nearly always the account that followed that one before:
/// one compare of inline views instead of a lookup in a map of all accounts (10,000 in the
/// benchmark), whose misses the profile showed as half of the text ids' time.
#[derive(Debug, Default)]
struct Successors(Vec<u32>);

/// No successor seen yet.
const NO_TEXT: u32 = u32::MAX;

impl Successors {
    fn of(&self, id: u32) -> u32 {
        self.0.get(id as usize).copied().unwrap_or(NO_TEXT)
    }

    fn set(&mut self, id: u32, next: u32) {
        let index = id as usize;
        if index >= self.0.len() {
            self.0.resize(index + 1, NO_TEXT);
        }
        self.0[index] = next;
    }
}

/// String views already given an id. A text of up to 12 bytes is its own view, so those
/// hold for the accumulator's life (nearly every account id, kind, SKU and zone: most rows
/// then need no text lookup at all); a longer one points into its column's buffers (by
/// buffer index and offset), so those hold for one column of one batch: two columns'
/// views of different texts can be equal.
#[derive(Debug, Default)]
struct SeenViews {
    inline: ViewIds,
    /// The longer views of the column being read.
    column: ViewIds,
}

/// Views and their text ids, with the last views looked up in front of the map: a row's
/// kind, SKU or label set changes from row to row, but among few values.
#[derive(Debug)]
struct ViewIds {
    /// By a hash of the view.
    recent: Box<[(u128, u32); RECENT_VIEWS]>,
    ids: HashMap<u128, u32, foldhash::fast::RandomState>,
}

const RECENT_VIEWS: usize = 256;

impl Default for ViewIds {
    fn default() -> Self {
        Self {
            recent: Box::new([(NOT_INLINE, 0); RECENT_VIEWS]),
            ids: HashMap::default(),
        }
    }
}

impl ViewIds {
    /// The id of `view`'s text, `new` giving it the first time.
    fn id(&mut self, view: u128, new: impl FnOnce() -> u32) -> u32 {
        let recent = &mut self.recent[recent_slot(view)];
        if recent.0 == view {
            return recent.1;
        }
        let id = *self.ids.entry(view).or_insert_with(new);
        *recent = (view, id);
        id
    }

    fn clear(&mut self) {
        self.recent.fill((NOT_INLINE, 0));
        self.ids.clear();
    }
}

/// Where `view` goes in [`ViewIds::recent`].
fn recent_slot(view: u128) -> usize {
    let mixed = (view as u64 ^ (view >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 56) as usize
}

/// The longest text a string view holds inline.
const INLINE_TEXT: usize = 12;

/// What stands for "not inline" where an inline view is expected: no view has this length.
const NOT_INLINE: u128 = u128::MAX;

/// `text`'s string view if it is inline, else [`NOT_INLINE`].
fn inline_view(text: &str) -> u128 {
    if text.len() <= INLINE_TEXT {
        make_view(text.as_bytes(), 0, 0)
    } else {
        NOT_INLINE
    }
}

fn is_inline(view: u128) -> bool {
    // The low 32 bits of a view are its text's length.
    (view as u32 as usize) <= INLINE_TEXT
}

impl BatchTexts {
    fn read(&mut self, inputs: &Inputs, texts: &mut Texts) {
        let [account_id, kind, sku, labels, zone] = &mut self.columns;
        let seen = &mut self.seen;
        inputs
            .account_id
            .ids(texts, seen, account_id, &mut self.account_id);
        inputs.kind.ids(texts, seen, kind, &mut self.kind);
        inputs.sku.ids(texts, seen, sku, &mut self.sku);
        inputs.labels.ids(texts, seen, labels, &mut self.labels);
        inputs.zone.ids(texts, seen, zone, &mut self.zone);
    }
}

/// What a resource's usage is summed under: account, kind and SKU, as text ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Identity {
    account_id: u32,
    kind: u32,
    sku: u32,
}

/// A resource's sums in one accumulator: under its first (account, kind, SKU) inline,
/// under any other (a plan change within the month) behind a pointer.
///
/// **Why so compact.** Every hour file revisits every resource, so the fold streams all
/// resources' sums through the cache once per hour file: at 480 bytes a resource that was
/// most of the usage stage's time (the profile showed the first touch of each resource's
/// sums as the fold's hottest instructions). What nearly every row updates fits in 144
/// bytes (a unit test keeps it so); what few resources need (a third hour bucket, a
/// second label bucket, meter carries, a plan change) lives behind a pointer. The hours
/// seen are apart, in [`HoursSeen`].
#[derive(Debug)]
struct ResourceSums {
    identity: Identity,
    sums: Sums,
    // One word where a `Vec` takes three, in every resource's sums.
    #[allow(clippy::box_collection)]
    others: Option<Box<Vec<(Identity, Sums)>>>,
}

impl ResourceSums {
    fn new(identity: Identity, hours: &mut HoursSeen) -> Self {
        Self {
            identity,
            sums: Sums::new(hours.row()),
            others: None,
        }
    }

    /// The sums under `identity`, new (with a row in `hours`) if there are none yet.
    #[inline(always)]
    fn sums_of(&mut self, identity: Identity, hours: &mut HoursSeen) -> &mut Sums {
        if self.identity == identity {
            return &mut self.sums;
        }
        self.other_sums(identity, hours)
    }

    /// [`Self::sums_of`] for an identity other than the first: a plan change, rare.
    #[cold]
    #[inline(never)]
    fn other_sums(&mut self, identity: Identity, hours: &mut HoursSeen) -> &mut Sums {
        let others = self.others.get_or_insert_with(Box::default);
        &mut find_or_push(
            others,
            |(other, _)| *other == identity,
            || (identity, Sums::new(hours.row())),
        )
        .1
    }

    fn parts(&self) -> impl Iterator<Item = (&Identity, &Sums)> {
        std::iter::once((&self.identity, &self.sums)).chain(
            self.others
                .iter()
                .flat_map(|others| others.iter().map(|(identity, sums)| (identity, sums))),
        )
    }

    fn parts_count(&self) -> usize {
        1 + self.others.as_ref().map_or(0, |others| others.len())
    }
}

/// Words of the hours-seen bitset: 768 hours, more than the longest month (745).
const HOUR_WORDS: usize = 12;

/// The hours each [`Sums`] of an accumulator has closed: a bitset of 768 hours per sums,
/// kept hour-major (word `w` of all sums side by side, `words[w][row]`), a sums holding
/// its row. **Why hour-major.** The rows of one hour file touch one word each, in the
/// order of the file: a dense walk through one array, where a bitset in each resource's
/// sums (96 bytes) would be a cache line a row. **Why not a run of hours:** the scan's
/// partitions take the month's files from one shared queue as each is ready for more
/// (DataFusion 55's `SharedWorkSource`), so the hours a partition sees of a resource
/// follow no pattern (an earlier version kept them as an evenly spaced run, and nearly
/// every resource spilled to a bitset behind a pointer).
#[derive(Debug, Default)]
struct HoursSeen {
    words: [Vec<u64>; HOUR_WORDS],
}

/// The row of sums that are in no [`HoursSeen`] yet: a state's, before they are merged.
const NO_ROW: u32 = u32::MAX;

impl HoursSeen {
    /// A new row, no hour seen: for new sums.
    fn row(&mut self) -> u32 {
        // As many rows as sums: memory runs out long before 4 billion.
        let row = u32::try_from(self.words[0].len()).unwrap_or(NO_ROW);
        for words in &mut self.words {
            words.push(0);
        }
        row
    }

    /// Marks hour `index` (below 768) of `row` as seen; false if it was already.
    #[inline(always)]
    fn see(&mut self, row: u32, index: u16) -> bool {
        let word = &mut self.words[usize::from(index / 64)][row as usize];
        let bit = 1 << (index % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    fn of(&self, row: u32) -> [u64; HOUR_WORDS] {
        std::array::from_fn(|word| self.words[word][row as usize])
    }

    fn set(&mut self, row: u32, words: [u64; HOUR_WORDS]) {
        for (column, word) in self.words.iter_mut().zip(words) {
            column[row as usize] = word;
        }
    }

    fn bytes(&self) -> usize {
        self.words[0].capacity() * HOUR_WORDS * size_of::<u64>()
    }
}

/// The hours of one resource-hour bucket (same states seen, same GPU count).
/// **Why 16-bit.** Each hour is closed into a resource's sums once (the hours seen say so),
/// so a bucket holds at most a month's 768 hours of at most 64 minutes: 49,152.
#[derive(Clone, Copy, Debug, Default)]
struct Hours {
    states_seen: u8,
    gpus: u16,
    hours: u16,
    minutes: [u16; ResourceState::COUNT],
}

/// Minutes of one label set and GPU count (rows add, so these are checked, 32-bit).
#[derive(Clone, Copy, Debug, Default)]
struct LabelMinutes {
    labels: u32,
    gpus: u16,
    minutes: [u32; ResourceState::COUNT],
}

/// What few resources' sums need.
#[derive(Clone, Debug, Default)]
struct MoreSums {
    hour_buckets: Vec<Hours>,
    minute_buckets: Vec<LabelMinutes>,
    /// How often each meter's 64-bit sum wrapped: the sum is `carries << 64 | meters`.
    meter_carries: [u64; 4],
}

/// The sums of one resource under one identity (see [`ResourceSums`] for the layout).
#[derive(Debug)]
struct Sums {
    /// Its row in the accumulator's [`HoursSeen`].
    hours_row: u32,
    /// The first buckets: two of hours (a resource stopped for a while has a second,
    /// `hours == 0` is none), one of minutes (`rollup_rows == 0` is none).
    hour_buckets: [Hours; 2],
    minute_bucket: LabelMinutes,
    present_minutes: u32,
    /// Outbound external, outbound internal, inbound bytes and size-byte-minutes
    /// (with [`MoreSums::meter_carries`]).
    meters: [u64; 4],
    /// Hour indexes in the month of the first and last hour with a row.
    first_index: u16,
    last_index: u16,
    /// Zone and labels of the last hour (the largest, if it has several).
    zone: u32,
    labels: u32,
    rollup_rows: u32,
    more: Option<Box<MoreSums>>,
}

/// The hour being added to: the rows of one resource-hour come one after the other
/// (see the module's documentation), so one hour is open at a time, in the accumulator.
#[derive(Clone, Copy, Debug)]
struct OpenHour {
    slot: usize,
    identity: Identity,
    index: u16,
    masks: [u64; ResourceState::COUNT],
    gpus: u16,
}

/// One input row as the fold adds it: read out of the argument columns a chunk of rows at
/// a time ([`BatchKeys::fill`]), its texts as ids into [`Texts`].
#[derive(Clone, Copy, Debug, Default)]
struct Row {
    slot: u32,
    identity: Identity,
    hour_index: u16,
    gpus: u16,
    labels: u32,
    zone: u32,
    masks: [u64; ResourceState::COUNT],
    meters: [u64; 4],
}

/// The first of `items` that `fits`, or a `new` one at the end.
fn find_or_push<T>(
    items: &mut Vec<T>,
    fits: impl Fn(&T) -> bool,
    new: impl FnOnce() -> T,
) -> &mut T {
    let index = match items.iter().position(fits) {
        Some(index) => index,
        None => {
            items.push(new());
            items.len() - 1
        }
    };
    &mut items[index]
}

/// The minutes in each state of `masks`.
#[inline(always)]
fn minutes_of(masks: &[u64; ResourceState::COUNT]) -> [u16; ResourceState::COUNT] {
    // A loop, not `masks.map`: the array map was not inlined (2 % of the job's samples).
    let mut minutes = [0; ResourceState::COUNT];
    for (minutes, mask) in minutes.iter_mut().zip(masks) {
        *minutes = minutes_in(*mask);
    }
    minutes
}

/// A mask with every minute of the hour (bits 0 to 59).
const WHOLE_HOUR: u64 = (1 << 60) - 1;

/// The minutes set in `mask`.
///
/// **Why the cases.** Without a `popcnt` instruction in the baseline x86-64 target a count
/// is a dozen operations, and nearly every mask is empty (a resource is in one state an
/// hour) or the whole hour: those two skip it on well-predicted branches.
#[inline(always)]
fn minutes_in(mask: u64) -> u16 {
    match mask {
        0 => 0,
        WHOLE_HOUR => 60,
        // A popcount of a u64 is at most 64.
        _ => mask.count_ones() as u16,
    }
}

impl Sums {
    fn new(hours_row: u32) -> Self {
        Self {
            hours_row,
            hour_buckets: [Hours::default(); 2],
            minute_bucket: LabelMinutes::default(),
            present_minutes: 0,
            meters: [0; 4],
            first_index: 0,
            last_index: 0,
            zone: 0,
            labels: 0,
            rollup_rows: 0,
            more: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.rollup_rows == 0
    }

    fn more(&mut self) -> &mut MoreSums {
        self.more.get_or_insert_with(Box::default)
    }

    /// Counts a closed hour (its rows' minute masks OR-ed, their largest GPU count) in the
    /// bucket of its states seen and GPU count.
    #[inline]
    fn close_hour(&mut self, masks: [u64; ResourceState::COUNT], gpus: u16) {
        self.close_counted_hour(&masks, minutes_of(&masks), gpus);
    }

    /// [`Self::close_hour`] with the masks' minutes counted already (`minutes`).
    #[inline]
    fn close_counted_hour(
        &mut self,
        masks: &[u64; ResourceState::COUNT],
        minutes: [u16; ResourceState::COUNT],
        gpus: u16,
    ) {
        let mut states_seen = 0u8;
        for (index, mask) in masks.iter().enumerate() {
            states_seen |= u8::from(*mask != 0) << index;
        }
        let present = masks.iter().fold(0, |all, mask| all | mask);
        self.present_minutes += u32::from(minutes_in(present));
        self.add_hours(Hours {
            states_seen,
            gpus,
            hours: 1,
            minutes,
        });
    }

    /// Adds `hours` to the bucket of its states seen and GPU count.
    #[inline(always)]
    fn add_hours(&mut self, hours: Hours) {
        let fits = |bucket: &Hours| {
            bucket.hours == 0
                || (bucket.states_seen == hours.states_seen && bucket.gpus == hours.gpus)
        };
        let bucket = match self.hour_buckets.iter().position(fits) {
            Some(index) => &mut self.hour_buckets[index],
            None => self.more_hours(fits),
        };
        bucket.states_seen = hours.states_seen;
        bucket.gpus = hours.gpus;
        bucket.hours += hours.hours;
        for (sum, add) in bucket.minutes.iter_mut().zip(hours.minutes) {
            *sum += add;
        }
    }

    /// The bucket beyond the first two that `fits`.
    #[cold]
    #[inline(never)]
    fn more_hours(&mut self, fits: impl Fn(&Hours) -> bool) -> &mut Hours {
        find_or_push(&mut self.more().hour_buckets, fits, Hours::default)
    }

    /// Adds minutes to the bucket of `labels` and `gpus`; false if a sum overflows.
    #[inline(always)]
    fn add_minutes(
        &mut self,
        labels: u32,
        gpus: u16,
        minutes: [u32; ResourceState::COUNT],
    ) -> bool {
        let same = |bucket: &LabelMinutes| bucket.labels == labels && bucket.gpus == gpus;
        let bucket = if self.is_empty() || same(&self.minute_bucket) {
            &mut self.minute_bucket
        } else {
            self.more_minutes(same)
        };
        bucket.labels = labels;
        bucket.gpus = gpus;
        for (sum, add) in bucket.minutes.iter_mut().zip(minutes) {
            match sum.checked_add(add) {
                Some(total) => *sum = total,
                None => return false,
            }
        }
        true
    }

    /// The bucket beyond the first that is the `same`.
    #[cold]
    #[inline(never)]
    fn more_minutes(&mut self, same: impl Fn(&LabelMinutes) -> bool) -> &mut LabelMinutes {
        find_or_push(&mut self.more().minute_buckets, same, LabelMinutes::default)
    }

    /// Adds 64-bit meter values, carrying into [`MoreSums::meter_carries`].
    #[inline(always)]
    fn add_meters(&mut self, meters: [u64; 4], carries: [u64; 4]) -> bool {
        let mut wrapped = [false; 4];
        for (index, add) in meters.into_iter().enumerate() {
            let (total, wraps) = self.meters[index].overflowing_add(add);
            self.meters[index] = total;
            wrapped[index] = wraps;
        }
        if wrapped == [false; 4] && carries == [0; 4] {
            return true;
        }
        self.carry_meters(wrapped, carries)
    }

    /// Adds the carries of [`Self::add_meters`]: a sum past 2⁶⁴, or another fold's carries.
    #[cold]
    #[inline(never)]
    fn carry_meters(&mut self, wrapped: [bool; 4], carries: [u64; 4]) -> bool {
        for (index, wraps) in wrapped.into_iter().enumerate() {
            let Some(carry) = carries[index].checked_add(u64::from(wraps)) else {
                return false;
            };
            if carry > 0 {
                let more = self.more();
                match more.meter_carries[index].checked_add(carry) {
                    Some(total) => more.meter_carries[index] = total,
                    None => return false,
                }
            }
        }
        true
    }

    /// Adds a row's minutes (`minutes`, counted from its masks), meters and texts (its hour
    /// is the open one); what overflowed if a sum would.
    #[inline(always)]
    fn add(
        &mut self,
        row: &Row,
        minutes: [u16; ResourceState::COUNT],
        texts: &Texts,
    ) -> std::result::Result<(), &'static str> {
        let minutes = minutes.map(u32::from);
        let was_empty = self.is_empty();
        if !self.add_minutes(row.labels, row.gpus, minutes) {
            return Err("a monthly minute sum overflows");
        }
        if !self.add_meters(row.meters, [0; 4]) {
            return Err("a monthly sum overflows");
        }
        if was_empty {
            self.first_index = row.hour_index;
            self.last_index = row.hour_index;
            self.zone = row.zone;
            self.labels = row.labels;
        } else {
            self.first_index = self.first_index.min(row.hour_index);
            self.take_last(row.hour_index, row.zone, row.labels, texts);
        }
        self.rollup_rows = self
            .rollup_rows
            .checked_add(1)
            .ok_or("more than 4 billion rollup rows")?;
        Ok(())
    }

    /// Keeps the zone and labels of the latest hour; within one hour, the largest.
    #[inline(always)]
    fn take_last(&mut self, index: u16, zone: u32, labels: u32, texts: &Texts) {
        if index > self.last_index {
            self.last_index = index;
            self.zone = zone;
            self.labels = labels;
        } else if index == self.last_index {
            self.take_largest(zone, labels, texts);
        }
    }

    /// A second row of the last hour: keeps the largest zone and labels.
    #[cold]
    #[inline(never)]
    fn take_largest(&mut self, zone: u32, labels: u32, texts: &Texts) {
        if texts.get(zone) > texts.get(self.zone) {
            self.zone = zone;
        }
        if texts.get(labels) > texts.get(self.labels) {
            self.labels = labels;
        }
    }

    fn hour_buckets(&self) -> impl Iterator<Item = &Hours> {
        self.hour_buckets
            .iter()
            .chain(self.more.iter().flat_map(|more| &more.hour_buckets))
            .filter(|bucket| bucket.hours > 0)
    }

    fn minute_buckets(&self) -> impl Iterator<Item = &LabelMinutes> {
        std::iter::once(&self.minute_bucket)
            .filter(|_| !self.is_empty())
            .chain(self.more.iter().flat_map(|more| &more.minute_buckets))
    }

    fn max_gpus(&self) -> u16 {
        self.minute_buckets()
            .map(|bucket| bucket.gpus)
            .max()
            .unwrap_or(0)
    }

    /// The meters as full sums.
    fn meter_sums(&self) -> [i128; 4] {
        let carries = self.more.as_ref().map_or([0; 4], |more| more.meter_carries);
        let mut sums = [0; 4];
        for (index, sum) in sums.iter_mut().enumerate() {
            *sum = (i128::from(carries[index]) << 64) | i128::from(self.meters[index]);
        }
        sums
    }

    /// Adds another accumulator's sums of the same resource and identity, which saw the
    /// hours `theirs`.
    fn merge(
        &mut self,
        other: Sums,
        theirs: [u64; HOUR_WORDS],
        hours: &mut HoursSeen,
        texts: &Texts,
    ) -> Result<()> {
        if other.is_empty() {
            return Ok(());
        }
        let mine = hours.of(self.hours_row);
        for (index, (mine, theirs)) in mine.iter().zip(&theirs).enumerate() {
            let both = mine & theirs;
            if both != 0 {
                return Err(DataFusionError::External(Box::new(SplitHour {
                    resource_id: None,
                    hour_index: index * 64 + both.trailing_zeros() as usize,
                })));
            }
        }
        let mut union = mine;
        for (word, add) in union.iter_mut().zip(theirs) {
            *word |= add;
        }
        hours.set(self.hours_row, union);
        if self.is_empty() {
            *self = Sums {
                hours_row: self.hours_row,
                ..other
            };
            return Ok(());
        }
        for bucket in other.hour_buckets() {
            self.add_hours(*bucket);
        }
        let overflow = || DataFusionError::Execution("a monthly usage sum overflows".to_owned());
        for bucket in other.minute_buckets() {
            if !self.add_minutes(bucket.labels, bucket.gpus, bucket.minutes) {
                return Err(overflow());
            }
        }
        self.present_minutes += other.present_minutes;
        let carries = other
            .more
            .as_ref()
            .map_or([0; 4], |more| more.meter_carries);
        if !self.add_meters(other.meters, carries) {
            return Err(overflow());
        }
        self.first_index = self.first_index.min(other.first_index);
        self.take_last(other.last_index, other.zone, other.labels, texts);
        self.rollup_rows = self
            .rollup_rows
            .checked_add(other.rollup_rows)
            .ok_or_else(overflow)?;
        Ok(())
    }
}

/// Text columns arrive as Utf8, Utf8View or (the texts with few distinct values, as the
/// aggregator's files declare them) dictionaries of Utf8, depending on the reader.
enum TextColumn<'a> {
    Utf8(&'a StringArray),
    View(&'a StringViewArray),
    Dictionary {
        keys: &'a Int32Array,
        strings: &'a StringArray,
    },
}

impl<'a> TextColumn<'a> {
    fn new(array: &'a ArrayRef, name: &str) -> Result<Self> {
        if let Some(strings) = array.as_string_opt::<i32>() {
            Ok(Self::Utf8(strings))
        } else if let Some(strings) = array.as_string_view_opt() {
            Ok(Self::View(strings))
        } else if let Some(dictionary) = array.as_dictionary_opt::<Int32Type>()
            && let Some(strings) = dictionary.values().as_string_opt::<i32>()
        {
            Ok(Self::Dictionary {
                keys: dictionary.keys(),
                strings,
            })
        } else {
            Err(wrong_type(name, array))
        }
    }

    fn value(&self, row: usize) -> &'a str {
        match self {
            Self::Utf8(strings) => strings.value(row),
            Self::View(strings) => strings.value(row),
            Self::Dictionary { keys, strings } => {
                if keys.is_null(row) {
                    return "";
                }
                usize::try_from(keys.value(row))
                    .ok()
                    .filter(|key| *key < strings.len())
                    .map_or("", |key| strings.value(key))
            }
        }
    }

    /// Row `row`'s text as an inline string view, or [`NOT_INLINE`].
    fn inline_view(&self, row: usize) -> u128 {
        match self {
            Self::Utf8(_) | Self::Dictionary { .. } => inline_view(self.value(row)),
            Self::View(strings) => {
                let view = strings.views()[row];
                if is_inline(view) { view } else { NOT_INLINE }
            }
        }
    }

    /// The id of each row's text in `ids`, looking up each distinct text once: a row with
    /// the text of the row before it takes its id; for string views, a short text that
    /// followed the row before's text last time is guessed ([`Successors`]), and a view
    /// seen before ([`SeenViews`]) names the same text (views of a Parquet dictionary's
    /// value are equal, and a short text is its own view); a dictionary's rows take the
    /// ids of its values ([`DictionaryIds`]).
    fn ids(
        &self,
        texts: &mut Texts,
        seen: &mut SeenViews,
        column: &mut ColumnMemory,
        ids: &mut Vec<u32>,
    ) {
        let successors = &mut column.successors;
        ids.clear();
        // `extend` over a slice's iterator reserves once and writes without a capacity
        // check per row; `push` in a loop was 2 % of the job's samples in a profile.
        match self {
            Self::Utf8(strings) => {
                let mut previous: Option<(&str, u32)> = None;
                ids.extend(strings.iter().map(|text| {
                    let text = text.unwrap_or_default();
                    let id = match previous {
                        Some((before, id)) if before == text => id,
                        _ => texts.id(text),
                    };
                    previous = Some((text, id));
                    id
                }));
            }
            Self::View(strings) => {
                seen.column.clear();
                let mut previous: Option<(u128, u32)> = None;
                ids.extend(strings.views().iter().enumerate().map(|(row, view)| {
                    let id = match previous {
                        Some((before, id)) if before == *view => id,
                        Some((_, before))
                            if is_inline(*view) && texts.is_view(successors.of(before), *view) =>
                        {
                            successors.of(before)
                        }
                        _ => {
                            let known = if is_inline(*view) {
                                &mut seen.inline
                            } else {
                                &mut seen.column
                            };
                            let id = known.id(*view, || texts.id(strings.value(row)));
                            if let Some((_, before)) = previous {
                                successors.set(before, id);
                            }
                            id
                        }
                    };
                    previous = Some((*view, id));
                    id
                }));
            }
            Self::Dictionary { keys, strings } => {
                let by_key = column.dictionary.of(strings, texts, successors);
                if keys.null_count() == 0 {
                    // A key outside the dictionary: the reader checks keys, so only a
                    // broken array has one; its row reads as the empty text, as a null.
                    ids.extend(keys.values().iter().map(|key| {
                        usize::try_from(*key)
                            .ok()
                            .and_then(|key| by_key.get(key).copied())
                            .unwrap_or(NO_TEXT)
                    }));
                } else {
                    ids.extend(keys.iter().map(|key| {
                        key.and_then(|key| usize::try_from(key).ok())
                            .and_then(|key| by_key.get(key).copied())
                            .unwrap_or(NO_TEXT)
                    }));
                }
                if ids.contains(&NO_TEXT) {
                    let empty = texts.id("");
                    for id in ids.iter_mut().filter(|id| **id == NO_TEXT) {
                        *id = empty;
                    }
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

    fn rows(&self) -> usize {
        self.hour_start.len()
    }

    /// A [`BadRow`] error for row `row`.
    fn bad(&self, row: usize, detail: String) -> DataFusionError {
        DataFusionError::External(Box::new(BadRow {
            account_id: self.account_id.value(row).to_owned(),
            resource_id: self.resource_id.value(row).to_owned(),
            detail,
        }))
    }

    /// A [`SplitHour`] error for row `row`, of hour `hour_index`.
    fn split(&self, row: usize, hour_index: u16) -> DataFusionError {
        DataFusionError::External(Box::new(SplitHour {
            resource_id: Some(self.resource_id.value(row).to_owned()),
            hour_index: usize::from(hour_index),
        }))
    }
}

/// What identifies each row of a batch, read column by column before its rows are added:
/// its resource's slot ([`ResourceIndex`]), its hour's index in the month and its texts'
/// ids.
#[derive(Debug, Default)]
struct BatchKeys {
    slots: Vec<u32>,
    hour_indexes: Vec<u16>,
    texts: BatchTexts,
}

impl BatchKeys {
    fn read(
        &mut self,
        inputs: &Inputs,
        texts: &mut Texts,
        resources: &mut ResourceIndex,
        month: MonthHours,
    ) -> Result<()> {
        self.texts.read(inputs, texts);
        self.slots.clear();
        self.slots.extend((0..inputs.rows()).map(|row| {
            resources.slot_of(
                inputs.resource_id.value(row),
                inputs.resource_id.inline_view(row),
            )
        }));
        self.hour_indexes.clear();
        // The hours-seen bitset holds 768 hours, more than any month.
        let hours = month.hours.min(HOUR_WORDS * 64);
        for (row, micros) in inputs.hour_start.values().iter().enumerate() {
            if micros % MICROS_PER_HOUR != 0 {
                return Err(inputs.bad(
                    row,
                    format!("hour_start {micros} µs is not the start of an hour"),
                ));
            }
            let index = u16::try_from(micros.div_euclid(MICROS_PER_HOUR) - month.first_hour)
                .ok()
                .filter(|index| usize::from(*index) < hours)
                .ok_or_else(|| {
                    inputs.bad(
                        row,
                        format!(
                            "hour_start {micros} µs is outside the month's {} hours",
                            month.hours
                        ),
                    )
                })?;
            self.hour_indexes.push(index);
        }
        Ok(())
    }

    /// Rows `first..` of the batch, as many as `chunk` holds, read column by column.
    ///
    /// **Why by column.** A row takes values from sixteen columns; read row by row, the
    /// loads of a row's meters and masks stalled on memory (the row loop's hottest
    /// instruction in the profile waited on them), while one column at a time is one
    /// sequential stream the processor fetches ahead of.
    fn fill(&self, inputs: &Inputs, first: usize, chunk: &mut [Row]) {
        let rows = first..first + chunk.len();
        let texts = &self.texts;
        fill_column(chunk, &self.slots[rows.clone()], |row, slot| {
            row.slot = slot
        });
        fill_column(chunk, &self.hour_indexes[rows.clone()], |row, index| {
            row.hour_index = index;
        });
        fill_column(chunk, &texts.account_id[rows.clone()], |row, id| {
            row.identity.account_id = id;
        });
        fill_column(chunk, &texts.kind[rows.clone()], |row, id| {
            row.identity.kind = id;
        });
        fill_column(chunk, &texts.sku[rows.clone()], |row, id| {
            row.identity.sku = id
        });
        fill_column(chunk, &texts.labels[rows.clone()], |row, id| {
            row.labels = id
        });
        fill_column(chunk, &texts.zone[rows.clone()], |row, id| row.zone = id);
        fill_column(chunk, &inputs.gpus.values()[rows.clone()], |row, gpus| {
            row.gpus = gpus;
        });
        for (state, masks) in inputs.masks.iter().enumerate() {
            fill_column(chunk, &masks.values()[rows.clone()], |row, mask| {
                row.masks[state] = mask;
            });
        }
        for (meter, values) in inputs.meters.iter().enumerate() {
            fill_column(chunk, &values.values()[rows.clone()], |row, value| {
                row.meters[meter] = value;
            });
        }
    }

    /// Whether rows `a` and `b` are of one resource-hour under one account, kind and SKU.
    #[inline]
    fn same_hour(&self, a: usize, b: usize) -> bool {
        let texts = &self.texts;
        self.slots[a] == self.slots[b]
            && self.hour_indexes[a] == self.hour_indexes[b]
            && texts.account_id[a] == texts.account_id[b]
            && texts.kind[a] == texts.kind[b]
            && texts.sku[a] == texts.sku[b]
    }
}

/// The month's sums of every resource one partition of the scan (or, merged, all of them)
/// has seen: the aggregate's accumulator. There is no GROUP BY: DataFusion hashing each
/// row's resource id was the largest single cost of the usage side in the benchmark's
/// profile, and the lake's order makes it unnecessary ([`ResourceIndex`]).
#[derive(Debug)]
struct MonthFold {
    month: MonthHours,
    texts: Texts,
    keys: BatchKeys,
    resources: ResourceIndex,
    /// By slot of [`ResourceIndex`].
    sums: Vec<ResourceSums>,
    hours: HoursSeen,
    open: Option<OpenHour>,
}

impl MonthFold {
    fn new(month: MonthHours) -> Self {
        Self {
            month,
            texts: Texts::default(),
            keys: BatchKeys::default(),
            resources: ResourceIndex::default(),
            sums: Vec::new(),
            hours: HoursSeen::default(),
            open: None,
        }
    }

    /// Adds one row of resource `slot`; `last_of_hour`: no row after it in its batch is of
    /// its resource-hour.
    ///
    /// **Why `last_of_hour`.** Nearly every resource-hour is one row: knowing that from the
    /// batch's keys, the row's hour is closed into the sums at hand instead of being kept
    /// open and closed when the next row is read, a second visit of those sums per row.
    #[inline]
    fn add(&mut self, row: &Row, last_of_hour: bool) -> std::result::Result<(), RowError> {
        let (slot, identity) = (row.slot as usize, row.identity);
        let minutes = minutes_of(&row.masks);
        if let Some(open) = &mut self.open {
            if open.slot == slot && open.identity == identity && open.index == row.hour_index {
                for (mask, add) in open.masks.iter_mut().zip(row.masks) {
                    *mask |= add;
                }
                open.gpus = open.gpus.max(row.gpus);
                let sums = self.sums[slot].sums_of(identity, &mut self.hours);
                sums.add(row, minutes, &self.texts).map_err(RowError::Bad)?;
                if last_of_hour {
                    self.close_hour();
                }
                return Ok(());
            }
            self.close_hour();
        }
        let sums = sums_at(&mut self.sums, slot, identity, &mut self.hours)
            .sums_of(identity, &mut self.hours);
        if !self.hours.see(sums.hours_row, row.hour_index) {
            return Err(RowError::Split);
        }
        sums.add(row, minutes, &self.texts).map_err(RowError::Bad)?;
        if last_of_hour {
            // The hour is this one row: its masks' minutes are counted already.
            sums.close_counted_hour(&row.masks, minutes, row.gpus);
        } else {
            self.open = Some(OpenHour {
                slot,
                identity,
                index: row.hour_index,
                masks: row.masks,
                gpus: row.gpus,
            });
        }
        Ok(())
    }

    /// Closes the open hour into its resource's sums.
    fn close_hour(&mut self) {
        if let Some(open) = self.open.take() {
            self.sums[open.slot]
                .sums_of(open.identity, &mut self.hours)
                .close_hour(open.masks, open.gpus);
        }
    }
}

/// The sums of resource `slot` among `sums`, new (under `identity`, with a row in `hours`)
/// if the slot is.
#[inline(always)]
fn sums_at<'a>(
    sums: &'a mut Vec<ResourceSums>,
    slot: usize,
    identity: Identity,
    hours: &mut HoursSeen,
) -> &'a mut ResourceSums {
    if slot == sums.len() {
        sums.push(ResourceSums::new(identity, hours));
    }
    &mut sums[slot]
}

impl Accumulator for MonthFold {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let inputs = Inputs::new(values)?;
        self.keys
            .read(&inputs, &mut self.texts, &mut self.resources, self.month)?;
        let rows = inputs.rows();
        let mut chunk = [Row::default(); CHUNK_ROWS];
        for first in (0..rows).step_by(CHUNK_ROWS) {
            let chunk = &mut chunk[..CHUNK_ROWS.min(rows - first)];
            self.keys.fill(&inputs, first, chunk);
            for (index, row) in (first..).zip(chunk.iter()) {
                if let Some(ahead) = self.keys.slots.get(index + PREFETCH_ROWS) {
                    prefetch_sums(&self.sums, *ahead as usize);
                }
                // The batch's last row: the next batch may go on with its hour.
                let last_of_hour = index + 1 < rows && !self.keys.same_hour(index, index + 1);
                self.add(row, last_of_hour).map_err(|error| match error {
                    RowError::Bad(detail) => inputs.bad(index, detail.to_owned()),
                    RowError::Split => inputs.split(index, row.hour_index),
                })?;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(state::encode(self))))
    }

    /// The state is the result: both are the folds in their binary form.
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = states
            .first()
            .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| DataFusionError::Internal(format!("{NAME}: state is not binary")))?;
        for row in 0..states.len() {
            if states.is_valid(row) {
                state::merge(self, states.value(row), Shard::ALL)?;
            }
        }
        Ok(())
    }

    /// An estimate: a resource holds its compact sums (the few with more hold a little
    /// more) and its id in the index; the text table is small.
    fn size(&self) -> usize {
        let per_resource = size_of::<ResourceSums>() + size_of::<MoreSums>() / 8;
        size_of::<Self>()
            + self.sums.capacity() * per_resource
            + self.resources.bytes()
            + self.hours.bytes()
            + self.texts.heap_bytes()
    }
}

/// Sets one field of each row of `chunk` from `values`, one column's stream.
#[inline]
fn fill_column<T: Copy>(chunk: &mut [Row], values: &[T], set: impl Fn(&mut Row, T)) {
    for (row, value) in chunk.iter_mut().zip(values) {
        set(row, *value);
    }
}

/// How many rows ahead of the one being added its resource's sums are prefetched: far
/// enough that memory answers before the row is reached (a row takes some tens of
/// nanoseconds), near enough that the lines are still in the first-level cache.
const PREFETCH_ROWS: usize = 8;

/// Asks the processor to bring resource `slot`'s sums (the cache lines they span) into its
/// cache.
///
/// **Why.** Every hour file revisits every resource's sums, a sweep through megabytes that
/// does not stay in the cache, and the first touch of a row's sums waited on memory: in
/// the profile a fifth of `update_batch`'s samples were one instruction, the load of the
/// sums' identity. The slots of the rows ahead are known (`BatchKeys`), so their sums are
/// asked for early: the usage stage took 7.73 s instead of 8.22 s (medians of 3
/// alternating rounds, BENCHMARKS.md).
///
/// **Why `unsafe`.** The prefetch instruction is only reachable through `core::arch`, whose
/// intrinsics are `unsafe` to call outside a `#[target_feature]` function even where the
/// feature (SSE) is part of the target. The only `unsafe` in the workspace (see the lint in
/// the workspace's `Cargo.toml`).
#[inline(always)]
fn prefetch_sums(sums: &[ResourceSums], slot: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // `wrapping_add`: a new resource's slot is one past the end, an address never read.
        let at = sums.as_ptr().wrapping_add(slot).cast::<i8>();
        let size = size_of::<ResourceSums>();
        // A line every 64 bytes and the last byte's: the sums need not start a line.
        for offset in (0..size).step_by(64).chain([size - 1]) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program, cannot fault
            // on any address, and has no effect the program can observe but its speed.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(offset));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (sums, slot);
}

/// Rows read out of a batch's columns at a time: small enough to stay in the first-level
/// cache (96 bytes a row).
const CHUNK_ROWS: usize = 256;

/// Why a row could not be added; made into an error naming the row by the caller.
enum RowError {
    /// A sum would overflow.
    Bad(&'static str),
    /// Its resource-hour was closed already.
    Split,
}

/// Which slot holds each resource's sums. **Why not a hash lookup per row.** Every hour
/// file lists its resources in the same order (sorted by account and resource), so the
/// resource after a row's is nearly always the one that came after it in the hour before:
/// each slot remembers its successor, and a row whose id equals that guess (one compare
/// of a short text) takes its slot without hashing. Only resources that appear, disappear
/// or move (and the first file) go through the hash map.
#[derive(Debug, Default)]
struct ResourceIndex {
    /// The resources' ids: slot `i` is text id `i`; a guess is one compare of inline
    /// views ([`Texts::views`]).
    ids: Texts,
    /// Per slot, the slot of the resource whose row came after its row last time.
    next: Successors,
    /// The slot of the row before.
    last: Option<u32>,
}

impl ResourceIndex {
    fn id(&self, slot: usize) -> &str {
        u32::try_from(slot).map_or("", |slot| self.ids.get(slot))
    }

    fn is(&self, slot: u32, id: &str, view: u128) -> bool {
        if view == NOT_INLINE {
            self.ids.get(slot) == id
        } else {
            self.ids.is_view(slot, view)
        }
    }

    /// The slot of the row with resource `id` (`view`: its inline string view, or
    /// [`NOT_INLINE`]), which follows the row of the last call.
    fn slot_of(&mut self, id: &str, view: u128) -> u32 {
        if let Some(last) = self.last {
            let guess = self.next.of(last);
            if guess != NO_TEXT && self.is(guess, id, view) {
                self.last = Some(guess);
                return guess;
            }
            // A second row of the same resource-hour (a label or GPU change).
            if self.is(last, id, view) {
                return last;
            }
        }
        let slot = self.ids.id(id);
        if let Some(last) = self.last {
            self.next.set(last, slot);
        }
        self.last = Some(slot);
        slot
    }

    /// The slot of resource `id`, a new one if it has none.
    fn find_or_add(&mut self, id: &str) -> usize {
        self.ids.id(id) as usize
    }

    fn bytes(&self) -> usize {
        self.ids.heap_bytes() + self.next.0.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::ArrayRef;

    use super::{HOUR_WORDS, HoursSeen, NO_ROW, ResourceSums, Shard, Sums, Texts};

    #[test]
    fn a_broken_state_is_an_error_that_says_what_is_wrong() {
        let decode = |bytes: &[u8]| super::merge_states(&[bytes], FIRST_HOUR, 744, Shard::ALL);
        let error = |bytes: &[u8]| decode(bytes).expect_err("broken").to_string();
        assert!(error(b"{\"parts\":[]}").contains("does not start with tally-fold-2"));
        // One text announced, none there.
        assert!(error(b"tally-fold-2\x01\x00\x00\x00").contains("ends early"));
        // One resource whose part is `length` bytes long, of the account, kind and SKU
        // `texts[0]` (names text 0 in a table of `texts`).
        let resource = |texts: &[&str], length: u32| {
            let mut bytes = b"tally-fold-2".to_vec();
            let word =
                |bytes: &mut Vec<u8>, word: u32| bytes.extend_from_slice(&word.to_le_bytes());
            word(&mut bytes, texts.len() as u32);
            for text in texts {
                word(&mut bytes, text.len() as u32);
                bytes.extend_from_slice(text.as_bytes());
            }
            for word_value in [1, 1] {
                word(&mut bytes, word_value);
            }
            bytes.push(b'r');
            for word_value in [1, 0, 0, 0, length] {
                word(&mut bytes, word_value);
            }
            bytes
        };
        let named = error(&resource(&[], 0));
        assert!(named.contains("text 0 of a table of 0"), "{named}");
        let longer = error(&resource(&["a1"], 9));
        assert!(longer.contains("longer than the state"), "{longer}");
        // A shard without the account skips its sums' length: here, past the end.
        let others = Shard {
            from: Some("b"),
            to: None,
        };
        let skipped = super::merge_states(&[&resource(&["a1"], 9)], FIRST_HOUR, 744, others)
            .expect_err("past the end")
            .to_string();
        assert!(skipped.contains("ends early"), "{skipped}");
        assert!(
            decode(b"tally-fold-2\x00\x00\x00\x00\x00\x00\x00\x00")
                .expect("an empty month")
                .is_empty()
        );
    }

    /// Text columns read as string views, one after another into one accumulator's
    /// tables (one column memory for all: the worst case for telling texts apart).
    #[derive(Default)]
    struct ColumnReader {
        texts: Texts,
        seen: super::SeenViews,
        column: super::ColumnMemory,
    }

    impl ColumnReader {
        /// The texts `values` read back through their ids.
        fn read(&mut self, values: &[&str]) -> Vec<String> {
            use datafusion::arrow::array::{ArrayRef, StringViewArray};
            let array: ArrayRef = std::sync::Arc::new(StringViewArray::from_iter_values(values));
            let mut ids = Vec::new();
            super::TextColumn::new(&array, "text").expect("view").ids(
                &mut self.texts,
                &mut self.seen,
                &mut self.column,
                &mut ids,
            );
            self.texts_of(&ids)
        }

        /// The texts of `keys` into `dictionary` read back through their ids.
        fn read_dictionary(&mut self, keys: &[i32], dictionary: &ArrayRef) -> Vec<String> {
            use datafusion::arrow::array::{DictionaryArray, Int32Array};
            let array: ArrayRef = Arc::new(DictionaryArray::new(
                Int32Array::from(keys.to_vec()),
                Arc::clone(dictionary),
            ));
            let mut ids = Vec::new();
            super::TextColumn::new(&array, "text")
                .expect("a dictionary")
                .ids(&mut self.texts, &mut self.seen, &mut self.column, &mut ids);
            self.texts_of(&ids)
        }

        fn texts_of(&self, ids: &[u32]) -> Vec<String> {
            ids.iter()
                .map(|id| self.texts.get(*id).to_owned())
                .collect()
        }
    }

    #[test]
    fn a_dictionary_in_a_new_array_over_the_same_buffers_is_known() {
        use datafusion::arrow::array::{Array, StringArray};
        let strings = StringArray::from(vec!["a1", "a2"]);
        // What a Parquet reader hands each batch of a file: a new array, the same buffers.
        let next_batch = StringArray::from(strings.to_data());
        assert!(super::same_buffers(&strings, &next_batch));
        let another_file = StringArray::from(vec!["a1", "a2"]);
        assert!(!super::same_buffers(&strings, &another_file));
    }

    #[test]
    fn dictionary_rows_take_their_values_texts() {
        use datafusion::arrow::array::StringArray;
        let first: ArrayRef = Arc::new(StringArray::from(vec!["a1", "a2", "a3"]));
        // Another file's dictionary: another order, a new text, one text gone.
        let second: ArrayRef = Arc::new(StringArray::from(vec!["a3", "a4", "a1"]));
        let mut reader = ColumnReader::default();
        assert_eq!(
            reader.read_dictionary(&[0, 0, 1, 2], &first),
            ["a1", "a1", "a2", "a3"]
        );
        // The next batch of the same file: the same dictionary.
        assert_eq!(reader.read_dictionary(&[2, 1], &first), ["a3", "a2"]);
        assert_eq!(
            reader.read_dictionary(&[0, 1, 2, 2], &second),
            ["a3", "a4", "a1", "a1"]
        );
        assert_eq!(
            reader.read_dictionary(&[1, 0], &first),
            ["a2", "a1"],
            "the first dictionary again, after another"
        );
        // The same texts as views take the same ids.
        let ids_before = reader.texts.len();
        assert_eq!(reader.read(&["a4", "a2"]), ["a4", "a2"]);
        assert_eq!(reader.texts.len(), ids_before);
    }

    #[test]
    fn equal_views_of_two_columns_are_told_apart() {
        // Same length, same first four bytes, both at offset 0 of their column's first
        // buffer: equal views, different texts.
        let (first, second) = ("abcd-long-text-1", "abcd-long-text-2");
        assert_eq!(
            super::inline_view(first),
            super::NOT_INLINE,
            "the texts are longer than a view holds"
        );
        let mut reader = ColumnReader::default();
        assert_eq!(
            reader.read(&[first, first, "short"]),
            [first, first, "short"]
        );
        assert_eq!(
            reader.read(&[second, second, "short"]),
            [second, second, "short"]
        );
    }

    #[test]
    fn texts_guessed_from_their_order_are_the_texts() {
        let mut reader = ColumnReader::default();
        // The same order twice (the second time by guesses), then another order, in which
        // every guess from the first is wrong.
        for order in [
            vec!["a1", "a1", "a2", "a3", "a3"],
            vec!["a1", "a1", "a2", "a3", "a3"],
            vec!["a3", "a1", "a3", "a2", "a4"],
        ] {
            assert_eq!(reader.read(&order), order);
        }
    }

    /// A rollup row as the aggregate's arguments: (resource, hour index, labels, running
    /// minutes as a mask, GPUs, outbound external bytes).
    type TestRow = (&'static str, i64, &'static str, u64, u16, u64);

    /// `rows` as the sixteen argument columns (account [`account_of`] the resource, kind
    /// `server`, SKU `cx22`).
    fn arguments(rows: &[TestRow]) -> Vec<datafusion::arrow::array::ArrayRef> {
        use datafusion::arrow::array::{
            ArrayRef, StringArray, TimestampMicrosecondArray, UInt16Array, UInt64Array,
        };
        use std::sync::Arc;
        let texts = |text: &dyn Fn(&TestRow) -> &'static str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(text)))
        };
        let counts = |count: &dyn Fn(&TestRow) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(count)))
        };
        let hours = TimestampMicrosecondArray::from_iter_values(
            rows.iter()
                .map(|row| (FIRST_HOUR + row.1) * super::MICROS_PER_HOUR),
        );
        vec![
            texts(&|row| account_of(row.0)),
            texts(&|row| row.0),
            texts(&|_| "server"),
            texts(&|_| "cx22"),
            Arc::new(hours),
            Arc::new(UInt16Array::from_iter_values(rows.iter().map(|row| row.4))),
            texts(&|row| row.2),
            texts(&|_| "fsn1"),
            counts(&|row| row.3),
            counts(&|_| 0),
            counts(&|_| 0),
            counts(&|_| 0),
            counts(&|row| row.5),
            counts(&|_| 0),
            counts(&|_| 0),
            counts(&|_| 0),
        ]
    }

    const FIRST_HOUR: i64 = 490_000;

    const RESOURCES: [&str; 10] = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];

    /// Resource `rN`'s account, `aN`.
    fn account_of(resource_id: &str) -> &'static str {
        const ACCOUNTS: [&str; 10] = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"];
        let index = RESOURCES.iter().position(|id| *id == resource_id);
        ACCOUNTS[index.expect("a test resource")]
    }

    /// The state of one accumulator given `rows` in batches cut at `cuts`.
    fn state_of(rows: &[TestRow], cuts: &[usize]) -> Vec<u8> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::Accumulator;
        let mut fold = super::MonthFold::new(super::MonthHours {
            first_hour: FIRST_HOUR,
            hours: 744,
        });
        let mut first = 0;
        for end in cuts.iter().copied().chain([rows.len()]) {
            fold.update_batch(&arguments(&rows[first..end]))
                .expect("rows the fold takes");
            first = end;
        }
        match fold.state().expect("a state").as_slice() {
            [ScalarValue::Binary(Some(bytes))] => bytes.clone(),
            other => panic!("not one binary value: {other:?}"),
        }
    }

    /// The folds of `rows`, given to one accumulator in batches cut at `cuts`.
    fn folded(rows: &[TestRow], cuts: &[usize]) -> Vec<super::ResourceFolds> {
        super::merge_states(&[&state_of(rows, cuts)], FIRST_HOUR, 744, Shard::ALL)
            .expect("its own bytes")
    }

    #[test]
    fn states_merged_by_shards_are_the_states_merged_whole() {
        // Ten resources of ten accounts, hours 0 and 2 in one partition's state, hour 1 in
        // the other's (with a label change in it), as the scan's partitions take files.
        let hours = |hours: &[i64], labels: &'static str| -> Vec<TestRow> {
            hours
                .iter()
                .flat_map(|hour| {
                    RESOURCES
                        .iter()
                        .map(move |id| (*id, *hour, labels, (1 << 60) - 1, 0, 100))
                })
                .collect()
        };
        let merged = |states: &[Vec<u8>]| {
            let states: Vec<&[u8]> = states.iter().map(Vec::as_slice).collect();
            let splits = super::shard_splits(&states, 3).expect("splits");
            assert_eq!(splits.len(), 2, "{splits:?}");
            let shards: Vec<_> = super::shards_between(&splits)
                .into_iter()
                .map(|shard| super::merge_states(&states, FIRST_HOUR, 744, shard))
                .collect();
            let whole = super::merge_states(&states, FIRST_HOUR, 744, Shard::ALL);
            (shards, whole)
        };
        let (shards, whole) = merged(&[
            state_of(&hours(&[0, 2], ""), &[]),
            state_of(&hours(&[1], "{\"a\":\"1\"}"), &[]),
        ]);
        let whole = whole.expect("merged");
        let mut joined = Vec::new();
        for shard in shards {
            let shard = shard.expect("merged");
            assert!(!shard.is_empty(), "a shard of none of ten accounts");
            joined.extend(shard);
        }
        // One after the other, in account order.
        assert_eq!(joined, whole);
        let fold = &whole[0].parts[0].fold;
        assert_eq!((fold.present_minutes, fold.rollup_rows), (180, 3));
        assert_eq!(fold.minute_buckets.len(), 2);
        // Each shard tells an hour seen in both states, as the whole merge does.
        let once = state_of(&hours(&[0], ""), &[]);
        let (shards, whole) = merged(&[once.clone(), once]);
        for error in shards.into_iter().chain([whole]) {
            let error = error.expect_err("a split hour");
            assert!(super::is_split_hour(&error), "{error}");
        }
    }

    #[test]
    fn an_hour_of_several_rows_is_one_hour_wherever_batches_are_cut() {
        let rows: [TestRow; 5] = [
            // Hour 0 of r1 in two rows (a label change: minutes 0-29, then 30-59).
            ("r1", 0, "{\"a\":\"1\"}", (1 << 30) - 1, 1, 10),
            (
                "r1",
                0,
                "{\"a\":\"2\"}",
                ((1 << 60) - 1) ^ ((1 << 30) - 1),
                2,
                20,
            ),
            ("r2", 0, "", (1 << 60) - 1, 0, 5),
            ("r1", 1, "{\"a\":\"2\"}", (1 << 60) - 1, 2, 40),
            ("r2", 1, "", 1, 0, 7),
        ];
        let whole = folded(&rows, &[]);
        // Cut inside r1's first hour, after it, and between every row.
        for cuts in [&[1][..], &[2], &[1, 2, 3, 4]] {
            assert_eq!(folded(&rows, cuts), whole, "cut at {cuts:?}");
        }
        let r1 = &whole[0];
        assert_eq!(r1.resource_id, "r1");
        let fold = &r1.parts[0].fold;
        // Two started hours: hour 0 once, at its largest GPU count, all 60 minutes.
        let hours: Vec<(u16, i64, i64)> = fold
            .hour_buckets
            .iter()
            .map(|bucket| (bucket.gpus, bucket.hours, bucket.minutes[0]))
            .collect();
        assert_eq!(hours, [(2, 2, 120)]);
        assert_eq!(fold.present_minutes, 120);
        assert_eq!(fold.out_external_bytes, 70);
        assert_eq!(fold.rollup_rows, 3);
        assert_eq!(fold.labels, "{\"a\":\"2\"}");
        let r2 = &whole[1].parts[0].fold;
        assert_eq!((r2.present_minutes, r2.out_external_bytes), (61, 12));
    }

    #[test]
    fn a_resources_sums_stay_small() {
        // Every hour file streams all resources' sums through the cache (see ResourceSums).
        assert!(
            size_of::<ResourceSums>() <= 144,
            "{}",
            size_of::<ResourceSums>()
        );
    }

    /// The hours of `order` marked in turn in one row of a table with two: which were new.
    fn see(order: &[u16]) -> (Vec<bool>, [u64; HOUR_WORDS]) {
        let mut hours = HoursSeen::default();
        let other = hours.row();
        let row = hours.row();
        let fresh = order.iter().map(|hour| hours.see(row, *hour)).collect();
        assert_eq!(
            hours.of(other),
            [0; HOUR_WORDS],
            "the other row is untouched"
        );
        (fresh, hours.of(row))
    }

    #[test]
    fn an_hour_seen_again_is_told_whatever_the_order() {
        let (fresh, words) = see(&[10, 12, 14, 15, 3, 767, 12, 15, 3, 767, 4, 0, 63, 64]);
        assert_eq!(
            fresh,
            [
                true, true, true, true, true, true, false, false, false, false, true, true, true,
                true
            ]
        );
        let seen: Vec<u16> = (0..768)
            .filter(|hour| words[usize::from(*hour) / 64] & (1 << (hour % 64)) != 0)
            .collect();
        assert_eq!(seen, [0, 3, 4, 10, 12, 14, 15, 63, 64, 767]);
    }

    #[test]
    fn merged_sums_that_saw_one_hour_twice_are_a_split_hour() {
        // Sums of one row each, as a state's are before they are merged.
        let one_row = || Sums {
            rollup_rows: 1,
            ..Sums::new(NO_ROW)
        };
        let mut hours = HoursSeen::default();
        let texts = Texts::default();
        let mut mine = Sums {
            hours_row: hours.row(),
            ..one_row()
        };
        assert!(hours.see(mine.hours_row, 5));
        let mut hour_six = [0; HOUR_WORDS];
        hour_six[0] = 1 << 6;
        mine.merge(one_row(), hour_six, &mut hours, &texts)
            .expect("hours 5 and 6 are apart");
        assert_eq!(hours.of(mine.hours_row)[0], 1 << 5 | 1 << 6);
        let error = mine
            .merge(one_row(), hour_six, &mut hours, &texts)
            .expect_err("hour 6 twice");
        assert!(super::is_split_hour(&error), "{error}");
    }
}
