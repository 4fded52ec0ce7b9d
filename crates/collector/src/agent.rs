//! `tally collect`: the loop that runs the agent's stages.
//!
//! Two halves, meeting only in the spool:
//!
//! - the **sampler** (a thread of its own: sources and fsyncs block) wakes just after each
//!   minute ends, asks the source about every minute due, turns readings into samples
//!   (counters → deltas, traffic split), and appends them to the spool together with the
//!   agent's checkpoint (last minute sampled, counter baselines, the source's position)
//!   in one fsync: a sample is taken when, and only when, it is on disk, and a restarted
//!   agent carries on from exactly what it had taken;
//! - the **forwarder** ([`crate::forward`]) sends the spool's oldest samples to Kafka and
//!   removes them once acknowledged.
//!
//! At shutdown the sampler stops first; the forwarder then has `flush_deadline` to send
//! what is spooled. Whatever is left waits in the spool for the next start.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use tally_model::{Minute, Sample, ValidationLimits};
use tokio::sync::watch;

use crate::config::{AgentConfig, SourceConfig};
use crate::counters::{CounterBook, DeltaKind};
use crate::forward::{Stopped, forward};
use crate::metrics::AgentMetrics;
use crate::simulator::{Fleet, FleetSpec};
use crate::source::file::FileSource;
use crate::source::simulated::SimulatedSource;
use crate::source::{Observation, Reading, Rejected, Source, SourceError};
use crate::spool::{SpoolError, SpoolWriter};
use crate::tick::{AgentClock, Ticker};
use crate::traffic::{Listed, TrafficClass, TrafficClassifier};

/// How long a shutdown waits for the spool to drain to the broker.
pub const DEFAULT_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error(
        "the spool's checkpoint does not read ({0}); move the spool directory aside to start afresh"
    )]
    Checkpoint(String),
    #[error("the sampler thread failed: {0}")]
    Sampler(String),
}

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub minutes_sampled: u64,
    pub samples_taken: u64,
    pub samples_sent: u64,
    pub stopped: Stopped,
}

/// What the agent needs to carry on after a restart; saved with every append.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AgentCheckpoint {
    last_sampled: Option<Minute>,
    counters: CounterBook,
    source: serde_json::Value,
}

/// Runs the agent on the source its configuration names until `shutdown` completes (or
/// a stdin source ends), then flushes.
pub async fn run(
    config: AgentConfig,
    metrics: Arc<AgentMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
    flush_deadline: Duration,
) -> Result<AgentReport, AgentError> {
    let source = open_source(&config.host, &config.source)?;
    run_with_source(config, source, metrics, shutdown, flush_deadline).await
}

/// [`run`] on a source of the caller's (a provider's own, or a test's).
pub async fn run_with_source(
    config: AgentConfig,
    mut source: Box<dyn Source>,
    metrics: Arc<AgentMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
    flush_deadline: Duration,
) -> Result<AgentReport, AgentError> {
    // The agent carries on from its newest checkpoint, so a torn append's whole records
    // are cut with it: the agent samples those minutes again.
    let spool = config.spool.clone().resuming_from_checkpoint();
    let (writer, reader, recovery) = crate::spool::open(&spool)?;
    tracing::info!(spool = %config.spool.dir.display(), pending_samples = recovery.pending_samples, "spool opened");
    let checkpoint: AgentCheckpoint = match &recovery.checkpoint {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|error| AgentError::Checkpoint(error.to_string()))?,
        None => AgentCheckpoint::default(),
    };
    if !checkpoint.source.is_null() {
        source.restore(checkpoint.source)?;
    }
    let clock = match config.fast_clock {
        Some(fast) => AgentClock::fast(fast.from, fast.speed),
        None => AgentClock::skewed(TimeDelta::seconds(config.clock_offset_seconds)),
    };
    if let Some(listen) = config.metrics_listen {
        let (metrics, host) = (Arc::clone(&metrics), config.host.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(listen, metrics, host).await {
                tracing::error!(%listen, %error, "cannot serve metrics");
            }
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut sampler = Sampler {
        host: config.host.clone(),
        ticker: Ticker::new(checkpoint.last_sampled, config.max_catch_up_minutes),
        counters: checkpoint.counters,
        source,
        traffic: config.traffic.clone(),
        writer,
        metrics: Arc::clone(&metrics),
        clock,
        rejects_path: config.spool.dir.join("rejected.ndjson"),
        limits: ValidationLimits::default(),
    };
    let (sampler_done_sender, sampler_done) = tokio::sync::oneshot::channel();
    let sampler_stop = Arc::clone(&stop);
    let sampler_thread = std::thread::Builder::new()
        .name("tally-sampler".to_owned())
        .spawn(move || {
            sampler.run(&sampler_stop);
            let _ = sampler_done_sender.send(());
        })
        .map_err(|error| AgentError::Sampler(error.to_string()))?;

    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let forwarder = tokio::spawn(forward(
        reader,
        config.ship.clone(),
        Arc::clone(&metrics),
        shutdown_receiver,
        flush_deadline,
    ));

    tokio::select! {
        () = shutdown => tracing::info!("shutting down: sampling stops, the spool is flushed"),
        _ = sampler_done => tracing::info!("the source ended: flushing the spool"),
    }
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || sampler_thread.join())
        .await
        .map_err(|error| AgentError::Sampler(error.to_string()))?
        .map_err(|_| AgentError::Sampler("it panicked".to_owned()))?;
    let _ = shutdown_sender.send(true);
    let stopped = forwarder
        .await
        .map_err(|error| AgentError::Sampler(format!("the forwarder failed: {error}")))?;
    let report = AgentReport {
        minutes_sampled: metrics.minutes_sampled.load(Ordering::Relaxed),
        samples_taken: metrics.samples_taken.load(Ordering::Relaxed),
        samples_sent: metrics.samples_sent.load(Ordering::Relaxed),
        stopped,
    };
    tracing::info!(?report, "agent stopped");
    Ok(report)
}

/// The source the configuration names, on the agent of `host`.
pub fn open_source(host: &str, config: &SourceConfig) -> Result<Box<dyn Source>, SourceError> {
    match config {
        SourceConfig::Simulator {
            resources,
            seed,
            from,
            to,
            ..
        } => Ok(Box::new(SimulatedSource::new(simulated_fleet(
            host, *resources, *seed, *from, *to,
        )))),
        SourceConfig::File { path } => Ok(Box::new(FileSource::open(path)?)),
        #[cfg(feature = "libvirt")]
        SourceConfig::Libvirt { uri } => {
            Ok(Box::new(crate::source::libvirt::LibvirtSource::open(uri)?))
        }
        #[cfg(not(feature = "libvirt"))]
        SourceConfig::Libvirt { uri } => Err(SourceError::Libvirt {
            uri: uri.clone(),
            detail: "this tally was built without the `libvirt` feature".to_owned(),
        }),
    }
}

/// The simulator's fleet of exactly `resources` resources over `[from, to)`, as the agent
/// of `host` sees it: every resource on that host, its id prefixed with the host's name,
/// so that agents of several hosts simulate distinct resources (the same id from two
/// hosts would be two conflicting reports of one resource).
pub fn simulated_fleet(host: &str, resources: usize, seed: u64, from: Minute, to: Minute) -> Fleet {
    let spec = |scale| FleetSpec {
        seed,
        start: from,
        end: to,
        scale,
    };
    let per_copy = Fleet::generate(spec(1)).resources.len().max(1);
    let mut fleet = Fleet::generate(spec(resources.div_ceil(per_copy)));
    fleet.resources.truncate(resources);
    for resource in &mut fleet.resources {
        resource.resource_id = format!("{host}-{}", resource.resource_id);
        resource.host = host.to_owned();
    }
    fleet
}

/// The sampling half of the agent.
struct Sampler {
    host: String,
    ticker: Ticker,
    counters: CounterBook,
    source: Box<dyn Source>,
    traffic: TrafficClassifier,
    writer: SpoolWriter,
    metrics: Arc<AgentMetrics>,
    clock: AgentClock,
    rejects_path: PathBuf,
    limits: ValidationLimits,
}

/// The longest real sleep between looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

impl Sampler {
    fn run(&mut self, stop: &AtomicBool) {
        tracing::info!(source = self.source.name(), host = %self.host, "sampling");
        while !stop.load(Ordering::Relaxed) {
            match self.source.poll_interval() {
                None => {
                    self.sample_due_minutes();
                    self.sleep_until(Ticker::next_wake(self.clock.now()), stop);
                }
                Some(interval) => {
                    // Checked before the poll, so the lines read before the end are taken.
                    let finished = self.source.finished();
                    self.take_finished_samples();
                    if finished {
                        return;
                    }
                    std::thread::sleep(interval);
                }
            }
        }
    }

    fn sleep_until(&self, wake: chrono::DateTime<chrono::Utc>, stop: &AtomicBool) {
        loop {
            let left = self.clock.real_time_until(wake);
            if left.is_zero() || stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }

    /// Samples every minute due now; a minute that fails stays due for the next tick.
    fn sample_due_minutes(&mut self) {
        let due = self.ticker.due(self.clock.now(), self.clock.monotonic());
        if let Some(seconds) = due.clock_jump_seconds {
            AgentMetrics::add(&self.metrics.clock_jumps, 1);
            tracing::warn!(
                jump_seconds = seconds,
                "the wall clock jumped against the monotonic clock"
            );
        }
        if let Some((first, count)) = due.skipped {
            AgentMetrics::add(&self.metrics.minutes_skipped, count as u64);
            tracing::error!(%first, minutes = count, "minutes not sampled: further back than the catch-up bound");
            // The gap is reported once; the ticker moves past it.
            self.ticker.sampled(first.plus(count - 1));
        }
        for minute in due.minutes {
            let observations = match self.source.observe(minute) {
                Ok(observations) => observations,
                Err(error) => {
                    AgentMetrics::add(&self.metrics.source_errors, 1);
                    tracing::error!(%minute, %error, "source failed; the minute is tried again at the next tick");
                    return;
                }
            };
            let skipped = self.source.skipped();
            self.metrics
                .resources_unmanaged
                .store(skipped.unmanaged, Ordering::Relaxed);
            self.metrics
                .resources_misconfigured
                .store(skipped.misconfigured, Ordering::Relaxed);
            self.metrics
                .resources_unreadable
                .store(skipped.unreadable, Ordering::Relaxed);
            let counters_before = self.counters.clone();
            let (samples, rejected) = self.samples_of(minute, observations);
            // The minute and its checkpoint in one fsync; refused samples (a full
            // spool) are lost loudly, as the minute is over either way.
            if !self.append(&samples, &rejected, Some(minute), true) {
                self.counters = counters_before;
                return;
            }
        }
    }

    /// Takes the finished samples a file or stdin source has now.
    ///
    /// The samples are appended first and the source's new position after, in a second
    /// fsync: a crash between the two reads those lines again (duplicates, which the
    /// aggregator counts once), never skips them. When the spool is full, the position
    /// goes back to before the refused lines, so a file waits instead of losing input.
    fn take_finished_samples(&mut self) {
        let now = Minute::containing(self.clock.now());
        let position_before = self.source.checkpoint();
        let observations = match self.source.observe(now) {
            Ok(observations) => observations,
            Err(error) => {
                AgentMetrics::add(&self.metrics.source_errors, 1);
                tracing::error!(%error, "source failed; trying again");
                return;
            }
        };
        if observations.is_empty() {
            return;
        }
        let (samples, rejected) = self.samples_of(now, observations);
        let taken =
            self.append(&samples, &rejected, None, false) && self.append(&[], &[], None, true);
        if !taken && let Err(error) = self.source.restore(position_before) {
            tracing::error!(%error, "cannot go back to the input not taken");
        }
    }

    /// The samples of `minute` from `observations`, and what could not be one.
    fn samples_of(
        &mut self,
        minute: Minute,
        observations: Vec<Observation>,
    ) -> (Vec<Sample>, Vec<Rejected>) {
        let round = minute.unix_minutes() as u64;
        let now = Minute::containing(self.clock.now());
        let mut samples = Vec::with_capacity(observations.len());
        let mut rejected = Vec::new();
        for observation in observations {
            match observation {
                Observation::Reading(reading) => {
                    samples.push(self.sample_of(minute, round, reading))
                }
                Observation::Sample(sample) => {
                    match tally_model::validate::validate(&sample, &self.limits, now) {
                        Ok(()) => samples.push(sample),
                        Err(rejection) => rejected.push(Rejected {
                            location: format!(
                                "sample of {} at {}",
                                sample.resource_id, sample.minute
                            ),
                            reason: rejection.to_string(),
                            input: serde_json::to_string(&sample).unwrap_or_default(),
                        }),
                    }
                }
                Observation::Rejected(refused) => rejected.push(refused),
            }
        }
        self.counters.end_round(round);
        (samples, rejected)
    }

    /// One resource's sample for `minute`: its counters' deltas, split by traffic class.
    fn sample_of(&mut self, minute: Minute, round: u64, reading: Reading) -> Sample {
        let (mut out_external, mut out_internal, mut inbound) = (0u64, 0u64, 0u64);
        for interface in &reading.interfaces {
            let delta =
                self.counters
                    .delta(&reading.resource_id, reading.incarnation, interface, round);
            if delta.how == DeltaKind::Restarted {
                AgentMetrics::add(&self.metrics.counter_restarts, 1);
            }
            let (class, listed) = self.traffic.classify(&reading.zone, &interface.attachment);
            if listed == Listed::No {
                AgentMetrics::add(&self.metrics.unlisted_attachment_bytes, delta.sent);
            }
            match class {
                TrafficClass::External => out_external = out_external.saturating_add(delta.sent),
                TrafficClass::Internal => out_internal = out_internal.saturating_add(delta.sent),
            }
            inbound = inbound.saturating_add(delta.received);
        }
        Sample {
            minute,
            host: self.host.clone(),
            account_id: reading.account_id,
            resource_id: reading.resource_id,
            kind: reading.kind,
            sku: reading.sku,
            zone: reading.zone,
            state: reading.state,
            gpus: reading.gpus,
            out_external_bytes: out_external,
            out_internal_bytes: out_internal,
            in_bytes: inbound,
            size_bytes: reading.size_bytes,
            labels: reading.labels,
        }
    }

    /// Appends `samples`, with the checkpoint they lead to if `with_checkpoint`; `sampled`
    /// is the minute they complete, if stamped by the agent. Returns whether every sample
    /// was taken.
    fn append(
        &mut self,
        samples: &[Sample],
        rejected: &[Rejected],
        sampled: Option<Minute>,
        with_checkpoint: bool,
    ) -> bool {
        if !rejected.is_empty() {
            AgentMetrics::add(&self.metrics.samples_rejected, rejected.len() as u64);
            for refused in rejected {
                tracing::warn!(location = %refused.location, reason = %refused.reason, "input refused; kept in the rejects file");
            }
            if let Err(error) = self.keep_rejects(rejected) {
                tracing::error!(path = %self.rejects_path.display(), %error, "cannot write the rejects file");
            }
        }
        let checkpoint = if with_checkpoint {
            let checkpoint = AgentCheckpoint {
                last_sampled: sampled.or(self.ticker.last_sampled()),
                counters: self.counters.clone(),
                source: self.source.checkpoint(),
            };
            match serde_json::to_vec(&checkpoint) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    tracing::error!(%error, "cannot write the checkpoint");
                    return false;
                }
            }
        } else {
            None
        };
        match self.writer.append(samples, checkpoint.as_deref()) {
            Ok(appended) => {
                AgentMetrics::add(&self.metrics.samples_taken, appended.written as u64);
                if appended.refused > 0 {
                    AgentMetrics::add(&self.metrics.samples_refused, appended.refused as u64);
                    tracing::error!(
                        refused = appended.refused,
                        "THE SPOOL IS FULL: new samples are refused and lost; the broker must be reached or the spool enlarged"
                    );
                }
                let stats = self.writer.stats();
                self.metrics
                    .spool_bytes
                    .store(stats.pending_bytes(), Ordering::Relaxed);
                self.metrics
                    .spool_pending_samples
                    .store(stats.pending_samples(), Ordering::Relaxed);
                if let Some(minute) = sampled {
                    self.ticker.sampled(minute);
                    AgentMetrics::add(&self.metrics.minutes_sampled, 1);
                    self.metrics
                        .last_sampled_minute
                        .store(minute.unix_minutes() * 60, Ordering::Relaxed);
                }
                appended.refused == 0
            }
            Err(error) => {
                AgentMetrics::add(&self.metrics.spool_errors, 1);
                tracing::error!(%error, "cannot append to the spool; the samples are taken again");
                false
            }
        }
    }

    /// Appends refused input to the rejects file, one JSON object per line.
    fn keep_rejects(&self, rejected: &[Rejected]) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rejects_path)?;
        let mut lines = String::new();
        for refused in rejected {
            let line = serde_json::json!({
                "location": refused.location,
                "reason": refused.reason,
                "input": refused.input,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        file.write_all(lines.as_bytes())?;
        file.sync_data()
    }
}
