//! The collector agent on a host of 1,000 simulated resources: its resident memory and
//! the CPU it spends per minute of samples, shipping to Tansu on 127.0.0.1.
//!
//! The agent runs as a process of its own (this binary started again with
//! `TALLY_BENCH_AGENT` naming its configuration), exactly as `tally collect` runs it:
//! simulator source → counters → traffic → spool (fsync on) → librdkafka → Tansu. The
//! parent reads the child's peak resident set (`VmHWM`) and CPU time (`utime + stime`)
//! from `/proc`, then stops it with SIGTERM and reads its report.
//!
//! `speed` runs the agent's clock faster (the simulator's fast clock): at speed 1 the
//! figures are those of a real host over real minutes, idle time included; at speed 60
//! a minute of samples passes each second, which measures the work per minute without
//! the idle time between minutes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tally_collector::agent;
use tally_collector::config::AgentConfig;
use tally_collector::metrics::AgentMetrics;
use tally_model::Minute;

use crate::broker::Tansu;
use crate::rating::median;

/// The environment variable that makes the bench binary the agent.
pub const AGENT_CHILD: &str = "TALLY_BENCH_AGENT";

#[derive(Clone, Debug)]
pub struct Options {
    pub resources: usize,
    /// Minutes of samples per run (agent minutes).
    pub minutes: u32,
    /// Agent minutes per real minute.
    pub speed: u32,
    pub runs: usize,
    /// How to start this binary as the agent (arguments after the executable).
    pub child_args: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AgentFigures {
    pub resources: usize,
    pub speed: u32,
    /// Per run: peak resident set (bytes), CPU seconds, real seconds, minutes sampled,
    /// samples acknowledged by the broker.
    pub runs: Vec<AgentRun>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AgentRun {
    pub rss_peak: u64,
    pub cpu_seconds: f64,
    pub real_seconds: f64,
    pub minutes_sampled: u64,
    pub samples_taken: u64,
    pub samples_sent: u64,
}

/// Runs the agent `runs` times against a fresh Tansu.
pub fn agent(options: &Options) -> anyhow::Result<AgentFigures> {
    let tansu = Tansu::start()?;
    let mut figures = AgentFigures {
        resources: options.resources,
        speed: options.speed,
        runs: Vec::new(),
    };
    for run in 0..options.runs {
        let topic = format!("bench.collector.{run}.{}", std::process::id());
        tansu.create_topic(&topic, 2)?;
        figures.runs.push(one_run(options, &tansu.brokers, &topic)?);
    }
    Ok(figures)
}

fn one_run(options: &Options, brokers: &str, topic: &str) -> anyhow::Result<AgentRun> {
    let work = tempfile::tempdir()?;
    let from = Minute::containing(chrono::Utc::now());
    let config_path = work.path().join("collect.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
host = "hv-bench"
[source]
kind = "simulator"
resources = {resources}
from = "{from}"
to = "{to}"
speed = {speed}
[traffic]
networks = {{ public = "external", private = "internal" }}
[spool]
dir = "{spool}"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
"#,
            resources = options.resources,
            to = from.plus(7 * 24 * 60),
            speed = options.speed,
            spool = work.path().join("spool").display(),
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(&options.child_args)
        .env(AGENT_CHILD, &config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the agent")?;
    let pid = child.id();
    let started = Instant::now();
    // The first minute is due one agent minute after the start; `minutes` after it.
    let agent_minute = Duration::from_secs(60) / options.speed.max(1);
    std::thread::sleep(agent_minute * (options.minutes + 1));
    let rss_peak = proc_status(pid, "VmHWM")?;
    let cpu_seconds = cpu_seconds(pid)?;
    let real_seconds = started.elapsed().as_secs_f64();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the agent failed: {}",
        output.status
    );
    let report = String::from_utf8_lossy(&output.stdout);
    let number = |key: &str| -> anyhow::Result<u64> {
        report
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .with_context(|| format!("no {key} in the agent's report '{report}'"))?
            .parse()
            .with_context(|| format!("{key} in '{report}'"))
    };
    let run = AgentRun {
        rss_peak,
        cpu_seconds,
        real_seconds,
        minutes_sampled: number("minutes_sampled=")?,
        samples_taken: number("samples_taken=")?,
        samples_sent: number("samples_sent=")?,
    };
    ensure!(
        run.minutes_sampled >= u64::from(options.minutes),
        "sampled {} of {} minutes",
        run.minutes_sampled,
        options.minutes
    );
    ensure!(
        run.samples_taken > 0 && run.samples_sent >= run.samples_taken,
        "{} of {} samples taken were acknowledged",
        run.samples_sent,
        run.samples_taken
    );
    Ok(run)
}

/// The agent, in the child process: runs until SIGTERM and prints its report.
pub fn agent_child(config_path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        anyhow::Ok(
            agent::run(
                config,
                Arc::new(AgentMetrics::default()),
                async move {
                    terminate.recv().await;
                },
                Duration::from_secs(30),
            )
            .await?,
        )
    })?;
    println!(
        "minutes_sampled={} samples_taken={} samples_sent={}",
        report.minutes_sampled, report.samples_taken, report.samples_sent
    );
    Ok(())
}

fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// User + system CPU seconds of process `pid` so far (`/proc/PID/stat`, in clock ticks
/// of 1/100 s, Linux's USER_HZ on every architecture Tally runs on).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat
        .rsplit_once(')')
        .context("unreadable /proc/PID/stat")?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

impl AgentFigures {
    pub fn print(&self) {
        let rss: Vec<f64> = self
            .runs
            .iter()
            .map(|r| r.rss_peak as f64 / (1 << 20) as f64)
            .collect();
        let cpu_per_minute: Vec<f64> = self
            .runs
            .iter()
            .map(|r| r.cpu_seconds / r.minutes_sampled.max(1) as f64)
            .collect();
        let busy: Vec<f64> = self
            .runs
            .iter()
            .map(|r| 100.0 * r.cpu_seconds / r.real_seconds)
            .collect();
        let minutes: u64 = self.runs.iter().map(|r| r.minutes_sampled).sum();
        let samples: u64 = self.runs.iter().map(|r| r.samples_taken).sum();
        println!(
            "collector agent, {} resources ({} samples a minute: the rest not yet created, or deleted), speed {} ({} runs, {minutes} minutes sampled): \
             peak RSS {:.1} MiB (median), CPU {:.3} s per minute of samples = {:.2} % of one core \
             at one minute per minute (target <= 1 %), {:.1} % of one core while running",
            self.resources,
            samples / minutes.max(1),
            self.speed,
            self.runs.len(),
            median(rss),
            median(cpu_per_minute.clone()),
            median(cpu_per_minute) / 60.0 * 100.0,
            median(busy),
        );
    }
}
