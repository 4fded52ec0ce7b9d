//! The spool's oldest samples sent to Kafka, and removed once the broker acknowledged them.
//!
//! One batch is in flight at a time and is acknowledged in the spool only after every
//! message of it was acknowledged by the broker (`acks=all`), so a crash at any point
//! leaves every unacknowledged sample in the spool, to be sent again at the next start
//! (a re-sent sample is a duplicate, which the aggregator counts once). The producer
//! never times a message out (`message.timeout.ms = 0`), so an outage of hours just
//! stalls the batch in flight while the spool grows behind it; when the broker is back,
//! the backlog drains oldest first. Connecting is retried too: an agent started while
//! the broker is down samples and spools from its first minute.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::AgentMetrics;
use crate::ship::{ShipConfig, Shipper};
use crate::spool::{SpoolBatch, SpoolReader};

/// Samples read from the spool per round trip: several messages per partition, so a
/// backlog drains at the producer's pace rather than one small batch per round trip.
const SAMPLES_PER_BATCH: usize = 32_768;
/// The longest pause between retries of a failed connect or send.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why forwarding stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shut down with nothing left to send.
    Drained,
    /// Shut down with samples still spooled (the deadline passed, or the broker is
    /// away); they are sent after the next start.
    Pending,
}

/// Forwards until `shutdown` says so and the spool is empty, or `flush_deadline` passes
/// after the shutdown.
pub async fn forward(
    mut reader: SpoolReader,
    config: ShipConfig,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
    flush_deadline: Duration,
) -> Stopped {
    let mut shutdown_at: Option<Instant> = None;
    let mut shipper: Option<Shipper> = None;
    let mut backoff = Duration::from_millis(100);
    // A batch read but not yet acknowledged by the broker: retried until it is.
    let mut unsent: Option<SpoolBatch> = None;
    loop {
        if shutdown_at.is_none() && *shutdown.borrow() {
            shutdown_at = Some(Instant::now());
        }
        if shutdown_at.is_some_and(|at| at.elapsed() >= flush_deadline) {
            return Stopped::Pending;
        }
        let mut batch = match unsent
            .take()
            .map_or_else(|| reader.read_batch(SAMPLES_PER_BATCH), Ok)
        {
            Ok(batch) => batch,
            Err(error) => {
                AgentMetrics::add(&metrics.spool_errors, 1);
                tracing::error!(%error, "cannot read the spool; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Reported once: a batch sent again keeps its samples, not its reports.
        let only_damage = batch.samples.is_empty() && !batch.skipped.is_empty();
        for corruption in std::mem::take(&mut batch.skipped) {
            AgentMetrics::add(&metrics.spool_corrupt_records, corruption.records);
            tracing::error!(%corruption, "damaged spool records skipped");
        }
        if batch.samples.is_empty() {
            if !only_damage {
                if shutdown_at.is_some() {
                    return Stopped::Drained;
                }
                // Wait for the sampler's next append, or the shutdown.
                tokio::select! {
                    () = reader.notified() => {}
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            // Only corrupt records: acknowledge past them.
            if let Err(error) = reader.acknowledge(batch.end) {
                tracing::error!(%error, "cannot record the spool's acknowledgement");
            }
            continue;
        }
        let Some(connected) = shipper.as_ref() else {
            // The batch goes out once connected. Connecting blocks (librdkafka reads the
            // topic's metadata), so it runs off the async threads, and a shutdown past its
            // deadline does not wait for it.
            unsent = Some(batch);
            let connecting = tokio::task::spawn_blocking({
                let config = config.clone();
                move || Shipper::connect(&config)
            });
            let connected = tokio::select! {
                connected = connecting => connected,
                () = flush_deadline_passed(&mut shutdown, &mut shutdown_at, flush_deadline) => {
                    return Stopped::Pending;
                }
            };
            match connected {
                Ok(Ok(connected)) => {
                    tracing::info!(brokers = %config.brokers, topic = %config.topic, "connected to kafka");
                    shipper = Some(connected);
                    backoff = Duration::from_millis(100);
                }
                Ok(Err(error)) => {
                    AgentMetrics::add(&metrics.send_errors, 1);
                    tracing::warn!(%error, retry_in = ?backoff, "cannot reach kafka; samples stay spooled");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => {
                    tracing::error!(%error, "connecting to kafka panicked; trying again");
                    tokio::time::sleep(backoff).await;
                }
            }
            continue;
        };
        let started = Instant::now();
        // Shipping is cancelled by a shutdown past its deadline: what was in flight
        // stays in the spool.
        let deadline = flush_deadline_passed(&mut shutdown, &mut shutdown_at, flush_deadline);
        let shipped = tokio::select! {
            shipped = connected.ship(batch.samples.clone()) => Some(shipped),
            () = deadline => None,
        };
        match shipped {
            None => return Stopped::Pending,
            Some(Ok(report)) => {
                let micros = started.elapsed().as_micros() as u64;
                AgentMetrics::add(&metrics.samples_sent, report.samples as u64);
                AgentMetrics::add(&metrics.messages_sent, report.messages as u64);
                AgentMetrics::add(&metrics.send_batches, 1);
                AgentMetrics::add(&metrics.send_latency_micros_sum, micros);
                backoff = Duration::from_millis(100);
                if let Err(error) = reader.acknowledge(batch.end) {
                    // Not fatal: the cursor lags, and these samples are sent again later.
                    AgentMetrics::add(&metrics.spool_errors, 1);
                    tracing::error!(%error, "cannot record the spool's acknowledgement");
                }
                let stats = reader.stats();
                metrics
                    .spool_bytes
                    .store(stats.pending_bytes(), Ordering::Relaxed);
                metrics
                    .spool_pending_samples
                    .store(stats.pending_samples(), Ordering::Relaxed);
            }
            Some(Err(error)) => {
                unsent = Some(batch);
                // A producer whose send failed may be unusable for good (librdkafka's
                // idempotent producer raises fatal errors, e.g. when a restarted broker
                // lost its sequence state): the retry starts with a new one.
                shipper = None;
                AgentMetrics::add(&metrics.send_errors, 1);
                tracing::error!(%error, retry_in = ?backoff, "sending failed; the batch stays spooled and is sent again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Completes once a shutdown's flush deadline has passed; never before a shutdown.
async fn flush_deadline_passed(
    shutdown: &mut watch::Receiver<bool>,
    shutdown_at: &mut Option<Instant>,
    flush_deadline: Duration,
) {
    loop {
        if let Some(at) = *shutdown_at {
            tokio::time::sleep(flush_deadline.saturating_sub(at.elapsed())).await;
            return;
        }
        // A closed channel (the agent is gone) counts as a shutdown too.
        if shutdown.changed().await.is_err() || *shutdown.borrow() {
            *shutdown_at = Some(Instant::now());
        }
    }
}
