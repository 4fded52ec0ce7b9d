//! The agent's metrics, served in the Prometheus text format.
//!
//! Declared once here; the sampler and the forwarder add to them as they go, and
//! `GET /metrics` on `[metrics] listen` renders them. No account or resource id is ever a
//! label: a host's metrics stay a few dozen lines however many VMs it runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every figure the agent reports.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub samples_taken: AtomicU64,
    pub samples_sent: AtomicU64,
    pub samples_refused: AtomicU64,
    pub samples_rejected: AtomicU64,
    pub messages_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub send_latency_micros_sum: AtomicU64,
    pub send_batches: AtomicU64,
    pub source_errors: AtomicU64,
    pub spool_errors: AtomicU64,
    pub spool_corrupt_records: AtomicU64,
    pub minutes_sampled: AtomicU64,
    pub minutes_skipped: AtomicU64,
    pub clock_jumps: AtomicU64,
    pub counter_restarts: AtomicU64,
    pub unlisted_attachment_bytes: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_pending_samples: AtomicU64,
    /// Resources the source saw at its last reading but did not bill, by why.
    pub resources_unmanaged: AtomicU64,
    pub resources_misconfigured: AtomicU64,
    pub resources_unreadable: AtomicU64,
    /// Unix seconds of the start of the newest minute sampled; 0 before the first.
    pub last_sampled_minute: AtomicI64,
}

impl AgentMetrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn render(&self, host: &str) -> String {
        let host = host.replace('\\', "\\\\").replace('"', "\\\"");
        let mut text = String::new();
        let mut figure = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                text,
                "# HELP tally_collector_{name} {help}\n# TYPE tally_collector_{name} {kind}\ntally_collector_{name}{{host=\"{host}\"}} {value}"
            );
        };
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "samples_taken_total",
                "Samples on disk in the spool (taken).",
                &self.samples_taken,
            ),
            (
                "samples_sent_total",
                "Samples the broker acknowledged.",
                &self.samples_sent,
            ),
            (
                "samples_refused_total",
                "Samples refused because the spool was full (lost: alert on any).",
                &self.samples_refused,
            ),
            (
                "samples_rejected_total",
                "Input lines that were not valid samples (kept in the rejects file).",
                &self.samples_rejected,
            ),
            (
                "messages_sent_total",
                "Kafka messages acknowledged.",
                &self.messages_sent,
            ),
            (
                "send_errors_total",
                "Failed sends (retried from the spool).",
                &self.send_errors,
            ),
            (
                "source_errors_total",
                "Failed source reads (retried next tick).",
                &self.source_errors,
            ),
            (
                "spool_errors_total",
                "Failed spool writes (the minute is retried).",
                &self.spool_errors,
            ),
            (
                "spool_corrupt_records_total",
                "Spool records that failed their checksum and were skipped.",
                &self.spool_corrupt_records,
            ),
            (
                "minutes_sampled_total",
                "Minutes sampled.",
                &self.minutes_sampled,
            ),
            (
                "minutes_skipped_total",
                "Minutes passed over: further back than the catch-up bound.",
                &self.minutes_skipped,
            ),
            (
                "clock_jumps_total",
                "Wall-clock jumps against the monotonic clock.",
                &self.clock_jumps,
            ),
            (
                "counter_restarts_total",
                "Interface counters that started again from zero.",
                &self.counter_restarts,
            ),
            (
                "unlisted_attachment_bytes_total",
                "Outbound bytes through networks the traffic map does not name.",
                &self.unlisted_attachment_bytes,
            ),
            (
                "send_latency_seconds_count",
                "Batches sent and acknowledged.",
                &self.send_batches,
            ),
        ];
        for (name, help, counter) in counters {
            figure(name, "counter", help, read(counter));
        }
        let latency_seconds =
            self.send_latency_micros_sum.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        figure(
            "send_latency_seconds_sum",
            "counter",
            "Seconds from handing a batch to the producer to its acknowledgement, summed.",
            latency_seconds.to_string(),
        );
        figure(
            "spool_bytes",
            "gauge",
            "Bytes in the spool's files.",
            read(&self.spool_bytes),
        );
        figure(
            "spool_pending_samples",
            "gauge",
            "Samples in the spool not yet acknowledged.",
            read(&self.spool_pending_samples),
        );
        for (reason, help, gauge) in [
            (
                "unmanaged",
                "without Tally's metadata (not billed by Tally)",
                &self.resources_unmanaged,
            ),
            (
                "misconfigured",
                "with broken Tally metadata (not billed: alert on any)",
                &self.resources_misconfigured,
            ),
            (
                "unreadable",
                "not readable at the last reading",
                &self.resources_unreadable,
            ),
        ] {
            figure(
                &format!("resources_{reason}"),
                "gauge",
                &format!("Resources the source saw at its last reading, {help}."),
                read(gauge),
            );
        }
        figure(
            "last_sampled_minute_seconds",
            "gauge",
            "Start of the newest minute sampled, Unix seconds.",
            self.last_sampled_minute.load(Ordering::Relaxed).to_string(),
        );
        text
    }
}

/// Serves `GET /metrics` on `listen` until the task is dropped.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<AgentMetrics>,
    host: String,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving metrics");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = Arc::clone(&metrics);
        let host = host.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 2048];
            let Ok(read) = stream.read(&mut request).await else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..read]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                let body = metrics.render(&host);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_endpoint_serves_every_figure_in_the_prometheus_format() {
        let metrics = Arc::new(AgentMetrics::default());
        AgentMetrics::add(&metrics.samples_taken, 1_000);
        AgentMetrics::add(&metrics.samples_refused, 3);
        metrics.spool_bytes.store(4_096, Ordering::Relaxed);
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let listen = free.local_addr().expect("address");
        drop(free);
        tokio::spawn(serve(listen, Arc::clone(&metrics), "hv-\"1\"".to_owned()));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut stream) = tokio::net::TcpStream::connect(listen).await {
                    stream
                        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                        .await
                        .expect("request");
                    let mut response = String::new();
                    stream
                        .read_to_string(&mut response)
                        .await
                        .expect("response");
                    return response;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the endpoint did not listen on {listen}");
        };
        let response = get("/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        for line in [
            "# TYPE tally_collector_samples_taken_total counter",
            "tally_collector_samples_taken_total{host=\"hv-\\\"1\\\"\"} 1000",
            "tally_collector_samples_refused_total{host=\"hv-\\\"1\\\"\"} 3",
            "tally_collector_spool_bytes{host=\"hv-\\\"1\\\"\"} 4096",
            "# TYPE tally_collector_send_latency_seconds_sum counter",
        ] {
            assert!(
                response.lines().any(|l| l == line),
                "no '{line}' in\n{response}"
            );
        }
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
    }
}
