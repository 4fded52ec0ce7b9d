//! Reading the samples topic.
//!
//! The aggregator is a member of a consumer group: each partition is owned by one
//! instance at a time, and read from the resume offset its manifest in the lake names,
//! not from Kafka's committed offsets: the manifest is written with the data, so the two
//! can never disagree, and a partition moves to another instance through the lake (see
//! `ConsumerEvents`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tally_lake::Lake;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tally_model::wire::CONTENT_TYPE_HEADER;

use crate::deadletter::{DEFAULT_TOPIC, KafkaDeadLetters};
use crate::error::{Error, Result};
use crate::ingest::{AggregateConfig, AggregateReport, Ingest};
use crate::manifest::Manifest;

/// Which partitions of the topic an instance reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Those the consumer group `group_id` gives it; they move between instances as
    /// instances come and go (many aggregators on one topic).
    Group,
    /// Every partition, without a group: one aggregator for the topic, restarted in
    /// place. A restart reads at once, where a group member would first wait for the
    /// group to notice that its killed predecessor is gone (the session timeout).
    AllPartitions,
}

/// Where to read samples from.
#[derive(Clone, Debug)]
pub struct KafkaInput {
    pub brokers: String,
    pub topic: String,
    pub ownership: Ownership,
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
    /// Where to keep the metrics in the Prometheus text format (see [`crate::metrics`]).
    pub metrics_file: Option<PathBuf>,
}

impl KafkaInput {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            ownership: Ownership::Group,
            group_id: "tally-aggregator".to_owned(),
            dead_letter_topic: DEFAULT_TOPIC.to_owned(),
            until_drained: false,
            stop: None,
            processed: Arc::new(AtomicU64::new(0)),
            librdkafka: BTreeMap::new(),
            metrics_file: None,
        }
    }
}

/// The consumer's context: reports client errors, and takes part in the group's
/// rebalances.
///
/// On assignment each partition starts at its manifest's resume offset (the first
/// message of its oldest open hour; Kafka's committed offsets are not used): whichever
/// instance owned it before left everything before that offset sealed, and everything
/// after it is read again, onto the open hours restored from the checkpoint (what they
/// already hold counts as duplicates). It does not start after the checkpoint: Tansu
/// 0.6 delivers nothing from an offset inside a record batch (measured: a batch of ten
/// messages fetched from offset 3, 5 or 9 gave none), and a checkpoint's offset falls
/// anywhere; a gap in the offsets read stops the run instead (see [`Error::Gap`]). On revocation nothing is sealed or written:
/// the partitions are noted, and the main loop drops their in-memory state before it
/// touches anything else. An instance paused past the group's session timeout still
/// holds its partitions' locks (see `partition::claim`); the next owner waits for them,
/// and the main loop checks that the manifest it then opens still says what the
/// consumer was started at.
struct ConsumerEvents {
    lake: Lake,
    source: String,
    changes: Mutex<Vec<Change>>,
}

#[derive(Debug)]
enum Change {
    /// Partitions and the offsets the consumer was started at.
    Assigned(Vec<(i32, i64)>),
    Revoked(Vec<i32>),
    /// A manifest could not be read while assigning: the run stops with this error.
    Failed(Error),
}

impl ConsumerEvents {
    fn note(&self, change: Change) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }

    fn take_changes(&self) -> Vec<Change> {
        self.changes
            .lock()
            .map(|mut changes| std::mem::take(&mut *changes))
            .unwrap_or_default()
    }

    /// Starts reading `partitions`, each at the resume offset of its manifest.
    fn take_partitions(
        &self,
        consumer: &BaseConsumer<ConsumerEvents>,
        partitions: &mut TopicPartitionList,
    ) {
        let numbers: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|element| (element.topic().to_owned(), element.partition()))
            .collect();
        let mut assigned = Vec::new();
        for (topic, partition) in &numbers {
            let resume = match Manifest::load(&self.lake, &self.source, *partition) {
                Ok(manifest) => manifest.resume_offset,
                Err(error) => {
                    self.note(Change::Failed(error));
                    continue;
                }
            };
            assigned.push((*partition, resume));
            if let Err(source) =
                partitions.set_partition_offset(topic, *partition, Offset::Offset(resume))
            {
                self.note(Change::Failed(Error::Kafka {
                    context: format!("starting partition {partition} at its resume offset"),
                    source,
                }));
            }
        }
        if let Err(source) = consumer.assign(partitions) {
            self.note(Change::Failed(Error::Kafka {
                context: "taking the assigned partitions".to_owned(),
                source,
            }));
        }
        tracing::info!(partitions = ?assigned, "partitions assigned (partition, offset)");
        self.note(Change::Assigned(assigned));
    }
}

impl ClientContext for ConsumerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        // With `enable.partition.eof` the end of a partition is how a drained run knows
        // it is done, not an error.
        // librdkafka reports it per partition or, on some paths, as a global error.
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "kafka consumer error");
        }
    }
}

impl ConsumerContext for ConsumerEvents {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|element| element.partition())
            .collect();
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.take_partitions(consumer, partitions);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.note(Change::Revoked(numbers.clone()));
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "cannot give the revoked partitions up");
                }
                tracing::info!(partitions = ?numbers, "partitions revoked");
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "cannot give the partitions up after a failed rebalance");
                }
                self.note(Change::Revoked(numbers));
            }
        }
    }
}

/// Takes every partition of `topic`, each at its manifest's resume offset, as a group's
/// assignment would.
fn assign_all(consumer: &BaseConsumer<ConsumerEvents>, topic: &str) -> Result<()> {
    let kafka = |context: String| move |source: KafkaError| Error::Kafka { context, source };
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(kafka(format!("reading the partitions of topic '{topic}'")))?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic && found.error().is_none())
        .flat_map(|found| found.partitions())
    {
        partitions.add_partition(topic, partition.id());
    }
    if partitions.count() == 0 {
        return Err(Error::Kafka {
            context: format!("topic '{topic}'"),
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
        });
    }
    consumer
        .context()
        .take_partitions(consumer, &mut partitions);
    Ok(())
}

/// Messages between two checks of the watermark.
const SEAL_CHECK_INTERVAL: u64 = 64;

/// Consumes `input` into the lake of `config`, as one member of the consumer group
/// `input.group_id`: the partitions this instance owns change as members come and go.
pub fn run_kafka(config: &AggregateConfig, input: &KafkaInput) -> Result<AggregateReport> {
    let kafka = |context: String| move |source: KafkaError| Error::Kafka { context, source };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &input.brokers)
        .set("group.id", &input.group_id)
        // Eager rebalancing: all of an instance's partitions are revoked before any is
        // assigned elsewhere, which the hand-over through the lake relies on.
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216");
    for (key, value) in &input.librdkafka {
        client.set(key, value);
    }
    let events = ConsumerEvents {
        lake: config.lake.clone(),
        source: crate::ingest::source_name(&input.topic),
        changes: Mutex::new(Vec::new()),
    };
    let consumer: BaseConsumer<ConsumerEvents> = client
        .create_with_context(events)
        .map_err(kafka(format!("creating a consumer for {}", input.brokers)))?;
    match input.ownership {
        Ownership::Group => consumer
            .subscribe(&[input.topic.as_str()])
            .map_err(kafka(format!("subscribing to '{}'", input.topic)))?,
        Ownership::AllPartitions => assign_all(&consumer, &input.topic)?,
    }

    let mut dead_letters =
        KafkaDeadLetters::connect(&input.brokers, &input.dead_letter_topic, &input.librdkafka)?;
    let mut ingest = Ingest::new(config.clone(), &input.topic, &mut dead_letters);
    // Partitions owned now, with the offset after the last message processed.
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    // Owned partitions at their end (read up to what was produced).
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut since_check: BTreeMap<i32, u64> = BTreeMap::new();
    let mut last_checkpoint = Instant::now();
    loop {
        // Assignments made outside `poll` (every partition, without a group).
        apply_changes(
            &consumer,
            &mut ingest,
            &mut next_offsets,
            &mut at_end,
            &input.topic,
        )?;
        let stop_raised = input.stop.as_ref().map(|stop| stop.load(Ordering::Acquire));
        // Drained: owning partitions, and at the end of every one of them.
        let drained = !next_offsets.is_empty() && next_offsets.keys().all(|p| at_end.contains(p));
        let finished = if input.until_drained {
            drained && stop_raised.unwrap_or(true)
        } else {
            stop_raised.unwrap_or(false)
        };
        if finished {
            break;
        }
        let polled = consumer.poll(Duration::from_millis(100));
        // A rebalance happens inside `poll`, which may then return a message of a
        // partition it just assigned: the change is applied before the message.
        apply_changes(
            &consumer,
            &mut ingest,
            &mut next_offsets,
            &mut at_end,
            &input.topic,
        )?;
        since_check.retain(|partition, _| next_offsets.contains_key(partition));
        match polled {
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
                let Some(&expected) = next_offsets.get(&partition) else {
                    // librdkafka drops what it fetched for revoked partitions; reading on
                    // here could let a manifest pass this message unread.
                    return Err(Error::NotOwned {
                        partition,
                        offset: message.offset(),
                    });
                };
                if message.offset() > expected {
                    // The samples topic is neither compacted nor transactional: its offsets
                    // have no holes, so a skipped offset is a message not delivered.
                    return Err(Error::Gap {
                        partition,
                        expected,
                        got: message.offset(),
                    });
                }
                at_end.remove(&partition);
                let header = |key: &str| {
                    message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == key)
                            .and_then(|header| header.value)
                    })
                };
                let content_type =
                    header(CONTENT_TYPE_HEADER).and_then(|value| std::str::from_utf8(value).ok());
                let signed = crate::ingest::SignedBy {
                    host: header(tally_model::signing::HOST_HEADER),
                    signature: header(tally_model::signing::SIGNATURE_HEADER),
                };
                let payload = message.payload().unwrap_or_default();
                ingest.process_signed(
                    &input.topic,
                    partition,
                    message.offset(),
                    content_type,
                    signed,
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
        if last_checkpoint.elapsed() >= config.checkpoint_interval {
            for (&partition, &next_offset) in &next_offsets {
                ingest.checkpoint(partition, next_offset)?;
            }
            commit_hint(&consumer, &input.topic, &next_offsets);
            report_metrics(&consumer, input, &ingest.report, &next_offsets)?;
            last_checkpoint = Instant::now();
        }
    }
    for (partition, next_offset) in next_offsets {
        if input.until_drained {
            ingest.seal_all(partition, next_offset)?;
        } else {
            ingest.seal_ready(partition, next_offset)?;
            ingest.checkpoint(partition, next_offset)?;
        }
    }
    let report = ingest.report;
    report_metrics(&consumer, input, &report, &BTreeMap::new())?;
    Ok(report)
}

/// Applies the rebalances noted since the last call: a revoked partition's state is
/// dropped, an assigned one's is opened from the lake.
/// A partition assigned starts at its resume offset, not at its end: its end mark goes.
fn apply_changes(
    consumer: &BaseConsumer<ConsumerEvents>,
    ingest: &mut Ingest<'_>,
    next_offsets: &mut BTreeMap<i32, i64>,
    at_end: &mut BTreeSet<i32>,
    topic: &str,
) -> Result<()> {
    for change in consumer.context().take_changes() {
        match change {
            Change::Failed(error) => return Err(error),
            Change::Revoked(partitions) => {
                for partition in partitions {
                    ingest.close_partition(partition);
                    next_offsets.remove(&partition);
                    at_end.remove(&partition);
                }
            }
            Change::Assigned(partitions) => {
                for (partition, started_at) in partitions {
                    // With the partition's lock held, its manifest is final: if the
                    // previous owner moved it back after the consumer was started (it
                    // sealed and dropped a later checkpoint), reading from there would
                    // skip samples.
                    let resume = ingest.open_partition(partition)?;
                    if resume < started_at {
                        return Err(Error::StaleStart {
                            partition,
                            started_at,
                            resume,
                        });
                    }
                    // Where the consumer really is: the next message must be this one.
                    next_offsets.insert(partition, started_at);
                    at_end.remove(&partition);
                    tracing::info!(topic, partition, resume, "reading partition");
                }
            }
        }
    }
    Ok(())
}

/// Commits the checkpointed offsets to Kafka, for the tools that show a group's lag there.
/// A hint only: the aggregator itself resumes from its manifests, never from these.
fn commit_hint(
    consumer: &BaseConsumer<ConsumerEvents>,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) {
    let mut offsets = TopicPartitionList::new();
    for (&partition, &next) in next_offsets {
        if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::debug!(%error, partition, "offset not committed");
        }
    }
    if offsets.count() > 0
        && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
    {
        tracing::debug!(%error, "committing the offsets (a hint for tools) failed");
    }
}

/// Logs the metrics as one structured line and writes them to the metrics file.
fn report_metrics(
    consumer: &BaseConsumer<ConsumerEvents>,
    input: &KafkaInput,
    report: &AggregateReport,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    // One request per partition owned, once an interval; a partition whose end the
    // broker does not tell in time is left out rather than holding the loop up.
    let lag: BTreeMap<i32, i64> = next_offsets
        .iter()
        .filter_map(|(&partition, &next)| {
            let (_, end) = consumer
                .fetch_watermarks(&input.topic, partition, Duration::from_millis(500))
                .ok()?;
            Some((partition, (end - next).max(0)))
        })
        .collect();
    tracing::info!(
        topic = %input.topic,
        messages = report.messages,
        accepted = report.accepted,
        duplicates = report.duplicates,
        conflicts = report.conflicts,
        dead_letters = ?report.dead_letters,
        late_samples = report.late_samples,
        hours_sealed = report.hours_sealed,
        restatements = report.restatements,
        max_restatement_lag_minutes = report.max_restatement_lag_minutes,
        last_checkpoint_micros = report.last_checkpoint_micros,
        lag = ?lag,
        "aggregator metrics"
    );
    match &input.metrics_file {
        Some(path) => crate::metrics::write_file(
            path,
            &crate::metrics::prometheus_text(&input.topic, report, &lag),
        ),
        None => Ok(()),
    }
}
