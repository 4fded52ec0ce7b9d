//! Rolling samples up into one hour's rows.
//!
//! An [`OpenHour`] holds the rows of one hour while it can still change. It is keyed by
//! resource: each resource has the [`MinuteLedger`] that keeps a minute from being
//! counted twice and its rows, usually one (more when its account, SKU, zone, GPU count
//! or labels changed within the hour). A sample is matched against its resource's rows
//! field by field, so the hot path allocates only for a resource-hour's first sample.

use std::collections::HashMap;

use smallvec::SmallVec;
use tally_model::sample::labels_from_text;
use tally_model::{Hour, ResourceKind, ResourceState, RollupKey, RollupMeters, RollupRow, Sample};

use crate::dedup::{MinuteLedger, MinuteSample, Verdict};
use crate::error::{Error, Result};

/// Resource ids come from the fleet's own collectors; foldhash is seeded per process.
type ResourceMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// One hour's rows while the hour is open (or reopened for a restatement).
#[derive(Debug)]
pub struct OpenHour {
    hour: Hour,
    /// Resource id → position in `resources`: a small table that stays in the CPU's
    /// cache, apart from the larger resource-hours it points to.
    index: ResourceMap<usize>,
    resources: Vec<ResourceHour>,
    /// Lowest source offset whose samples are in this hour: where to resume after a
    /// crash so that nothing held only in memory is lost.
    pub first_offset: Option<i64>,
    /// The file generation this hour will be sealed as: 0, or the sealed one's + 1.
    pub generation: u32,
    /// Samples added since the hour was (re)opened; a reopened hour that gained none is
    /// left as it was sealed.
    pub samples_added: u64,
}

#[derive(Debug)]
struct ResourceHour {
    ledger: MinuteLedger,
    /// Inline, as nearly every resource-hour has one row: no second place in memory to
    /// read per sample.
    rows: SmallVec<[OpenRow; 1]>,
}

/// A row's key without the resource and hour, and its meters.
#[derive(Debug)]
struct OpenRow {
    /// Account, SKU and zone in one allocation (see [`join_texts`]): matching a sample
    /// reads one place in memory instead of three.
    texts: Box<str>,
    kind: ResourceKind,
    gpus: u16,
    /// Sorted by key, as the sample's map iterates.
    labels: Vec<(String, String)>,
    meters: RollupMeters,
}

/// Account, SKU and zone joined by a control character, which validation keeps out of
/// every text, so the joined form names exactly one triple.
fn join_texts(account_id: &str, sku: &str, zone: &str) -> Box<str> {
    [account_id, sku, zone]
        .join(&TEXT_SEPARATOR.to_string())
        .into_boxed_str()
}

const TEXT_SEPARATOR: char = '\u{1f}';

/// Whether `joined` is what [`join_texts`] makes of `texts`, compared in place (no copy
/// per sample).
fn joins(joined: &str, texts: [&str; 3]) -> bool {
    let mut rest = joined.as_bytes();
    texts.into_iter().enumerate().all(|(index, text)| {
        if index > 0 {
            let Some((&separator, after)) = rest.split_first() else {
                return false;
            };
            if separator != TEXT_SEPARATOR as u8 {
                return false;
            }
            rest = after;
        }
        let Some((head, after)) = rest.split_at_checked(text.len()) else {
            return false;
        };
        rest = after;
        head == text.as_bytes()
    }) && rest.is_empty()
}

impl OpenRow {
    fn of(sample: &Sample) -> Self {
        Self {
            texts: join_texts(&sample.account_id, &sample.sku, &sample.zone),
            kind: sample.kind,
            gpus: sample.gpus,
            labels: sample
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            meters: RollupMeters::default(),
        }
    }

    /// Whether the sample's key (but its resource and hour) is this row's.
    fn holds(&self, sample: &Sample) -> bool {
        self.gpus == sample.gpus
            && self.kind == sample.kind
            && joins(&self.texts, [&sample.account_id, &sample.sku, &sample.zone])
            && self.labels.len() == sample.labels.len()
            && self.labels.iter().zip(&sample.labels).all(
                |((key, value), (sample_key, sample_value))| {
                    key == sample_key && value == sample_value
                },
            )
    }
}

impl OpenHour {
    pub fn new(hour: Hour) -> Self {
        Self {
            hour,
            index: ResourceMap::default(),
            resources: Vec::new(),
            first_offset: None,
            generation: 0,
            samples_added: 0,
        }
    }

    /// Reopens a sealed hour from the rows of its file `path`, to restate it as
    /// generation `generation`.
    pub fn restore(
        hour: Hour,
        rows: Vec<RollupRow>,
        generation: u32,
        location: &str,
    ) -> Result<Self> {
        let mut open = Self {
            generation,
            ..Self::new(hour)
        };
        for row in rows {
            let labels = labels_from_text(&row.key.labels).map_err(|error| Error::SealedFile {
                location: location.to_owned(),
                detail: format!(
                    "resource {}: labels '{}' are not a JSON object of strings: {error}",
                    row.key.resource_id, row.key.labels
                ),
            })?;
            let position = open.position(&row.key.resource_id);
            let resource = &mut open.resources[position];
            let index = resource.rows.len();
            for (state, minutes) in ResourceState::ALL.into_iter().zip(row.meters.state_masks) {
                if minutes != 0 {
                    resource.ledger.restore(minutes, index, state);
                }
            }
            resource.rows.push(OpenRow {
                texts: join_texts(&row.key.account_id, &row.key.sku, &row.key.zone),
                kind: row.key.kind,
                gpus: row.key.gpus,
                labels: labels.into_iter().collect(),
                meters: row.meters,
            });
        }
        Ok(open)
    }

    /// Adds `sample` (read at `offset`) unless its `(resource_id, minute)` is already here.
    pub fn add(&mut self, sample: &Sample, offset: i64) -> Verdict {
        debug_assert_eq!(sample.minute.hour(), self.hour);
        let position = self.position(&sample.resource_id);
        let resource = &mut self.resources[position];
        let row = resource
            .rows
            .iter()
            .position(|row| row.holds(sample))
            .unwrap_or(resource.rows.len());
        let minute = sample.minute.minute_of_hour() as usize;
        let verdict = resource
            .ledger
            .check_and_record(minute, MinuteSample::of(sample, row));
        if verdict == Verdict::New {
            if row == resource.rows.len() {
                resource.rows.push(OpenRow::of(sample));
            }
            resource.rows[row].meters.add(sample);
            self.samples_added += 1;
            self.first_offset = Some(self.first_offset.map_or(offset, |first| first.min(offset)));
        }
        verdict
    }

    /// Where the resource-hour of `resource_id` is in `resources`, added if new.
    fn position(&mut self, resource_id: &str) -> usize {
        if let Some(&position) = self.index.get(resource_id) {
            return position;
        }
        self.index
            .insert(resource_id.to_owned(), self.resources.len());
        self.resources.push(ResourceHour {
            ledger: MinuteLedger::new(),
            rows: SmallVec::new(),
        });
        self.resources.len() - 1
    }

    pub fn row_count(&self) -> usize {
        self.resources
            .iter()
            .map(|resource| resource.rows.len())
            .sum()
    }

    /// The rows in the lake's order (account, resource, then the rest of the key).
    pub fn sorted_rows(&self) -> Vec<RollupRow> {
        let mut rows: Vec<RollupRow> = self
            .index
            .iter()
            .flat_map(|(resource_id, &position)| {
                self.resources[position].rows.iter().map(move |row| {
                    let mut texts = row.texts.split(TEXT_SEPARATOR).map(str::to_owned);
                    let mut next = || texts.next().unwrap_or_default();
                    let (account_id, sku, zone) = (next(), next(), next());
                    RollupRow {
                        key: RollupKey {
                            account_id,
                            resource_id: resource_id.clone(),
                            hour: self.hour,
                            kind: row.kind,
                            sku,
                            zone,
                            gpus: row.gpus,
                            labels: labels_text(&row.labels),
                        },
                        meters: row.meters,
                    }
                })
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        rows
    }
}

/// The canonical label text of sorted pairs: what [`tally_model::sample::labels_to_text`]
/// makes of the map they came from.
fn labels_text(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let map: std::collections::BTreeMap<&str, &str> = labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(minute: &str) -> Sample {
        Sample {
            minute: minute.parse().expect("minute"),
            labels: [("os".to_owned(), "debian".to_owned())].into(),
            ..crate::dedup::tests::sample()
        }
    }

    #[test]
    fn joined_texts_are_matched_text_by_text() {
        let joined = join_texts("ab", "c", "d");
        assert!(joins(&joined, ["ab", "c", "d"]));
        for other in [
            ["a", "bc", "d"],
            ["ab", "c", ""],
            ["ab", "c", "de"],
            ["ab", "", "cd"],
            ["", "ab", "c"],
        ] {
            assert!(!joins(&joined, other), "{other:?}");
        }
    }

    #[test]
    fn a_conflict_adds_no_row_and_a_new_key_adds_one() {
        let hour = sample("2026-10-01T10:07:00Z").minute.hour();
        let mut open = OpenHour::new(hour);
        assert_eq!(open.add(&sample("2026-10-01T10:07:00Z"), 0), Verdict::New);
        assert_eq!(
            open.add(&sample("2026-10-01T10:07:00Z"), 1),
            Verdict::Duplicate
        );
        let mut resized = sample("2026-10-01T10:07:00Z");
        resized.sku = "cx32".into();
        assert_eq!(open.add(&resized, 2), Verdict::Conflict);
        let mut relabelled = sample("2026-10-01T10:07:00Z");
        relabelled.labels.insert("os".into(), "ubuntu".into());
        assert_eq!(open.add(&relabelled, 3), Verdict::Conflict);
        assert_eq!(open.row_count(), 1);
        resized.minute = "2026-10-01T10:08:00Z".parse().expect("minute");
        assert_eq!(open.add(&resized, 4), Verdict::New);
        assert_eq!(open.row_count(), 2);
        // The second row's minute conflicts with the first row's key.
        let mut back = sample("2026-10-01T10:08:00Z");
        back.out_external_bytes = 10;
        assert_eq!(open.add(&back, 5), Verdict::Conflict);
        assert_eq!(open.add(&resized, 6), Verdict::Duplicate);
        let rows = open.sorted_rows();
        assert_eq!(
            rows.iter()
                .map(|row| (row.key.sku.as_str(), row.meters.sample_count))
                .collect::<Vec<_>>(),
            [("cx22", 1), ("cx32", 1)]
        );
    }

    #[test]
    fn a_restored_hour_knows_each_minutes_row_and_state() {
        let first = sample("2026-10-01T10:07:00Z");
        let hour = first.minute.hour();
        let mut open = OpenHour::new(hour);
        open.add(&first, 0);
        let mut restored =
            OpenHour::restore(hour, open.sorted_rows(), 1, "hour.parquet").expect("restore");
        let mut counters = first.clone();
        counters.in_bytes = 99;
        assert_eq!(restored.add(&counters, 1), Verdict::Duplicate);
        let mut stopped = first.clone();
        stopped.state = ResourceState::Stopped;
        assert_eq!(restored.add(&stopped, 2), Verdict::Conflict);
        let mut zone = first.clone();
        zone.zone = "nbg1".into();
        assert_eq!(restored.add(&zone, 3), Verdict::Conflict);
        assert_eq!(restored.row_count(), 1);
    }
}
