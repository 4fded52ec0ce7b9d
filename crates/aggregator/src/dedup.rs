//! Deduplication on `(resource_id, minute)`, with no time window.
//!
//! Each open resource-hour keeps the minutes it has seen and a fingerprint of the sample
//! that filled each one. A second sample for a seen minute is a duplicate when its
//! fingerprint matches (a collector re-sent it), and a conflict when it does not: the
//! first sample stays, the second is dead-lettered.
//!
//! An hour reopened from its sealed file (a restatement) knows each minute's row and
//! state but no longer the sample's counters: those minutes keep a fingerprint of the
//! key and state only, so a late sample that says something else about the minute (another
//! state, SKU, zone, GPU count or labels) is still a conflict, and one that differs only in
//! its counters counts as a duplicate.
//!
//! The fingerprint leaves out `host`: a VM reported for the same minute by the host it
//! migrated to, with the same meters, is the same sample.

use tally_model::{ResourceKind, ResourceState, Sample};

/// Minutes seen of one resource in one hour.
#[derive(Clone, Debug)]
pub struct MinuteLedger {
    seen: u64,
    /// Minutes restored from a sealed file: their fingerprints are [`key_fingerprint`]s.
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

/// What identifies a minute's row and state: everything a rollup row keeps of a sample
/// but its counters.
#[derive(Clone, Copy, Debug)]
pub struct MinuteKey<'a, Labels> {
    pub account_id: &'a str,
    pub kind: ResourceKind,
    pub sku: &'a str,
    pub zone: &'a str,
    pub gpus: u16,
    pub state: ResourceState,
    /// Label pairs in key order.
    pub labels: Labels,
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

    /// Records minutes of a sealed row: `minutes` of one state, with that row's key.
    pub fn restore(&mut self, minutes: u64, key_fingerprint: u32) {
        let new = minutes & !self.seen;
        self.seen |= new;
        self.restored |= new;
        for minute in 0..60 {
            if new & (1 << minute) != 0 {
                self.fingerprints[minute] = key_fingerprint;
            }
        }
    }

    /// Records `sample` if its minute is new; says what it was either way.
    pub fn check_and_record(&mut self, sample: &Sample) -> Verdict {
        let minute = sample.minute.minute_of_hour() as usize;
        let bit = 1u64 << minute;
        if self.seen & bit == 0 {
            self.seen |= bit;
            self.fingerprints[minute] = fingerprint(sample);
            return Verdict::New;
        }
        let same = if self.restored & bit != 0 {
            self.fingerprints[minute] == key_fingerprint(minute_key(sample))
        } else {
            self.fingerprints[minute] == fingerprint(sample)
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

/// The [`MinuteKey`] of a sample.
pub fn minute_key(sample: &Sample) -> MinuteKey<'_, impl Iterator<Item = (&str, &str)>> {
    MinuteKey {
        account_id: &sample.account_id,
        kind: sample.kind,
        sku: &sample.sku,
        zone: &sample.zone,
        gpus: sample.gpus,
        state: sample.state,
        labels: sample
            .labels
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    }
}

/// A hash of every field but `host`, eight bytes at a time (it runs once per sample),
/// stable across builds and platforms.
pub fn fingerprint(sample: &Sample) -> u32 {
    let mut hash = Fingerprint::of_key(minute_key(sample));
    hash.word(sample.minute.unix_minutes() as u64);
    hash.text(&sample.resource_id);
    hash.word(sample.out_external_bytes);
    hash.word(sample.out_internal_bytes);
    hash.word(sample.in_bytes);
    hash.word(sample.size_bytes);
    hash.finish()
}

/// A hash of a minute's [`MinuteKey`]: what a restored minute is compared by.
pub fn key_fingerprint<'a>(key: MinuteKey<'a, impl Iterator<Item = (&'a str, &'a str)>>) -> u32 {
    Fingerprint::of_key(key).finish()
}

struct Fingerprint(u64);

impl Fingerprint {
    fn of_key<'a>(key: MinuteKey<'a, impl Iterator<Item = (&'a str, &'a str)>>) -> Self {
        let mut hash = Fingerprint(0xcbf2_9ce4_8422_2325);
        hash.text(key.account_id);
        hash.word(key.kind as u64);
        hash.text(key.sku);
        hash.text(key.zone);
        hash.word(((key.state.index() as u64) << 16) | u64::from(key.gpus));
        for (name, value) in key.labels {
            hash.text(name);
            hash.text(value);
        }
        hash
    }

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

    /// The high half has had the most mixing; it is folded into the low one.
    fn finish(&self) -> u32 {
        (self.0 >> 32) as u32 ^ self.0 as u32
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
    fn a_restored_minute_conflicts_only_with_another_key_or_state() {
        let restored = sample();
        let mut ledger = MinuteLedger::new();
        ledger.restore(1 << 7, key_fingerprint(minute_key(&restored)));
        // Its counters are no longer known: a re-send with other counters is a duplicate.
        let mut counters = sample();
        counters.in_bytes = 99;
        assert_eq!(ledger.check_and_record(&counters), Verdict::Duplicate);
        let mut state = sample();
        state.state = ResourceState::Stopped;
        assert_eq!(ledger.check_and_record(&state), Verdict::Conflict);
        let mut labels = sample();
        labels.labels.insert("os".into(), "windows".into());
        assert_eq!(ledger.check_and_record(&labels), Verdict::Conflict);
        let mut sku = sample();
        sku.sku = "cx32".into();
        assert_eq!(ledger.check_and_record(&sku), Verdict::Conflict);
        // A minute the sealed file did not have is new.
        let mut later = sample();
        later.minute = "2026-10-01T10:08:00Z".parse().expect("minute");
        assert_eq!(ledger.check_and_record(&later), Verdict::New);
    }
}
