//! The scale run (issue 8): a month of a large fleet through aggregation and rating.
//!
//! A month of per-minute samples for 100,000 resources is about 4.3 billion samples, too
//! many for one small machine. So one representative day is made as per-minute samples and
//! pushed through the aggregator, and the month's other hours are written directly as
//! rollups by the rating benchmark's generator ([`crate::rollup_month`]) into the same lake;
//! then `tally rate` rates the whole month.
//!
//! The day's samples are the generator's own rows for those hours spread back into their
//! minutes (one state for the whole hour, counters split over the 60 minutes, the size
//! repeated), so the aggregator must write exactly the rows the generator would have
//! written for that day. Every run checks that, row by row, before rating.
//!
//! **Aggregation.** The samples are spread over `partitions` source partitions by the
//! collector's partitioner (murmur2 of the resource id), each partition on a thread of its
//! own with its own [`Ingest`], as the members of a consumer group would own them. Ten
//! minutes of samples at a time are made and encoded as the collector ships them (Arrow
//! IPC, 4,096 samples a message), untimed; then every partition's thread pushes its
//! messages through `Ingest::process` (decode, validate, deduplicate, roll up) and seals
//! what the watermark has passed after each minute's messages (Parquet, fsync, manifest),
//! timed. A barrier keeps making and ingesting apart, so the timed phases have the cores to
//! themselves; each thread's CPU time comes from `/proc/thread-self/schedstat`
//! (nanoseconds on a CPU, so waiting for an fsync is not counted). At minute 30 of every
//! hour each partition checkpoints its open hours, which the consumer does once a minute of
//! wall time: timed apart, for the projection.
//!
//! **Rating.** `tally_rating::rate` (the whole job, as the rating benchmark calls it) over
//! the month: the generated hours and the aggregated day.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tally_aggregator::deadletter::CollectedDeadLetters;
use tally_aggregator::ingest::{AggregateConfig, AggregateReport, Ingest};
use tally_aggregator::write::hour_dir;
use tally_collector::partition::partition_for;
use tally_model::clock::FixedClock;
use tally_model::rollup::batch_to_rows;
use tally_model::sample::labels_from_text;
use tally_model::wire::Encoding;
use tally_model::{Hour, Minute, ResourceKind, ResourceState, RollupRow, Sample};
use tally_rating::month::BillingMonth;

use crate::aggregate::memory_status;
use crate::backfill::process_cpu_seconds;
use crate::rating::median;
use crate::rollup_month::{
    MonthSpec, Resource, contracts_json, fleet, hour_row, write_month_except,
};

const MONTH: &str = "2026-10";
/// The day made as per-minute samples (UTC): a Wednesday in the middle of the month, an
/// ordinary day of the generated month.
const DAY: &str = "2026-10-14T00";
const DAY_HOURS: i64 = 24;
/// The topic the aggregator names its files and manifests after.
const TOPIC: &str = "tally.samples";
/// The source of the generated hours' files: one the aggregator does not write, because
/// at start-up it removes files of its own source partitions that its manifest does not
/// name.
const GENERATED_SOURCE: &str = "month-generator";
/// Samples per message, as the collector's shipper batches them.
const SAMPLES_PER_MESSAGE: usize = 4_096;
/// Minutes of samples made (and held in memory) per round of the lockstep.
const CHUNK_MINUTES: i64 = 10;
/// The minute of each hour after which every partition checkpoints its open hours.
const CHECKPOINT_MINUTE: u32 = 30;
/// Resources per hypervisor host, for the samples' `host` (not part of a rollup).
const RESOURCES_PER_HOST: usize = 40;
/// Threads of the rating job's runtime, as in the rating benchmark.
const RATING_THREADS: usize = 2;
/// Every minute of an hour, as a rollup's state mask.
const FULL_HOUR_MASK: u64 = (1 << 60) - 1;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub resources: usize,
    /// Source partitions, each aggregated on a thread of its own.
    pub partitions: usize,
    pub runs: usize,
    /// Where the generated month is kept (one directory per size, reused).
    pub data_root: PathBuf,
}

/// What was generated for the month's other hours (the same for every run).
#[derive(Clone, Debug, Default)]
pub struct GeneratedHours {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub accounts: usize,
    pub seconds: f64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    /// Making and encoding the day's samples (not part of any stage's figures).
    pub generate_seconds: f64,
    /// Aggregating the day: wall time of the timed phases, every partition at once.
    pub aggregate_seconds: f64,
    /// CPU time of the partitions' threads in the timed phases (process and seal).
    pub aggregate_cpu: f64,
    /// Of that, sealing (`seal_ready` after each minute, `seal_all` at the end).
    pub seal_cpu: f64,
    /// Checkpoints: wall time of their phases, CPU time, how many, rows held in all.
    pub checkpoint_seconds: f64,
    pub checkpoint_cpu: f64,
    pub checkpoints: u64,
    pub checkpoint_rows: u64,
    /// Peak resident memory while aggregating (VmHWM, reset before the stage when the
    /// kernel allows it), and the resident memory just before the stage.
    pub aggregate_peak_rss: u64,
    pub aggregate_rss_before: u64,
    /// The whole rating job.
    pub rate_seconds: f64,
    pub rate_cpu: f64,
    pub rate_peak_rss: u64,
    pub rate_rss_before: u64,
    /// `/proc/loadavg`'s one-minute load before the run and after it: other work on the
    /// machine shows in the wall times (less in the CPU times).
    pub load_before: String,
    pub load_after: String,
}

/// What a scale run measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub resources: usize,
    pub partitions: usize,
    pub month_hours: i64,
    /// Of the fleet: VMs (servers and GPU servers), the rest being IPs, snapshots, add-ons.
    pub vms: usize,
    pub generated: GeneratedHours,
    /// The day's input: samples, messages and their bytes (the same every run).
    pub day_samples: u64,
    pub day_messages: u64,
    pub day_payload_bytes: u64,
    /// What the aggregator wrote for the day (checked equal to the generator's rows).
    pub day_rows: u64,
    pub day_rollup_bytes: u64,
    pub line_items: usize,
    pub invoices: usize,
    /// Whether each stage's peak RSS is its own (`/proc/self/clear_refs` accepted).
    pub peak_rss_per_stage: bool,
    pub runs: Vec<RunFigures>,
}

/// Generates (or reuses) the month's other hours, then `options.runs` times aggregates
/// the day into the lake, checks it, and rates the month.
pub fn run(options: &Options) -> anyhow::Result<Figures> {
    ensure!(
        options.resources > 0 && options.partitions > 0 && options.runs > 0,
        "--resources, --partitions and --runs must be at least 1"
    );
    let month = BillingMonth::new(MONTH, chrono_tz::Europe::Berlin)?;
    let spec = MonthSpec {
        resources: options.resources,
        first: month.first_hour(),
        end: month.end_hour(),
        seed: 2026,
    };
    let day_first = Hour::parse_partition_value(DAY)?;
    let day_offset = day_first.unix_hours() - spec.first.unix_hours();
    let day_offsets = day_offset..day_offset + DAY_HOURS;
    ensure!(
        day_offset >= 0 && day_offsets.end <= month.hours(),
        "the day {DAY} is not within the month {MONTH}"
    );
    let (data, generated) = ensure_month(&options.data_root, &spec, day_offsets)?;
    let fleet = fleet(&spec);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RATING_THREADS)
        .enable_all()
        .build()?;
    let mut figures = Figures {
        resources: options.resources,
        partitions: options.partitions,
        month_hours: month.hours(),
        vms: fleet
            .iter()
            .filter(|resource| {
                matches!(
                    resource.kind,
                    ResourceKind::Server | ResourceKind::GpuServer
                )
            })
            .count(),
        generated,
        peak_rss_per_stage: true,
        ..Figures::default()
    };
    // Every run's rating output is kept until the last run is done, as in the rating
    // benchmark, so that removing one run's files cannot slow the next one's writes.
    let mut outs = Vec::new();
    for run in 0..options.runs {
        remove_day(&data, day_first)?;
        let load_before = load_average()?;
        let aggregate_rss_before = memory_status("VmRSS")?;
        figures.peak_rss_per_stage &= reset_peak_rss();
        let day = aggregate_day(&data, &fleet, &spec, day_first, options.partitions)?;
        let aggregate_peak_rss = memory_status("VmHWM")?;
        let report = &day.report;
        ensure!(
            report.accepted == day.samples
                && report.dead_lettered() == 0
                && report.duplicates == 0
                && report.conflicts == 0
                && report.restatements == 0,
            "run {run}: the aggregator accepted {} of {} samples ({} dead-lettered, {} duplicates, {} conflicts, {} restatements)",
            report.accepted,
            day.samples,
            report.dead_lettered(),
            report.duplicates,
            report.conflicts,
            report.restatements
        );
        let checked = check_day(&data, &fleet, &spec, day_first)?;
        ensure!(
            checked.rows == report.rows_written && checked.samples == day.samples,
            "run {run}: the day's files hold {} rows and {} samples, the aggregator reported {} rows of {} samples",
            checked.rows,
            checked.samples,
            report.rows_written,
            day.samples
        );
        figures.day_samples = day.samples;
        figures.day_messages = day.messages;
        figures.day_payload_bytes = day.payload_bytes;
        figures.day_rows = report.rows_written;
        figures.day_rollup_bytes = report.bytes_written;

        let out = tempfile::tempdir_in(&data)?;
        let rate_rss_before = memory_status("VmRSS")?;
        figures.peak_rss_per_stage &= reset_peak_rss();
        let cpu_before = process_cpu_seconds()?;
        let started = Instant::now();
        let rated = runtime.block_on(rate_month(&data, out.path()))?;
        let rate_seconds = started.elapsed().as_secs_f64();
        let rate_cpu = process_cpu_seconds()? - cpu_before;
        let rate_peak_rss = memory_status("VmHWM")?;
        outs.push(out);
        figures.line_items = rated.line_items;
        figures.invoices = rated.invoices.len();

        figures.runs.push(RunFigures {
            generate_seconds: day.generate_seconds,
            aggregate_seconds: day.aggregate_seconds,
            aggregate_cpu: day.aggregate_cpu,
            seal_cpu: day.seal_cpu,
            checkpoint_seconds: day.checkpoint_seconds,
            checkpoint_cpu: day.checkpoint_cpu,
            checkpoints: day.checkpoints,
            checkpoint_rows: day.checkpoint_rows,
            aggregate_peak_rss,
            aggregate_rss_before,
            rate_seconds,
            rate_cpu,
            rate_peak_rss,
            rate_rss_before,
            load_before,
            load_after: load_average()?,
        });
        figures.runs[run].print_one(run, &figures);
    }
    drop(outs);
    Ok(figures)
}

/// The month's hours but the day's, generated once under `data_root` and reused, with
/// the reference tariffs and the fleet's contracts.
fn ensure_month(
    data_root: &Path,
    spec: &MonthSpec,
    day_offsets: Range<i64>,
) -> anyhow::Result<(PathBuf, GeneratedHours)> {
    // v2: the traffic counters delta-encoded (the aggregator's writer since 2026-12-07);
    // v3: the few-valued texts declared as dictionaries (since 2026-12-07, later).
    let directory = data_root.join(format!(
        "scale-{}-{MONTH}-without-{}-v3",
        spec.resources,
        &DAY[..10]
    ));
    let summary_file = directory.join("generated.json");
    let done = directory.join("complete");
    if done.exists() {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file)?)
            .with_context(|| format!("read {}", summary_file.display()))?;
        let number = |field: &str| {
            saved[field]
                .as_f64()
                .with_context(|| format!("no {field} in {}", summary_file.display()))
        };
        let generated = GeneratedHours {
            rows: number("rows")? as u64,
            files: number("files")? as u64,
            bytes: number("bytes")? as u64,
            accounts: number("accounts")? as usize,
            seconds: number("seconds")?,
        };
        println!("data: reusing {}", directory.display());
        return Ok((directory, generated));
    }
    if directory.exists() {
        std::fs::remove_dir_all(&directory)?;
    }
    std::fs::create_dir_all(&directory)?;
    let started = Instant::now();
    let written = write_month_except(&directory, spec, GENERATED_SOURCE, day_offsets)?;
    let generated = GeneratedHours {
        rows: written.rows,
        files: written.files,
        bytes: written.bytes,
        accounts: written.accounts,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(directory.join("contracts.json"), contracts_json(spec))?;
    let tariffs = directory.join("tariffs");
    std::fs::create_dir_all(&tariffs)?;
    for (name, text) in tally_rating::reference_tariffs() {
        std::fs::write(tariffs.join(name), text)?;
    }
    let saved = serde_json::json!({
        "rows": generated.rows,
        "files": generated.files,
        "bytes": generated.bytes,
        "accounts": generated.accounts,
        "seconds": generated.seconds,
    });
    std::fs::write(&summary_file, serde_json::to_vec_pretty(&saved)?)?;
    std::fs::write(&done, "")?;
    println!(
        "data: generated {} rows in {} hourly files ({:.1} MiB) in {:.1} s under {}",
        generated.rows,
        generated.files,
        mib(generated.bytes),
        generated.seconds,
        directory.display()
    );
    Ok((directory, generated))
}

/// Removes what an earlier run aggregated: the day's hour directories and the
/// aggregator's manifests and checkpoints.
fn remove_day(lake: &Path, day_first: Hour) -> anyhow::Result<()> {
    let state = lake.join("_state");
    let directories = (0..DAY_HOURS)
        .map(|hour| hour_dir(lake, Hour::from_unix_hours(day_first.unix_hours() + hour)))
        .chain([state]);
    for directory in directories {
        if directory.exists() {
            std::fs::remove_dir_all(&directory)
                .with_context(|| format!("remove {}", directory.display()))?;
        }
    }
    Ok(())
}

/// What aggregating the day did, over every partition.
#[derive(Clone, Debug, Default)]
struct DayFigures {
    samples: u64,
    messages: u64,
    payload_bytes: u64,
    generate_seconds: f64,
    aggregate_seconds: f64,
    aggregate_cpu: f64,
    seal_cpu: f64,
    checkpoint_seconds: f64,
    checkpoint_cpu: f64,
    checkpoints: u64,
    checkpoint_rows: u64,
    report: AggregateReport,
}

/// Aggregates the day's samples into `lake`, one thread per source partition.
fn aggregate_day(
    lake: &Path,
    fleet: &[Resource],
    spec: &MonthSpec,
    day_first: Hour,
    partitions: usize,
) -> anyhow::Result<DayFigures> {
    let partition_count = i32::try_from(partitions)?;
    let mut positions: Vec<Vec<usize>> = vec![Vec::new(); partitions];
    for (position, resource) in fleet.iter().enumerate() {
        let partition = partition_for(&resource.resource_id, partition_count);
        positions[usize::try_from(partition)?].push(position);
    }
    let lockstep = Lockstep {
        barrier: Barrier::new(partitions),
        failed: AtomicBool::new(false),
    };
    let results: Vec<anyhow::Result<DayFigures>> = std::thread::scope(|scope| {
        let threads: Vec<_> = positions
            .into_iter()
            .enumerate()
            .map(|(partition, positions)| {
                let lockstep = &lockstep;
                let feed = PartitionFeed {
                    fleet,
                    positions,
                    month_first: spec.first,
                    hour: None,
                    rows: Vec::new(),
                    samples: Vec::new(),
                };
                scope.spawn(move || {
                    aggregate_partition(lake, i32::try_from(partition)?, feed, day_first, lockstep)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("partition thread"))
            .collect()
    });
    let mut day = DayFigures::default();
    for result in results {
        let partition = result?;
        day.samples += partition.samples;
        day.messages += partition.messages;
        day.payload_bytes += partition.payload_bytes;
        // The phases' wall times are the same for every partition (they end together at
        // the barrier): the slowest thread's generation and its timed phases.
        day.generate_seconds = day.generate_seconds.max(partition.generate_seconds);
        day.aggregate_seconds = day.aggregate_seconds.max(partition.aggregate_seconds);
        day.checkpoint_seconds = day.checkpoint_seconds.max(partition.checkpoint_seconds);
        day.aggregate_cpu += partition.aggregate_cpu;
        day.seal_cpu += partition.seal_cpu;
        day.checkpoint_cpu += partition.checkpoint_cpu;
        day.checkpoints += partition.checkpoints;
        day.checkpoint_rows += partition.checkpoint_rows;
        day.report.add(&partition.report);
    }
    Ok(day)
}

/// The partitions' threads move from phase to phase together, so that making samples
/// never overlaps the timed phases; a thread that fails lets the others stop at the next
/// barrier instead of waiting for it for ever.
struct Lockstep {
    barrier: Barrier,
    failed: AtomicBool,
}

impl Lockstep {
    /// Runs `work`, then waits for every partition's thread. `Ok(None)`: another thread
    /// failed, stop.
    fn step<T>(&self, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Option<T>> {
        let result = work();
        if result.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.barrier.wait();
        let value = result?;
        // Every thread reads the flag after the same barrier, so all stop or none does.
        if self.failed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(Some(value))
    }
}

/// One partition's day: samples made ten minutes at a time, ingested, sealed,
/// checkpointed at minute 30 of each hour.
fn aggregate_partition(
    lake: &Path,
    partition: i32,
    mut feed: PartitionFeed<'_>,
    day_first: Hour,
    lockstep: &Lockstep,
) -> anyhow::Result<DayFigures> {
    let day_start = day_first.first_minute();
    let day_end = day_start.plus(DAY_HOURS * 60);
    let mut config = AggregateConfig::new(lake);
    // The clock stands at the end of the day: nothing is from the future.
    config.clock = Arc::new(FixedClock(day_end.to_datetime()));
    let mut dead_letters = CollectedDeadLetters::default();
    let mut ingest = Ingest::new(config, TOPIC, &mut dead_letters);
    let mut figures = DayFigures::default();
    let Some(mut next_offset) = lockstep.step(|| Ok(ingest.open_partition(partition)?))? else {
        return Ok(figures);
    };
    let mut chunk_start = day_start;
    while chunk_start < day_end {
        let chunk_end = chunk_start.plus(CHUNK_MINUTES);
        let started = Instant::now();
        let Some(chunk) = lockstep.step(|| feed.messages(chunk_start..chunk_end))? else {
            return Ok(figures);
        };
        figures.generate_seconds += started.elapsed().as_secs_f64();
        for minute in &chunk {
            figures.messages += minute.len() as u64;
            figures.payload_bytes += minute.iter().map(Vec::len).sum::<usize>() as u64;
        }
        figures.samples += chunk_samples(&feed, &chunk);

        let started = Instant::now();
        let timed = lockstep.step(|| {
            let cpu_before = thread_cpu_seconds()?;
            for minute in &chunk {
                for message in minute {
                    ingest.process(
                        TOPIC,
                        partition,
                        next_offset,
                        Some(Encoding::Arrow.content_type()),
                        message,
                    )?;
                    next_offset += 1;
                }
                let seal_cpu_before = thread_cpu_seconds()?;
                ingest.seal_ready(partition, next_offset)?;
                figures.seal_cpu += thread_cpu_seconds()? - seal_cpu_before;
            }
            figures.aggregate_cpu += thread_cpu_seconds()? - cpu_before;
            Ok(())
        })?;
        if timed.is_none() {
            return Ok(figures);
        }
        figures.aggregate_seconds += started.elapsed().as_secs_f64();
        drop(chunk);

        if chunk_end.minute_of_hour() == CHECKPOINT_MINUTE {
            let started = Instant::now();
            let checkpointed = lockstep.step(|| {
                let cpu_before = thread_cpu_seconds()?;
                ingest.checkpoint(partition, next_offset)?;
                figures.checkpoint_cpu += thread_cpu_seconds()? - cpu_before;
                Ok(())
            })?;
            if checkpointed.is_none() {
                return Ok(figures);
            }
            figures.checkpoint_seconds += started.elapsed().as_secs_f64();
            figures.checkpoints += 1;
            // The hour before was sealed 15 minutes into this one: this hour's rows are
            // what the checkpoint held.
            figures.checkpoint_rows += feed.rows.len() as u64;
        }
        chunk_start = chunk_end;
    }
    // The day's last hour is still open (within the lateness): sealing it is part of
    // aggregating the day.
    let started = Instant::now();
    let sealed = lockstep.step(|| {
        let cpu_before = thread_cpu_seconds()?;
        ingest.seal_all(partition, next_offset)?;
        let cpu = thread_cpu_seconds()? - cpu_before;
        figures.seal_cpu += cpu;
        figures.aggregate_cpu += cpu;
        Ok(())
    })?;
    if sealed.is_none() {
        return Ok(figures);
    }
    figures.aggregate_seconds += started.elapsed().as_secs_f64();
    figures.report = ingest.report.clone();
    drop(ingest);
    ensure!(
        dead_letters.letters.is_empty(),
        "partition {partition}: {} dead letters, the first: {}",
        dead_letters.letters.len(),
        dead_letters
            .letters
            .first()
            .map(|letter| letter.detail.as_str())
            .unwrap_or_default()
    );
    Ok(figures)
}

/// The samples in a chunk of the feed: every minute of an hour has one per row of it.
fn chunk_samples(feed: &PartitionFeed<'_>, chunk: &[Vec<Vec<u8>>]) -> u64 {
    // A chunk lies within one hour (ten minutes, aligned), whose rows the feed holds.
    (feed.rows.len() * chunk.len()) as u64
}

/// Makes one partition's samples, minute by minute, from the generator's rows.
struct PartitionFeed<'fleet> {
    fleet: &'fleet [Resource],
    /// The partition's resources, by their position in the fleet.
    positions: Vec<usize>,
    month_first: Hour,
    /// The hour whose rows and samples are held.
    hour: Option<Hour>,
    /// The generator's rows of the hour for the partition's resources that exist then.
    rows: Vec<RollupRow>,
    /// One sample per row, refilled for each minute (only the minute and the counters
    /// change within an hour).
    samples: Vec<Sample>,
}

impl PartitionFeed<'_> {
    /// The messages of `minutes`, minute by minute, as the collector would ship them.
    fn messages(&mut self, minutes: Range<Minute>) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
        let mut chunk = Vec::new();
        let mut minute = minutes.start;
        while minute < minutes.end {
            if self.hour != Some(minute.hour()) {
                self.start_hour(minute.hour())?;
            }
            let minute_of_hour = minute.minute_of_hour();
            for (sample, row) in self.samples.iter_mut().zip(&self.rows) {
                let meters = &row.meters;
                sample.minute = minute;
                sample.out_external_bytes = minute_share(meters.out_external_bytes, minute_of_hour);
                sample.out_internal_bytes = minute_share(meters.out_internal_bytes, minute_of_hour);
                sample.in_bytes = minute_share(meters.in_bytes, minute_of_hour);
            }
            let messages = self
                .samples
                .chunks(SAMPLES_PER_MESSAGE)
                .map(|batch| Encoding::Arrow.encode(batch).context("encode"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            chunk.push(messages);
            minute = minute.plus(1);
        }
        Ok(chunk)
    }

    fn start_hour(&mut self, hour: Hour) -> anyhow::Result<()> {
        let offset = hour.unix_hours() - self.month_first.unix_hours();
        self.rows.clear();
        self.samples.clear();
        for &position in &self.positions {
            let Some(row) = hour_row(&self.fleet[position], hour, offset) else {
                continue; // not created yet, or deleted
            };
            self.samples.push(first_sample(&row, position)?);
            self.rows.push(row);
        }
        self.hour = Some(hour);
        Ok(())
    }
}

/// A counter's share of minute `minute_of_hour`: the hour's total split evenly, the
/// remainder one each to the first minutes, so the 60 shares add up to the total.
fn minute_share(hour_total: u64, minute_of_hour: u32) -> u64 {
    hour_total / 60 + u64::from(u64::from(minute_of_hour) < hour_total % 60)
}

/// The sample of `row`'s first minute, the resource at `fleet_position`. The generator's
/// rows are one state for all 60 minutes at one size, which is what makes the row's
/// samples known; any other row is refused rather than approximated.
fn first_sample(row: &RollupRow, fleet_position: usize) -> anyhow::Result<Sample> {
    let meters = &row.meters;
    let whole_hour_state = ResourceState::ALL
        .into_iter()
        .find(|state| meters.state_masks[state.index()] == FULL_HOUR_MASK);
    let Some(state) = whole_hour_state.filter(|_| {
        meters.sample_count == 60 && meters.size_byte_minutes == meters.max_size_bytes * 60
    }) else {
        bail!(
            "the generator's row of {} for {} is not one state and one size for all 60 minutes: the scale run cannot spread it into samples",
            row.key.resource_id,
            row.key.hour
        );
    };
    Ok(Sample {
        minute: row.key.hour.first_minute(),
        host: format!("hv-{:05}", fleet_position / RESOURCES_PER_HOST),
        account_id: row.key.account_id.clone(),
        resource_id: row.key.resource_id.clone(),
        kind: row.key.kind,
        sku: row.key.sku.clone(),
        zone: row.key.zone.clone(),
        state,
        gpus: row.key.gpus,
        out_external_bytes: 0,
        out_internal_bytes: 0,
        in_bytes: 0,
        size_bytes: meters.max_size_bytes,
        labels: labels_from_text(&row.key.labels)
            .with_context(|| format!("labels of {}", row.key.resource_id))?,
    })
}

/// What the day's files hold.
struct DayCheck {
    rows: u64,
    samples: u64,
}

/// Reads back every file the aggregator wrote for the day and compares its rows, hour by
/// hour, with the rows the generator makes for those hours.
fn check_day(
    lake: &Path,
    fleet: &[Resource],
    spec: &MonthSpec,
    day_first: Hour,
) -> anyhow::Result<DayCheck> {
    let mut checked = DayCheck {
        rows: 0,
        samples: 0,
    };
    for hour_index in 0..DAY_HOURS {
        let hour = Hour::from_unix_hours(day_first.unix_hours() + hour_index);
        let offset = hour.unix_hours() - spec.first.unix_hours();
        let mut expected: Vec<RollupRow> = fleet
            .iter()
            .filter_map(|resource| hour_row(resource, hour, offset))
            .collect();
        expected.sort_by(|a, b| a.key.cmp(&b.key));
        let mut written = Vec::new();
        let directory = hour_dir(lake, hour);
        for entry in std::fs::read_dir(&directory)
            .with_context(|| format!("list {}", directory.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            ensure!(
                name.starts_with(TOPIC) && name.ends_with(".parquet"),
                "{} is not a file the aggregator writes",
                path.display()
            );
            written.extend(read_rollups(&path)?);
        }
        written.sort_by(|a, b| a.key.cmp(&b.key));
        if written != expected {
            let first_difference = written
                .iter()
                .zip(&expected)
                .position(|(written, expected)| written != expected);
            bail!(
                "hour {hour}: the aggregator wrote {} rows, the generator has {}; first difference at row {first_difference:?}: written {:?}, generated {:?}",
                written.len(),
                expected.len(),
                first_difference.and_then(|index| written.get(index)),
                first_difference.and_then(|index| expected.get(index)),
            );
        }
        checked.rows += written.len() as u64;
        checked.samples += written
            .iter()
            .map(|row| u64::from(row.meters.sample_count))
            .sum::<u64>();
    }
    Ok(checked)
}

/// Every row of a rollup file, read with the Parquet reader DataFusion brings.
fn read_rollups(path: &Path) -> anyhow::Result<Vec<RollupRow>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(batch_to_rows(&batch?)?);
    }
    Ok(rows)
}

/// `tally rate` over the month, into `out`.
async fn rate_month(data: &Path, out: &Path) -> anyhow::Result<tally_rating::RateReport> {
    let mut tariffs: Vec<PathBuf> = std::fs::read_dir(data.join("tariffs"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    tariffs.sort();
    Ok(tally_rating::rate(&tally_rating::RateRequest {
        lake: data.into(),
        month: MONTH.to_owned(),
        tariffs,
        contracts: data.join("contracts.json"),
        out: out.into(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    })
    .await?)
}

/// Seconds this thread has run on a CPU, from `/proc/thread-self/schedstat` (its first
/// field, in nanoseconds: precise where `/proc/self/stat`'s 10 ms ticks are not, for
/// phases of a tenth of a second).
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("read /proc/thread-self/schedstat")?;
    let nanoseconds: u64 = schedstat
        .split_whitespace()
        .next()
        .context("empty /proc/thread-self/schedstat")?
        .parse()
        .with_context(|| format!("unreadable /proc/thread-self/schedstat '{schedstat}'"))?;
    Ok(nanoseconds as f64 / 1e9)
}

/// The one-minute load average, from `/proc/loadavg`.
fn load_average() -> anyhow::Result<String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").context("read /proc/loadavg")?;
    Ok(loadavg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// The CPU's model and the cores this process may use.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cores} cores")
}

/// Resets the process's peak resident memory (VmHWM), so that each stage reports its own;
/// false where the kernel refuses (then the peak is the process's so far).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn gib(bytes: f64) -> f64 {
    bytes / f64::from(1 << 30)
}

/// The projection for a fleet of 1,000,000 VMs.
const PROJECTED_VMS: f64 = 1_000_000.0;
/// Aggregation capacity as a multiple of the real-time rate: a broker outage of an hour
/// is caught up in about 7 minutes at 10 × (9 × net), and a restart reading its open
/// hours again does not fall behind.
const AGGREGATION_HEADROOM: f64 = 10.0;
/// The nightly window for rating a month, and capacity as a multiple of what fits
/// exactly (re-runs, a month with more rows, a slower night).
const RATING_WINDOW_SECONDS: f64 = 2.0 * 3600.0;
const RATING_HEADROOM: f64 = 2.0;

impl RunFigures {
    fn print_one(&self, run: usize, figures: &Figures) {
        println!(
            "run {}: samples made in {:.1} s; aggregated in {:.2} s ({:.2} s of CPU, sealing {:.2}), checkpoints {:.2} s; rated in {:.2} s ({:.2} s of CPU); peak RSS {:.0} / {:.0} MiB, {:.0} / {:.0} MiB above the stage's start; load {} before, {} after",
            run + 1,
            self.generate_seconds,
            self.aggregate_seconds,
            self.aggregate_cpu,
            self.seal_cpu,
            self.checkpoint_seconds,
            self.rate_seconds,
            self.rate_cpu,
            mib(self.aggregate_peak_rss),
            mib(self.rate_peak_rss),
            mib(self
                .aggregate_peak_rss
                .saturating_sub(self.aggregate_rss_before)),
            mib(self.rate_peak_rss.saturating_sub(self.rate_rss_before)),
            self.load_before,
            self.load_after,
        );
        if run == 0 {
            println!(
                "  checked: the day's {} rollup rows ({} samples) equal the generator's rows for those hours",
                figures.day_rows, figures.day_samples
            );
        }
    }
}

impl Figures {
    fn median_of(&self, field: impl Fn(&RunFigures) -> f64) -> f64 {
        median(self.runs.iter().map(field).collect())
    }

    pub fn print(&self) {
        let runs = self.runs.len();
        let aggregate_seconds = self.median_of(|run| run.aggregate_seconds);
        let aggregate_cpu = self.median_of(|run| run.aggregate_cpu);
        let seal_cpu = self.median_of(|run| run.seal_cpu);
        let checkpoint_cpu = self.median_of(|run| run.checkpoint_cpu);
        let checkpoint_seconds = self.median_of(|run| run.checkpoint_seconds);
        let aggregate_peak = self.median_of(|run| run.aggregate_peak_rss as f64);
        let aggregate_growth = self.median_of(|run| {
            run.aggregate_peak_rss
                .saturating_sub(run.aggregate_rss_before) as f64
        });
        let rate_seconds = self.median_of(|run| run.rate_seconds);
        let rate_cpu = self.median_of(|run| run.rate_cpu);
        let rate_peak = self.median_of(|run| run.rate_peak_rss as f64);
        let rate_growth =
            self.median_of(|run| run.rate_peak_rss.saturating_sub(run.rate_rss_before) as f64);
        let generate_seconds = self.median_of(|run| run.generate_seconds);
        let samples = self.day_samples as f64;
        let payload_mb = self.day_payload_bytes as f64 / 1e6;
        let month_rows = self.generated.rows + self.day_rows;
        let checkpoint_rows = self.runs.first().map_or(0, |run| run.checkpoint_rows);
        let checkpoints = self.runs.first().map_or(0, |run| run.checkpoints);
        let peak_note = if self.peak_rss_per_stage {
            "of the stage"
        } else {
            "of the process so far"
        };

        println!();
        println!("machine: {}", machine());
        println!(
            "scale run: {} resources ({} VMs), month {MONTH} ({} h, Europe/Berlin), {runs} runs, medians:",
            self.resources, self.vms, self.month_hours
        );
        println!(
            "  generated as rollups: {} rows in {} hourly files ({:.1} MiB), the month's hours but the day's",
            self.generated.rows,
            self.generated.files,
            mib(self.generated.bytes)
        );
        println!(
            "  generated as samples: {} per-minute samples for {} UTC ({} h), {} Arrow messages, {:.1} MiB ({:.1} bytes/sample), made in {generate_seconds:.1} s (untimed)",
            self.day_samples,
            &DAY[..10],
            DAY_HOURS,
            self.day_messages,
            mib(self.day_payload_bytes),
            self.day_payload_bytes as f64 / samples
        );
        println!(
            "  aggregation, {} source partition(s), a thread each (decode, validate, dedup, roll up, seal to Parquet):",
            self.partitions
        );
        println!(
            "    wall   {aggregate_seconds:8.2} s   {:>10.0} samples/s   {:7.1} MB/s",
            samples / aggregate_seconds,
            payload_mb / aggregate_seconds
        );
        println!(
            "    CPU    {aggregate_cpu:8.2} s   {:>10.0} samples/s   {:7.1} MB/s per core (sealing {seal_cpu:.2} s of it)",
            samples / aggregate_cpu,
            payload_mb / aggregate_cpu
        );
        println!(
            "    wrote {} rollup rows, {:.1} MiB ({:.1} bytes/row); peak RSS {:.0} MiB ({peak_note}), {:.0} MiB above its start",
            self.day_rows,
            mib(self.day_rollup_bytes),
            self.day_rollup_bytes as f64 / self.day_rows.max(1) as f64,
            aggregate_peak / f64::from(1 << 20),
            aggregate_growth / f64::from(1 << 20)
        );
        println!(
            "    checkpoints (apart): {checkpoints} holding {checkpoint_rows} rows in all, {checkpoint_seconds:.2} s wall, {checkpoint_cpu:.2} s of CPU = {:.2} µs of CPU per row held",
            checkpoint_cpu * 1e6 / checkpoint_rows.max(1) as f64
        );
        println!(
            "  rating, tally rate (the whole job, {RATING_THREADS} threads) of {month_rows} rollup rows:"
        );
        println!(
            "    wall   {rate_seconds:8.2} s   {:>10.0} rows/s",
            month_rows as f64 / rate_seconds
        );
        println!(
            "    CPU    {rate_cpu:8.2} s   {:>10.0} rows/s per core; peak RSS {:.0} MiB ({peak_note}), {:.0} MiB above its start; {} line items, {} invoices",
            month_rows as f64 / rate_cpu,
            rate_peak / f64::from(1 << 20),
            rate_growth / f64::from(1 << 20),
            self.line_items,
            self.invoices
        );

        // The projection: arithmetic on the medians above, scaled linearly.
        let resources = PROJECTED_VMS * self.resources as f64 / self.vms.max(1) as f64;
        let scale = resources / self.resources as f64;
        let real_time_samples = resources / 60.0;
        let aggregate_cores = real_time_samples / (samples / aggregate_cpu);
        // A checkpoint a minute holds two open hours per resource in the first 15 minutes
        // of an hour (until the one before is sealed), one in the other 45: 1.25 on
        // average.
        let checkpoint_cores =
            1.25 * resources * checkpoint_cpu / checkpoint_rows.max(1) as f64 / 60.0;
        let aggregate_memory = aggregate_growth * scale;
        let month_rows_projected = month_rows as f64 * scale;
        let rate_cpu_projected = rate_cpu * scale;
        let rate_cores = RATING_HEADROOM * rate_cpu_projected / RATING_WINDOW_SECONDS;
        let lake_month = (self.generated.bytes + self.day_rollup_bytes) as f64 * scale;
        println!();
        println!(
            "projection for {PROJECTED_VMS:.0} VMs (arithmetic on the medians above, scaled linearly; not measured):"
        );
        println!(
            "  fleet: {resources:.0} resources at this run's mix ({:.0} % VMs, the rest IPs, snapshots, add-ons)",
            100.0 * self.vms as f64 / self.resources as f64
        );
        println!(
            "  aggregation in real time: {real_time_samples:.0} samples/s ({:.1} MB/s of Arrow from Kafka) = {aggregate_cores:.3} cores, checkpoints once a minute {checkpoint_cores:.3} cores; with {AGGREGATION_HEADROOM:.0} x headroom {:.2} cores",
            real_time_samples * self.day_payload_bytes as f64 / samples / 1e6,
            AGGREGATION_HEADROOM * aggregate_cores + checkpoint_cores
        );
        println!(
            "  aggregation memory: this run's growth of RSS scaled, {:.1} GiB over all partitions (an upper bound: it holds ten minutes of messages and the samples' templates too)",
            gib(aggregate_memory)
        );
        println!(
            "  rating the month: {month_rows_projected:.0} rollup rows, {rate_cpu_projected:.0} s of CPU ({:.1} minutes on {RATING_THREADS} threads like this run); in a {:.0} h window with {RATING_HEADROOM:.0} x headroom: {rate_cores:.1} cores; growth of RSS scaled {:.1} GiB (spread over the machines that share the accounts)",
            rate_seconds * scale / 60.0,
            RATING_WINDOW_SECONDS / 3600.0,
            gib(rate_growth * scale)
        );
        println!("  lake: {:.1} GiB of rollups a month", gib(lake_month));
    }
}
