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
    /// sealed file (restated hours know their minutes, not the samples' values). Inline
    /// and 32 bits wide: every sample reads it, and two different samples of one minute
    /// share a fingerprint with odds of 1 in 4 billion, in which case the second is
    /// counted as a duplicate instead of a conflict (the first is kept either way).
    fingerprints: [u32; 60],
}

/// The fingerprint of a minute whose original sample is no longer known.
pub const UNKNOWN: u32 = 0;

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
            fingerprints: [UNKNOWN; 60],
        }
    }

    /// A ledger for minutes restored from a sealed file.
    pub fn with_known_minutes(seen: u64) -> Self {
        Self {
            seen,
            fingerprints: [UNKNOWN; 60],
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

/// A hash of every field but `host`, eight bytes at a time (it runs once per sample),
/// stable across builds and platforms. Never [`UNKNOWN`].
pub fn fingerprint(sample: &Sample) -> u32 {
    let mut hash = Fingerprint(0xcbf2_9ce4_8422_2325);
    hash.word(sample.minute.unix_minutes() as u64);
    hash.text(&sample.account_id);
    hash.text(&sample.resource_id);
    hash.word(sample.kind as u64);
    hash.text(&sample.sku);
    hash.text(&sample.zone);
    hash.word(((sample.state.index() as u64) << 16) | u64::from(sample.gpus));
    hash.word(sample.out_external_bytes);
    hash.word(sample.out_internal_bytes);
    hash.word(sample.in_bytes);
    hash.word(sample.size_bytes);
    for (key, value) in &sample.labels {
        hash.text(key);
        hash.text(value);
    }
    // The high half has had the most mixing; it is folded into the low one.
    ((hash.0 >> 32) as u32 ^ hash.0 as u32).max(1)
}

struct Fingerprint(u64);

impl Fingerprint {
    fn word(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    /// The text's bytes, then its length: `("ab", "c")` and `("a", "bc")` differ.
    fn text(&mut self, text: &str) {
        let mut chunks = text.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(word));
        self.word(text.len() as u64);
    }
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
