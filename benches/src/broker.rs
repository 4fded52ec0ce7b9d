//! The aggregator through the real broker: the same topic drained by a bare rdkafka
//! consumer (the baseline: what reading alone costs) and by `run_kafka`, the code behind
//! `tally aggregate` (reading, decoding, deduplicating, rolling up and sealing into a
//! lake), alternating, on Tansu started on 127.0.0.1 for the run.
//!
//! Tansu is the one `tests/run` installs into `${TALLY_CACHE_DIR:-~/.cache/tally}`; run the
//! test suite once first.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_aggregator::{AggregateConfig, KafkaInput, Ownership};
use tally_collector::{ShipConfig, Shipper};
use tally_model::clock::FixedClock;

use crate::aggregate::bench_fleet;
use crate::rating::{cache_dir, median};

const TANSU_VERSION: &str = "0.6.0";
const PARTITIONS: i32 = 2;
const DEAD_LETTERS: &str = "bench.deadletter";

/// Tansu on a free loopback port, stopped when dropped.
pub(crate) struct Tansu {
    process: Child,
    pub(crate) brokers: String,
    _work: tempfile::TempDir,
}

impl Tansu {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let binary = cache_dir().join(format!("tansu-{TANSU_VERSION}/bin/tansu"));
        if !binary.is_file() {
            bail!(
                "{} is missing: run the test suite once (`tests/run`), which installs it",
                binary.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let work = tempfile::tempdir()?;
        let process = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start tansu")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "tansu did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            process,
            brokers: format!("127.0.0.1:{port}"),
            _work: work,
        })
    }
}

impl Tansu {
    /// Creates `topic` with `partitions` partitions.
    pub(crate) fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .create()?;
            let results = admin
                .create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                )
                .await?;
            for result in results {
                result.map_err(|(name, error)| anyhow::anyhow!("creating {name}: {error}"))?;
            }
            anyhow::Ok(())
        })
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[derive(Clone, Debug, Default)]
pub struct BrokerFigures {
    pub samples: usize,
    pub messages: u64,
    pub bytes: u64,
    pub runs: usize,
    /// Seconds to drain the topic: a bare consumer, and the aggregator.
    pub bare: Vec<f64>,
    pub aggregator: Vec<f64>,
}

/// Ships `fleet_copies` copies of the simulator's fleet for `hours` hours into a fresh
/// topic, then drains it `runs` times with each contender.
pub fn through_broker(
    fleet_copies: usize,
    hours: i64,
    runs: usize,
) -> anyhow::Result<BrokerFigures> {
    let tansu = Tansu::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let topic = "bench.samples";
    let (fleet, end) = bench_fleet(fleet_copies, hours);
    let mut figures = BrokerFigures {
        runs,
        ..BrokerFigures::default()
    };
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &tansu.brokers)
            .create()?;
        for result in admin
            .create_topics(
                &[
                    NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)),
                    NewTopic::new(DEAD_LETTERS, 1, TopicReplication::Fixed(1)),
                ],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?
        {
            result.map_err(|(name, error)| anyhow::anyhow!("creating {name}: {error}"))?;
        }
        let shipper = Shipper::connect(&ShipConfig::new(&tansu.brokers, topic))?;
        for hour in fleet.chunks(60) {
            figures.samples += hour.len();
            shipper.ship(hour).await?;
        }
        anyhow::Ok(())
    })?;
    for _ in 0..runs {
        let started = Instant::now();
        let (messages, bytes) = drain_bare(&tansu.brokers, topic)?;
        figures.bare.push(started.elapsed().as_secs_f64());
        figures.messages = messages;
        figures.bytes = bytes;

        let lake = tempfile::tempdir()?;
        let mut config = AggregateConfig::new(lake.path());
        config.clock = Arc::new(FixedClock(end.to_datetime()));
        let mut input = KafkaInput::new(&tansu.brokers, topic);
        input.ownership = Ownership::AllPartitions;
        input.dead_letter_topic = DEAD_LETTERS.to_owned();
        input.until_drained = true;
        let started = Instant::now();
        let report = tally_aggregator::run_kafka(&config, &input)?;
        figures.aggregator.push(started.elapsed().as_secs_f64());
        ensure!(
            report.accepted as usize == figures.samples,
            "the aggregator took {} of {} samples",
            report.accepted,
            figures.samples
        );
    }
    Ok(figures)
}

/// Reads every partition of `topic` from the start to its end, touching each payload.
fn drain_bare(brokers: &str, topic: &str) -> anyhow::Result<(u64, u64)> {
    // The aggregator's fetch settings, so that only the work after fetching differs.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut messages, mut bytes, mut at_end) = (0u64, 0u64, BTreeSet::new());
    while at_end.len() < PARTITIONS as usize {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                messages += 1;
                bytes += message.payload().map_or(0, |payload| payload.len() as u64);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok((messages, bytes))
}

impl BrokerFigures {
    pub fn print(&self) {
        let (bare, aggregator) = (median(self.bare.clone()), median(self.aggregator.clone()));
        let rate = |seconds: f64| self.samples as f64 / seconds;
        println!(
            "draining {} samples ({} messages, {:.1} MiB) from Tansu {TANSU_VERSION} on loopback, {PARTITIONS} partitions, {} runs each, medians:",
            self.samples,
            self.messages,
            self.bytes as f64 / (1 << 20) as f64,
            self.runs
        );
        println!(
            "  bare rdkafka consumer (baseline)   {bare:7.3} s  {:>10.0} samples/s",
            rate(bare)
        );
        println!(
            "  tally aggregator (to the lake)     {aggregator:7.3} s  {:>10.0} samples/s",
            rate(aggregator)
        );
        println!(
            "  aggregator / bare throughput       {:7.2}",
            bare / aggregator
        );
    }
}
