//! `cargo bench -p tally-benches --bench spool`: the collector's durable spool
//! (`tally_collector::spool`) with fsync on.
//!
//! ```sh
//! cargo bench -p tally-benches --bench spool -- --runs 5
//! cargo bench -p tally-benches --bench spool -- --samples 1000000 --dir /var/lib/tally
//! cargo bench -p tally-benches --bench spool -- --smoke      # 20,000 samples, 1 run
//! ```
//!
//! Measures appends of the simulator's samples in batches of 1,000 (a minute of a 1,000-VM
//! host) and of 10,000, each append one write and one `sync_data`, and then reading the
//! spool back with acknowledgements (batches of 32,768, as the forwarder reads, each
//! acknowledgement a synced cursor file). The baseline, in the same run: the same bytes
//! written with the same number of `write` + `sync_data` calls to a plain file, the floor
//! the disk sets. Every run uses a fresh spool in a temporary directory under `--dir`
//! (default: the directory of this binary, so inside the target directory and on its
//! disk); the batch sizes alternate within each run, so drift hits them alike.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use tally_benches::rating::median;
use tally_collector::simulator::{Fleet, FleetSpec};
use tally_collector::spool::{self, SpoolConfig};
use tally_model::{Minute, Sample};

/// Samples per `read_batch`, as `tally_collector::forward` reads.
const READ_BATCH: usize = 32_768;

struct Options {
    samples: usize,
    batches: Vec<usize>,
    runs: usize,
    dir: PathBuf,
}

fn args() -> anyhow::Result<Options> {
    let binary = std::env::current_exe()?;
    let mut options = Options {
        samples: 300_000,
        batches: vec![1_000, 10_000],
        runs: 5,
        dir: binary
            .parent()
            .context("the benchmark binary has no directory")?
            .to_path_buf(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--samples" => options.samples = given.next().context("--samples N")?.parse()?,
            "--runs" => options.runs = given.next().context("--runs N")?.parse()?,
            "--dir" => options.dir = given.next().context("--dir PATH")?.into(),
            "--smoke" => {
                options.samples = 20_000;
                options.runs = 1;
            }
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => {
                bail!("unknown argument {other}: use --samples N, --runs N, --dir PATH or --smoke")
            }
        }
    }
    ensure!(
        options.runs > 0 && options.samples >= 10_000,
        "at least one run of 10,000 samples"
    );
    Ok(options)
}

/// `samples` samples of a simulated fleet of about 1,000 resources, minute after minute.
fn fleet_samples(samples: usize) -> Vec<Sample> {
    let start = Minute::from_unix_minutes(29_000_000);
    let fleet = Fleet::generate(FleetSpec {
        seed: 11,
        start,
        end: start.plus(24 * 60),
        scale: 17,
    });
    let mut out = Vec::with_capacity(samples + 2_000);
    let mut minute = start;
    while out.len() < samples {
        fleet.samples_at(minute, &mut out);
        minute = minute.plus(1);
    }
    out.truncate(samples);
    out
}

/// One batch size's figures over the runs, in seconds.
#[derive(Default)]
struct Figures {
    append: Vec<f64>,
    raw: Vec<f64>,
    read: Vec<f64>,
    bytes: u64,
}

fn main() -> anyhow::Result<()> {
    let options = args()?;
    let samples = fleet_samples(options.samples);
    let mut figures: Vec<Figures> = options.batches.iter().map(|_| Figures::default()).collect();
    for _ in 0..options.runs {
        for (batch, figures) in options.batches.iter().zip(&mut figures) {
            let dir = tempfile::Builder::new()
                .prefix("spool-bench-")
                .tempdir_in(&options.dir)
                .with_context(|| format!("temporary directory in {}", options.dir.display()))?;
            let config = SpoolConfig::new(dir.path().join("spool")).with_max_bytes(u64::MAX);
            let (mut writer, mut reader, _) = spool::open(&config)?;

            let started = Instant::now();
            for chunk in samples.chunks(*batch) {
                let appended = writer.append(chunk, None)?;
                ensure!(appended.refused == 0, "the spool refused samples");
            }
            figures.append.push(started.elapsed().as_secs_f64());
            figures.bytes = writer.stats().pending_bytes();

            let started = Instant::now();
            let mut read = 0;
            loop {
                let batch = reader.read_batch(READ_BATCH)?;
                ensure!(
                    batch.skipped.is_empty(),
                    "damaged records: {:?}",
                    batch.skipped
                );
                if batch.samples.is_empty() {
                    break;
                }
                read += batch.samples.len();
                reader.acknowledge(batch.end)?;
            }
            figures.read.push(started.elapsed().as_secs_f64());
            ensure!(
                read == samples.len(),
                "read {read} of {} samples",
                samples.len()
            );
            drop((writer, reader));

            // The floor: the same bytes, the same number of write + sync_data calls.
            let per_append = figures.bytes as usize / samples.len() * batch;
            let bytes = vec![0x5a_u8; per_append];
            let mut file = File::create(dir.path().join("raw"))?;
            let started = Instant::now();
            for _ in samples.chunks(*batch) {
                file.write_all(&bytes)?;
                file.sync_data()?;
            }
            figures.raw.push(started.elapsed().as_secs_f64());
        }
    }

    println!(
        "spool of {} simulator samples ({:.1} bytes/sample on disk) in {}, fsync on, {} runs, medians:",
        samples.len(),
        figures[0].bytes as f64 / samples.len() as f64,
        options.dir.display(),
        options.runs
    );
    let rate = |seconds: f64| samples.len() as f64 / seconds;
    for (batch, figures) in options.batches.iter().zip(&figures) {
        let (append, raw, read) = (
            median(figures.append.clone()),
            median(figures.raw.clone()),
            median(figures.read.clone()),
        );
        let appends = samples.len().div_ceil(*batch);
        println!(
            "  batches of {batch:>6}: append {:>10.0} samples/s ({:.2} ms per append of one write + sync_data); \
             baseline write + sync_data of the same bytes {:>10.0} samples/s ({:.2} ms)",
            rate(append),
            append * 1e3 / appends as f64,
            rate(raw),
            raw * 1e3 / appends as f64
        );
        println!(
            "  {:>18}  read + acknowledge in batches of {READ_BATCH}: {:>10.0} samples/s",
            "",
            rate(read)
        );
    }
    Ok(())
}
