//! About 1 % malformed and 1 % re-sent messages among a fleet's samples on the real
//! broker: the lake equals the ground truth, every re-sent sample is a duplicate, and
//! every bad message is dead-lettered once, with its reason.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_aggregator::AggregateConfig;
use tally_collector::partition::partition_for;
use tally_collector::{Fleet, FleetSpec, GroundTruth};
use tally_model::clock::FixedClock;
use tally_model::wire::{CONTENT_TYPE_HEADER, Encoding};
use tally_model::{Minute, Sample};
use tally_tests::{aggregate_drained, broker, create_topic, read_dead_letters, unique_topic};

const PARTITIONS: i32 = 3;
const SAMPLES_PER_MESSAGE: usize = 250;

fn fleet_spec() -> FleetSpec {
    FleetSpec {
        seed: 31,
        start: "2026-10-22T00:00:00Z".parse().expect("minute"),
        end: "2026-10-22T12:00:00Z".parse().expect("minute"),
        scale: 6,
    }
}

/// A message that carries nothing usable, and the reason it must be dead-lettered with.
fn bad_message(kind: usize, good: &[u8], sample: &Sample) -> (&'static str, Vec<u8>, &'static str) {
    let json = |sample: &Sample| Encoding::Json.encode(std::slice::from_ref(sample));
    let mut changed = sample.clone();
    match kind % 6 {
        // An Arrow stream cut in half.
        0 => (
            Encoding::Arrow.content_type(),
            good[..good.len() / 2].to_vec(),
            "malformed",
        ),
        1 => (
            "text/csv",
            b"resource,minute\nvm-1,0\n".to_vec(),
            "unknown_encoding",
        ),
        2 => {
            let line = String::from_utf8(json(sample).expect("json")).expect("utf-8");
            let line = line
                .replace("\"server\"", "\"teapot\"")
                .replace("\"gpu_server\"", "\"teapot\"");
            (
                Encoding::Json.content_type(),
                line.into_bytes(),
                "malformed",
            )
        }
        3 => {
            changed.minute = fleet_spec().end.plus(60);
            (
                Encoding::Json.content_type(),
                json(&changed).expect("json"),
                "from_future",
            )
        }
        4 => {
            changed.resource_id = String::new();
            (
                Encoding::Json.content_type(),
                json(&changed).expect("json"),
                "invalid_field",
            )
        }
        _ => {
            changed.minute =
                Minute::from_unix_minutes(fleet_spec().end.unix_minutes() - 70 * 24 * 60);
            (
                Encoding::Json.content_type(),
                json(&changed).expect("json"),
                "too_old",
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_repeated_messages_are_dead_lettered_and_deduplicated() -> anyhow::Result<()> {
    let brokers = broker();
    let topic = unique_topic("bad-samples");
    let dead_letters = unique_topic("bad-deadletter");
    create_topic(&brokers, &topic, PARTITIONS).await?;
    create_topic(&brokers, &dead_letters, 1).await?;

    let fleet = Fleet::generate(fleet_spec());
    let mut truth = GroundTruth::default();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let send = |partition: i32, content_type: &'static str, payload: Vec<u8>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let headers = OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(content_type),
            });
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(partition)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(error, _)| error)
        }
    };
    // A seeded choice per message: ~1 % followed by a bad message, ~1 % sent twice.
    let mut state = 0x5eed_u64;
    let mut roll = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 33) % 100
    };
    let (mut messages, mut resent, mut expected_reasons) = (0, 0, Vec::new());
    let mut expected_payloads = Vec::new();
    for hour in fleet.chunks(60) {
        hour.iter().for_each(|sample| truth.record(sample));
        let mut by_partition = vec![Vec::new(); PARTITIONS as usize];
        for sample in hour {
            by_partition[partition_for(&sample.resource_id, PARTITIONS) as usize].push(sample);
        }
        for (partition, samples) in (0..).zip(&by_partition) {
            for batch in samples.chunks(SAMPLES_PER_MESSAGE) {
                let payload = Encoding::Arrow.encode(batch)?;
                send(partition, Encoding::Arrow.content_type(), payload.clone()).await?;
                messages += 1;
                match roll() {
                    0 => {
                        let (content_type, bad, reason) =
                            bad_message(expected_reasons.len(), &payload, &batch[0]);
                        send(partition, content_type, bad.clone()).await?;
                        expected_reasons.push(reason);
                        // A one-line JSON message's dead letter is the line as sent.
                        let mut original = bad;
                        if content_type == Encoding::Json.content_type() {
                            original.truncate(original.trim_ascii_end().len());
                        }
                        expected_payloads.push(original);
                    }
                    1 => {
                        send(partition, Encoding::Arrow.content_type(), payload).await?;
                        resent += batch.len();
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(
        expected_reasons.len() >= 6 && resent > 0,
        "{messages} messages gave {} bad ones and {resent} re-sent samples: too few to test",
        expected_reasons.len()
    );

    let lake = tempfile::tempdir()?;
    let mut config = AggregateConfig::new(lake.path());
    config.clock = Arc::new(FixedClock(fleet_spec().end.to_datetime()));
    let report = aggregate_drained(config, &brokers, &topic, &dead_letters).await?;
    println!(
        "{messages} good messages, {} bad ones, {resent} samples re-sent: {report:?}",
        expected_reasons.len()
    );

    tally_demo::check_against_truth(lake.path(), &truth)?;
    assert_eq!(report.duplicates as usize, resent, "{report:#?}");
    assert_eq!(report.conflicts, 0, "{report:#?}");
    let letters = read_dead_letters(&brokers, &dead_letters)?;
    let mut found: Vec<&str> = letters
        .iter()
        .map(|letter| letter.reason.as_str())
        .collect();
    found.sort_unstable();
    expected_reasons.sort_unstable();
    assert_eq!(
        found, expected_reasons,
        "one dead letter per bad message, with its reason"
    );
    let mut payloads: Vec<&[u8]> = letters
        .iter()
        .map(|letter| letter.payload.as_slice())
        .collect();
    payloads.sort_unstable();
    expected_payloads.sort_unstable();
    assert_eq!(
        payloads, expected_payloads,
        "each with the bytes that were sent"
    );
    Ok(())
}
