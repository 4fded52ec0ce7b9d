//! The pipeline under test, as processes: a Tansu broker of the run's own (SQLite storage),
//! collector agents (`tally collect`) or `tally simulate` producing, `tally aggregate`
//! rolling up, `tally rate` invoicing. Each process writes to a log file of its role in
//! the run's directory.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tally_collector::agent::simulated_fleet;
use tally_collector::spool::SpoolConfig;
use tally_collector::{Fleet, FleetSpec};
use tally_model::Minute;

use super::proxy::FaultProxy;
use super::verdict::Sampled;
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
    /// Small file systems of the run (scenario 7), unmounted when the run is over.
    pub mounts: Vec<Tmpfs>,
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
            mounts: Vec::new(),
        })
    }

    /// The fault proxy in front of the broker (scenarios started `proxied`).
    pub fn proxy(&self) -> anyhow::Result<&FaultProxy> {
        self.proxy
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this scenario does not run behind the fault proxy"))
    }

    /// Lines holding every one of `needles` in the logs of the roles whose names start
    /// with `role`.
    pub fn count_in_logs(&self, role: &str, needles: &[&str]) -> anyhow::Result<usize> {
        let mut count = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(role) && name.ends_with(".log") {
                let text = std::fs::read_to_string(&path)?;
                count += text
                    .lines()
                    .filter(|line| needles.iter().all(|needle| line.contains(needle)))
                    .count();
            }
        }
        Ok(count)
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

    /// Starts `aggregator` again (not draining, no failpoint) if it has exited, as a
    /// service manager would; says whether it had.
    pub fn restart_if_exited(&self, aggregator: &mut Process) -> anyhow::Result<bool> {
        if aggregator.try_wait()?.is_none() {
            return Ok(false);
        }
        *aggregator = self.aggregator(false, None)?;
        Ok(true)
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

/// A collector agent of the run: `tally collect` on a host of its own, sampling a simulated
/// fleet minute by minute on the wall clock (the aggregator judges a sample's minute
/// against its own clock, so the agent's clock must not run fast), spooling to a
/// directory of the run, shipping to the run's broker. It survives its process: a
/// [`Collector::start`] after a kill carries on from the spool.
pub struct Collector {
    pub host: String,
    pub resources: usize,
    seed: u64,
    from: Minute,
    to: Minute,
    brokers: String,
    /// `"key" = "value"` lines of its configuration's `[kafka.librdkafka]`.
    librdkafka_settings: String,
    config: PathBuf,
    spool: PathBuf,
    /// Its clock is this far off the machine's, in seconds (the simulator's
    /// `clock_offset_seconds`).
    clock_offset_seconds: i64,
    process: Option<Process>,
    /// The minute of its first sampling: the one before the minute it first started in.
    pub first: Option<Minute>,
    pub starts: usize,
}

impl Collector {
    /// A collector of `host` for a fleet of `resources` over `[from, to)`; `librdkafka`
    /// settings go into its configuration's `[kafka.librdkafka]`.
    pub fn new(
        pipeline: &Pipeline,
        host: &str,
        resources: usize,
        (from, to): (Minute, Minute),
        librdkafka: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = Self::dir(pipeline, host);
        std::fs::create_dir_all(&dir)?;
        let mut librdkafka_settings = String::new();
        for (key, value) in librdkafka {
            librdkafka_settings.push_str(&format!("\"{key}\" = \"{value}\"\n"));
        }
        Ok(Self {
            host: host.to_owned(),
            resources,
            seed: pipeline.spec.seed,
            from,
            to,
            brokers: pipeline.clients.clone(),
            librdkafka_settings,
            config: dir.join("collect.toml"),
            spool: dir.join("spool"),
            clock_offset_seconds: 0,
            process: None,
            first: None,
            starts: 0,
        })
    }

    /// Its agent's configuration, written before each start.
    fn write_config(&self) -> anyhow::Result<()> {
        let text = format!(
            r#"host = "{host}"
[source]
kind = "simulator"
resources = {resources}
seed = {seed}
from = "{from}"
to = "{to}"
clock_offset_seconds = {offset}
[traffic]
networks = {{ public = "external", private = "internal" }}
[spool]
dir = "{spool}"
[kafka]
brokers = "{brokers}"
topic = "{SAMPLES_TOPIC}"
[kafka.librdkafka]
"reconnect.backoff.max.ms" = "1000"
{librdkafka}"#,
            host = self.host,
            resources = self.resources,
            seed = self.seed,
            from = self.from,
            to = self.to,
            offset = self.clock_offset_seconds,
            spool = self.spool.display(),
            brokers = self.brokers,
            librdkafka = self.librdkafka_settings,
        );
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// Where the collector of `host` keeps its configuration and spool.
    pub fn dir(pipeline: &Pipeline, host: &str) -> PathBuf {
        pipeline.dir.join(format!("collector-{host}"))
    }

    /// Runs its agent with a clock `seconds` off the machine's.
    pub fn with_clock_offset(mut self, seconds: i64) -> Self {
        self.clock_offset_seconds = seconds;
        self
    }

    /// Starts its agent (again), which samples from where its spool says it left off.
    pub fn start(&mut self, pipeline: &Pipeline) -> anyhow::Result<()> {
        ensure!(self.process.is_none(), "collector {} is running", self.host);
        self.write_config()?;
        let mut command = pipeline.tally(&format!("collect-{}", self.host))?;
        command
            .arg("collect")
            .arg("--config")
            .arg(&self.config)
            .args(["--flush-seconds", "60"]);
        let started = chrono::Utc::now() + chrono::TimeDelta::seconds(self.clock_offset_seconds);
        self.process = Some(Process(command.spawn()?));
        self.starts += 1;
        self.first
            .get_or_insert(Minute::containing(started).plus(-1));
        Ok(())
    }

    /// SIGKILL: no flush, no goodbye; what it spooled waits for the next start.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            sigkill(&mut process)?;
        }
        Ok(())
    }

    /// SIGTERM, and waits for its agent to flush the spool and exit cleanly.
    pub async fn stop(&mut self, pipeline: &Pipeline) -> anyhow::Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        std::process::Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()?;
        let log = pipeline.dir.join(format!("collect-{}.log", self.host));
        match exited_within(&mut process, Duration::from_secs(90)).await? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!(
                "collector {} stopped with {status}; see {}",
                self.host,
                log.display()
            ),
            None => bail!(
                "collector {} did not stop within 90 s; see {}",
                self.host,
                log.display()
            ),
        }
    }

    /// What it sampled, by its spool (read once it has stopped): its fleet and the minutes
    /// from its first to the last its checkpoint names. Every sample must have left the
    /// spool.
    pub fn sampled(&self) -> anyhow::Result<Sampled> {
        let (_, _, recovery) = tally_collector::spool::open(&SpoolConfig::new(&self.spool))?;
        ensure!(
            recovery.pending_samples == 0,
            "collector {} stopped with {} samples still spooled",
            self.host,
            recovery.pending_samples
        );
        let checkpoint: serde_json::Value = serde_json::from_slice(
            &recovery
                .checkpoint
                .ok_or_else(|| anyhow::anyhow!("collector {} has no checkpoint", self.host))?,
        )?;
        let last: Minute = checkpoint["last_sampled"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("collector {} sampled nothing", self.host))?
            .parse()?;
        let first = self
            .first
            .ok_or_else(|| anyhow::anyhow!("collector {} never started", self.host))?;
        Ok(Sampled {
            fleet: self.fleet(),
            first,
            last,
        })
    }

    /// Its fleet, as its agent builds it.
    pub fn fleet(&self) -> Fleet {
        simulated_fleet(&self.host, self.resources, self.seed, self.from, self.to)
    }
}

/// A small tmpfs mounted over a directory of the run (needs root), for a disk that fills
/// up. Unmounting keeps its files: they are copied back into the directory first.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, mebibytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mebibytes}m"), "tmpfs"])
            .arg(path)
            .output()?;
        ensure!(
            output.status.success(),
            "cannot mount a tmpfs on {} (scenario 7 needs root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let copy = self.path.with_extension("unmounted");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.path)
            .arg(&copy)
            .status()
            .is_ok_and(|status| status.success());
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|status| status.success());
        if copied && unmounted {
            let _ = std::fs::remove_dir(&self.path);
            let _ = std::fs::rename(&copy, &self.path);
        } else if !unmounted {
            eprintln!(
                "chaos: cannot unmount {}: umount it by hand",
                self.path.display()
            );
        }
    }
}

/// A file that takes up every free byte of its file system, topped up as others free
/// space, until dropped.
pub struct Ballast {
    path: PathBuf,
    file: std::fs::File,
}

impl Ballast {
    pub fn fill(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("ballast");
        let file = std::fs::File::create(&path)?;
        let mut ballast = Self { path, file };
        ballast.top_up();
        Ok(ballast)
    }

    /// Writes until the file system is full.
    pub fn top_up(&mut self) {
        use std::io::Write;
        let chunk = vec![0xba_u8; 64 << 10];
        while self.file.write_all(&chunk).is_ok() {}
        // What is left is smaller than a chunk.
        while self.file.write_all(&chunk[..512]).is_ok() {}
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits until the wall clock is between seconds 5 and 40 of a minute: a collector started
/// then samples first the minute before, whatever its start-up takes.
pub async fn mid_minute() {
    loop {
        let second = chrono::Timelike::second(&chrono::Utc::now());
        if (5..40).contains(&second) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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
