//! The Kafka producer: samples grouped by partition, encoded, sent and acknowledged.
//!
//! The producer is idempotent with `acks=all`, so a broker hiccup neither loses nor
//! reorders a batch; `message.timeout.ms = 0` (no timeout) keeps a message that is only
//! in memory from ever being given up during an outage. Every librdkafka setting can be
//! overridden (TLS, SASL/SCRAM, batching) through [`ShipConfig::librdkafka`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tally_model::Sample;
use tally_model::signing::{HOST_HEADER, HostKey, SIGNATURE_HEADER};
use tally_model::wire::{CONTENT_TYPE_HEADER, Encoding};
use tokio::sync::oneshot;

use crate::partition::partition_for;

/// Where and how to ship samples.
#[derive(Clone, Debug)]
pub struct ShipConfig {
    /// `host:port[,host:port...]` of the Kafka brokers.
    pub brokers: String,
    pub topic: String,
    pub encoding: Encoding,
    /// Most samples in one message; 4,096 Arrow-encoded samples stay well under Kafka's
    /// default 1 MiB message limit.
    pub max_batch_samples: usize,
    /// librdkafka settings applied last, overriding Tally's defaults.
    pub librdkafka: BTreeMap<String, String>,
    /// Signs every message's payload as this host (headers `tally-host`,
    /// `tally-signature`; see [`tally_model::signing`]).
    pub signing: Option<Arc<HostKey>>,
}

impl ShipConfig {
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            encoding: Encoding::Arrow,
            max_batch_samples: default_max_batch_samples(),
            librdkafka: BTreeMap::new(),
            signing: None,
        }
    }
}

const fn default_max_batch_samples() -> usize {
    4096
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot create a Kafka producer for {brokers}: {source}")]
    Connect { brokers: String, source: KafkaError },
    #[error("cannot read the partitions of topic '{topic}' from {brokers}: {detail}")]
    Metadata {
        brokers: String,
        topic: String,
        detail: String,
    },
    #[error("cannot encode a batch of {samples} samples: {source}")]
    Encode {
        samples: usize,
        source: arrow::error::ArrowError,
    },
    #[error("topic '{topic}' partition {partition}: delivery failed: {source}")]
    Delivery {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
}

/// What one call to [`Shipper::ship`] sent; every message in it was acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipReport {
    pub samples: usize,
    pub messages: usize,
    pub bytes: usize,
}

/// librdkafka's client-wide errors, logged once per kind a minute: during an outage it
/// reports "all brokers down" every few milliseconds, which would drown the log.
#[derive(Debug, Default)]
pub struct ShipContext {
    last_logged: Mutex<Option<(String, Instant)>>,
    /// The first few distinct client errors, to explain a failed connect (an
    /// authentication failure surfaces there only as a transport failure).
    early_errors: Mutex<Vec<String>>,
}

const REPEATED_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Hands each message's delivery report to the `ship` call waiting for it.
impl ProducerContext for ShipContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        // The caller may have given up (a shutdown past its deadline): nobody to tell.
        let _ = waiting.send(outcome);
    }
}

/// How long one poll of librdkafka waits for events. Delivery reports are handled as they
/// arrive within it; the length only sets how often an idle agent wakes (the rdkafka
/// crate's own polling thread wakes every 100 ms and spins on its deadline each time,
/// which was most of an idle agent's CPU).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

impl ShipContext {
    /// Keeps `text` unless one like it is kept already: librdkafka repeats a failure with
    /// only its trailing "(after 2ms in state UP, 1 identical error(s) suppressed)"
    /// changed, and four of those would crowd out the one report that says why.
    fn note_early(&self, text: String) {
        let text = without_timing(&text).to_owned();
        if let Ok(mut early) = self.early_errors.lock()
            && early.len() < 4
            && !early.contains(&text)
        {
            early.push(text);
        }
    }
}

/// `report` without librdkafka's trailing "(after …)" timing note.
fn without_timing(report: &str) -> &str {
    match report.rfind(" (after ") {
        Some(at) if report.ends_with(')') => &report[..at],
        _ => report,
    }
}

/// Whether a failed metadata fetch never got an answer from the broker: the connection
/// was refused, closed or reset. A TLS or SASL listener closes a plaintext client's
/// connection without a word, so this is all such a client learns.
fn never_answered(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

impl ClientContext for ShipContext {
    /// As rdkafka logs by default; warnings and worse are also kept to explain a failed
    /// connect (a failed TLS handshake is reported only in a log line).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}");
                return;
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
                return;
            }
        }
        self.note_early(format!("{facility}: {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note_early(format!("{error}: {reason}"));
        let kind = format!("{:?}", error.rdkafka_error_code());
        let Ok(mut last_logged) = self.last_logged.lock() else {
            return;
        };
        let repeated = last_logged.as_ref().is_some_and(|(last_kind, at)| {
            *last_kind == kind && at.elapsed() < REPEATED_ERROR_LOG_INTERVAL
        });
        if !repeated {
            tracing::warn!(%error, reason, "kafka client error (the same again is logged at most once a minute)");
            *last_logged = Some((kind, Instant::now()));
        }
    }
}

/// A connected producer for one samples topic.
pub struct Shipper {
    producer: Arc<BaseProducer<ShipContext>>,
    /// Tells the polling thread to end when the shipper is dropped.
    stop_polling: Arc<AtomicBool>,
    polling: Option<std::thread::JoinHandle<()>>,
    topic: String,
    partitions: i32,
    encoding: Encoding,
    max_batch_samples: usize,
    signing: Option<Arc<HostKey>>,
}

impl Shipper {
    pub fn connect(config: &ShipConfig) -> Result<Self, ShipError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "0")
            .set("message.max.bytes", "8388608");
        for (key, value) in &config.librdkafka {
            client.set(key, value);
        }
        let producer: BaseProducer<ShipContext> = client
            .create_with_context(ShipContext::default())
            .map_err(|source| ShipError::Connect {
                brokers: config.brokers.clone(),
                source,
            })?;
        let metadata_error = |detail: String| ShipError::Metadata {
            brokers: config.brokers.clone(),
            topic: config.topic.clone(),
            detail,
        };
        let metadata = producer
            .client()
            .fetch_metadata(Some(&config.topic), Duration::from_secs(10))
            .map_err(|error| {
                // The client's own errors (a refused SASL login, a TLS failure) are
                // delivered by polling: fetch them to say why.
                producer.poll(Duration::from_millis(100));
                let why = producer
                    .context()
                    .early_errors
                    .lock()
                    .map(|early| early.join("; "))
                    .unwrap_or_default();
                let mut why = if why.is_empty() {
                    why
                } else {
                    format!("; the client reported: {why}")
                };
                if !config.librdkafka.contains_key("security.protocol")
                    && (never_answered(&error) || why.contains("brokers are down"))
                {
                    why.push_str(
                        "; no security.protocol is set: if the listener expects TLS or SASL, \
                         set it under [kafka.librdkafka]",
                    );
                }
                metadata_error(format!("{error}{why}"))
            })?;
        let topic = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == config.topic)
            .ok_or_else(|| metadata_error("the broker does not know the topic".into()))?;
        if let Some(error) = topic.error() {
            return Err(metadata_error(format!(
                "{:?} (create the topic first)",
                RDKafkaErrorCode::from(error)
            )));
        }
        let partitions = topic.partitions().len() as i32;
        if partitions == 0 {
            return Err(metadata_error("the topic has no partitions".into()));
        }
        let producer = Arc::new(producer);
        let stop_polling = Arc::new(AtomicBool::new(false));
        let polled = Arc::clone(&producer);
        let stop = Arc::clone(&stop_polling);
        let polling = std::thread::Builder::new()
            .name("tally-kafka-poll".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    polled.poll(POLL_INTERVAL);
                }
            })
            .map_err(|error| {
                metadata_error(format!(
                    "cannot start the producer's polling thread: {error}"
                ))
            })?;
        Ok(Self {
            producer,
            stop_polling,
            polling: Some(polling),
            topic: config.topic.clone(),
            partitions,
            encoding: config.encoding,
            max_batch_samples: config.max_batch_samples.max(1),
            signing: config.signing.clone(),
        })
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Sends `samples` and waits until the broker acknowledged every message.
    pub async fn ship(&self, samples: Vec<Sample>) -> Result<ShipReport, ShipError> {
        let mut by_partition: Vec<Vec<Sample>> = vec![Vec::new(); self.partitions as usize];
        for sample in samples {
            let partition = partition_for(&sample.resource_id, self.partitions);
            by_partition[partition as usize].push(sample);
        }
        let mut report = ShipReport::default();
        let mut deliveries = Vec::new();
        for (partition, samples) in by_partition.iter().enumerate() {
            for batch in samples.chunks(self.max_batch_samples) {
                let payload = self
                    .encoding
                    .encode(batch)
                    .map_err(|source| ShipError::Encode {
                        samples: batch.len(),
                        source,
                    })?;
                report.samples += batch.len();
                report.messages += 1;
                report.bytes += payload.len();
                let mut headers = OwnedHeaders::new().insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(self.encoding.content_type()),
                });
                if let Some(key) = &self.signing {
                    headers = headers
                        .insert(Header {
                            key: HOST_HEADER,
                            value: Some(key.host()),
                        })
                        .insert(Header {
                            key: SIGNATURE_HEADER,
                            value: Some(&key.sign(&payload)[..]),
                        });
                }
                // The key names the sending host; the partition is chosen above by
                // resource id, so one resource's samples always share a partition.
                let (delivered, delivery) = oneshot::channel();
                let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(delivered))
                    .partition(partition as i32)
                    .key(batch[0].host.as_str())
                    .payload(&payload)
                    .headers(headers);
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // librdkafka's queue is full: let it drain, then retry.
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((source, _)) => {
                            return Err(ShipError::Delivery {
                                topic: self.topic.clone(),
                                partition: partition as i32,
                                source,
                            });
                        }
                    }
                }
                deliveries.push((partition as i32, delivery));
            }
        }
        for (partition, delivery) in deliveries {
            let delivery_error = |source| ShipError::Delivery {
                topic: self.topic.clone(),
                partition,
                source,
            };
            match delivery.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(delivery_error(source)),
                Err(_) => return Err(delivery_error(KafkaError::Canceled)),
            }
        }
        Ok(report)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        // The polling thread ends within one poll interval. It holds a reference to the
        // producer: waiting for it means the producer is gone when the shipper is, so it
        // never outlives the broker it talks to (the demo's in-process cluster).
        self.stop_polling.store(true, Ordering::Relaxed);
        if let Some(polling) = self.polling.take() {
            let _ = polling.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_client_reports_are_kept_once_whatever_their_timing() {
        let context = ShipContext::default();
        for report in [
            "FAIL: 127.0.0.1:9092/bootstrap: Send failed: Connection reset by peer (after 0ms in state UP)",
            "FAIL: 127.0.0.1:9092/bootstrap: Send failed: Connection reset by peer (after 3ms in state UP, 1 identical error(s) suppressed)",
            "FAIL: 127.0.0.1:9092/bootstrap: Disconnected (after 1ms in state UP)",
            "FAIL: 127.0.0.1:9092/bootstrap: Disconnected (after 2ms in state UP)",
            "Global error: AllBrokersDown (Local: All broker connections are down): 1/1 brokers are down",
            "a sentence (with a parenthesis)",
        ] {
            context.note_early(report.to_owned());
        }
        assert_eq!(
            *context.early_errors.lock().expect("not poisoned"),
            [
                "FAIL: 127.0.0.1:9092/bootstrap: Send failed: Connection reset by peer",
                "FAIL: 127.0.0.1:9092/bootstrap: Disconnected",
                "Global error: AllBrokersDown (Local: All broker connections are down): 1/1 brokers are down",
                "a sentence (with a parenthesis)",
            ]
        );
    }

    #[test]
    fn a_fetch_that_never_got_an_answer_is_told_apart_from_a_refusal() {
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert!(never_answered(&KafkaError::MetadataFetch(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(
                !never_answered(&KafkaError::MetadataFetch(code)),
                "{code:?}"
            );
        }
    }
}
