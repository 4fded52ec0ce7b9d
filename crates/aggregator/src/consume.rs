//! Reading the samples topic.
//!
//! Every partition of the topic is assigned to this instance and read from the resume
//! offset its manifest names, not from Kafka's committed offsets: the manifest is written
//! with the data, so the two can never disagree. (Consumer-group ownership with
//! hand-over through the lake is the next step; see the README.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tally_model::wire::CONTENT_TYPE_HEADER;

use crate::deadletter::{DEFAULT_TOPIC, KafkaDeadLetters};
use crate::error::{Error, Result};
use crate::ingest::{AggregateConfig, AggregateReport, Ingest};

/// Where to read samples from.
#[derive(Clone, Debug)]
pub struct KafkaInput {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub dead_letter_topic: String,
    /// Stop once every partition is read to its end, and seal all open hours (backfills,
    /// the demo, tests). Otherwise run until `stop` is raised.
    pub until_drained: bool,
    /// Raised to stop: at once (sealing what the watermark allows), or with
    /// `until_drained`, once everything produced so far is read. Without it, a drained run
    /// stops at the first moment every partition is at its end.
    pub stop: Option<Arc<AtomicBool>>,
    /// Counts the messages processed, for a producer that waits for the aggregator.
    pub processed: Arc<AtomicU64>,
    /// librdkafka settings applied last (TLS, SASL/SCRAM, fetch sizes).
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaInput {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group_id: "tally-aggregator".to_owned(),
            dead_letter_topic: DEFAULT_TOPIC.to_owned(),
            until_drained: false,
            stop: None,
            processed: Arc::new(AtomicU64::new(0)),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// Reports client errors, except the end of a partition: with `enable.partition.eof`
/// that is how a drained run knows it is done, not an error.
struct ConsumerEvents;

impl ClientContext for ConsumerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(%error, reason, "kafka consumer error");
        }
    }
}

impl ConsumerContext for ConsumerEvents {}

/// Messages between two checks of the watermark.
const SEAL_CHECK_INTERVAL: u64 = 64;

/// Consumes `input` into the lake of `config`.
pub fn run_kafka(config: &AggregateConfig, input: &KafkaInput) -> Result<AggregateReport> {
    let kafka = |context: String| move |source: KafkaError| Error::Kafka { context, source };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &input.brokers)
        .set("group.id", &input.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216");
    for (key, value) in &input.librdkafka {
        client.set(key, value);
    }
    let consumer: BaseConsumer<ConsumerEvents> = client
        .create_with_context(ConsumerEvents)
        .map_err(kafka(format!("creating a consumer for {}", input.brokers)))?;
    let metadata = consumer
        .fetch_metadata(Some(&input.topic), Duration::from_secs(30))
        .map_err(kafka(format!(
            "reading the partitions of topic '{}'",
            input.topic
        )))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.name() == input.topic && topic.error().is_none())
        .flat_map(|topic| topic.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::Kafka {
            context: format!("topic '{}' on {}", input.topic, input.brokers),
            source: KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ),
        });
    }

    let mut dead_letters =
        KafkaDeadLetters::connect(&input.brokers, &input.dead_letter_topic, &input.librdkafka)?;
    let mut ingest = Ingest::new(config.clone(), &input.topic, &mut dead_letters);
    let mut assignment = TopicPartitionList::new();
    let mut next_offsets = BTreeMap::new();
    for partition in &partitions {
        let resume = ingest.open_partition(*partition)?;
        next_offsets.insert(*partition, resume);
        assignment
            .add_partition_offset(&input.topic, *partition, Offset::Offset(resume))
            .map_err(kafka(format!("assigning partition {partition}")))?;
        tracing::info!(topic = %input.topic, partition, resume, "assigned partition");
    }
    consumer.assign(&assignment).map_err(kafka(format!(
        "assigning the partitions of '{}'",
        input.topic
    )))?;

    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut since_check: BTreeMap<i32, u64> = BTreeMap::new();
    loop {
        let stop_raised = input.stop.as_ref().map(|stop| stop.load(Ordering::Acquire));
        let drained = at_end.len() == partitions.len();
        let finished = if input.until_drained {
            drained && stop_raised.unwrap_or(true)
        } else {
            stop_raised.unwrap_or(false)
        };
        if finished {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => {
                // librdkafka retries broker errors itself; they are reported, not fatal.
                tracing::warn!(%error, topic = %input.topic, "consumer error");
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                at_end.remove(&partition);
                let content_type = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key == CONTENT_TYPE_HEADER)
                        .and_then(|header| header.value)
                        .and_then(|value| std::str::from_utf8(value).ok())
                });
                let payload = message.payload().unwrap_or_default();
                ingest.process(
                    &input.topic,
                    partition,
                    message.offset(),
                    content_type,
                    payload,
                )?;
                next_offsets.insert(partition, message.offset() + 1);
                input.processed.fetch_add(1, Ordering::Release);
                let count = since_check.entry(partition).or_default();
                *count += 1;
                if *count >= SEAL_CHECK_INTERVAL {
                    *count = 0;
                    ingest.seal_ready(partition, message.offset() + 1)?;
                }
            }
        }
    }
    for (partition, next_offset) in next_offsets {
        if input.until_drained {
            ingest.seal_all(partition, next_offset)?;
        } else {
            ingest.seal_ready(partition, next_offset)?;
        }
    }
    Ok(ingest.report)
}
