//! The backfill benchmark: the same NDJSON sample file rolled up into hourly Parquet by
//! `tally aggregate --from-file` (`run_file`: decode, validate, deduplicate, roll up, seal
//! with manifests and fsyncs) and by DuckDB running the equivalent `GROUP BY` into
//! hive-partitioned Parquet (`scripts/duckdb_backfill.py`, 2 threads), alternating.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use tally_aggregator::AggregateConfig;
use tally_model::clock::FixedClock;
use tally_model::wire::encode_json;

use crate::aggregate::bench_fleet;
use crate::rating::{duckdb_python, median};

const THREADS: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct BackfillFigures {
    pub samples: usize,
    pub file_bytes: u64,
    pub runs: usize,
    pub tally: Vec<f64>,
    pub tally_cpu: Vec<f64>,
    pub tally_rows: u64,
    pub duckdb: Vec<f64>,
    pub duckdb_cpu: Vec<f64>,
    pub duckdb_rows: u64,
    pub duckdb_version: String,
}

pub fn backfill(fleet_copies: usize, hours: i64, runs: usize) -> anyhow::Result<BackfillFigures> {
    let (fleet, end) = bench_fleet(fleet_copies, hours);
    let work = tempfile::tempdir()?;
    let file = work.path().join("samples.ndjson");
    let mut figures = BackfillFigures {
        runs,
        ..BackfillFigures::default()
    };
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for hour in fleet.chunks(60) {
            figures.samples += hour.len();
            out.write_all(&encode_json(&hour))?;
        }
        out.flush()?;
    }
    figures.file_bytes = std::fs::metadata(&file)?.len();
    for run in 0..runs {
        let lake = work.path().join(format!("tally-{run}"));
        let mut config = AggregateConfig::new(&lake);
        config.clock = Arc::new(FixedClock(end.to_datetime()));
        let (started, cpu_started) = (Instant::now(), process_cpu_seconds()?);
        let (report, dead_letters) = tally_aggregator::run_file(&config, &file)?;
        figures.tally.push(started.elapsed().as_secs_f64());
        figures.tally_cpu.push(process_cpu_seconds()? - cpu_started);
        ensure!(
            dead_letters.is_empty() && report.accepted as usize == figures.samples,
            "the backfill took {} of {} samples",
            report.accepted,
            figures.samples
        );
        figures.tally_rows = report.rows_written;
        std::fs::remove_dir_all(&lake)?;

        let out = work.path().join(format!("duckdb-{run}"));
        let (version, seconds, cpu_seconds, rows) = duckdb_run(&file, &out)?;
        figures.duckdb.push(seconds);
        figures.duckdb_cpu.push(cpu_seconds);
        figures.duckdb_rows = rows;
        figures.duckdb_version = version;
        std::fs::remove_dir_all(&out)?;
    }
    ensure!(
        figures.tally_rows == figures.duckdb_rows,
        "Tally wrote {} rollup rows, DuckDB {}: not the same rollup",
        figures.tally_rows,
        figures.duckdb_rows
    );
    Ok(figures)
}

/// User and system CPU seconds of this process so far, from `/proc/self/stat` (in clock
/// ticks of 10 ms: enough for runs of seconds).
pub fn process_cpu_seconds() -> anyhow::Result<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name in parentheses may hold spaces: count fields after it.
    let after_name = stat
        .rsplit_once(')')
        .context("no ')' in /proc/self/stat")?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        let field = fields.get(index).context("short /proc/self/stat")?;
        Ok(field.parse::<f64>()?)
    };
    // utime and stime are the 14th and 15th fields; the state (3rd) is first after ')'.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// DuckDB's version, seconds, CPU seconds and rollup rows for one run.
fn duckdb_run(samples: &Path, out: &Path) -> anyhow::Result<(String, f64, f64, u64)> {
    let script = crate::package_dir().join("scripts/duckdb_backfill.py");
    let output = Command::new(duckdb_python()?)
        .arg(script)
        .arg(samples)
        .arg(out)
        .arg(THREADS.to_string())
        .output()
        .context("run duckdb")?;
    if !output.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok((
        result["version"].as_str().unwrap_or("?").to_owned(),
        result["seconds"].as_f64().context("seconds")?,
        result["cpu_seconds"].as_f64().context("cpu_seconds")?,
        result["rows"].as_u64().unwrap_or(0),
    ))
}

impl BackfillFigures {
    pub fn print(&self) {
        let (tally, duck) = (median(self.tally.clone()), median(self.duckdb.clone()));
        let (tally_cpu, duck_cpu) = (
            median(self.tally_cpu.clone()),
            median(self.duckdb_cpu.clone()),
        );
        println!(
            "backfill of {} samples ({:.1} MiB of NDJSON) to hourly Parquet, {} runs each, medians:",
            self.samples,
            self.file_bytes as f64 / (1 << 20) as f64,
            self.runs
        );
        println!(
            "  tally aggregate --from-file              {tally:7.3} s  {} rollup rows, {tally_cpu:.2} s of CPU",
            self.tally_rows
        );
        println!(
            "  DuckDB {:<8} GROUP BY ({THREADS} threads)    {duck:7.3} s  {} rollup rows, {duck_cpu:.2} s of CPU",
            self.duckdb_version, self.duckdb_rows
        );
        println!(
            "  DuckDB / Tally (Tally's speed-up)        {:7.2}",
            duck / tally
        );
    }
}
