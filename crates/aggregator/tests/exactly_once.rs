//! The aggregator's central promise, as a property: whatever the order, duplication and
//! lateness of a sample stream, and wherever the aggregator is killed and restarted, the
//! sealed lake equals a naive rollup of the stream's distinct samples.
//!
//! A restart here is what a crash leaves: the in-memory state is dropped, the partition
//! is reopened from the lake (its manifest, and the checkpoint of open hours it names) and
//! the stream is read again from where the manifest says, as Kafka would deliver it. In
//! some runs each crash also damages the checkpoint on disk: it must be quarantined and
//! its hours read again, never counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use tally_aggregator::deadletter::CollectedDeadLetters;
use tally_aggregator::ingest::{AggregateConfig, Ingest};
use tally_aggregator::manifest::{Manifest, QUARANTINE_DIR};
use tally_aggregator::write::read_rows;
use tally_model::clock::FixedClock;
use tally_model::wire::Encoding;
use tally_model::{Minute, ResourceKind, ResourceState, RollupKey, RollupMeters, Sample};

const SOURCE: &str = "samples";
const LATENESS_MINUTES: i64 = 15;
/// 2026-10-01T00:00Z.
const FIRST_MINUTE: i64 = 29_846_880;
/// The stream spans four hours.
const MINUTES: i64 = 240;

/// One generated sample, before it is spelled out.
#[derive(Clone, Debug)]
struct Spec {
    resource: u8,
    minute: i64,
    state: u8,
    labels: u8,
    gpus: u16,
    out_external_bytes: u64,
    size_bytes: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        0..MINUTES,
        0u8..3,
        0u8..3,
        0u16..2,
        0u64..5_000_000,
        0u64..3,
    )
        .prop_map(
            |(resource, minute, state, labels, gpus, out_external_bytes, size)| Spec {
                resource,
                minute,
                state,
                labels,
                gpus,
                out_external_bytes,
                size_bytes: size << 30,
            },
        )
}

fn sample(spec: &Spec) -> Sample {
    let state = [
        ResourceState::Running,
        ResourceState::Stopped,
        ResourceState::Frozen,
    ][usize::from(spec.state)];
    let mut labels = BTreeMap::new();
    match spec.labels {
        1 => {
            labels.insert("os".to_owned(), "debian".to_owned());
        }
        2 => {
            labels.insert("os".to_owned(), "windows".to_owned());
        }
        _ => {}
    }
    Sample {
        minute: Minute::from_unix_minutes(FIRST_MINUTE + spec.minute),
        host: "hv-1".into(),
        // Two resources per account, so the lake's sort by account is exercised.
        account_id: format!("acct-{}", spec.resource / 2),
        resource_id: format!("vm-{}", spec.resource),
        kind: ResourceKind::Server,
        sku: if spec.resource == 3 { "cx32" } else { "cx22" }.into(),
        zone: "fsn1".into(),
        state,
        gpus: spec.gpus,
        out_external_bytes: spec.out_external_bytes,
        out_internal_bytes: spec.out_external_bytes / 3,
        in_bytes: spec.out_external_bytes / 7,
        size_bytes: spec.size_bytes,
        labels,
    }
}

/// How a sample reaches the aggregator.
#[derive(Clone, Debug)]
enum Delivery {
    /// Within the allowed lateness: delayed by up to that many minutes of stream time.
    OnTime { delay: i64 },
    /// Long after its hour was sealed: a restatement.
    Late { delay: i64 },
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        8 => (0..=LATENESS_MINUTES).prop_map(|delay| Delivery::OnTime { delay }),
        1 => (90..=300i64).prop_map(|delay| Delivery::Late { delay }),
    ]
}

#[derive(Clone, Debug)]
struct Scenario {
    /// Each sample with how it is delivered and how many extra copies arrive.
    samples: Vec<(Spec, Delivery, u8)>,
    /// Samples per message, cycled.
    message_sizes: Vec<usize>,
    /// Messages after which the aggregator is killed (each once).
    crashes: BTreeSet<usize>,
    /// Messages between two seal checks, as the Kafka loop does every 64.
    seal_every: usize,
    /// Messages between two checkpoints of the open hours, as the Kafka loop takes every
    /// minute.
    checkpoint_every: usize,
    /// After each crash, flip a byte of the checkpoint the manifest names (a disk's
    /// damage): the restart must quarantine it and read its hours again.
    damage_checkpoints: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec((spec(), delivery(), 0u8..3), 0..300),
        proptest::collection::vec(1usize..6, 1..8),
        proptest::collection::btree_set(0usize..200, 0..6),
        1usize..8,
        1usize..12,
        any::<bool>(),
    )
        .prop_map(
            |(samples, message_sizes, crashes, seal_every, checkpoint_every, damage)| Scenario {
                samples,
                message_sizes,
                crashes,
                seal_every,
                checkpoint_every,
                damage_checkpoints: damage,
            },
        )
}

/// The stream as Kafka would hold it: messages of samples, each with its encoding.
fn messages(scenario: &Scenario) -> Vec<(Encoding, Vec<u8>)> {
    // The first sample of a (resource, minute) is the true one; later specs for the same
    // key are dropped, so the stream holds duplicates but no conflicts.
    let mut seen = BTreeSet::new();
    let mut deliveries = Vec::new();
    for (index, (spec, delivery, copies)) in scenario.samples.iter().enumerate() {
        if !seen.insert((spec.resource, spec.minute)) {
            continue;
        }
        let delay = match delivery {
            Delivery::OnTime { delay } | Delivery::Late { delay } => *delay,
        };
        let sample = sample(spec);
        for copy in 0..=i64::from(*copies) {
            let mut sent = sample.clone();
            if copy % 2 == 1 {
                sent.host = "hv-2".into(); // a re-send after a migration is the same sample
            }
            // Copies come a little later each; the index keeps the order total.
            deliveries.push((spec.minute + delay + copy * 7, index, copy, sent));
        }
    }
    deliveries.sort_by_key(|(at, index, copy, _)| (*at, *index, *copy));
    let mut messages = Vec::new();
    let mut rest: &[_] = &deliveries;
    for (number, size) in scenario.message_sizes.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at((*size).min(rest.len()));
        rest = after;
        let samples: Vec<Sample> = batch.iter().map(|(.., sample)| sample.clone()).collect();
        let encoding = if number % 3 == 0 {
            Encoding::Json
        } else {
            Encoding::Arrow
        };
        messages.push((encoding, encoding.encode(&samples).expect("encode")));
    }
    messages
}

/// The naive reference: every distinct (resource, minute) once, summed per rollup key.
fn reference(scenario: &Scenario) -> BTreeMap<RollupKey, RollupMeters> {
    let mut seen = BTreeSet::new();
    let mut rows: BTreeMap<RollupKey, RollupMeters> = BTreeMap::new();
    for (spec, ..) in &scenario.samples {
        if seen.insert((spec.resource, spec.minute)) {
            let sample = sample(spec);
            rows.entry(RollupKey::of(&sample)).or_default().add(&sample);
        }
    }
    rows
}

/// Flips one byte of the checkpoint the manifest names, if it names one.
fn damage_checkpoint(lake: &Path, salt: usize) -> bool {
    let manifest = Manifest::load(&lake.into(), SOURCE, 0).expect("manifest");
    let Some(checkpoint) = manifest.checkpoint else {
        return false;
    };
    let path = lake.join(&checkpoint.file);
    let mut bytes = std::fs::read(&path).expect("read the checkpoint");
    let position = salt.wrapping_mul(7919) % bytes.len();
    bytes[position] ^= 0x5a;
    std::fs::write(&path, bytes).expect("damage the checkpoint");
    true
}

/// Damaged checkpoints the aggregator moved aside.
fn quarantined(lake: &Path) -> usize {
    std::fs::read_dir(lake.join(QUARANTINE_DIR).join(SOURCE)).map_or(0, Iterator::count)
}

/// Runs the stream through the aggregator, killing it after the scenario's messages.
/// Returns the dead letters of every run and how many checkpoints it damaged.
fn aggregate(lake: &Path, scenario: &Scenario, messages: &[(Encoding, Vec<u8>)]) -> (usize, usize) {
    let mut config = AggregateConfig::new(lake);
    config.lateness_minutes = LATENESS_MINUTES;
    // A day after the stream: nothing is from the future, nothing beyond retention.
    config.clock = Arc::new(FixedClock(
        Minute::from_unix_minutes(FIRST_MINUTE + 24 * 60).to_datetime(),
    ));
    let end = i64::try_from(messages.len()).expect("messages");
    let mut crashes = scenario.crashes.clone();
    let (mut dead_letters, mut damaged) = (0, 0);
    loop {
        let mut sink = CollectedDeadLetters::default();
        let mut ingest = Ingest::new(config.clone(), SOURCE, &mut sink);
        let mut offset = ingest.open_partition(0).expect("open partition");
        let mut crashed = false;
        while offset < end {
            let index = usize::try_from(offset).expect("offset");
            let (encoding, payload) = &messages[index];
            ingest
                .process(SOURCE, 0, offset, Some(encoding.content_type()), payload)
                .expect("process");
            offset += 1;
            if index % scenario.seal_every == 0 {
                ingest.seal_ready(0, offset).expect("seal ready");
            }
            if index % scenario.checkpoint_every == 0 {
                ingest.checkpoint(0, offset).expect("checkpoint");
            }
            if crashes.remove(&index) {
                crashed = true;
                break;
            }
        }
        if !crashed {
            ingest.seal_all(0, end).expect("seal all");
        }
        drop(ingest);
        dead_letters += sink.letters.len();
        if !crashed {
            return (dead_letters, damaged);
        }
        if scenario.damage_checkpoints && damage_checkpoint(lake, dead_letters + damaged + 1) {
            damaged += 1;
        }
    }
}

/// The sealed lake: every row of every file the manifest names, and a check that the
/// rollup directories hold no other file.
fn sealed_lake(lake: &Path) -> BTreeMap<RollupKey, RollupMeters> {
    let manifest = Manifest::load(&lake.into(), SOURCE, 0).expect("manifest");
    let named: BTreeSet<_> = manifest
        .sealed
        .values()
        .map(|sealed| lake.join(&sealed.file))
        .collect();
    let mut on_disk = BTreeSet::new();
    let rollups = lake.join("rollups");
    if rollups.is_dir() {
        for hour in std::fs::read_dir(&rollups).expect("list rollups") {
            for file in std::fs::read_dir(hour.expect("hour").path()).expect("list hour") {
                on_disk.insert(file.expect("file").path());
            }
        }
    }
    assert_eq!(on_disk, named, "files on disk and in the manifest differ");
    let mut rows = BTreeMap::new();
    for (hour, sealed) in &manifest.sealed {
        for row in read_rows(&lake.join(&sealed.file)).expect("read rows") {
            assert_eq!(
                &row.key.hour.partition_value(),
                hour,
                "row in another hour's file"
            );
            let previous = rows.insert(row.key.clone(), row.meters);
            assert!(previous.is_none(), "row {:?} is in two files", row.key);
        }
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_sealed_lake_equals_a_rollup_of_the_distinct_samples(scenario in scenario()) {
        let lake = tempfile::tempdir().expect("temp dir");
        let messages = messages(&scenario);
        let (dead_letters, damaged) = aggregate(lake.path(), &scenario, &messages);
        prop_assert_eq!(dead_letters, 0, "a duplicate is not a dead letter");
        prop_assert_eq!(quarantined(lake.path()), damaged, "every damaged checkpoint quarantined");
        let sealed = sealed_lake(lake.path());
        let expected = reference(&scenario);
        prop_assert_eq!(sealed.len(), expected.len());
        for (key, meters) in &expected {
            prop_assert_eq!(sealed.get(key), Some(meters), "row {:?}", key);
        }
    }
}
