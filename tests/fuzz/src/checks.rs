//! What each fuzz target asserts about an input. Compiled into the fuzz targets and, by
//! path, into the stable test suite (`tests/it/fuzz_corpus.rs`), which runs every input of
//! the kept corpus and every crash ever found through the same checks.
//!
//! A decoder may refuse anything, but must never panic, and what it accepts must survive
//! being written and read again unchanged.

use tally_model::Sample;
use tally_model::wire::{decode_arrow, decode_json, encode_arrow, encode_json};

/// NDJSON samples: the plain-form short cut and `serde_json` agree on every line, and
/// the accepted samples round-trip through both encodings.
pub fn json_samples(data: &[u8]) {
    let decoded = decode_json(data);
    let lines: Vec<&[u8]> = tally_model::wire::json_lines(data)
        .map(|(_, line)| line)
        .collect();
    assert_eq!(decoded.len(), lines.len(), "one item per non-blank line");
    for (item, line) in decoded.iter().zip(&lines) {
        let by_serde = serde_json::from_slice::<Sample>(line);
        match (item, by_serde) {
            (Ok(sample), Ok(expected)) => assert_eq!(sample, &expected, "short cut vs serde"),
            (Err(_), Err(_)) => {}
            (item, by_serde) => panic!(
                "the decoder and serde_json disagree on {:?}: {item:?} vs {by_serde:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }
    round_trip(
        &decoded
            .into_iter()
            .filter_map(Result::ok)
            .collect::<Vec<_>>(),
    );
}

/// An Arrow IPC message: refused with a reason or decoded; what decodes round-trips.
pub fn arrow_samples(data: &[u8]) {
    if let Ok(decoded) = decode_arrow(data) {
        round_trip(
            &decoded
                .into_iter()
                .filter_map(Result::ok)
                .collect::<Vec<_>>(),
        );
    }
}

/// Tariff text: accepted or refused with a message, never a panic.
pub fn tariff(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(message) = tally_model::tariff::check::parse(text)
    {
        assert!(!message.is_empty(), "a refusal says why");
    }
}

/// What the aggregator does with a decoded sample next: validate it (any verdict, no
/// panic), then the round trips.
fn round_trip(samples: &[Sample]) {
    if samples.is_empty() {
        return;
    }
    let limits = tally_model::validate::ValidationLimits::default();
    let now = tally_model::Minute::from_unix_minutes(29_400_000); // 2025-11-23
    for sample in samples {
        let _verdict = tally_model::validate::validate(sample, &limits, now);
    }
    let json: Vec<Sample> = decode_json(&encode_json(samples))
        .into_iter()
        .map(|item| item.expect("a sample written as JSON reads back"))
        .collect();
    assert_eq!(json, samples, "JSON round trip");
    let bytes = encode_arrow(samples).expect("accepted samples encode as Arrow");
    let arrow: Vec<Sample> = decode_arrow(&bytes)
        .expect("a message written as Arrow reads back")
        .into_iter()
        .map(|item| item.expect("a row written as Arrow reads back"))
        .collect();
    assert_eq!(arrow, samples, "Arrow round trip");
}
