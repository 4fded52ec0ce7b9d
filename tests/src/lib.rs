//! Shared helpers of the integration tests: the real broker started by `tests/run`,
//! topics of their own for each test, and reading the dead-letter topic back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

/// The broker `tests/run` started. Tests that need it fail, never skip, without it.
pub fn broker() -> String {
    std::env::var("TALLY_TEST_BROKER").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_BROKER is not set: run the suite with `tests/run`, which installs and \
             starts Tansu on 127.0.0.1 and sets it"
        )
    })
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` partitions on `brokers`.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        if let Err((name, error)) = result {
            anyhow::bail!("creating topic {name}: {error}");
        }
    }
    Ok(())
}

/// A message read back from the dead-letter topic.
#[derive(Debug, Clone)]
pub struct ReadDeadLetter {
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
}

/// Reads every message of `topic` (all partitions, from the start) until it is drained.
pub fn read_dead_letters(brokers: &str, topic: &str) -> anyhow::Result<Vec<ReadDeadLetter>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_topic("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let header = |key: &str| {
                    message
                        .headers()
                        .and_then(|headers| headers.iter().find(|h| h.key == key))
                        .and_then(|h| h.value)
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                        .unwrap_or_default()
                };
                letters.push(ReadDeadLetter {
                    reason: header("tally-reason"),
                    detail: header("tally-detail"),
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(letters),
            Some(Err(error)) => anyhow::bail!("reading {topic}: {error}"),
            None => {}
        }
    }
    anyhow::bail!("reading {topic} did not reach its end within 60 s")
}
