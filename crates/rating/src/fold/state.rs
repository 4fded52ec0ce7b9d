//! The binary form of a [`MonthFold`]: its state between partial and final aggregation
//! (two partitions' folds of 100,000 resources each, merged) and its result.
//!
//! **Why not JSON** (as before): the state is written and read once per resource per
//! partition and once more for the result; a fixed little-endian layout with the texts
//! in one table up front costs a copy, where JSON cost formatting and parsing every
//! number and repeated every account, SKU and label text per resource.
//!
//! Layout: the magic `tally-fold-2`; the texts (count, then each as length and UTF-8);
//! the resources (count, then each: its id, its parts: account, kind and SKU as text ids,
//! then the length of its [`Sums`] and the sums). Counts and lengths are `u32`, integers
//! little-endian. **Why the sums' length:** the usage is merged in shards of accounts on
//! several threads, each reading every state and skipping the sums of the others'
//! accounts ([`Shard`]).

use datafusion::error::{DataFusionError, Result};
use tally_model::ResourceState;

use super::{
    HOUR_WORDS, Hours, Identity, LabelMinutes, MonthFold, NAME, NO_ROW, Shard, Sums, Texts, sums_at,
};
use crate::fold::{Fold, FoldPart, ResourceFolds};
use crate::usage::{HourBucket, MinuteBucket, StatesSeen};

const MAGIC: &[u8] = b"tally-fold-2";

/// `fold` as bytes, every open hour closed first.
pub(super) fn encode(fold: &mut MonthFold) -> Vec<u8> {
    fold.close_hour();
    let first_hour = fold.month.first_hour;
    let mut out = Writer(Vec::with_capacity(64 + fold.sums.len() * 160));
    out.0.extend_from_slice(MAGIC);
    out.count(fold.texts.len());
    for text in fold.texts.iter() {
        out.text(text);
    }
    out.count(fold.sums.len());
    for (slot, resource) in fold.sums.iter().enumerate() {
        out.text(fold.resources.id(slot));
        out.count(resource.parts_count());
        for (identity, sums) in resource.parts() {
            out.u32(identity.account_id);
            out.u32(identity.kind);
            out.u32(identity.sku);
            let length_at = out.0.len();
            out.count(0);
            out.sums(sums, fold.hours.of(sums.hours_row), first_hour);
            let length = out.0.len() - length_at - size_of::<u32>();
            out.0[length_at..length_at + size_of::<u32>()]
                .copy_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    out.0
}

/// Adds the folds of `shard`'s accounts in another accumulator's state to `fold`.
pub(super) fn merge(fold: &mut MonthFold, bytes: &[u8], shard: Shard) -> Result<()> {
    let mut input = Reader::new(bytes)?;
    let mut texts = StateTexts::read(&mut input)?;
    for _ in 0..input.count()? {
        let resource_id = input.text()?;
        // Given a slot when a part of it is the shard's: every slot has sums.
        let mut slot = None;
        for _ in 0..input.count()? {
            let account_id = input.u32()?;
            let (kind, sku) = (input.u32()?, input.u32()?);
            let length = input.count()?;
            if !texts.held(account_id, shard)? {
                input.skip(length)?;
                continue;
            }
            let mut id = |theirs: u32| texts.ours(theirs, &mut fold.texts);
            let identity = Identity {
                account_id: id(account_id)?,
                kind: id(kind)?,
                sku: id(sku)?,
            };
            let end = input.remaining().checked_sub(length).ok_or_else(|| {
                broken(format!("resource '{resource_id}' is longer than the state"))
            })?;
            let (theirs, their_hours) = input.sums()?.compact(&mut id, fold.month.first_hour)?;
            if input.remaining() != end {
                return Err(broken(format!(
                    "the sums of resource '{resource_id}' are not {length} bytes long"
                )));
            }
            let slot = *slot.get_or_insert_with(|| fold.resources.find_or_add(resource_id));
            sums_at(&mut fold.sums, slot, identity, &mut fold.hours)
                .sums_of(identity, &mut fold.hours)
                .merge(theirs, their_hours, &mut fold.hours, &fold.texts)?;
        }
    }
    input.end()
}

/// A state's text table as the merge uses it: each text mapped to the merging fold's id,
/// and each account to whether the shard holds it, when a part first needs it. **Why
/// lazily:** every shard reads every partition's state, and most of a state's texts are
/// other shards' accounts; mapping them all would cost shards × partitions × texts.
struct StateTexts<'a> {
    texts: Vec<&'a str>,
    ours: Vec<Option<u32>>,
    held: Vec<Option<bool>>,
}

impl<'a> StateTexts<'a> {
    fn read(input: &mut Reader<'a>) -> Result<Self> {
        // Counts come from the bytes: grown as read, not reserved up front.
        let mut texts = Vec::new();
        for _ in 0..input.count()? {
            texts.push(input.text()?);
        }
        Ok(Self {
            ours: vec![None; texts.len()],
            held: vec![None; texts.len()],
            texts,
        })
    }

    fn text(&self, theirs: u32) -> Result<&'a str> {
        self.texts
            .get(theirs as usize)
            .copied()
            .ok_or_else(|| broken(format!("text {theirs} of a table of {}", self.texts.len())))
    }

    /// Their text `theirs` as an id of `texts`.
    fn ours(&mut self, theirs: u32, texts: &mut Texts) -> Result<u32> {
        let text = self.text(theirs)?;
        let ours = &mut self.ours[theirs as usize];
        Ok(*ours.get_or_insert_with(|| texts.id(text)))
    }

    /// Whether `shard` holds the account of their text `account_id`.
    fn held(&mut self, account_id: u32, shard: Shard) -> Result<bool> {
        let text = self.text(account_id)?;
        let held = &mut self.held[account_id as usize];
        Ok(*held.get_or_insert_with(|| shard.holds(text)))
    }
}

/// Up to `count - 1` accounts that cut the resources of `bytes` (a state, its resources
/// nearly in account order as the fold first saw them) into `count` runs of about as
/// many resources, sorted; fewer if there are fewer accounts.
pub(super) fn splits(bytes: &[u8], count: usize) -> Result<Vec<String>> {
    let mut input = Reader::new(bytes)?;
    let texts = StateTexts::read(&mut input)?;
    let resources = input.count()?;
    // The first account of about a thousand resources: enough to cut evenly, few to sort.
    let every = (resources / 1024).max(1);
    let mut sampled = Vec::new();
    for resource in 0..resources {
        input.text()?;
        for part in 0..input.count()? {
            let account_id = input.u32()?;
            input.skip(2 * size_of::<u32>())?;
            let length = input.count()?;
            input.skip(length)?;
            if resource % every == 0 && part == 0 {
                sampled.push(texts.text(account_id)?);
            }
        }
    }
    input.end()?;
    sampled.sort_unstable();
    let mut splits: Vec<String> = (1..count)
        .filter_map(|shard| sampled.get(shard * sampled.len() / count))
        .map(|account| (*account).to_owned())
        .collect();
    splits.dedup();
    // The first shard would be empty if the first sampled account cut it.
    splits.retain(|split| sampled.first().is_some_and(|first| first < &split.as_str()));
    Ok(splits)
}

/// The resources of `fold` with their texts, in the order they were first seen; parts and
/// buckets sorted, so the result does not depend on the order the rows were read in.
pub(super) fn resource_folds(fold: &mut MonthFold) -> Vec<ResourceFolds> {
    fold.close_hour();
    let first_hour = fold.month.first_hour;
    let texts = &fold.texts;
    let mut resources = Vec::with_capacity(fold.sums.len());
    for (slot, resource) in fold.sums.iter().enumerate() {
        let mut parts: Vec<FoldPart> = resource
            .parts()
            .map(|(identity, sums)| FoldPart {
                account_id: text(texts, identity.account_id),
                kind: text(texts, identity.kind),
                sku: text(texts, identity.sku),
                fold: usage_fold(sums, texts, first_hour),
            })
            .collect();
        parts.sort_by(|a, b| {
            (&a.account_id, &a.kind, &a.sku).cmp(&(&b.account_id, &b.kind, &b.sku))
        });
        resources.push(ResourceFolds {
            resource_id: fold.resources.id(slot).to_owned(),
            parts,
        });
    }
    resources
}

fn text(texts: &Texts, id: u32) -> String {
    texts.get(id).to_owned()
}

/// `sums` as usage: texts and hours as they are, buckets sorted.
fn usage_fold(sums: &Sums, texts: &Texts, first_hour: i64) -> Fold {
    let mut hour_buckets: Vec<HourBucket> = sums
        .hour_buckets()
        .map(|bucket| HourBucket {
            states_seen: StatesSeen(bucket.states_seen),
            gpus: bucket.gpus,
            hours: i64::from(bucket.hours),
            minutes: bucket.minutes.map(i64::from),
        })
        .collect();
    hour_buckets.sort_by_key(|bucket| (bucket.states_seen, bucket.gpus));
    let mut minute_buckets: Vec<MinuteBucket> = sums
        .minute_buckets()
        .map(|bucket| MinuteBucket {
            labels: text(texts, bucket.labels),
            gpus: bucket.gpus,
            minutes: bucket.minutes.map(i64::from),
        })
        .collect();
    minute_buckets.sort_by(|a, b| (&a.labels, a.gpus).cmp(&(&b.labels, b.gpus)));
    let [
        out_external_bytes,
        out_internal_bytes,
        in_bytes,
        size_byte_minutes,
    ] = sums.meter_sums();
    Fold {
        hour_buckets,
        minute_buckets,
        present_minutes: i64::from(sums.present_minutes),
        out_external_bytes,
        out_internal_bytes,
        in_bytes,
        size_byte_minutes,
        first_hour: first_hour + i64::from(sums.first_index),
        last_hour: first_hour + i64::from(sums.last_index),
        zone: text(texts, sums.zone),
        labels: text(texts, sums.labels),
        max_gpus: sums.max_gpus(),
        rollup_rows: i64::from(sums.rollup_rows),
    }
}

fn broken(detail: String) -> DataFusionError {
    DataFusionError::Execution(format!("{NAME}: a broken state: {detail}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// Counts and lengths: a state holds far fewer than 4 billion of anything (the
    /// accumulator would have run out of memory first).
    fn count(&mut self, count: usize) {
        self.u32(u32::try_from(count).unwrap_or(u32::MAX));
    }

    fn text(&mut self, text: &str) {
        self.count(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn minutes(&mut self, minutes: &[i64; ResourceState::COUNT]) {
        for minute in minutes {
            self.i64(*minute);
        }
    }

    /// Sums (the accumulator's open hour closed) that saw `hours_seen`, hours as Unix
    /// hours.
    fn sums(&mut self, sums: &Sums, hours_seen: [u64; HOUR_WORDS], first_hour: i64) {
        let words = hours_seen
            .iter()
            .rposition(|word| *word != 0)
            .map_or(0, |last| last + 1);
        self.count(words);
        for word in &hours_seen[..words] {
            self.0.extend_from_slice(&word.to_le_bytes());
        }
        self.count(sums.hour_buckets().count());
        for bucket in sums.hour_buckets() {
            self.0.push(bucket.states_seen);
            self.0.extend_from_slice(&bucket.gpus.to_le_bytes());
            self.i64(i64::from(bucket.hours));
            self.minutes(&bucket.minutes.map(i64::from));
        }
        self.count(sums.minute_buckets().count());
        for bucket in sums.minute_buckets() {
            self.u32(bucket.labels);
            self.0.extend_from_slice(&bucket.gpus.to_le_bytes());
            self.minutes(&bucket.minutes.map(i64::from));
        }
        self.i64(i64::from(sums.present_minutes));
        for meter in sums.meter_sums() {
            self.0.extend_from_slice(&meter.to_le_bytes());
        }
        self.i64(first_hour + i64::from(sums.first_index));
        self.i64(first_hour + i64::from(sums.last_index));
        self.u32(sums.zone);
        self.u32(sums.labels);
        self.0.extend_from_slice(&sums.max_gpus().to_le_bytes());
        self.i64(i64::from(sums.rollup_rows));
    }
}

/// [`Sums`] as a state holds them: wide integers, texts as the state's ids.
struct StateSums {
    hours_seen: [u64; HOUR_WORDS],
    hour_buckets: Vec<HourBucket>,
    minute_buckets: Vec<StateMinutes>,
    present_minutes: i64,
    meters: [i128; 4],
    first_hour: i64,
    last_hour: i64,
    zone: u32,
    labels: u32,
    max_gpus: u16,
    rollup_rows: i64,
}

struct StateMinutes {
    labels: u32,
    gpus: u16,
    minutes: [i64; ResourceState::COUNT],
}

impl StateSums {
    /// As the accumulator's sums (in no [`super::HoursSeen`] yet) and the hours they saw:
    /// text ids through `id`, hours as indexes from `first_hour`; every value checked
    /// against what the compact form holds.
    fn compact(
        self,
        id: &mut impl FnMut(u32) -> Result<u32>,
        first_hour: i64,
    ) -> Result<(Sums, [u64; HOUR_WORDS])> {
        fn narrow<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T> {
            T::try_from(value).map_err(|_| broken(format!("{what} {value} is out of range")))
        }
        let index = |hour: i64| narrow::<u16>(hour - first_hour, "hour");
        // The compact sums' 16-bit hour buckets stay in range because each hour is counted
        // once: a state's buckets must hold exactly its hours seen, at most 64 minutes each.
        let hours_seen: i64 = self
            .hours_seen
            .iter()
            .map(|word| i64::from(word.count_ones()))
            .sum();
        let mut bucket_hours = 0i64;
        for bucket in &self.hour_buckets {
            let most = bucket.hours.saturating_mul(64);
            if bucket.hours < 0 || bucket.minutes.iter().any(|m| *m < 0 || *m > most) {
                return Err(broken(format!(
                    "an hour bucket of {} hours holds {:?} minutes",
                    bucket.hours, bucket.minutes
                )));
            }
            bucket_hours = bucket_hours.saturating_add(bucket.hours);
        }
        if bucket_hours != hours_seen || self.present_minutes > hours_seen * 64 {
            return Err(broken(format!(
                "its hour buckets hold {bucket_hours} hours and {} present minutes, \
                 but it saw {hours_seen} hours",
                self.present_minutes
            )));
        }
        let mut sums = Sums {
            present_minutes: narrow(self.present_minutes, "present minutes")?,
            first_index: index(self.first_hour)?,
            last_index: index(self.last_hour)?,
            zone: id(self.zone)?,
            labels: id(self.labels)?,
            rollup_rows: narrow(self.rollup_rows, "rollup rows")?,
            ..Sums::new(NO_ROW)
        };
        for bucket in &self.hour_buckets {
            let mut minutes = [0; ResourceState::COUNT];
            for (minute, value) in minutes.iter_mut().zip(bucket.minutes) {
                *minute = narrow(value, "hour bucket minutes")?;
            }
            sums.add_hours(Hours {
                states_seen: bucket.states_seen.0,
                gpus: bucket.gpus,
                hours: narrow(bucket.hours, "hours")?,
                minutes,
            });
        }
        // Sums with rows have a label bucket inline (see `Sums::minute_buckets`).
        if self.minute_buckets.is_empty() != (sums.rollup_rows == 0) {
            return Err(broken(format!(
                "{} label buckets for {} rollup rows",
                self.minute_buckets.len(),
                sums.rollup_rows
            )));
        }
        for (index, bucket) in self.minute_buckets.iter().enumerate() {
            let mut minutes = [0; ResourceState::COUNT];
            for (minute, value) in minutes.iter_mut().zip(bucket.minutes) {
                *minute = narrow(value, "label minutes")?;
            }
            let bucket = LabelMinutes {
                labels: id(bucket.labels)?,
                gpus: bucket.gpus,
                minutes,
            };
            if index == 0 {
                sums.minute_bucket = bucket;
            } else {
                sums.more().minute_buckets.push(bucket);
            }
        }
        let mut low = [0; 4];
        let mut carries = [0; 4];
        for (index, meter) in self.meters.iter().enumerate() {
            let meter = u128::try_from(*meter)
                .map_err(|_| broken(format!("meter sum {meter} is negative")))?;
            low[index] = meter as u64;
            carries[index] = (meter >> 64) as u64;
        }
        if !sums.add_meters(low, carries) {
            return Err(broken("a meter sum overflows".to_owned()));
        }
        if sums.max_gpus() != self.max_gpus {
            return Err(broken(format!(
                "largest GPU count {} is not its label buckets' {}",
                self.max_gpus,
                sums.max_gpus()
            )));
        }
        Ok((sums, self.hours_seen))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self> {
        match bytes.strip_prefix(MAGIC) {
            Some(bytes) => Ok(Self { bytes }),
            None => Err(broken(format!(
                "it does not start with {}",
                String::from_utf8_lossy(MAGIC)
            ))),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (taken, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| broken("it ends early".to_owned()))?;
        self.bytes = rest;
        Ok(*taken)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    fn count(&mut self) -> Result<usize> {
        Ok(self.u32()? as usize)
    }

    /// Bytes not read yet.
    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn skip(&mut self, length: usize) -> Result<()> {
        self.bytes = self
            .bytes
            .get(length..)
            .ok_or_else(|| broken("it ends early".to_owned()))?;
        Ok(())
    }

    fn text(&mut self) -> Result<&'a str> {
        let length = self.count()?;
        if self.bytes.len() < length {
            return Err(broken("a text ends early".to_owned()));
        }
        let (text, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        std::str::from_utf8(text).map_err(|error| broken(format!("a text is not UTF-8: {error}")))
    }

    fn minutes(&mut self) -> Result<[i64; ResourceState::COUNT]> {
        let mut minutes = [0; ResourceState::COUNT];
        for minute in &mut minutes {
            *minute = self.i64()?;
        }
        Ok(minutes)
    }

    fn sums(&mut self) -> Result<StateSums> {
        let mut hours_seen = [0; HOUR_WORDS];
        let words = self.count()?;
        if words > HOUR_WORDS {
            return Err(broken(format!(
                "{words} words of hours seen, more than a month's {HOUR_WORDS}"
            )));
        }
        for word in &mut hours_seen[..words] {
            *word = u64::from_le_bytes(self.take()?);
        }
        let mut hour_buckets = Vec::new();
        for _ in 0..self.count()? {
            let [states_seen] = self.take()?;
            hour_buckets.push(HourBucket {
                states_seen: StatesSeen(states_seen),
                gpus: self.u16()?,
                hours: self.i64()?,
                minutes: self.minutes()?,
            });
        }
        let mut minute_buckets = Vec::new();
        for _ in 0..self.count()? {
            minute_buckets.push(StateMinutes {
                labels: self.u32()?,
                gpus: self.u16()?,
                minutes: self.minutes()?,
            });
        }
        let present_minutes = self.i64()?;
        let mut meters = [0; 4];
        for meter in &mut meters {
            *meter = i128::from_le_bytes(self.take()?);
        }
        Ok(StateSums {
            hours_seen,
            hour_buckets,
            minute_buckets,
            present_minutes,
            meters,
            first_hour: self.i64()?,
            last_hour: self.i64()?,
            zone: self.u32()?,
            labels: self.u32()?,
            max_gpus: self.u16()?,
            rollup_rows: self.i64()?,
        })
    }

    fn end(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(broken(format!("{} bytes after its end", self.bytes.len())))
        }
    }
}
