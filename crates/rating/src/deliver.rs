//! Where notices go: stdout (JSON lines), a webhook (HTTP POST) and a Kafka topic.
//!
//! Every sink gets the notice's JSON and its id as the idempotency key (the webhook's
//! `Idempotency-Key` header, the Kafka message key): a notice is delivered again only
//! when a run stopped between delivering it and recording it (see `watch.rs`), and then
//! with the same key, so a receiver that keeps the keys it has seen never acts twice.

use std::io::Write;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::error::{Error, Result};
use crate::notice::Notice;

/// One destination of notices.
pub enum Sink {
    /// JSON lines on standard output.
    Stdout,
    Webhook(Webhook),
    Kafka(KafkaTopic),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.name())
    }
}

impl Sink {
    pub fn name(&self) -> String {
        match self {
            Self::Stdout => "stdout".to_owned(),
            Self::Webhook(webhook) => webhook.url.clone(),
            Self::Kafka(kafka) => format!("kafka topic {}", kafka.topic),
        }
    }

    /// Delivers `notice`, retrying where the sink can fail for a while.
    pub async fn deliver(&self, notice: &Notice) -> Result<()> {
        let body = serde_json::to_string(notice).map_err(|e| Error::Delivery {
            id: notice.id.clone(),
            sink: self.name(),
            detail: e.to_string(),
        })?;
        match self {
            Self::Stdout => {
                // Not `println!`: a closed pipe is an error of this sink, not a panic.
                let mut out = std::io::stdout().lock();
                writeln!(out, "{body}")
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::Delivery {
                        id: notice.id.clone(),
                        sink: self.name(),
                        detail: e.to_string(),
                    })
            }
            Self::Webhook(webhook) => {
                let webhook = webhook.clone();
                let id = notice.id.clone();
                tokio::task::spawn_blocking(move || webhook.post(&id, &body))
                    .await
                    .map_err(|e| Error::Delivery {
                        id: notice.id.clone(),
                        sink: self.name(),
                        detail: e.to_string(),
                    })?
            }
            Self::Kafka(kafka) => kafka.send(&notice.id, &body).await,
        }
    }
}

/// An HTTP(S) endpoint that takes notices as `POST`ed JSON.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    /// Tries per notice before the run gives up (the notice stays undelivered and the
    /// next run tries again).
    pub attempts: u32,
    /// The wait after the first failure; doubled after each, at most 30 s.
    pub first_backoff: Duration,
    agent: ureq::Agent,
}

impl Webhook {
    pub fn new(url: &str, attempts: u32, first_backoff: Duration) -> Result<Self> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Delivery {
                id: String::new(),
                sink: url.to_owned(),
                detail: "a webhook URL starts with http:// or https://".to_owned(),
            });
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into();
        Ok(Self {
            url: url.to_owned(),
            attempts: attempts.max(1),
            first_backoff,
            agent,
        })
    }

    /// POSTs `body`; retries on network errors, timeouts, 408, 429 and 5xx. Any other
    /// status below 200 or from 300 is a refusal that retrying will not change.
    fn post(&self, id: &str, body: &str) -> Result<()> {
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let outcome = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", id)
                .send(body);
            match outcome {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if (200..300).contains(&status) {
                        return Ok(());
                    }
                    last = format!("HTTP {status}");
                    if !(status == 408 || status == 429 || status >= 500) {
                        return Err(self.failed(id, format!("{last}: refused, not retried")));
                    }
                }
                Err(error) => last = error.to_string(),
            }
            tracing::warn!(url = %self.url, notice = id, attempt, error = %last, "webhook delivery failed; retrying");
            if attempt < self.attempts {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        Err(self.failed(
            id,
            format!("{} attempts failed, the last with {last}", self.attempts),
        ))
    }

    fn failed(&self, id: &str, detail: String) -> Error {
        Error::Delivery {
            id: id.to_owned(),
            sink: self.url.clone(),
            detail,
        }
    }
}

/// A Kafka topic that takes notices, keyed by their id.
pub struct KafkaTopic {
    pub topic: String,
    producer: FutureProducer,
}

impl KafkaTopic {
    /// A producer that waits for all in-sync replicas and never writes a retry twice.
    pub fn connect(brokers: &str, topic: &str) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(|e| Error::Delivery {
                id: String::new(),
                sink: format!("kafka topic {topic}"),
                detail: e.to_string(),
            })?;
        Ok(Self {
            topic: topic.to_owned(),
            producer,
        })
    }

    async fn send(&self, id: &str, body: &str) -> Result<()> {
        let record = FutureRecord::to(&self.topic).key(id).payload(body);
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(error, _)| Error::Delivery {
                id: id.to_owned(),
                sink: format!("kafka topic {}", self.topic),
                detail: error.to_string(),
            })
    }
}
