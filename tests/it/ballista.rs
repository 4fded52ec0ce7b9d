//! Rating on a DataFusion Ballista cluster: a scheduler and two executors, each a process
//! of its own on 127.0.0.1 (this test binary started again, running what `tally ballista
//! scheduler|executor` runs), rate the demo's month from a lake in a directory and from
//! one on S3 (moto on 127.0.0.1, which the scheduler and the executors open from their own
//! environment); line items and invoices must be the bytes of the in-process run, and both
//! executors must have run stages of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_lake::Lake;
use tally_rating::distributed::{
    self, ExecutorOptions, free_loopback_address, run_executor, run_scheduler,
};
use tally_rating::usage::MonthRollups;
use tally_tests::{
    assert_same_ratings, demo_month, demo_tariffs, lake_files, s3_environment, s3_lake,
};

/// Set in a child: `scheduler BIND` or `executor BIND SCHEDULER WORK_DIR`.
const CHILD: &str = "TALLY_BALLISTA_CHILD";

/// Run by the child processes only.
#[test]
fn ballista_child() -> anyhow::Result<()> {
    let Ok(role) = std::env::var(CHILD) else {
        return Ok(()); // an ordinary test run: nothing to do
    };
    let words: Vec<&str> = role.split(' ').collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match words.as_slice() {
        ["scheduler", bind] => runtime.block_on(run_scheduler(bind.parse()?))?,
        ["executor", bind, scheduler, work_dir] => {
            runtime.block_on(run_executor(ExecutorOptions {
                bind: bind.parse()?,
                scheduler: scheduler.parse()?,
                work_dir: PathBuf::from(work_dir),
                concurrent_tasks: 1,
            }))?;
        }
        _ => anyhow::bail!("{CHILD}={role}: not a role"),
    }
    Ok(())
}

/// A child process, killed when dropped.
struct Node(Child);

impl Node {
    fn start(role: String, log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        Ok(Self(
            Command::new(std::env::current_exe()?)
                .args(["--exact", "ballista::ballista_child", "--nocapture"])
                .env(CHILD, role)
                .env("RUST_LOG", "info")
                // The S3 server's settings, as a cluster's nodes would have their store's.
                .envs(s3_environment())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until_listening(address: SocketAddr, what: &str, log: &Path) -> anyhow::Result<()> {
    distributed::wait_until_listening(address, Duration::from_secs(60))
        .with_context(|| format!("the {what}; see {}", log.display()))
}

/// Files below `directory`, at any depth.
fn file_count(directory: &Path) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() { file_count(&path) } else { 1 }
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ballista_cluster_rates_the_month_into_the_same_bytes() -> anyhow::Result<()> {
    // The demo's month, rated in this process, is the reference.
    let (out, demo) = demo_month().await?;
    let in_process = Lake::directory(&demo.lake);

    let cluster = tempfile::tempdir()?;
    let scheduler = free_loopback_address()?;
    let scheduler_log = cluster.path().join("scheduler.log");
    let _scheduler = Node::start(format!("scheduler {scheduler}"), &scheduler_log)?;
    wait_until_listening(scheduler, "scheduler", &scheduler_log)?;
    let mut executors = Vec::new();
    let mut work_dirs = Vec::new();
    for name in ["executor-1", "executor-2"] {
        let bind = free_loopback_address()?;
        let work_dir = cluster.path().join(name);
        std::fs::create_dir_all(&work_dir)?;
        let log = cluster.path().join(format!("{name}.log"));
        executors.push(Node::start(
            format!("executor {bind} {scheduler} {}", work_dir.display()),
            &log,
        )?);
        wait_until_listening(bind, name, &log)?;
        work_dirs.push(work_dir);
    }

    // The demo's month from `lake` into `into`, its usage queries on the cluster.
    let rate_on_cluster = async |lake: &Lake, into: &Lake| {
        tally_rating::rate(&tally_rating::RateRequest {
            lake: lake.clone(),
            month: demo.month.clone(),
            tariffs: demo_tariffs(out.path())?,
            contracts: out.path().join("contracts.json"),
            out: into.clone(),
            issue: false,
            explain: None,
            engine: tally_rating::Engine::Ballista {
                scheduler: format!("df://{scheduler}"),
            },
        })
        .await
        .map_err(anyhow::Error::from)
    };

    let started = Instant::now();
    let rated_dir = tempfile::tempdir()?;
    let on_ballista = Lake::directory(rated_dir.path());
    let report = rate_on_cluster(&in_process, &on_ballista).await?;
    println!(
        "rated {} line items into {} invoices on the cluster in {:?}",
        report.line_items,
        report.invoices.len(),
        started.elapsed()
    );
    assert_eq!(report.invoices.len(), demo.rating.invoices.len());
    assert_same_ratings(&in_process, &on_ballista, "rated on Ballista")?;

    // The same month from a lake on S3, rated into S3: the plans carry `s3://` URLs, not
    // the client's store; the scheduler lists the bucket and the executors read it with
    // stores they opened from their own environment.
    let on_s3 = s3_lake("ballista-lake");
    on_s3.put_many(lake_files(&in_process, "rollups")?)?;
    let rated_on_s3 = s3_lake("ballista-out");
    let started = Instant::now();
    rate_on_cluster(&on_s3, &rated_on_s3).await?;
    println!(
        "rated the month from {on_s3} on the cluster in {:?}",
        started.elapsed()
    );
    assert_same_ratings(&in_process, &rated_on_s3, "rated on Ballista from S3")?;
    // Both executors ran stages: each wrote shuffle files.
    for work_dir in &work_dirs {
        let written = file_count(work_dir);
        println!("{}: {written} shuffle files", work_dir.display());
        assert!(
            written > 0,
            "executor with work dir {} wrote nothing: did it run no stage?",
            work_dir.display()
        );
    }

    // Resource-hours in two places (the month's first hour imported again into its last
    // hour's directory): the fold on the cluster reports them across the process
    // boundary, and the exact two-step plan (with `popcount`) sums the month there as it
    // does here.
    let split = tempfile::tempdir()?;
    let split_lake = Lake::directory(split.path());
    let rollups = lake_files(&in_process, "rollups")?;
    let (_, first_bytes) = rollups.first().cloned().expect("the demo wrote rollups");
    let (last_key, _) = rollups.last().cloned().expect("the demo wrote rollups");
    let (last_hour, _) = last_key.rsplit_once('/').expect("rollups/hour=…/file");
    split_lake.put_many(rollups)?;
    split_lake.put(
        &format!("{last_hour}/import-p000-g0000.parquet"),
        first_bytes,
    )?;
    let month = tally_rating::month::BillingMonth::new(&demo.month, chrono_tz::Europe::Berlin)?;
    let here = MonthRollups::open(&split_lake, &month).await?;
    match here.folded_usage().await {
        Err(tally_rating::Error::DataFusion(error)) => {
            assert!(tally_rating::fold::is_split_hour(&error), "{error}");
        }
        other => anyhow::bail!("the fold in process missed the split hour: {other:?}"),
    }
    let there = MonthRollups::open_on(
        &split_lake,
        &month,
        &tally_rating::Engine::Ballista {
            scheduler: format!("df://{scheduler}"),
        },
    )
    .await?;
    match there.folded_usage().await {
        Err(tally_rating::Error::DataFusion(error)) => {
            assert!(tally_rating::fold::is_split_hour(&error), "{error}");
        }
        other => anyhow::bail!("the fold on the cluster missed the split hour: {other:?}"),
    }
    let expected = here.usage().await?;
    assert!(!expected.is_empty());
    assert!(
        there.usage().await? == expected,
        "the two-step plan on the cluster sums the month differently"
    );
    Ok(())
}
