//! Rolling samples up into one hour's rows.
//!
//! An [`OpenHour`] holds the rows of one hour while it can still change: one
//! [`RollupMeters`] per [`RollupKey`], and per resource the [`MinuteLedger`] that keeps
//! a minute from being counted twice.

use std::collections::HashMap;

use tally_model::{RollupKey, RollupMeters, RollupRow, Sample};

use crate::dedup::{MinuteLedger, Verdict};

/// One hour's rows while the hour is open (or reopened for a restatement).
#[derive(Debug, Default)]
pub struct OpenHour {
    rows: HashMap<RollupKey, RollupMeters>,
    ledgers: HashMap<String, MinuteLedger>,
    /// Lowest source offset whose samples are in this hour: where to resume after a
    /// crash so that nothing held only in memory is lost.
    pub first_offset: Option<i64>,
    /// The file generation this hour will be sealed as: 0, or the sealed one's + 1.
    pub generation: u32,
    /// Samples added since the hour was (re)opened; a reopened hour that gained none is
    /// left as it was sealed.
    pub samples_added: u64,
}

impl OpenHour {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reopens a sealed hour from its rows, to restate it as generation `generation`.
    pub fn restore(rows: Vec<RollupRow>, generation: u32) -> Self {
        let mut hour = Self {
            generation,
            ..Self::default()
        };
        for row in rows {
            let minutes = row.meters.all_minutes();
            let ledger = hour
                .ledgers
                .entry(row.key.resource_id.clone())
                .or_insert_with(|| MinuteLedger::with_known_minutes(0));
            *ledger = MinuteLedger::with_known_minutes(ledger.seen() | minutes);
            hour.rows.insert(row.key, row.meters);
        }
        hour
    }

    /// Adds `sample` (read at `offset`) unless its `(resource_id, minute)` is already here.
    pub fn add(&mut self, sample: &Sample, offset: i64) -> Verdict {
        let verdict = match self.ledgers.get_mut(sample.resource_id.as_str()) {
            Some(ledger) => ledger.check_and_record(sample),
            None => {
                let mut ledger = MinuteLedger::new();
                let verdict = ledger.check_and_record(sample);
                self.ledgers.insert(sample.resource_id.clone(), ledger);
                verdict
            }
        };
        if verdict == Verdict::New {
            self.rows
                .entry(RollupKey::of(sample))
                .or_default()
                .add(sample);
            self.samples_added += 1;
            self.first_offset = Some(self.first_offset.map_or(offset, |first| first.min(offset)));
        }
        verdict
    }

    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The rows in the lake's order (account, resource, then the rest of the key).
    pub fn into_sorted_rows(self) -> Vec<RollupRow> {
        let mut rows: Vec<RollupRow> = self
            .rows
            .into_iter()
            .map(|(key, meters)| RollupRow { key, meters })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }
}
