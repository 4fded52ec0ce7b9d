//! The aggregator benchmark: a simulated fleet's per-minute samples, encoded in messages
//! as the collector ships them (4,096 samples each), pushed from memory through the
//! aggregator's core (`Ingest::process`: decode, validate, deduplicate, roll up) on one
//! thread, for both encodings. Sealing (Parquet) is timed apart, and gives the bytes per
//! rollup row on disk.
//!
//! The same-run baseline is decoding alone: how much of the time is the wire format and
//! how much is the aggregator's own work. Runs alternate between encodings so drift on a
//! noisy machine hits both; figures are medians.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use tally_aggregator::deadletter::CollectedDeadLetters;
use tally_aggregator::ingest::{AggregateConfig, Ingest};
use tally_collector::simulator::{Fleet, FleetSpec};
use tally_model::clock::FixedClock;
use tally_model::wire::{DecodedItems, Encoding};
use tally_model::{Minute, Sample};

use crate::rating::median;

/// Samples per message, as the collector's shipper batches them.
const SAMPLES_PER_MESSAGE: usize = 4_096;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Copies of the simulator's base fleet (about 60 resources each).
    pub fleet_copies: usize,
    /// Simulated hours of samples.
    pub hours: i64,
    pub runs: usize,
}

/// Seconds per run, per encoding.
#[derive(Clone, Debug, Default)]
pub struct EncodingFigures {
    pub messages: usize,
    pub payload_bytes: usize,
    /// Decoding alone (the baseline).
    pub decode: Vec<f64>,
    /// Decode, validate, deduplicate and roll up.
    pub ingest: Vec<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub resources: usize,
    pub samples: usize,
    pub runs: usize,
    pub json: EncodingFigures,
    pub arrow: EncodingFigures,
    /// Sealing every open hour: seconds, rows and bytes written.
    pub seal_seconds: f64,
    pub rows: u64,
    pub bytes: u64,
}

/// The simulator's fleet, `fleet_copies` copies of it, from 2026-10-01T00:00Z for
/// `hours` hours, and the end of that span: the input of every aggregator benchmark.
pub fn bench_fleet(fleet_copies: usize, hours: i64) -> (Fleet, Minute) {
    let start = Minute::from_unix_minutes(29_846_880);
    let end = start.plus(hours * 60);
    let fleet = Fleet::generate(FleetSpec {
        seed: 7,
        start,
        end,
        scale: fleet_copies,
    });
    (fleet, end)
}

pub fn run(options: &Options) -> anyhow::Result<Figures> {
    let (fleet, end) = bench_fleet(options.fleet_copies, options.hours);
    let samples: Vec<Sample> = fleet.chunks(1).flatten().collect();
    let mut figures = Figures {
        resources: fleet.resources.len(),
        samples: samples.len(),
        runs: options.runs,
        ..Figures::default()
    };
    let messages = |encoding: Encoding| -> anyhow::Result<Vec<Vec<u8>>> {
        samples
            .chunks(SAMPLES_PER_MESSAGE)
            .map(|batch| encoding.encode(batch).context("encode"))
            .collect()
    };
    let json = messages(Encoding::Json)?;
    let arrow = messages(Encoding::Arrow)?;
    drop(samples);
    for (figures, messages) in [(&mut figures.json, &json), (&mut figures.arrow, &arrow)] {
        figures.messages = messages.len();
        figures.payload_bytes = messages.iter().map(Vec::len).sum();
    }
    // The clock stands just after the simulation: nothing is from the future.
    let config = |lake: &std::path::Path| {
        let mut config = AggregateConfig::new(lake);
        config.clock = Arc::new(FixedClock(end.to_datetime()));
        config
    };
    for run in 0..options.runs {
        for (encoding, messages) in [(Encoding::Arrow, &arrow), (Encoding::Json, &json)] {
            // Decoding as the aggregator does it: buffers reused from message to message.
            let mut decoded = DecodedItems::default();
            let mut count = 0;
            let started = Instant::now();
            for message in messages {
                encoding
                    .decode_into(message, &mut decoded)
                    .map_err(anyhow::Error::msg)?;
                count += decoded.len();
            }
            let decode = started.elapsed().as_secs_f64();
            ensure!(count == figures.samples, "decoded {count} samples");
            drop(decoded);

            let lake = tempfile::tempdir()?;
            let mut dead_letters = CollectedDeadLetters::default();
            let mut ingest = Ingest::new(config(lake.path()), "samples", &mut dead_letters);
            ingest.open_partition(0)?;
            let started = Instant::now();
            for (offset, message) in messages.iter().enumerate() {
                ingest.process(
                    "samples",
                    0,
                    i64::try_from(offset)?,
                    Some(encoding.content_type()),
                    message,
                )?;
            }
            let ingested = started.elapsed().as_secs_f64();
            ensure!(
                ingest.report.accepted == figures.samples as u64,
                "accepted {} of {} samples",
                ingest.report.accepted,
                figures.samples
            );
            if run == 0 && encoding == Encoding::Arrow {
                let started = Instant::now();
                ingest.seal_all(0, i64::try_from(messages.len())?)?;
                figures.seal_seconds = started.elapsed().as_secs_f64();
                figures.rows = ingest.report.rows_written;
                figures.bytes = ingest.report.bytes_written;
            }
            drop(ingest);
            ensure!(
                dead_letters.letters.is_empty(),
                "the fleet's samples are all valid"
            );
            let figures = match encoding {
                Encoding::Arrow => &mut figures.arrow,
                Encoding::Json => &mut figures.json,
            };
            figures.decode.push(decode);
            figures.ingest.push(ingested);
        }
    }
    Ok(figures)
}

impl Figures {
    pub fn print(&self) {
        println!(
            "aggregating {} samples of {} resources from memory, one thread, {} runs, medians:",
            self.samples, self.resources, self.runs
        );
        for (name, figures) in [("binary (Arrow IPC)", &self.arrow), ("JSON", &self.json)] {
            let (decode, ingest) = (
                median(figures.decode.clone()),
                median(figures.ingest.clone()),
            );
            let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);
            let rate = |seconds: f64| self.samples as f64 / seconds;
            println!(
                "  {name:<18} {} messages, {:.1} bytes/sample",
                figures.messages,
                figures.payload_bytes as f64 / self.samples as f64
            );
            println!(
                "    decode alone (baseline)        {decode:7.3} s  {:>9.0} samples/s  (best run {:>9.0})",
                rate(decode),
                rate(best(&figures.decode))
            );
            println!(
                "    decode+validate+dedup+rollup   {ingest:7.3} s  {:>9.0} samples/s  (best run {:>9.0})",
                rate(ingest),
                rate(best(&figures.ingest))
            );
            println!("    whole / decode alone           {:7.2}", ingest / decode);
        }
        println!(
            "  sealing: {} rows in {:.3} s, {} bytes on disk = {:.1} bytes per rollup row",
            self.rows,
            self.seal_seconds,
            self.bytes,
            self.bytes as f64 / self.rows.max(1) as f64
        );
    }
}

/// What holding many resources' open hours costs in memory.
#[derive(Clone, Debug)]
pub struct OpenStateFigures {
    pub resources: usize,
    pub open_hours: usize,
    /// Resident set size before the first sample and after the last, and its peak.
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_peak: u64,
}

/// Opens `open_hours` hours for each of `resources` resources (one sample per
/// resource-hour: the state of a resource-hour has the same size whatever its number of
/// minutes) and reads the process's resident memory from `/proc/self/status`. Samples
/// are made and sent message by message, so the input adds almost nothing.
pub fn open_state(resources: usize, open_hours: usize) -> anyhow::Result<OpenStateFigures> {
    let start = Minute::from_unix_minutes(29_846_880);
    let lake = tempfile::tempdir()?;
    let mut config = AggregateConfig::new(lake.path());
    config.clock = Arc::new(FixedClock(
        start.plus(60 * i64::try_from(open_hours)?).to_datetime(),
    ));
    // Lateness beyond the hours opened: nothing is sealed while measuring.
    config.lateness_minutes = 60 * i64::try_from(open_hours + 1)?;
    let mut dead_letters = CollectedDeadLetters::default();
    let mut ingest = Ingest::new(config, "samples", &mut dead_letters);
    ingest.open_partition(0)?;
    let rss_before = memory_status("VmRSS")?;
    let mut batch = Vec::with_capacity(SAMPLES_PER_MESSAGE);
    let mut offset = 0;
    for hour in 0..open_hours {
        let minute = start.plus(60 * i64::try_from(hour)? + 7);
        for resource in 0..resources {
            batch.push(synthetic_sample(resource, minute));
            if batch.len() == SAMPLES_PER_MESSAGE || resource + 1 == resources {
                let message = Encoding::Arrow.encode(&batch)?;
                ingest.process(
                    "samples",
                    0,
                    offset,
                    Some(Encoding::Arrow.content_type()),
                    &message,
                )?;
                offset += 1;
                batch.clear();
            }
        }
    }
    let expected = resources * open_hours;
    ensure!(
        ingest.report.accepted == expected as u64,
        "accepted {} of {expected} samples",
        ingest.report.accepted
    );
    let rss_after = memory_status("VmRSS")?;
    let rss_peak = memory_status("VmHWM")?;
    drop(ingest);
    Ok(OpenStateFigures {
        resources,
        open_hours,
        rss_before,
        rss_after,
        rss_peak,
    })
}

impl OpenStateFigures {
    pub fn print(&self) {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let held = self.rss_after.saturating_sub(self.rss_before);
        println!(
            "open state of {} resources x {} open hours: RSS {:.0} MiB after (peak {:.0} MiB), {:.0} MiB more than before the first sample = {:.0} bytes per resource-hour",
            self.resources,
            self.open_hours,
            mib(self.rss_after),
            mib(self.rss_peak),
            mib(held),
            held as f64 / (self.resources * self.open_hours) as f64
        );
    }
}

/// A server as a collector reports it, with ids as long as the simulator's.
fn synthetic_sample(resource: usize, minute: Minute) -> Sample {
    let mut labels = std::collections::BTreeMap::new();
    if resource.is_multiple_of(4) {
        labels.insert("os".to_owned(), "windows".to_owned());
    }
    Sample {
        minute,
        host: format!("hv-{:05}", resource / 1000),
        account_id: format!("acct-{:06}", resource / 10),
        resource_id: format!("vm-{resource:08}"),
        kind: tally_model::ResourceKind::Server,
        sku: ["cx22", "cx32", "c2m4"][resource % 3].to_owned(),
        zone: "fsn1".to_owned(),
        state: tally_model::ResourceState::Running,
        gpus: 0,
        out_external_bytes: 1_000_000 + resource as u64,
        out_internal_bytes: 0,
        in_bytes: 0,
        size_bytes: 0,
        labels,
    }
}

/// A `kB` line of `/proc/self/status`, in bytes.
pub fn memory_status(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable line '{line}'"))?;
    Ok(kib * 1024)
}
