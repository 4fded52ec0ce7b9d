//! simulator → Tansu → aggregator → Parquet, checked against the simulator's ground truth.

use std::sync::Arc;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_aggregator::{AggregateConfig, KafkaInput};
use tally_collector::{Fleet, FleetSpec, GroundTruth, ShipConfig, Shipper};
use tally_model::clock::FixedClock;
use tally_model::wire::{CONTENT_TYPE_HEADER, Encoding};
use tally_tests::{broker, create_topic, read_dead_letters, unique_topic};

fn one_day() -> FleetSpec {
    FleetSpec {
        seed: 11,
        start: "2026-10-24T22:00:00Z".parse().expect("minute"),
        // 26 hours across the end of daylight saving time in Berlin.
        end: "2026-10-26T00:00:00Z".parse().expect("minute"),
        scale: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_totals_through_tansu_equal_the_ground_truth() -> anyhow::Result<()> {
    let brokers = broker();
    let topic = unique_topic("samples");
    let dead_letter_topic = unique_topic("deadletter");
    create_topic(&brokers, &topic, 3).await?;
    create_topic(&brokers, &dead_letter_topic, 1).await?;

    let fleet = Fleet::generate(one_day());
    let mut truth = GroundTruth::default();
    let arrow = Shipper::connect(&ShipConfig::new(&brokers, &topic))?;
    let mut json_config = ShipConfig::new(&brokers, &topic);
    json_config.encoding = Encoding::Json;
    json_config.max_batch_samples = 500;
    let json = Shipper::connect(&json_config)?;
    let mut shipped = 0;
    let mut resent = 0;
    for (index, chunk) in fleet.chunks(60).enumerate() {
        chunk.iter().for_each(|sample| truth.record(sample));
        shipped += chunk.len();
        // Both encodings, and every fifth hour sent twice: duplicates must count once.
        let shipper = if index % 2 == 0 { &arrow } else { &json };
        if index % 5 == 0 {
            resent += chunk.len();
            shipper.ship(chunk.clone()).await?;
        }
        shipper.ship(chunk).await?;
    }
    send_garbage(&brokers, &topic).await?;

    let lake = tempfile::tempdir()?;
    let mut config = AggregateConfig::new(lake.path());
    config.clock = Arc::new(FixedClock(one_day().end.to_datetime()));
    let mut input = KafkaInput::new(&brokers, &topic);
    input.dead_letter_topic = dead_letter_topic.clone();
    input.until_drained = true;
    input.group_id = unique_topic("aggregators");
    let metrics = lake.path().join("aggregator.prom");
    input.metrics_file = Some(metrics.clone());
    let aggregate = {
        let (config, input) = (config.clone(), input.clone());
        tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&config, &input)).await??
    };

    assert_eq!(aggregate.accepted as usize, shipped, "{aggregate:#?}");
    assert_eq!(aggregate.duplicates as usize, resent, "{aggregate:#?}");
    assert_eq!(
        aggregate.dead_letters.get("malformed"),
        Some(&1),
        "{aggregate:#?}"
    );
    assert_eq!(aggregate.dead_lettered(), 1, "{aggregate:#?}");
    assert_eq!(aggregate.hours_sealed, 26 * 3, "26 hours on 3 partitions");
    tally_demo::check_against_truth(lake.path(), &truth)?;
    assert_eq!(truth.totals().samples as usize, shipped);

    // The metrics file says what the report says.
    let text = std::fs::read_to_string(&metrics)?;
    let figure = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit_once(' '))
            .map(|(_, value)| value.to_owned())
    };
    assert_eq!(
        figure("tally_aggregator_accepted_total{").as_deref(),
        Some(shipped.to_string().as_str()),
        "{text}"
    );
    assert_eq!(
        figure("tally_aggregator_dead_letters_total{topic=\"").as_deref(),
        Some("1"),
        "the first reason listed is malformed: {text}"
    );

    let letters = read_dead_letters(&brokers, &dead_letter_topic)?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, "malformed");
    assert_eq!(letters[0].payload, b"definitely not an arrow stream");

    // A second run resumes where the manifests say and changes nothing.
    let again =
        tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&config, &input)).await??;
    assert_eq!(again.accepted, 0, "{again:#?}");
    assert_eq!(again.hours_sealed, 0, "{again:#?}");
    tally_demo::check_against_truth(lake.path(), &truth)?;
    Ok(())
}

async fn send_garbage(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let headers = OwnedHeaders::new().insert(Header {
        key: CONTENT_TYPE_HEADER,
        value: Some(Encoding::Arrow.content_type()),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .partition(1)
                .key("garbage")
                .payload("definitely not an arrow stream")
                .headers(headers),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)?;
    Ok(())
}
