//! Deduplication on `(resource_id, minute)`, with no time window.
//!
//! Each open resource-hour keeps the minutes it has seen and a fingerprint of the sample
//! that filled each one. A second sample for a seen minute is a duplicate when its
//! fingerprint matches (a collector re-sent it), and a conflict when it does not: the
//! first sample stays, the second is dead-lettered.
//!
//! The fingerprint leaves out `host`: a VM reported for the same minute by the host it
//! migrated to, with the same meters, is the same sample.

use tally_model::Sample;

/// Minutes seen of one resource in one hour.
#[derive(Clone, Debug)]
pub struct MinuteLedger {
    seen: u64,
    /// Fingerprint per minute of the hour; [`UNKNOWN`] where the minute came from a
    /// sealed file (restated hours know their minutes, not the samples' values).
    fingerprints: Box<[u64; 60]>,
}

/// The fingerprint of a minute whose original sample is no longer known.
pub const UNKNOWN: u64 = 0;

/// What to do with a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
    Conflict,
}

impl MinuteLedger {
    pub fn new() -> Self {
        Self {
            seen: 0,
            fingerprints: Box::new([UNKNOWN; 60]),
        }
    }

    /// A ledger for minutes restored from a sealed file.
    pub fn with_known_minutes(seen: u64) -> Self {
        Self {
            seen,
            fingerprints: Box::new([UNKNOWN; 60]),
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Records `sample` if its minute is new; says what it was either way.
    pub fn check_and_record(&mut self, sample: &Sample) -> Verdict {
        let minute = sample.minute.minute_of_hour() as usize;
        let bit = 1u64 << minute;
        let fingerprint = fingerprint(sample);
        if self.seen & bit == 0 {
            self.seen |= bit;
            self.fingerprints[minute] = fingerprint;
            return Verdict::New;
        }
        match self.fingerprints[minute] {
            UNKNOWN => Verdict::Duplicate,
            known if known == fingerprint => Verdict::Duplicate,
            _ => Verdict::Conflict,
        }
    }
}

impl Default for MinuteLedger {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a over every field but `host`, stable across builds and platforms. Never
/// [`UNKNOWN`].
pub fn fingerprint(sample: &Sample) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&sample.minute.unix_minutes().to_le_bytes());
    eat(sample.account_id.as_bytes());
    eat(sample.resource_id.as_bytes());
    eat(sample.kind.as_str().as_bytes());
    eat(sample.sku.as_bytes());
    eat(sample.zone.as_bytes());
    eat(sample.state.as_str().as_bytes());
    eat(&sample.gpus.to_le_bytes());
    eat(&sample.out_external_bytes.to_le_bytes());
    eat(&sample.out_internal_bytes.to_le_bytes());
    eat(&sample.in_bytes.to_le_bytes());
    eat(&sample.size_bytes.to_le_bytes());
    for (key, value) in &sample.labels {
        eat(key.as_bytes());
        eat(value.as_bytes());
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_model::{ResourceKind, ResourceState};

    fn sample() -> Sample {
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

    #[test]
    fn the_same_sample_twice_is_a_duplicate_and_different_values_conflict() {
        let mut ledger = MinuteLedger::new();
        assert_eq!(ledger.check_and_record(&sample()), Verdict::New);
        assert_eq!(ledger.check_and_record(&sample()), Verdict::Duplicate);
        let mut moved = sample();
        moved.host = "hv-2".into();
        assert_eq!(ledger.check_and_record(&moved), Verdict::Duplicate);
        let mut changed = sample();
        changed.out_external_bytes += 1;
        assert_eq!(ledger.check_and_record(&changed), Verdict::Conflict);
        assert_eq!(ledger.seen().count_ones(), 1);
    }

    #[test]
    fn restored_minutes_are_duplicates_whatever_their_values() {
        let mut ledger = MinuteLedger::with_known_minutes(1 << 7);
        let mut changed = sample();
        changed.in_bytes = 99;
        assert_eq!(ledger.check_and_record(&changed), Verdict::Duplicate);
    }
}
