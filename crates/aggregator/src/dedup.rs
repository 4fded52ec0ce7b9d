//! Deduplication on `(resource_id, minute)`, with no time window.
//!
//! Each open resource-hour keeps the minutes it has seen and a fingerprint of the sample
//! that filled each one. A second sample for a seen minute is a duplicate when its
//! fingerprint matches (a collector re-sent it), and a conflict when it does not: the
//! first sample stays, the second is dead-lettered.
//!
//! A fingerprint covers the row the sample went into, its state and its counters. The
//! row stands for everything else a rollup keeps of a sample (account, kind, SKU, zone,
//! GPUs, labels): a resource-hour's rows are told apart by exactly those, and a row keeps
//! its place for as long as the hour is open. So the texts are matched once, to find the
//! row, and never hashed. The resource and the minute are the ledger's own place.
//!
//! An hour reopened from its sealed file (a restatement) knows each minute's row and
//! state but no longer the sample's counters: those minutes keep a fingerprint of the
//! row and state only, so a late sample that says something else about the minute
//! (another state, SKU, zone, GPU count or labels) is still a conflict, and one that
//! differs only in its counters counts as a duplicate.
//!
//! The fingerprint leaves out `host`: a VM reported for the same minute by the host it
//! migrated to, with the same meters, is the same sample.

use tally_model::{ResourceState, Sample};

/// Minutes seen of one resource in one hour.
#[derive(Clone, Debug)]
pub struct MinuteLedger {
    seen: u64,
    /// Minutes restored from a sealed file: their fingerprints leave the counters out.
    restored: u64,
    /// Fingerprint per minute of the hour. Inline and 32 bits wide: every sample reads
    /// it, and two different samples of one minute share a fingerprint with odds of 1 in
    /// 4 billion, in which case the second is counted as a duplicate instead of a
    /// conflict (the first is kept either way).
    fingerprints: [u32; 60],
}

/// What to do with a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
    Conflict,
}

/// What a sample says about its minute, with its row standing for its key.
#[derive(Clone, Copy, Debug)]
pub struct MinuteSample {
    /// The index of the resource-hour's row that holds the sample's key (or would, as the
    /// next row, when no row does yet).
    pub row: usize,
    pub state: ResourceState,
    pub counters: [u64; 4],
}

impl MinuteSample {
    pub fn of(sample: &Sample, row: usize) -> Self {
        Self {
            row,
            state: sample.state,
            counters: [
                sample.out_external_bytes,
                sample.out_internal_bytes,
                sample.in_bytes,
                sample.size_bytes,
            ],
        }
    }

    fn fingerprint(&self) -> u32 {
        let mut hash = Self::key_hash(self.row, self.state);
        for counter in self.counters {
            hash.word(counter);
        }
        hash.finish()
    }

    fn key_hash(row: usize, state: ResourceState) -> Fingerprint {
        let mut hash = Fingerprint(0xcbf2_9ce4_8422_2325);
        hash.word(((row as u64) << 8) | state.index() as u64);
        hash
    }
}

impl MinuteLedger {
    pub fn new() -> Self {
        Self {
            seen: 0,
            restored: 0,
            fingerprints: [0; 60],
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Records minutes of a sealed row: `minutes` of `state`, in the resource-hour's row
    /// `row`.
    pub fn restore(&mut self, minutes: u64, row: usize, state: ResourceState) {
        let new = minutes & !self.seen;
        self.seen |= new;
        self.restored |= new;
        let fingerprint = MinuteSample::key_hash(row, state).finish();
        for minute in 0..60 {
            if new & (1 << minute) != 0 {
                self.fingerprints[minute] = fingerprint;
            }
        }
    }

    /// Records what a sample says about `minute` (of the hour) if the minute is new; says
    /// what the sample was either way.
    pub fn check_and_record(&mut self, minute: usize, sample: MinuteSample) -> Verdict {
        let bit = 1u64 << minute;
        if self.seen & bit == 0 {
            self.seen |= bit;
            self.fingerprints[minute] = sample.fingerprint();
            return Verdict::New;
        }
        let same = if self.restored & bit != 0 {
            self.fingerprints[minute] == MinuteSample::key_hash(sample.row, sample.state).finish()
        } else {
            self.fingerprints[minute] == sample.fingerprint()
        };
        if same {
            Verdict::Duplicate
        } else {
            Verdict::Conflict
        }
    }
}

impl Default for MinuteLedger {
    fn default() -> Self {
        Self::new()
    }
}

/// A stable hash of 64-bit words (the same on every build and platform).
struct Fingerprint(u64);

impl Fingerprint {
    fn word(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    /// The high half has had the most mixing; it is folded into the low one.
    fn finish(&self) -> u32 {
        (self.0 >> 32) as u32 ^ self.0 as u32
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tally_model::ResourceKind;

    /// A server's sample at 10:07, for tests to change field by field.
    pub(crate) fn sample() -> Sample {
        Sample {
            minute: "2026-10-01T10:07:00Z".parse().expect("minute"),
            host: "hv-1".into(),
            account_id: "acme".into(),
            resource_id: "vm-1".into(),
            kind: ResourceKind::Server,
            sku: "cx22".into(),
            zone: "fsn1".into(),
            state: ResourceState::Running,
            gpus: 0,
            out_external_bytes: 10,
            out_internal_bytes: 0,
            in_bytes: 0,
            size_bytes: 0,
            labels: Default::default(),
        }
    }

    const MINUTE: usize = 7;

    #[test]
    fn the_same_sample_twice_is_a_duplicate_and_different_values_conflict() {
        let mut ledger = MinuteLedger::new();
        let first = MinuteSample::of(&sample(), 0);
        assert_eq!(ledger.check_and_record(MINUTE, first), Verdict::New);
        assert_eq!(ledger.check_and_record(MINUTE, first), Verdict::Duplicate);
        let mut moved = sample();
        moved.host = "hv-2".into();
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&moved, 0)),
            Verdict::Duplicate
        );
        let mut changed = sample();
        changed.out_external_bytes += 1;
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&changed, 0)),
            Verdict::Conflict
        );
        // Another key (another row) with the same counters.
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&sample(), 1)),
            Verdict::Conflict
        );
        let mut stopped = sample();
        stopped.state = ResourceState::Stopped;
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&stopped, 0)),
            Verdict::Conflict
        );
        assert_eq!(ledger.seen().count_ones(), 1);
    }

    #[test]
    fn every_counter_is_in_the_fingerprint() {
        for counter in 0..4 {
            let mut ledger = MinuteLedger::new();
            let first = MinuteSample::of(&sample(), 0);
            ledger.check_and_record(MINUTE, first);
            let mut other = first;
            other.counters[counter] += 1;
            assert_eq!(
                ledger.check_and_record(MINUTE, other),
                Verdict::Conflict,
                "counter {counter}"
            );
        }
    }

    #[test]
    fn a_restored_minute_conflicts_only_with_another_row_or_state() {
        let mut ledger = MinuteLedger::new();
        ledger.restore(1 << MINUTE, 0, ResourceState::Running);
        // Its counters are no longer known: a re-send with other counters is a duplicate.
        let mut counters = sample();
        counters.in_bytes = 99;
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&counters, 0)),
            Verdict::Duplicate
        );
        let mut state = sample();
        state.state = ResourceState::Stopped;
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&state, 0)),
            Verdict::Conflict
        );
        // Other labels, SKU, ...: another row.
        assert_eq!(
            ledger.check_and_record(MINUTE, MinuteSample::of(&sample(), 1)),
            Verdict::Conflict
        );
        // A minute the sealed file did not have is new.
        assert_eq!(
            ledger.check_and_record(MINUTE + 1, MinuteSample::of(&sample(), 0)),
            Verdict::New
        );
    }
}
