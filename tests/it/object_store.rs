//! The lake on a real S3-compatible server (moto, started on 127.0.0.1 by `tests/run`):
//! the aggregator writes there the bytes it writes to a directory, rating reads and writes
//! there the files it does on disk, and an aggregator that lost its partition is refused
//! by the server's conditional writes instead of overwriting its successor.

use std::path::Path;
use std::sync::Arc;

use tally_aggregator::manifest::{self, Manifest};
use tally_aggregator::partition::PartitionState;
use tally_aggregator::{AggregateConfig, KafkaInput, Ownership};
use tally_collector::{Fleet, FleetSpec, ShipConfig, Shipper};
use tally_lake::Lake;
use tally_model::clock::FixedClock;
use tally_tests::{
    assert_same_ratings, broker, create_topic, demo_month, demo_tariffs, lake_files, s3_lake,
    unique_topic,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_writes_to_s3_the_bytes_it_writes_to_disk() -> anyhow::Result<()> {
    let brokers = broker();
    let topic = unique_topic("s3-samples");
    create_topic(&brokers, &topic, 3).await?;
    let spec = FleetSpec {
        seed: 8,
        start: "2026-10-07T00:00:00Z".parse()?,
        end: "2026-10-07T05:00:00Z".parse()?,
        scale: 1,
    };
    let samples: Vec<_> = Fleet::generate(spec.clone()).chunks(60).flatten().collect();
    Shipper::connect(&ShipConfig::new(&brokers, &topic))?
        .ship(samples.clone())
        .await?;

    let directory = tempfile::tempdir()?;
    let on_disk = Lake::directory(directory.path());
    let on_s3 = s3_lake("aggregate");
    for lake in [&on_disk, &on_s3] {
        let mut config = AggregateConfig::new(lake.clone());
        config.clock = Arc::new(FixedClock(spec.end.to_datetime()));
        let mut input = KafkaInput::new(&brokers, &topic);
        input.ownership = Ownership::AllPartitions;
        input.until_drained = true;
        input.dead_letter_topic = unique_topic("s3-deadletter");
        let report =
            tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&config, &input))
                .await??;
        assert_eq!(report.accepted, samples.len() as u64, "into {lake}");
    }

    let rollups = lake_files(&on_disk, "rollups")?;
    assert!(rollups.len() >= 5, "{} rollup files", rollups.len());
    assert!(
        lake_files(&on_s3, "rollups")? == rollups,
        "the rollup files on S3 differ from those on disk"
    );
    let source = tally_aggregator::ingest::source_name(&topic);
    for partition in 0..3 {
        let disk = Manifest::load(&on_disk, &source, partition)?;
        let s3 = Manifest::load(&on_s3, &source, partition)?;
        assert_eq!(
            (&s3.sealed, s3.resume_offset),
            (&disk.sealed, disk.resume_offset)
        );
        // One instance opened the partition on S3 once; a directory's owners lock it.
        assert_eq!((s3.owners, disk.owners), (1, 0));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_reads_and_writes_a_lake_on_s3_byte_for_byte() -> anyhow::Result<()> {
    // The demo's month, rated on disk, is the reference.
    let (out, demo) = demo_month().await?;
    let on_disk = Lake::directory(&demo.lake);
    let started = std::time::Instant::now();

    // The same rollups on S3, rated there into S3, with the URL as `tally rate` takes it.
    let prefix = unique_topic("rate");
    let on_s3 = Lake::open_with(
        &format!("s3://{}/{prefix}", std::env::var("TALLY_TEST_S3_BUCKET")?),
        [
            ("aws_endpoint", std::env::var("TALLY_TEST_S3")?),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "test".to_owned()),
            ("aws_secret_access_key", "test".to_owned()),
        ],
    )?;
    let rollups = lake_files(&on_disk, "rollups")?;
    let uploaded = rollups.len();
    on_s3.put_many(rollups)?;
    println!(
        "uploaded {uploaded} rollup files in {:?}",
        started.elapsed()
    );
    let tariffs = demo_tariffs(out.path())?;
    let report = tally_rating::rate(&tally_rating::RateRequest {
        lake: on_s3.clone(),
        month: demo.month.clone(),
        tariffs,
        contracts: out.path().join("contracts.json"),
        out: on_s3.clone(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    })
    .await?;
    println!(
        "rated {} line items into {} invoices on S3 after {:?}",
        report.line_items,
        report.invoices.len(),
        started.elapsed()
    );
    assert!(
        report.line_items_file.starts_with("s3://"),
        "{}",
        report.line_items_file
    );
    assert_eq!(report.invoices.len(), demo.rating.invoices.len());

    assert_same_ratings(&on_disk, &on_s3, "rated on S3")?;

    // Analysts' SQL sees the same tables on S3.
    let statement = "SELECT count(*) AS n, CAST(sum(\"BilledCost\") * 100 AS BIGINT) AS cents \
                     FROM line_items";
    let on_s3_answer = tally_rating::sql(&on_s3, statement).await?;
    let on_disk_answer = tally_rating::sql(&on_disk, statement).await?;
    assert_eq!(
        tally_rating::format_batches(&on_s3_answer)?,
        tally_rating::format_batches(&on_disk_answer)?
    );
    let rollups = "SELECT count(*) FROM rollups";
    assert_eq!(
        tally_rating::format_batches(&tally_rating::sql(&on_s3, rollups).await?)?,
        tally_rating::format_batches(&tally_rating::sql(&on_disk, rollups).await?)?
    );
    Ok(())
}

#[test]
fn an_aggregator_that_lost_its_partition_is_refused_by_the_server() -> anyhow::Result<()> {
    let lake = s3_lake("fencing");
    let spec = FleetSpec {
        seed: 9,
        start: "2026-10-08T00:00:00Z".parse()?,
        end: "2026-10-08T01:00:00Z".parse()?,
        scale: 1,
    };
    let samples: Vec<_> = Fleet::generate(spec).chunks(60).flatten().collect();
    let (first_half, second_half) = samples.split_at(samples.len() / 2);
    let accept = |state: &mut PartitionState, samples: &[tally_model::Sample]| {
        for (offset, sample) in samples.iter().enumerate() {
            state.accept(sample, offset as i64)?;
        }
        anyhow::Ok(())
    };

    // An instance paused past the group's session timeout still holds its samples when
    // the partition goes to another, which then seals the hour first.
    let mut stale = PartitionState::open(&lake, "samples", 0, 15)?;
    accept(&mut stale, first_half)?;
    let mut owner = PartitionState::open(&lake, "samples", 0, 15)?;
    accept(&mut owner, second_half)?;
    owner.seal_all(samples.len() as i64)?;
    let sealed = Manifest::load(&lake, "samples", 0)?;

    let refused = stale
        .seal_all(first_half.len() as i64)
        .expect_err("the stale instance must not seal");
    assert!(
        matches!(
            refused,
            tally_aggregator::Error::TakenOver { partition: 0, .. }
        ),
        "{refused}"
    );
    // Nothing of the stale instance's reached the lake: the manifest and the files it
    // names are the owner's.
    assert_eq!(Manifest::load(&lake, "samples", 0)?, sealed);
    assert_eq!(sealed.owners, 2);
    let mut samples_sealed = 0;
    for hour in sealed.sealed.values() {
        let key = manifest::key(Path::new(&hour.file));
        for row in tally_aggregator::write::read_lake_rows(&lake, &key)? {
            samples_sealed += u64::from(row.meters.sample_count);
        }
    }
    assert_eq!(samples_sealed, second_half.len() as u64);
    Ok(())
}
