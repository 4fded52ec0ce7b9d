//! The pipeline under test, as processes: a Tansu broker of the run's own (SQLite storage),
//! `tally simulate` producing, `tally aggregate` rolling up, `tally rate` invoicing. Each
//! process writes to a log file of its role in the run's directory.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tally_collector::FleetSpec;

use super::proxy::FaultProxy;
use crate::{OwnBroker, create_topic};

/// Partitions of the samples topic: enough that a kill lands between partitions' writes.
pub const SAMPLE_PARTITIONS: i32 = 3;
pub const SAMPLES_TOPIC: &str = "tally.samples";
pub const DEAD_LETTER_TOPIC: &str = "tally.deadletter";

pub struct Pipeline {
    tally: PathBuf,
    /// Everything of the run: the lake, logs, the reference lake, invoices.
    pub dir: PathBuf,
    pub broker: OwnBroker,
    /// What clients connect to: the broker, or the fault proxy in front of it.
    pub clients: String,
    pub proxy: Option<FaultProxy>,
    pub lake: PathBuf,
    pub spec: FleetSpec,
}

impl Pipeline {
    /// Starts the run's broker in `dir` (behind a fault proxy with `proxied`) and
    /// creates its topics.
    pub async fn start(
        tally: &Path,
        dir: &Path,
        spec: FleetSpec,
        proxied: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (broker, proxy) = if proxied {
            let (proxy, upstream) = FaultProxy::bind().await?;
            let broker = OwnBroker::start_advertising(Some(proxy.address.port()))?;
            upstream.set(broker.address().parse()?);
            (broker, Some(proxy))
        } else {
            (OwnBroker::start()?, None)
        };
        let clients = proxy
            .as_ref()
            .map_or_else(|| broker.address(), |proxy| proxy.address.to_string());
        create_topic(&clients, SAMPLES_TOPIC, SAMPLE_PARTITIONS).await?;
        create_topic(&clients, DEAD_LETTER_TOPIC, 1).await?;
        Ok(Self {
            tally: tally.to_owned(),
            dir: dir.to_owned(),
            lake: dir.join("lake"),
            broker,
            clients,
            proxy,
            spec,
        })
    }

    /// `tally ARGS`, its output appended to `<role>.log`.
    fn tally(&self, role: &str) -> anyhow::Result<Command> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{role}.log")))?;
        let mut command = Command::new(&self.tally);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    /// `tally simulate` shipping the whole fleet, pausing `pause` after each hour.
    pub fn simulate(&self, pause: Duration) -> anyhow::Result<Child> {
        let spec = &self.spec;
        Ok(self
            .tally("simulate")?
            .arg("simulate")
            .args(["--brokers", &self.clients, "--topic", SAMPLES_TOPIC])
            .args([
                "--from",
                &spec.start.to_string(),
                "--to",
                &spec.end.to_string(),
            ])
            .args([
                "--scale",
                &spec.scale.to_string(),
                "--seed",
                &spec.seed.to_string(),
            ])
            .args(["--pause-ms", &pause.as_millis().to_string()])
            .spawn()?)
    }

    /// `tally aggregate` on the run's lake and topics, checkpointing every second (so
    /// that kills land in and between checkpoints).
    fn aggregate_command(&self) -> anyhow::Result<Command> {
        let mut command = self.tally("aggregate")?;
        command
            .arg("aggregate")
            .arg("--lake")
            .arg(&self.lake)
            .args(["--brokers", &self.clients, "--topic", SAMPLES_TOPIC])
            .args(["--dead-letter-topic", DEAD_LETTER_TOPIC])
            .args(["--checkpoint-seconds", "1"]);
        Ok(command)
    }

    /// A member of the consumer group `chaos`: it reads the partitions the group gives it.
    pub fn group_member(&self) -> anyhow::Result<Process> {
        let mut command = self.aggregate_command()?;
        command.args(["--group", "chaos"]);
        Ok(Process(command.spawn()?))
    }

    /// A `tally aggregate` that runs until stopped (or with `until_drained`, until it has
    /// read everything and sealed every hour); with `failpoint` (`NAME`, pass) armed it
    /// aborts itself there.
    pub fn aggregator(
        &self,
        until_drained: bool,
        failpoint: Option<(&str, u64)>,
    ) -> anyhow::Result<Process> {
        let mut command = self.aggregate_command()?;
        // One instance restarted in place, reading every partition: no group session of
        // the instance just killed to wait out.
        command.arg("--all-partitions");
        command.args(until_drained.then_some("--until-drained"));
        if let Some((name, pass)) = failpoint {
            command.env(tally_aggregator::failpoint::ENV, format!("{name}:{pass}"));
        }
        Ok(Process(command.spawn()?))
    }

    /// Runs `tally aggregate --until-drained` to its end: everything on the topic in the
    /// lake, every hour sealed.
    pub fn drain(&self) -> anyhow::Result<()> {
        let status = self.aggregator(true, None)?.wait()?;
        ensure!(
            status.success(),
            "the draining aggregator failed ({status}); see {}",
            self.dir.join("aggregate.log").display()
        );
        Ok(())
    }

    /// `tally rate` of `lake`'s month into `out`; with `issue`, the month is frozen and
    /// later runs write corrections.
    pub fn rate(
        &self,
        lake: &Path,
        month: &str,
        inputs: &RatingInputs,
        out: &Path,
        issue: bool,
    ) -> anyhow::Result<()> {
        let status = self
            .tally("rate")?
            .arg("rate")
            .args(issue.then_some("--issue"))
            .arg("--lake")
            .arg(lake)
            .args(["--month", month])
            .arg("--tariff")
            .args(&inputs.tariffs)
            .arg("--contracts")
            .arg(&inputs.contracts)
            .arg("--out")
            .arg(out)
            .status()?;
        ensure!(
            status.success(),
            "tally rate of {} failed ({status}); see {}",
            lake.display(),
            self.dir.join("rate.log").display()
        );
        Ok(())
    }
}

/// The reference tariffs and the fleet's accounts on them, written into the run's
/// directory for `tally rate`.
pub struct RatingInputs {
    pub tariffs: Vec<PathBuf>,
    pub contracts: PathBuf,
}

impl RatingInputs {
    pub fn write(dir: &Path, accounts: &[(String, &str)]) -> anyhow::Result<Self> {
        let tariff_dir = dir.join("tariffs");
        std::fs::create_dir_all(&tariff_dir)?;
        let mut tariffs = Vec::new();
        for (name, text) in tally_rating::reference_tariffs() {
            let path = tariff_dir.join(name);
            std::fs::write(&path, text)?;
            tariffs.push(path);
        }
        let accounts: Vec<_> = accounts
            .iter()
            .map(|(account, tariff)| serde_json::json!({ "account_id": account, "tariff_id": tariff }))
            .collect();
        let contracts = dir.join("contracts.json");
        std::fs::write(
            &contracts,
            serde_json::to_vec_pretty(&serde_json::json!({ "accounts": accounts }))?,
        )?;
        Ok(Self { tariffs, contracts })
    }
}

/// A producer that is started again whenever it fails, until it ships everything once.
/// A restart ships the whole fleet again: the aggregator must count each sample once.
pub struct Producer {
    child: Child,
    pause: Duration,
    pub restarts: usize,
    done: bool,
}

impl Producer {
    pub fn start(pipeline: &Pipeline, pause: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            child: pipeline.simulate(pause)?,
            pause,
            restarts: 0,
            done: false,
        })
    }

    /// Whether it has shipped everything; restarts it if it failed.
    pub fn poll(&mut self, pipeline: &Pipeline) -> anyhow::Result<bool> {
        if self.done {
            return Ok(true);
        }
        match self.child.try_wait()? {
            None => Ok(false),
            Some(status) if status.success() => {
                self.done = true;
                Ok(true)
            }
            Some(status) => {
                self.restarts += 1;
                ensure!(
                    self.restarts <= 20,
                    "tally simulate failed 20 times, last {status}; see {}",
                    pipeline.dir.join("simulate.log").display()
                );
                self.child = pipeline.simulate(self.pause)?;
                Ok(false)
            }
        }
    }

    /// Waits until it has shipped everything (restarting it as needed).
    pub async fn finish(&mut self, pipeline: &Pipeline, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.poll(pipeline)? {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("tally simulate did not finish within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process of the pipeline, killed if the runner lets go of it early (a scenario that
/// fails part-way must not leave an aggregator running).
pub struct Process(Child);

impl std::ops::Deref for Process {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits up to `within` for `child` to exit on its own.
pub async fn exited_within(
    child: &mut Child,
    within: Duration,
) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a process")? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL, and reap.
pub fn sigkill(child: &mut Child) -> anyhow::Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// xorshift64*: the run's seeded choices (kill moments, down times, samples to resend),
/// so that a failing run can be replayed with its seed.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to.saturating_sub(from) + 1))
    }
}
