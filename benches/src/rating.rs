//! The rating benchmark: a month of hourly rollups for many resources, rated by `tally
//! rate` (the whole job: usage on DataFusion, pricing, invoices, Parquet), against DuckDB
//! running a simplified rating query (started hours × price with a monthly cap, per
//! resource) on the same files in the same run. The same simplified query on DataFusion is
//! reported too, so engine and job can be told apart. The runs alternate engine by engine,
//! so drift on a noisy machine hits all of them; figures are medians.
//!
//! With `--ballista` the job's usage queries run on a Ballista cluster started in this
//! process on 127.0.0.1 (a scheduler and two executors of one task each, talking gRPC and
//! Arrow Flight over loopback as between machines): what distribution costs on one machine.
//!
//! DuckDB (PyPI `duckdb`, pinned) runs in a venv under `${TALLY_CACHE_DIR:-~/.cache/tally}`,
//! installed on first use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::rollup_month::{MonthSpec, contracts_json, write_month};
use anyhow::{Context, bail};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tally_rating::Engine;
use tally_rating::distributed::{
    ExecutorOptions, free_loopback_address, run_executor, run_scheduler, wait_until_listening,
};
use tally_rating::month::BillingMonth;

const DUCKDB_VERSION: &str = "1.4.4";
const THREADS: usize = 2;
const MONTH: &str = "2026-10";

/// `${TALLY_CACHE_DIR:-~/.cache/tally}`: generated data and the DuckDB venv live there.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TALLY_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tally")
        })
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub resources: usize,
    pub runs: usize,
    /// Where generated months are kept (one directory per size, reused).
    pub data_root: PathBuf,
    /// Runs `tally rate` alone (for profiling it); no baseline, so no ratio.
    pub tally_only: bool,
    /// Runs the job's usage queries on a Ballista cluster in this process.
    pub ballista: bool,
}

/// What a run measured: seconds per run of each contender.
#[derive(Clone, Debug)]
pub struct Figures {
    pub resources: usize,
    /// Where `tally rate`'s usage queries ran.
    pub ballista: bool,
    pub runs: usize,
    pub hours: i64,
    pub tally: Vec<f64>,
    pub datafusion: Vec<f64>,
    pub duckdb: Vec<f64>,
    pub duckdb_version: String,
    /// Result rows of the simplified query on DataFusion and on DuckDB.
    pub simplified_rows: (usize, u64),
    pub line_items: usize,
    pub invoices: usize,
}

/// Generates (or reuses) the month and runs every contender `options.runs` times.
pub fn run(options: &Options) -> anyhow::Result<Figures> {
    let month = BillingMonth::new(MONTH, chrono_tz::Europe::Berlin)?;
    let data = ensure_data(&options.data_root, options.resources, &month)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()?;
    let sql = simplified_query(&month);
    let cluster = if options.ballista {
        Some(LocalCluster::start(THREADS)?)
    } else {
        None
    };
    let engine = cluster
        .as_ref()
        .map_or(Engine::InProcess, |cluster| Engine::Ballista {
            scheduler: format!("df://{}", cluster.scheduler),
        });
    let mut figures = Figures {
        resources: options.resources,
        ballista: options.ballista,
        runs: options.runs,
        hours: month.hours(),
        tally: Vec::new(),
        datafusion: Vec::new(),
        duckdb: Vec::new(),
        duckdb_version: String::new(),
        simplified_rows: (0, 0),
        line_items: 0,
        invoices: 0,
    };
    // Every run's output is kept until the last run is done, so that removing one run's
    // files cannot slow the next one's writes (ext4 avoids recently freed inodes; with
    // 20,000 invoice files a run, before they became two, that cost seconds).
    let mut outs = Vec::new();
    for _ in 0..options.runs {
        let (seconds, report) = runtime.block_on(tally_run(&data, &engine, &mut outs))?;
        figures.tally.push(seconds);
        figures.line_items = report.line_items;
        figures.invoices = report.invoices.len();
        if options.tally_only {
            continue;
        }
        let (seconds, fusion_rows) = runtime.block_on(datafusion_runs(&data, 1, &sql))?;
        figures.datafusion.extend(seconds);
        let (version, seconds, duck_rows) = duckdb_runs(&data, 1, &sql)?;
        figures.duckdb.extend(seconds);
        figures.duckdb_version = version;
        figures.simplified_rows = (fusion_rows, duck_rows);
    }
    drop(outs);
    let (fusion_rows, duck_rows) = figures.simplified_rows;
    if fusion_rows as u64 != duck_rows {
        bail!(
            "the simplified query gave {fusion_rows} rows on DataFusion but {duck_rows} on DuckDB"
        );
    }
    Ok(figures)
}

impl Figures {
    pub fn print(&self) {
        let tally = median(self.tally.clone());
        println!(
            "rating {MONTH} ({} h), {} resources, {} runs each, {THREADS} threads, medians:",
            self.hours, self.resources, self.runs
        );
        let job = if self.ballista {
            "tally rate on Ballista (1 + 2 nodes)"
        } else {
            "tally rate (whole job)"
        };
        println!(
            "  {job:<42}{tally:8.2} s   {} line items, {} invoices",
            self.line_items, self.invoices
        );
        if self.duckdb.is_empty() {
            return; // --tally-only
        }
        let (fusion, duck) = (median(self.datafusion.clone()), median(self.duckdb.clone()));
        println!(
            "  simplified query, DataFusion              {fusion:8.2} s   {} rows",
            self.simplified_rows.0
        );
        println!(
            "  simplified query, DuckDB {:<16} {duck:8.2} s   {} rows",
            self.duckdb_version, self.simplified_rows.1
        );
        println!(
            "  tally rate / DuckDB simplified            {:8.2}",
            tally / duck
        );
        println!(
            "  DataFusion / DuckDB, same query           {:8.2}",
            fusion / duck
        );
    }
}

/// The simplified rating both engines run: per resource, the hours with any minute ×
/// the SKU's hourly price, capped monthly.
fn simplified_query(month: &BillingMonth) -> String {
    // (sku, hourly price, monthly cap): BILLING.md's prices; without a published cap the
    // month's hours × price.
    const PRICES: [(&str, &str, &str); 17] = [
        ("cx22", "0.006", "3.79"),
        ("cx32", "0.0109", "6.80"),
        ("primary-ipv4", "0.0008", "0.50"),
        ("floating-ipv4", "0.004", "3.00"),
        ("snapshot", "0.0001", "0.10"),
        ("vps-s", "0.01", "6.72"),
        ("vps-m", "0.02", "13.44"),
        ("c2m4", "0.04", "29.80"),
        ("c4m8", "0.08", "59.60"),
        ("gpu-a100", "2.50", "1862.50"),
        ("ha-feature", "0.005", "3.725"),
        ("extra-ipv4", "0.003", "2.00"),
        ("erkunder-a4000", "0.22", "125"),
        ("powerai-4090", "0.65", "370"),
        ("sparbox-3090", "0.35", "200"),
        ("infinityai-a100", "7.67", "5240"),
        ("novadrive-v100", "0.23", "130"),
    ];
    let values: Vec<String> = PRICES
        .iter()
        .map(|(sku, price, cap)| {
            format!("('{sku}', CAST({price} AS DECIMAL(18, 6)), CAST({cap} AS DECIMAL(18, 6)))")
        })
        .collect();
    format!(
        "WITH prices(sku, price, cap) AS (VALUES {values})
         SELECT r.resource_id, least(p.cap, count(*) * p.price) AS amount
         FROM rollups r JOIN prices p ON r.sku = p.sku
         WHERE r.hour >= '{first}' AND r.hour < '{end}'
           AND (r.running_mask | r.stopped_mask | r.frozen_mask | r.active_mask) <> 0
         GROUP BY r.resource_id, p.cap, p.price",
        values = values.join(", "),
        first = month.first_hour().partition_value(),
        end = month.end_hour().partition_value(),
    )
}

/// The generated month for `resources` under `data_root`, generated once and reused.
fn ensure_data(
    data_root: &Path,
    resources: usize,
    month: &BillingMonth,
) -> anyhow::Result<PathBuf> {
    // v2: the traffic counters delta-encoded (the aggregator's writer since 2026-12-07);
    // v3: the few-valued texts declared as dictionaries (since 2026-12-07, later).
    let directory = data_root.join(format!("rating-{resources}-{MONTH}-v3"));
    let done = directory.join("complete");
    if done.exists() {
        println!("data: reusing {}", directory.display());
        return Ok(directory);
    }
    if directory.exists() {
        std::fs::remove_dir_all(&directory)?;
    }
    std::fs::create_dir_all(&directory)?;
    let spec = MonthSpec {
        resources,
        first: month.first_hour(),
        end: month.end_hour(),
        seed: 2026,
    };
    let started = Instant::now();
    let generated = write_month(&directory, &spec)?;
    std::fs::write(directory.join("contracts.json"), contracts_json(&spec))?;
    let tariffs = directory.join("tariffs");
    std::fs::create_dir_all(&tariffs)?;
    for (name, text) in tally_rating::reference_tariffs() {
        std::fs::write(tariffs.join(name), text)?;
    }
    let summary = format!(
        "{} rows for {resources} resources in {} accounts, {} hourly files, {:.1} MiB, generated in {:.1} s\n",
        generated.rows,
        generated.accounts,
        generated.files,
        generated.bytes as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(directory.join("generated.txt"), &summary)?;
    std::fs::write(&done, "")?;
    print!("data: {summary}");
    Ok(directory)
}

/// The venv's Python with DuckDB installed (on first use).
pub fn duckdb_python() -> anyhow::Result<PathBuf> {
    let venv = cache_dir().join(format!("duckdb-{DUCKDB_VERSION}-venv"));
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("python3 -m venv")?;
    if !status.success() {
        bail!(
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            venv.display()
        );
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("duckdb=={DUCKDB_VERSION}"),
        ])
        .status()
        .context("pip install duckdb")?;
    if !status.success() {
        bail!("pip install duckdb=={DUCKDB_VERSION} failed");
    }
    Ok(python)
}

fn duckdb_runs(lake: &Path, runs: usize, sql: &str) -> anyhow::Result<(String, Vec<f64>, u64)> {
    let python = duckdb_python()?;
    let sql_file = lake.join("simplified.sql");
    std::fs::write(&sql_file, sql)?;
    let script = crate::package_dir().join("scripts/duckdb_query.py");
    let output = Command::new(python)
        .arg(script)
        .arg(lake)
        .arg(runs.to_string())
        .arg(THREADS.to_string())
        .arg(&sql_file)
        .output()
        .context("run duckdb")?;
    if !output.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let seconds = result["seconds"]
        .as_array()
        .context("seconds")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok((
        result["version"].as_str().unwrap_or("?").to_owned(),
        seconds,
        result["rows"].as_u64().unwrap_or(0),
    ))
}

async fn datafusion_runs(lake: &Path, runs: usize, sql: &str) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut seconds = Vec::new();
    let mut rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let context =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(THREADS));
        let options = ParquetReadOptions::default().table_partition_cols(vec![(
            "hour".to_owned(),
            datafusion::arrow::datatypes::DataType::Utf8,
        )]);
        context
            .register_parquet("rollups", format!("{}/rollups/", lake.display()), options)
            .await?;
        let batches = context.sql(sql).await?.collect().await?;
        rows = batches.iter().map(|batch| batch.num_rows()).sum();
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok((seconds, rows))
}

/// A Ballista cluster on 127.0.0.1 in this process: a scheduler and executors of one task
/// each, on a runtime of their own; it stops with the process.
struct LocalCluster {
    scheduler: SocketAddr,
    _nodes: tokio::runtime::Runtime,
    _work_dirs: tempfile::TempDir,
}

impl LocalCluster {
    fn start(executors: usize) -> anyhow::Result<Self> {
        let nodes = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("ballista")
            .enable_all()
            .build()?;
        let work_dirs = tempfile::tempdir()?;
        let scheduler = free_loopback_address()?;
        nodes.spawn(async move {
            if let Err(error) = run_scheduler(scheduler).await {
                eprintln!("the bench's Ballista scheduler stopped: {error}");
            }
        });
        wait_until_listening(scheduler, Duration::from_secs(60))?;
        for executor in 0..executors {
            let options = ExecutorOptions {
                bind: free_loopback_address()?,
                scheduler,
                work_dir: work_dirs.path().join(format!("executor-{executor}")),
                concurrent_tasks: 1,
            };
            std::fs::create_dir_all(&options.work_dir)?;
            let bind = options.bind;
            nodes.spawn(async move {
                if let Err(error) = run_executor(options).await {
                    eprintln!("the bench's Ballista executor on {bind} stopped: {error}");
                }
            });
            wait_until_listening(bind, Duration::from_secs(60))?;
        }
        println!("ballista: a scheduler on {scheduler} and {executors} executors in this process");
        Ok(Self {
            scheduler,
            _nodes: nodes,
            _work_dirs: work_dirs,
        })
    }
}

/// One run of `tally rate` on `engine`, into a new directory under `data` added to `outs`:
/// its seconds and its report.
async fn tally_run(
    data: &Path,
    engine: &Engine,
    outs: &mut Vec<tempfile::TempDir>,
) -> anyhow::Result<(f64, tally_rating::RateReport)> {
    let mut tariffs: Vec<PathBuf> = std::fs::read_dir(data.join("tariffs"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    tariffs.sort();
    let out = tempfile::tempdir_in(data)?;
    let started = Instant::now();
    let report = tally_rating::rate(&tally_rating::RateRequest {
        lake: data.into(),
        month: MONTH.to_owned(),
        tariffs,
        contracts: data.join("contracts.json"),
        out: out.path().into(),
        issue: false,
        explain: None,
        engine: engine.clone(),
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    outs.push(out);
    Ok((seconds, report))
}
