//! The scenarios: each starts the pipeline, injects its faults while samples flow, drains
//! the topic with a clean aggregator and hands the lake to the [`verdict`](super::verdict).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tally_aggregator::failpoint;
use tally_collector::{Fleet, FleetSpec, ShipConfig, Shipper};
use tally_model::Sample;

use super::collected;
use super::pipeline::{
    Dice, Pipeline, Producer, RatingInputs, SAMPLE_PARTITIONS, SAMPLES_TOPIC, exited_within,
    sigkill,
};
use super::proxy::Fault;
use super::verdict::{self, Expected, Figures, InvoiceCheck, Sampled, Truth, conflicting};

/// Full size: what RELIABILITY.md reports. Smoke: CI's short variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Full,
    Smoke,
}

impl Size {
    pub(super) fn pick<T>(self, full: T, smoke: T) -> T {
        match self {
            Size::Full => full,
            Size::Smoke => smoke,
        }
    }

    /// 35 copies of the base fleet for 10 hours (a little over a million samples), or 8
    /// copies for 4 hours in a smoke run.
    fn fleet(self, seed: u64) -> FleetSpec {
        let hours = self.pick(10, 4);
        let start: tally_model::Minute = "2026-11-10T00:00:00Z".parse().expect("minute");
        FleetSpec {
            seed,
            start,
            end: start.plus(hours * 60),
            scale: self.pick(35, 8),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// 1: the aggregator SIGKILLed at random moments and aborted at failpoints.
    AggregatorKilled,
    /// 2: collector agents SIGKILLed and restarted from their spools.
    CollectorsKilled,
    /// 3: the broker SIGKILLed and restarted after 5–60 s.
    BrokerKilled,
    /// 4: the broker unreachable for longer than the agents' message timeout.
    BrokerUnreachable,
    /// 5: latency and jitter, a blackhole and connection resets between the clients and
    /// the broker.
    NetworkFaults,
    /// 6: two aggregators in a group with rebalances, one paused past its session.
    GroupWithPausedMember,
    /// 7: the lake's and a spool's disk full, then freed.
    DisksFull,
    /// 8: checkpoints of open hours damaged on disk between a kill and the restart.
    DamagedCheckpoints,
    /// 9: re-produced samples, an hour replayed twice, conflicting samples.
    DuplicatesAndConflicts,
    /// 10: an agent with its clock 10 minutes slow, samples from the future and past
    /// retention.
    SkewedClocks,
    /// 11: late samples after their hours were sealed and the month rated and issued.
    LateAfterRating,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::AggregatorKilled,
        Scenario::CollectorsKilled,
        Scenario::BrokerKilled,
        Scenario::BrokerUnreachable,
        Scenario::NetworkFaults,
        Scenario::GroupWithPausedMember,
        Scenario::DisksFull,
        Scenario::DamagedCheckpoints,
        Scenario::DuplicatesAndConflicts,
        Scenario::SkewedClocks,
        Scenario::LateAfterRating,
    ];

    /// The number RELIABILITY.md and issue 7 give it.
    pub fn number(self) -> u32 {
        match self {
            Scenario::AggregatorKilled => 1,
            Scenario::CollectorsKilled => 2,
            Scenario::BrokerKilled => 3,
            Scenario::BrokerUnreachable => 4,
            Scenario::NetworkFaults => 5,
            Scenario::GroupWithPausedMember => 6,
            Scenario::DisksFull => 7,
            Scenario::DamagedCheckpoints => 8,
            Scenario::DuplicatesAndConflicts => 9,
            Scenario::SkewedClocks => 10,
            Scenario::LateAfterRating => 11,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::AggregatorKilled => "aggregator SIGKILL",
            Scenario::CollectorsKilled => "collector SIGKILL",
            Scenario::BrokerKilled => "broker SIGKILL",
            Scenario::BrokerUnreachable => "broker unreachable past the message timeout",
            Scenario::NetworkFaults => "network faults",
            Scenario::GroupWithPausedMember => "group rebalances, a paused member",
            Scenario::DisksFull => "lake and spool disks full",
            Scenario::DamagedCheckpoints => "damaged checkpoints",
            Scenario::DuplicatesAndConflicts => "duplicates and conflicts",
            Scenario::SkewedClocks => "a clock 10 minutes off, future and expired samples",
            Scenario::LateAfterRating => "late data after sealing and rating",
        }
    }

    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.number() == number)
    }

    /// Runs the scenario in `dir` with the `tally` binary; returns its figures and the
    /// dead letters it injected on purpose.
    pub async fn run(
        self,
        tally: &Path,
        dir: &Path,
        size: Size,
        seed: u64,
    ) -> anyhow::Result<(Figures, BTreeMap<String, u64>)> {
        let started = Instant::now();
        let fleet = Fleet::generate(size.fleet(seed));
        let proxied = matches!(self, Scenario::NetworkFaults | Scenario::BrokerUnreachable);
        let mut pipeline = Pipeline::start(tally, dir, fleet.spec.clone(), proxied).await?;
        let mut dice = Dice::new(seed);
        let outcome = match self {
            Scenario::AggregatorKilled => {
                Outcome::faults(aggregator_killed(&pipeline, size, &mut dice).await?)
            }
            Scenario::CollectorsKilled => {
                collected::collectors_killed(&pipeline, size, &mut dice).await?
            }
            Scenario::BrokerUnreachable => {
                collected::broker_unreachable(&mut pipeline, size, &mut dice).await?
            }
            Scenario::SkewedClocks => collected::skewed_clocks(&pipeline, size, &mut dice).await?,
            Scenario::DisksFull => collected::disks_full(&mut pipeline, size).await?,
            Scenario::BrokerKilled => {
                Outcome::faults(broker_killed(&mut pipeline, size, &mut dice).await?)
            }
            Scenario::NetworkFaults => {
                Outcome::faults(network_faults(&pipeline, size, &mut dice).await?)
            }
            Scenario::GroupWithPausedMember => {
                Outcome::faults(group_with_paused_member(&pipeline, size).await?)
            }
            Scenario::DamagedCheckpoints => {
                Outcome::faults(damaged_checkpoints(&pipeline, size, &mut dice).await?)
            }
            Scenario::DuplicatesAndConflicts => {
                duplicates_and_conflicts(&pipeline, &fleet, size, &mut dice).await?
            }
            Scenario::LateAfterRating => late_after_rating(&pipeline, &fleet, &mut dice).await?,
        };
        let name = format!("{} {}", self.number(), self.name());
        let expected = outcome.expected.unwrap_or_else(|| Expected::shipped(fleet));
        let truth = Truth::of(&expected);
        let figures = verdict::check(
            &pipeline,
            &expected,
            &truth,
            outcome.invoices,
            name,
            outcome.faults,
            started,
        )?;
        Ok((figures, outcome.dead_letters))
    }
}

/// What a scenario did, and what the verdict should therefore expect.
pub(super) struct Outcome {
    faults: String,
    /// Dead letters injected on purpose, by reason.
    dead_letters: BTreeMap<String, u64>,
    invoices: InvoiceCheck,
    /// What reached the pipeline to be billed, when not the fleet `tally simulate`
    /// shipped (collector agents sent the samples).
    expected: Option<Expected>,
}

impl Outcome {
    /// Faults after which nothing may be dead-lettered and the lake rates as the truth.
    fn faults(faults: String) -> Self {
        Self {
            faults,
            dead_letters: BTreeMap::new(),
            invoices: InvoiceCheck::Identical,
            expected: None,
        }
    }

    /// Faults while collector agents sent what they `sampled`; `dead_letters` were sent
    /// on purpose.
    pub(super) fn sampled(
        faults: String,
        dead_letters: BTreeMap<String, u64>,
        sampled: Vec<Sampled>,
    ) -> Self {
        Self {
            faults,
            dead_letters,
            invoices: InvoiceCheck::Identical,
            expected: Some(Expected::sampled(sampled)),
        }
    }

    /// And `samples` the runner sent besides the agents', to be billed.
    pub(super) fn and_sent(mut self, samples: Vec<Sample>) -> Self {
        self.expected = self.expected.map(|expected| expected.and_sent(samples));
        self
    }
}

/// 1: twenty times (six in a smoke run) an aggregator is started and dies: every other
/// one by SIGKILL after a random 0.2–3 s, the others by aborting at a failpoint of the
/// write path (a file fsynced but not renamed, renamed but its directory not fsynced, a
/// checkpoint not yet in the manifest, a manifest fsynced but not renamed or renamed but
/// its directory not fsynced), which a signal from outside would almost never hit.
async fn aggregator_killed(
    pipeline: &Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<String> {
    let rounds = size.pick(20, 6);
    // Restatements come with late data: scenario 11 aborts at `superseded-kept`.
    let failpoints: Vec<_> = failpoint::ALL
        .into_iter()
        .filter(|name| *name != failpoint::SUPERSEDED_KEPT)
        .collect();
    // Hours paced so that samples still flow when the last kills come (an aggregator
    // with nothing to read writes no files, and its failpoints wait in vain).
    let mut producer = Producer::start(pipeline, Duration::from_millis(size.pick(12_000, 8_000)))?;
    let (mut sigkills, mut fired, mut missed) = (0, BTreeMap::<&str, u32>::new(), 0);
    for round in 0..rounds {
        if round % 2 == 1 {
            let name = failpoints[(round / 2) % failpoints.len()];
            let pass = 1 + dice.below(3);
            let mut aggregator = pipeline.aggregator(false, Some((name, pass)))?;
            match exited_within(&mut aggregator, Duration::from_secs(20)).await? {
                Some(status) if status.signal() == Some(SIGABRT) => {
                    *fired.entry(name).or_default() += 1;
                }
                Some(status) => bail!("an aggregator armed at {name} exited with {status}"),
                None => {
                    // The write path did not pass there in time (no restatement yet):
                    // a SIGKILL instead.
                    sigkill(&mut aggregator)?;
                    missed += 1;
                }
            }
        } else {
            let mut aggregator = pipeline.aggregator(false, None)?;
            let moment = dice.millis(200, 3_000);
            if let Some(status) = exited_within(&mut aggregator, moment).await? {
                bail!("an aggregator exited by itself with {status}");
            }
            sigkill(&mut aggregator)?;
            sigkills += 1;
        }
        producer.poll(pipeline)?;
    }
    producer.finish(pipeline, Duration::from_secs(600)).await?;
    pipeline.drain()?;
    let aborted: u32 = fired.values().sum();
    let at: Vec<_> = fired
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    Ok(format!(
        "{rounds} kills: {} SIGKILLs ({missed} of them after an armed failpoint was not reached \
         in 20 s), {aborted} aborts at failpoints ({}); {} producer restarts",
        sigkills + missed,
        at.join(", "),
        producer.restarts
    ))
}

/// Rollup files of an older generation than another file of their source partition.
fn superseded_files(lake: &Path) -> anyhow::Result<usize> {
    let mut superseded = 0;
    let lake = tally_rating::Lake::directory(lake);
    for hour_dir in std::fs::read_dir(
        lake.local_root()
            .unwrap_or(Path::new(""))
            .join(tally_aggregator::write::ROLLUPS_DIR),
    )? {
        let key = format!(
            "{}/{}",
            tally_aggregator::write::ROLLUPS_DIR,
            hour_dir?.file_name().to_string_lossy()
        );
        superseded += tally_rating::usage::current_generation(lake.list(&key)?).superseded;
    }
    Ok(superseded)
}

/// 5: six times (twice in a smoke run), while `tally simulate` produces and `tally
/// aggregate` consumes through the fault proxy: 100–300 ms of latency with up to 200 ms of
/// jitter on every chunk for 15 s, a blackhole of 40 s (8 s) — longer than librdkafka's
/// 30 s request timeout, so requests time out and are sent again — and every connection
/// cut with a TCP reset. A client that gives up is started again.
async fn network_faults(
    pipeline: &Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<String> {
    let proxy = pipeline.proxy()?;
    let rounds = size.pick(6, 2);
    let blackhole = Duration::from_secs(size.pick(40, 8));
    let mut producer = Producer::start(pipeline, Duration::from_millis(size.pick(12_000, 5_000)))?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    let mut aggregator_restarts = 0;

    for _ in 0..rounds {
        proxy.set(Fault::Latency {
            base: dice.millis(100, 300),
            jitter: Duration::from_millis(200),
        });
        tokio::time::sleep(Duration::from_secs(15)).await;
        proxy.set(Fault::Blackhole);
        tokio::time::sleep(blackhole).await;
        proxy.set(Fault::None);
        tokio::time::sleep(dice.millis(1_000, 4_000)).await;
        proxy.reset_connections();
        tokio::time::sleep(dice.millis(2_000, 5_000)).await;
        producer.poll(pipeline)?;
        aggregator_restarts += usize::from(pipeline.restart_if_exited(&mut aggregator)?);
    }
    producer.finish(pipeline, Duration::from_secs(900)).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    Ok(format!(
        "{rounds} rounds of 15 s latency (100–300 ms + up to 200 ms jitter), a {} s \
         blackhole and a reset of every connection; {} producer restarts, \
         {aggregator_restarts} aggregator restarts",
        blackhole.as_secs(),
        producer.restarts
    ))
}

/// 6: two aggregators in consumer group `chaos` while `tally simulate` produces; every
/// 30 s a third member joins or leaves (SIGTERM), a rebalance each time; once, member A is
/// stopped with SIGSTOP for 60 s, past the group's 45 s session timeout, so the group
/// hands its partitions to the others while it still holds them, and then resumed. The
/// partition locks keep its writes from crossing a new owner's: the lake must equal the
/// truth. A member that stops (as a resumed one may, finding its partitions gone) is
/// started again.
async fn group_with_paused_member(pipeline: &Pipeline, size: Size) -> anyhow::Result<String> {
    let rebalances = size.pick(8, 2);
    // An hour every 20 s: samples flow through every rebalance and the pause.
    let mut producer = Producer::start(pipeline, Duration::from_secs(20))?;
    let mut members = vec![pipeline.group_member()?, pipeline.group_member()?];
    let mut third: Option<super::pipeline::Process> = None;
    let mut restarts = 0;
    let mut keep_members = |members: &mut Vec<super::pipeline::Process>| -> anyhow::Result<()> {
        for member in members.iter_mut() {
            if member.try_wait()?.is_some() {
                restarts += 1;
                *member = pipeline.group_member()?;
            }
        }
        Ok(())
    };
    for round in 0..rebalances {
        tokio::time::sleep(Duration::from_secs(30)).await;
        match third.take() {
            Some(mut member) => {
                signal(&member, "TERM")?;
                if exited_within(&mut member, Duration::from_secs(30))
                    .await?
                    .is_none()
                {
                    sigkill(&mut member)?;
                }
            }
            None => third = Some(pipeline.group_member()?),
        }
        if round == 0 {
            let paused = &members[0];
            signal(paused, "STOP")?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            signal(paused, "CONT")?;
        }
        keep_members(&mut members)?;
        producer.poll(pipeline)?;
    }
    producer.finish(pipeline, Duration::from_secs(900)).await?;
    // Let the group read what was shipped last, then hand everything to one drain.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for member in members.iter_mut().chain(third.iter_mut()) {
        sigkill(member)?;
    }
    // The group, not the drain, must have done the work.
    let read_by_group = resume_offsets(&pipeline.lake)?;
    ensure!(read_by_group > 0, "the group's members read nothing");
    pipeline.drain()?;
    Ok(format!(
        "{rebalances} rebalances (a third member joining or leaving every 30 s), member A \
         stopped (SIGSTOP) 60 s past the 45 s session timeout and resumed; the group's \
         manifests stood at {read_by_group} messages read before the drain; {restarts} \
         member restarts, {} producer restarts",
        producer.restarts
    ))
}

/// The offsets the partitions' manifests resume at, summed: how far the lake has read.
fn resume_offsets(lake: &Path) -> anyhow::Result<i64> {
    let source = tally_aggregator::ingest::source_name(SAMPLES_TOPIC);
    let mut sum = 0;
    for partition in 0..SAMPLE_PARTITIONS {
        sum += tally_aggregator::manifest::Manifest::load(&lake.into(), &source, partition)?
            .next_offset();
    }
    Ok(sum)
}

/// Sends `kill -SIGNAL` to a process.
fn signal(process: &std::process::Child, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.id().to_string())
        .status()?;
    ensure!(status.success(), "kill -{signal} {} failed", process.id());
    Ok(())
}

/// 8: ten times (three in a smoke run) the aggregator is SIGKILLed once a manifest names
/// a checkpoint of open hours, and a byte of that checkpoint is flipped before the next
/// start (the spool's side of this scenario, a flipped byte in a collector's spool record,
/// is `tests/it/collector.rs`). Each damaged checkpoint must be quarantined — its CRC-32
/// no longer matches the manifest's — and its hours read again from the topic; nothing
/// of it may be counted.
async fn damaged_checkpoints(
    pipeline: &Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<String> {
    let rounds = size.pick(10, 3);
    let mut producer = Producer::start(pipeline, Duration::from_millis(size.pick(8_000, 5_000)))?;
    // Only intact checkpoints count: a run killed before it opened a partition leaves a
    // damaged checkpoint named, and the next round may flip another bit of the same file.
    // (A quarantined checkpoint's hours, read again, checkpoint again under the same name
    // and bytes: that file is a new one, intact until flipped.)
    let (mut damaged, mut without_checkpoint) = (0, 0);
    for _ in 0..rounds {
        let mut aggregator = pipeline.aggregator(false, None)?;
        // A checkpoint taken by this run (a named one older than the run would be one the
        // previous round already damaged and the start quarantined).
        tokio::time::sleep(dice.millis(1_500, 4_000)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut checkpoints = named_checkpoints(&pipeline.lake)?;
        while checkpoints.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            checkpoints = named_checkpoints(&pipeline.lake)?;
        }
        sigkill(&mut aggregator)?;
        // The checkpoint as the manifest names it after the kill.
        let checkpoints = named_checkpoints(&pipeline.lake)?;
        let Some((victim, recorded)) =
            checkpoints.get(dice.below(checkpoints.len() as u64) as usize)
        else {
            without_checkpoint += 1;
            continue;
        };
        let mut bytes = std::fs::read(victim)?;
        if *recorded == Some(crc32fast::hash(&bytes)) {
            damaged += 1;
        }
        let position = dice.below(bytes.len() as u64) as usize;
        bytes[position] ^= 1 << dice.below(8);
        std::fs::write(victim, bytes)?;
        producer.poll(pipeline)?;
    }
    producer.finish(pipeline, Duration::from_secs(600)).await?;
    pipeline.drain()?;
    let quarantined = count_files(
        &pipeline
            .lake
            .join(tally_aggregator::manifest::QUARANTINE_DIR),
    )?;
    ensure!(
        quarantined == damaged,
        "{damaged} checkpoints damaged, {quarantined} quarantined"
    );
    Ok(format!(
        "{rounds} SIGKILLs, {damaged} checkpoints with one bit flipped ({without_checkpoint} \
         kills found none to damage), {quarantined} quarantined"
    ))
}

/// The checkpoint files the samples topic's manifests name, with the CRC-32 recorded.
fn named_checkpoints(lake: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, Option<u32>)>> {
    let source = tally_aggregator::ingest::source_name(SAMPLES_TOPIC);
    let mut files = Vec::new();
    for partition in 0..SAMPLE_PARTITIONS {
        let manifest =
            tally_aggregator::manifest::Manifest::load(&lake.into(), &source, partition)?;
        if let Some(checkpoint) = manifest.checkpoint {
            files.push((lake.join(checkpoint.file), checkpoint.crc32));
        }
    }
    Ok(files)
}

/// Files anywhere under `dir` (0 if it does not exist).
fn count_files(dir: &Path) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut count = 0;
    for entry in entries {
        let path = entry?.path();
        count += if path.is_dir() {
            count_files(&path)?
        } else {
            1
        };
    }
    Ok(count)
}

/// SIGABRT's number (6 on every Unix Tally runs on): how a failpoint ends the process.
const SIGABRT: i32 = 6;

/// 3: the broker (Tansu, SQLite storage) SIGKILLed ten times (three in a smoke run),
/// each time down 5–60 s (2–6 s) before it starts again on the same port and data, while
/// `tally simulate` produces and `tally aggregate` consumes; an aggregator or producer
/// that gives up is started again.
async fn broker_killed(
    pipeline: &mut Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<String> {
    let kills = size.pick(10, 3);
    let mut producer = Producer::start(pipeline, Duration::from_millis(size.pick(8_000, 3_000)))?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    let (mut aggregator_restarts, mut down_total) = (0, Duration::ZERO);
    for _ in 0..kills {
        tokio::time::sleep(dice.millis(2_000, 8_000)).await;
        pipeline.broker.kill()?;
        let down = size.pick(dice.millis(5_000, 60_000), dice.millis(2_000, 6_000));
        down_total += down;
        tokio::time::sleep(down).await;
        // The same port and data: clients reconnect to the address they know.
        pipeline.broker.restart()?;
        producer.poll(pipeline)?;
        aggregator_restarts += usize::from(pipeline.restart_if_exited(&mut aggregator)?);
    }
    producer.finish(pipeline, Duration::from_secs(900)).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    Ok(format!(
        "{kills} broker SIGKILLs, down {:.0} s in all; {} producer restarts, \
         {aggregator_restarts} aggregator restarts",
        down_total.as_secs_f64(),
        producer.restarts
    ))
}

/// 9: while an aggregator runs, the fleet is shipped once by `tally simulate`, then again
/// in part by a producer of the runner's own: 1 % of the samples at random, every sample
/// of one hour twice, and for 0.1 % of the samples a conflicting version (another state
/// and other counters). The lake must equal the truth; exactly the conflicts are
/// dead-lettered, as conflicts.
async fn duplicates_and_conflicts(
    pipeline: &Pipeline,
    fleet: &Fleet,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<Outcome> {
    let mut producer = Producer::start(pipeline, Duration::from_millis(size.pick(1_000, 500)))?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    producer.finish(pipeline, Duration::from_secs(600)).await?;

    let (mut resent, mut conflicts, mut replayed) = (Vec::new(), Vec::new(), Vec::new());
    let replayed_hour = fleet.spec.start.plus(60).hour();
    for chunk in fleet.chunks(60) {
        for sample in chunk {
            if sample.minute.hour() == replayed_hour {
                replayed.push(sample.clone());
            }
            match dice.below(1000) {
                0..10 => resent.push(sample),
                10 => conflicts.push(conflicting(&sample)),
                _ => {}
            }
        }
    }
    let shipper = Shipper::connect(&ShipConfig::new(&pipeline.clients, SAMPLES_TOPIC))?;
    let batches: [&[Sample]; 4] = [&resent, &replayed, &replayed, &conflicts];
    for batch in batches {
        shipper.ship(batch.to_vec()).await?;
    }
    drop(shipper);
    // Let the running aggregator restate the sealed hours with the late copies, then drain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    ensure!(!conflicts.is_empty(), "no conflict was injected");
    Ok(Outcome {
        faults: format!(
            "{} samples re-produced (1 %), hour {} replayed twice ({} samples each time), {} \
             conflicting samples (0.1 %)",
            resent.len(),
            replayed_hour.partition_value(),
            replayed.len(),
            conflicts.len()
        ),
        dead_letters: BTreeMap::from([("conflict".to_owned(), conflicts.len() as u64)]),
        invoices: InvoiceCheck::Identical,
        expected: None,
    })
}

/// 11: half a percent of the samples is held back. The rest is shipped and drained, and
/// the month rated and issued (`tally rate --issue`); then the held-back samples arrive,
/// weeks late in event time. An aggregator restates their sealed hours, dying at the first
/// restatement between storing the manifest and removing the superseded file; a second
/// one finishes. Rating the month again writes correction lines: each account's issued
/// subtotal plus its corrections must equal the truth's (to 20 decimal places).
async fn late_after_rating(
    pipeline: &Pipeline,
    fleet: &Fleet,
    dice: &mut Dice,
) -> anyhow::Result<Outcome> {
    let (mut on_time, mut late) = (Vec::new(), Vec::new());
    for chunk in fleet.chunks(60) {
        for sample in chunk {
            if dice.below(200) == 0 {
                late.push(sample);
            } else {
                on_time.push(sample);
            }
        }
    }
    let shipper = Shipper::connect(&ShipConfig::new(&pipeline.clients, SAMPLES_TOPIC))?;
    shipper.ship(on_time).await?;
    pipeline.drain()?;
    let month = verdict::month_of(fleet.spec.start);
    let inputs = RatingInputs::write(&pipeline.dir, &fleet.contracts())?;
    let out = pipeline.dir.join("rated");
    pipeline.rate(&pipeline.lake, &month, &inputs, &out, true)?;

    let late_hours: BTreeSet<_> = late.iter().map(|sample| sample.minute.hour()).collect();
    shipper.ship(late.clone()).await?;
    drop(shipper);
    // The aggregator that restates the first hour dies once the manifest names the new
    // generation, before it removes the old file: the next one must clean up after it.
    let mut aggregator = pipeline.aggregator(true, Some((failpoint::SUPERSEDED_KEPT, 1)))?;
    let aborted = exited_within(&mut aggregator, Duration::from_secs(60)).await?;
    ensure!(
        aborted.is_some_and(|status| status.signal() == Some(SIGABRT)),
        "the restating aggregator did not abort at {} ({aborted:?})",
        failpoint::SUPERSEDED_KEPT
    );
    let left = superseded_files(&pipeline.lake)?;
    ensure!(left > 0, "the abort left no superseded generation behind");
    pipeline.drain()?;
    pipeline.rate(&pipeline.lake, &month, &inputs, &out, false)?;
    let issued = tally_rating::correction::read_issued(&out.clone().into(), &month)?
        .ok_or_else(|| anyhow::anyhow!("the month was not issued"))?;
    ensure!(
        issued.corrections == 1,
        "{} correction rounds, expected 1",
        issued.corrections
    );
    Ok(Outcome {
        faults: format!(
            "{} samples (0.5 %) of {} hours shipped after the month was rated and issued, \
             the restating aggregator aborted at {}; 1 correction round",
            late.len(),
            late_hours.len(),
            failpoint::SUPERSEDED_KEPT
        ),
        dead_letters: BTreeMap::new(),
        invoices: InvoiceCheck::IssuedPlusCorrections { out },
        expected: None,
    })
}
