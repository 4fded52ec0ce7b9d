//! Three aggregators in one consumer group on the real broker, over a topic of 12
//! partitions: two members join and then leave while the samples arrive, so partitions
//! move between them through the lake, and the lake they leave equals the ground truth.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_aggregator::{AggregateConfig, AggregateReport, KafkaInput};
use tally_collector::{Fleet, FleetSpec, GroundTruth, ShipConfig, Shipper};
use tally_model::clock::FixedClock;
use tally_tests::{broker, create_topic, read_dead_letters, unique_topic};

fn fleet_spec() -> FleetSpec {
    FleetSpec {
        seed: 5,
        start: "2026-10-21T00:00:00Z".parse().expect("minute"),
        end: "2026-10-21T12:00:00Z".parse().expect("minute"),
        scale: 4,
    }
}

/// Waits until `instance` has processed more than `messages` messages.
async fn processed_beyond(instance: &KafkaInput, messages: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while instance.processed.load(Ordering::Acquire) <= messages {
        anyhow::ensure!(
            Instant::now() < deadline,
            "an aggregator processed only {} messages in two minutes",
            instance.processed.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_handed_over_between_three_aggregators_lose_and_double_nothing()
-> anyhow::Result<()> {
    let brokers = broker();
    let topic = unique_topic("group-samples");
    let dead_letters = unique_topic("group-deadletter");
    // More partitions than members, so every member owns several and a rebalance moves
    // some of each.
    create_topic(&brokers, &topic, 12).await?;
    create_topic(&brokers, &dead_letters, 1).await?;

    let fleet = Fleet::generate(fleet_spec());
    let hours: Vec<_> = fleet.chunks(60).collect();
    let mut truth = GroundTruth::default();
    hours
        .iter()
        .flatten()
        .for_each(|sample| truth.record(sample));
    let mut ship_config = ShipConfig::new(&brokers, &topic);
    ship_config.max_batch_samples = 200;
    let shipper = Shipper::connect(&ship_config)?;
    // An hour of samples every two seconds, while the members come and go.
    let shipping = tokio::spawn(async move {
        for hour in hours {
            shipper.ship(hour).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        anyhow::Ok(())
    });

    let lake = tempfile::tempdir()?;
    let mut config = AggregateConfig::new(lake.path());
    config.clock = Arc::new(FixedClock(fleet_spec().end.to_datetime()));
    let member = |until_drained: bool| {
        let mut input = KafkaInput::new(&brokers, &topic);
        input.group_id = format!("{topic}.aggregators");
        input.dead_letter_topic = dead_letters.clone();
        input.until_drained = until_drained;
        input.stop = Some(Arc::new(AtomicBool::new(false)));
        input
    };
    let run = |input: &KafkaInput| {
        let (config, input) = (config.clone(), input.clone());
        tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&config, &input))
    };
    let stop = |input: &KafkaInput| {
        if let Some(stop) = &input.stop {
            stop.store(true, Ordering::Release);
        }
    };

    // The first member stays to the end and drains the topic.
    let first = member(true);
    let first_run = run(&first);
    processed_beyond(&first, 20).await?;
    // A second and then a third join: each time the group takes partitions from the
    // members it has and hands them to the new one through the lake.
    let second = member(false);
    let second_run = run(&second);
    processed_beyond(&second, 10).await?;
    let third = member(false);
    let third_run = run(&third);
    processed_beyond(&third, 10).await?;
    // Then they leave mid-stream, one after the other, with hours still open: the
    // members that stay take their partitions back and read them again from their
    // manifests.
    stop(&second);
    let second_report: AggregateReport = second_run.await??;
    processed_beyond(&third, third.processed.load(Ordering::Acquire) + 5).await?;
    stop(&third);
    let third_report: AggregateReport = third_run.await??;
    shipping.await??;
    stop(&first);
    let first_report = first_run.await??;
    println!("{} samples", truth.totals().samples);
    for (name, report) in [
        ("first", &first_report),
        ("second", &second_report),
        ("third", &third_report),
    ] {
        println!(
            "{name} member: {} accepted, {} duplicates, {} hours sealed",
            report.accepted, report.duplicates, report.hours_sealed
        );
    }
    assert!(
        second_report.accepted > 0 && third_report.accepted > 0,
        "a member that joined never took a partition"
    );

    tally_demo::check_against_truth(lake.path(), &truth)?;
    let letters = read_dead_letters(&brokers, &dead_letters)?;
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    Ok(())
}
