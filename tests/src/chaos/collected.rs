//! The scenarios whose samples come from collector agents (`tally collect`, one process per
//! host) rather than from `tally simulate`: the agents sample a simulated fleet each on
//! the wall clock, so these scenarios take real minutes — a full run 8.5 to 11 of them,
//! eight hosts of 20,000 resources sending 1.35 to 1.7 million samples (RELIABILITY.md).
//!
//! The truth is what each agent sampled: its host's fleet from the minute before its first
//! start to the last minute its spool's checkpoint names (the runner checks the spool is
//! empty once the agent stopped).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use tally_collector::{ShipConfig, Shipper};
use tally_model::{Minute, Sample};

use super::pipeline::{
    Ballast, Collector, Dice, Pipeline, SAMPLES_TOPIC, Tmpfs, mid_minute, sigkill,
};
use super::proxy::Fault;
use super::scenarios::{Outcome, Size};
use super::verdict::Sampled;

/// How many agents, how big their fleets, for how long.
#[derive(Clone, Copy)]
struct Hosts {
    count: usize,
    resources: usize,
    minutes: u64,
}

impl Size {
    /// Eight hosts of 20,000 resources for at least eight minutes (over 1.3 million
    /// samples), or three of 1,000 for three minutes.
    fn hosts(self) -> Hosts {
        match self {
            Size::Full => Hosts {
                count: 8,
                resources: 20_000,
                minutes: 8,
            },
            Size::Smoke => Hosts {
                count: 3,
                resources: 1_000,
                minutes: 3,
            },
        }
    }
}

/// The agents of hosts `hv-0`, `hv-1`, ..., each with `librdkafka` settings, over a
/// simulated span starting now.
fn collectors(
    pipeline: &Pipeline,
    hosts: &Hosts,
    librdkafka: &[(&str, &str)],
) -> anyhow::Result<Vec<Collector>> {
    let span = span_from_now(hosts.minutes);
    (0..hosts.count)
        .map(|host| {
            Collector::new(
                pipeline,
                &format!("hv-{host}"),
                hosts.resources,
                span,
                librdkafka,
            )
        })
        .collect()
}

/// A simulated span that covers `minutes` from now, with room for a slow end.
fn span_from_now(minutes: u64) -> (Minute, Minute) {
    let now = Minute::containing(chrono::Utc::now());
    (now.plus(-20), now.plus(minutes as i64 + 30))
}

/// Stops every agent cleanly (each flushes its spool) and returns what each sampled.
async fn stop_all(
    pipeline: &Pipeline,
    collectors: &mut [Collector],
) -> anyhow::Result<Vec<Sampled>> {
    for collector in collectors.iter_mut() {
        collector.stop(pipeline).await?;
    }
    collectors.iter().map(Collector::sampled).collect()
}

/// Sleeps until `offset` after (negative: before) the start of the next minute, or of
/// the one after when that moment has passed. Agents wake 0.5 s into a minute to sample
/// the one that ended, so 0.5–4 s in is when they are busiest.
async fn next_minute_start(offset: chrono::TimeDelta) {
    let now = chrono::Utc::now();
    let mut at = Minute::containing(now).plus(1).to_datetime() + offset;
    if at <= now {
        at += chrono::TimeDelta::minutes(1);
    }
    tokio::time::sleep((at - now).to_std().unwrap_or_default()).await;
}

/// A `from`–`to` ms span, rolled by `dice`, as a signed time.
fn rolled(dice: &mut Dice, from: u64, to: u64) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(dice.millis(from, to)).unwrap_or_default()
}

/// 2: twenty SIGKILLs (five in a smoke run) of collector agents, at random hosts and
/// moments — half of them 0.5–4 s into a minute, while the agents sample, spool and
/// send — each agent started again after 0–10 s from its spool. Every minute of every
/// host must arrive once: the ones spooled and not yet acknowledged are sent again (the
/// aggregator counts the copies once), the ones missed while down are caught up.
pub async fn collectors_killed(
    pipeline: &Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<Outcome> {
    let hosts = size.hosts();
    let kills = size.pick(20, 5);
    let mut collectors = collectors(pipeline, &hosts, &[])?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    mid_minute().await;
    for collector in &mut collectors {
        collector.start(pipeline)?;
    }
    let run = Duration::from_secs(hosts.minutes * 60);
    let between = run / (kills as u32 + 1);
    let (mut busy, mut down_total, mut aggregator_restarts) = (0, Duration::ZERO, 0);
    for kill in 0..kills {
        if kill % 2 == 0 {
            let between = between.as_millis() as u64;
            tokio::time::sleep(dice.millis(between / 2, between)).await;
        } else {
            next_minute_start(rolled(dice, 500, 4_000)).await;
            busy += 1;
        }
        let victim = &mut collectors[dice.below(hosts.count as u64) as usize];
        victim.kill()?;
        let down = dice.millis(0, 10_000);
        down_total += down;
        tokio::time::sleep(down).await;
        victim.start(pipeline)?;
        aggregator_restarts += usize::from(pipeline.restart_if_exited(&mut aggregator)?);
    }
    mid_minute().await;
    let sampled = stop_all(pipeline, &mut collectors).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    let starts: usize = collectors.iter().map(|collector| collector.starts).sum();
    Ok(Outcome::sampled(
        format!(
            "{} agents of {} resources each, {kills} SIGKILLs ({busy} of them 0.5–4 s into \
             a minute, while sampling and sending), down {:.0} s in all, {starts} starts; \
             {aggregator_restarts} aggregator restarts",
            hosts.count,
            hosts.resources,
            down_total.as_secs_f64()
        ),
        BTreeMap::new(),
        sampled,
    ))
}

/// 4: the broker unreachable for longer than the agents' message timeout (set to 10 s, 5 s
/// in a smoke run, for queued and in-flight requests alike; Tally's default is none):
/// twice (once) unanswered behind the fault proxy for four timeouts, twice (once)
/// SIGKILLed and down for four timeouts, each outage spanning the start of a minute, when
/// the agents send. Deliveries time out in librdkafka; the agents keep the samples spooled
/// and send them again on a new producer, while they go on sampling.
pub async fn broker_unreachable(
    pipeline: &mut Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<Outcome> {
    let hosts = size.hosts();
    let timeout = Duration::from_secs(size.pick(10, 5));
    let outage = timeout * 4;
    let rounds = size.pick(2, 1);
    let timeout_ms = timeout.as_millis().to_string();
    let mut collectors = collectors(
        pipeline,
        &hosts,
        &[
            ("message.timeout.ms", timeout_ms.as_str()),
            ("request.timeout.ms", timeout_ms.as_str()),
        ],
    )?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    mid_minute().await;
    for collector in &mut collectors {
        collector.start(pipeline)?;
    }
    let started = std::time::Instant::now();
    let run = Duration::from_secs(hosts.minutes * 60);
    let mut aggregator_restarts = 0;
    for _ in 0..rounds {
        // From a few seconds before a minute starts: the agents' sends of the minute
        // that ended meet the outage.
        next_minute_start(-rolled(dice, 2_000, outage.as_millis() as u64 / 2)).await;
        pipeline.proxy()?.set(Fault::Blackhole);
        tokio::time::sleep(outage).await;
        pipeline.proxy()?.set(Fault::None);
        next_minute_start(-rolled(dice, 2_000, outage.as_millis() as u64 / 2)).await;
        pipeline.broker.kill()?;
        tokio::time::sleep(outage).await;
        pipeline.broker.restart()?;
        aggregator_restarts += usize::from(pipeline.restart_if_exited(&mut aggregator)?);
    }
    tokio::time::sleep(run.saturating_sub(started.elapsed())).await;
    mid_minute().await;
    let sampled = stop_all(pipeline, &mut collectors).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    let timed_out = pipeline.count_in_logs("collect-", &["sending failed", "timed out"])?;
    ensure!(
        timed_out > 0,
        "no delivery timed out: the outages did not outlast the message timeout"
    );
    Ok(Outcome::sampled(
        format!(
            "{} agents of {} resources each with message.timeout.ms = {}; {rounds} × {} s \
             blackhole + {rounds} × {} s broker down; {timed_out} sends failed on timed-out \
             deliveries and were sent again; {aggregator_restarts} aggregator restarts",
            hosts.count,
            hosts.resources,
            timeout.as_millis(),
            outage.as_secs(),
            outage.as_secs()
        ),
        BTreeMap::new(),
        sampled,
    ))
}

/// 10: time. Besides agents on the machine's clock, agent `hv-behind` runs with its clock
/// 10 minutes slow (the simulator's `clock_offset_seconds`, see below), and the runner sends samples restamped off
/// the machine's clock: 100 four minutes ahead (within the aggregator's 5-minute allowance
/// for skew), 100 thirty minutes ahead, 100 a day ahead, and 100 from 63 days back (past
/// the 62-day retention). The slow agent's samples are late but within the window, and
/// the ones four minutes ahead within the allowance: each must land in the hour of its own
/// minute. The ones further ahead must be dead-lettered as `from_future`, the old ones as
/// `too_old`. (Thirty, not ten: a sample is judged against the clock when its message is
/// read, and the final drain reads again from the oldest open hour's first message, some
/// ten minutes later; by then a sample ten minutes ahead is due and would be taken.)
///
/// The agent's sampling runs on the skewed clock; its Kafka client keeps the machine's.
/// (libfaketime, which skews the whole process, broke librdkafka's timed waits: see
/// RELIABILITY.md.) The fast clock's samples are the runner's restamped ones.
pub async fn skewed_clocks(
    pipeline: &Pipeline,
    size: Size,
    dice: &mut Dice,
) -> anyhow::Result<Outcome> {
    let hosts = size.hosts();
    let span = span_from_now(hosts.minutes);
    let mut collectors = collectors(
        pipeline,
        &Hosts {
            count: hosts.count - 1,
            ..hosts
        },
        &[],
    )?;
    collectors.push(
        Collector::new(
            pipeline,
            "hv-behind",
            hosts.resources,
            (span.0.plus(-20), span.1),
            &[],
        )?
        .with_clock_offset(-10 * 60),
    );
    let mut aggregator = pipeline.aggregator(false, None)?;
    mid_minute().await;
    for collector in &mut collectors {
        collector.start(pipeline)?;
    }
    // Samples of the first agent's fleet, under resource ids of their own, restamped.
    let now = Minute::containing(chrono::Utc::now());
    let fleet = collectors[0].fleet();
    let mut restamped = |minutes_ahead: i64| -> Vec<Sample> {
        let mut samples = Vec::new();
        fleet.samples_at(now, &mut samples);
        let start = dice.below(samples.len().saturating_sub(100) as u64) as usize;
        let mut picked: Vec<Sample> = samples.into_iter().skip(start).take(100).collect();
        for sample in &mut picked {
            sample.resource_id.push_str("-restamped");
            sample.minute = now.plus(minutes_ahead);
        }
        picked
    };
    let within = restamped(4);
    let future: Vec<Sample> = [restamped(30), restamped(24 * 60)].concat();
    let old = restamped(-63 * 24 * 60);
    ensure!(
        within.len() == 100 && future.len() == 200 && old.len() == 100,
        "the first agent's fleet is too small to pick 100 samples from"
    );
    let shipper = Shipper::connect(&ShipConfig::new(&pipeline.clients, SAMPLES_TOPIC))?;
    for batch in [&within, &future, &old] {
        shipper.ship(batch.clone()).await?;
    }
    drop(shipper);

    tokio::time::sleep(Duration::from_secs(hosts.minutes * 60)).await;
    mid_minute().await;
    let sampled = stop_all(pipeline, &mut collectors).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    let (slow, on_time) = (&sampled[sampled.len() - 1], &sampled[0]);
    let slow_by = on_time.first.unix_minutes() - slow.first.unix_minutes();
    ensure!(
        slow_by == 10,
        "hv-behind's first minute is {slow_by} minutes before hv-0's, not 10"
    );
    Ok(Outcome::sampled(
        format!(
            "{} agents on the machine's clock and hv-behind 10 min slow, {} resources each; \
             restamped: 100 samples 4 min ahead, 100 30 min ahead, 100 a day ahead, 100 63 \
             days back",
            hosts.count - 1,
            hosts.resources,
        ),
        BTreeMap::from([
            ("from_future".to_owned(), future.len() as u64),
            ("too_old".to_owned(), old.len() as u64),
        ]),
        sampled,
    )
    .and_sent(within))
}

/// 7: disks full. The lake and the spool of agent `hv-0` are small tmpfs volumes; the
/// runner fills the spool's (a ballast file topped up as the agent frees space) for three
/// minutes (one in a smoke run), then the lake's for two (40 s; longer, by up to a
/// minute, until a write has failed on it), each time freeing it again. A full spool makes the agent's appends fail: the minute stays due and is caught
/// up once there is room (the bound is 10 minutes). A full lake makes the aggregator fail
/// on its next write and exit; the runner starts it again every few seconds, as a service
/// manager would, and it resumes from its last manifest. No manifest may pass data that
/// is not in the lake, no spool acknowledgement data that is not on the broker.
pub async fn disks_full(pipeline: &mut Pipeline, size: Size) -> anyhow::Result<Outcome> {
    let hosts = size.hosts();
    pipeline.mounts.push(Tmpfs::mount(&pipeline.lake, 256)?);
    let spool_host = "hv-0";
    pipeline
        .mounts
        .push(Tmpfs::mount(&Collector::dir(pipeline, spool_host), 64)?);
    let mut collectors = collectors(pipeline, &hosts, &[])?;
    let mut aggregator = pipeline.aggregator(false, None)?;
    mid_minute().await;
    for collector in &mut collectors {
        collector.start(pipeline)?;
    }
    let started = std::time::Instant::now();
    let (spool_full, lake_full) = size.pick(
        (Duration::from_secs(180), Duration::from_secs(120)),
        (Duration::from_secs(60), Duration::from_secs(40)),
    );
    tokio::time::sleep(Duration::from_secs(40)).await;

    let mut ballast = Ballast::fill(&Collector::dir(pipeline, spool_host))?;
    let until = std::time::Instant::now() + spool_full;
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ballast.top_up();
    }
    drop(ballast);
    tokio::time::sleep(Duration::from_secs(20)).await;

    let mut ballast = Ballast::fill(&pipeline.lake)?;
    let lake_filled = std::time::Instant::now();
    let until = lake_filled + lake_full;
    // The aggregator writes when it has read something; its reads from Tansu can stall
    // for tens of seconds (CI, 2026-12-06: a 40 s window with no write at all), so the
    // lake stays full past the window until a write has failed on it, for at most a
    // minute more.
    let latest = until + Duration::from_secs(60);
    let mut aggregator_failures = 0;
    loop {
        let now = std::time::Instant::now();
        if now >= latest
            || (now >= until && pipeline.count_in_logs("aggregate", &["No space left"])? > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        ballast.top_up();
        if aggregator.try_wait()?.is_some() {
            aggregator_failures += 1;
            tokio::time::sleep(Duration::from_secs(2)).await;
            aggregator = pipeline.aggregator(false, None)?;
        }
    }
    drop(ballast);
    let lake_full = lake_filled.elapsed();
    let run = Duration::from_secs(hosts.minutes * 60);
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(1)).await;
        aggregator_failures += usize::from(pipeline.restart_if_exited(&mut aggregator)?);
    }
    mid_minute().await;
    let sampled = stop_all(pipeline, &mut collectors).await?;
    sigkill(&mut aggregator)?;
    pipeline.drain()?;
    let spool_failures =
        pipeline.count_in_logs(&format!("collect-{spool_host}"), &["No space left"])?;
    let lake_failures = pipeline.count_in_logs("aggregate", &["No space left"])?;
    ensure!(
        spool_failures > 0 && lake_failures > 0,
        "the full disks were not noticed: {spool_failures} spool and {lake_failures} lake \
         writes failed"
    );
    Ok(Outcome::sampled(
        format!(
            "{} agents of {} resources each; {spool_host}'s spool volume full for {} s \
             ({spool_failures} failed spool writes logged), the lake's full for {} s \
             ({lake_failures} failed lake writes logged, {aggregator_failures} aggregator \
             exits and restarts)",
            hosts.count,
            hosts.resources,
            spool_full.as_secs(),
            lake_full.as_secs()
        ),
        BTreeMap::new(),
        sampled,
    ))
}
