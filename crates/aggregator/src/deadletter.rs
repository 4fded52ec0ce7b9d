//! Dead letters: everything that cannot be used, kept with its reason and origin.
//!
//! A dead letter carries the original bytes (the whole message, or the one JSON line, or
//! for a conflict the rejected sample as JSON), where it came from (topic, partition,
//! offset, line or row) and a reason code. The Kafka sink sends them to the dead-letter
//! topic (`tally.deadletter` by default) and flushes before any manifest moves the resume
//! offset past them. So none is lost, but one can be sent twice: an aggregator that
//! restarts (a crash, a hand-over) reads again from the manifest's resume offset and
//! rejects the same items again. Its origin headers (`tally-source-topic`, `-partition`,
//! `-offset`, `tally-item`) identify it; readers count dead letters by origin.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tally_model::RejectReason;

use crate::error::{Error, Result};

/// Default name of the dead-letter topic.
pub const DEFAULT_TOPIC: &str = "tally.deadletter";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: RejectReason,
    pub detail: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The line (JSON, 1-based) or row (Arrow, 0-based) within the message, if one.
    pub item: Option<usize>,
    pub payload: Vec<u8>,
}

/// Where dead letters go.
pub trait DeadLetterSink {
    fn send(&mut self, letter: DeadLetter) -> Result<()>;
    /// Returns once every letter sent so far is stored.
    fn flush(&mut self) -> Result<()>;
}

/// Counts of dead letters by reason code.
pub type DeadLetterCounts = BTreeMap<&'static str, u64>;

/// Keeps dead letters in memory (backfills report them; tests inspect them).
#[derive(Debug, Default)]
pub struct CollectedDeadLetters {
    pub letters: Vec<DeadLetter>,
}

impl DeadLetterSink for CollectedDeadLetters {
    fn send(&mut self, letter: DeadLetter) -> Result<()> {
        self.letters.push(letter);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Sends dead letters to a Kafka topic.
pub struct KafkaDeadLetters {
    producer: BaseProducer,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn connect(
        brokers: &str,
        topic: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("message.max.bytes", "16777216");
        for (key, value) in overrides {
            config.set(key, value);
        }
        let producer = config.create().map_err(|source| Error::Kafka {
            context: format!("creating the dead-letter producer for {brokers}"),
            source,
        })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn send(&mut self, letter: DeadLetter) -> Result<()> {
        let partition = letter.source_partition.to_string();
        let offset = letter.source_offset.to_string();
        let item = letter.item.map(|item| item.to_string()).unwrap_or_default();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tally-reason",
                value: Some(letter.reason.code()),
            })
            .insert(Header {
                key: "tally-detail",
                value: Some(letter.detail.as_str()),
            })
            .insert(Header {
                key: "tally-source-topic",
                value: Some(letter.source_topic.as_str()),
            })
            .insert(Header {
                key: "tally-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "tally-source-offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "tally-item",
                value: Some(item.as_str()),
            });
        let key = format!("{}/{}", letter.source_partition, letter.source_offset);
        let mut record = BaseRecord::to(&self.topic)
            .key(key.as_str())
            .payload(letter.payload.as_slice())
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((source, _)) => {
                    return Err(Error::Kafka {
                        context: format!("sending a dead letter to {}", self.topic),
                        source,
                    });
                }
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(120))
            .map_err(|source| Error::Kafka {
                context: format!("flushing dead letters to {}", self.topic),
                source,
            })
    }
}
