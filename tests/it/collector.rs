//! The collector agent against the real broker: a broker outage, SIGKILLs, counter
//! resets and a corrupted spool record, each checked sample by sample against what the
//! source really showed.
//!
//! The agent runs on the simulator's fast clock (one agent minute per real second), so a
//! 40-minute outage takes 40 s; everything else — spool files, fsyncs, librdkafka, Tansu
//! on 127.0.0.1 — is the real thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tally_collector::agent::{self, simulated_fleet};
use tally_collector::config::{AgentConfig, FastClock};
use tally_collector::forward::Stopped;
use tally_collector::metrics::AgentMetrics;
use tally_collector::source::{InterfaceCounters, Observation, Reading, Source, SourceError};
use tally_collector::spool::{self, SpoolConfig};
use tally_model::{Minute, ResourceKind, ResourceState, Sample};
use tally_tests::chaos::verdict::Sampled;
use tally_tests::{OwnBroker, broker, create_topic, read_samples, unique_topic};

const HOST: &str = "hv-test";
const SEED: u64 = 11;
/// Agent minutes per real minute: one agent minute per real second.
const SPEED: u32 = 60;

fn config_text(spool: &Path, brokers: &str, topic: &str, from: Minute, resources: usize) -> String {
    format!(
        r#"
host = "{HOST}"
[source]
kind = "simulator"
resources = {resources}
seed = {SEED}
from = "{from}"
to = "{to}"
speed = {SPEED}
[schedule]
max_catch_up_minutes = 30
[traffic]
networks = {{ public = "external", private = "internal" }}
[spool]
dir = "{spool}"
max_mib = 64
segment_mib = 1
[kafka]
brokers = "{brokers}"
topic = "{topic}"
[kafka.librdkafka]
"reconnect.backoff.max.ms" = "500"
"#,
        to = from.plus(24 * 60),
        spool = spool.display(),
    )
}

fn agent_config(
    spool: &Path,
    brokers: &str,
    topic: &str,
    from: Minute,
    resources: usize,
) -> AgentConfig {
    AgentConfig::parse(
        &config_text(spool, brokers, topic, from, resources),
        "test config",
    )
    .expect("valid config")
}

/// What every test here starts with: a topic of its own on `brokers`, a spool directory,
/// and minute 0 of the agent's fast clock and of the simulated fleet: the minute before
/// now, so the agent's clock reads at least an hour into the fleet when it starts.
///
/// (With `from` the minute of now, an agent started within a real second of that minute
/// sampled the minute before `from` first: an empty fleet, so its counters primed on
/// nothing and every device it saw next counted from zero, as new. Right for the agent,
/// and not what `expected_samples` says: that the first minute received primed.)
struct Setup {
    topic: String,
    spool_dir: tempfile::TempDir,
    from: Minute,
}

impl Setup {
    async fn new(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<Self> {
        let topic = unique_topic(name);
        create_topic(brokers, &topic, partitions).await?;
        Ok(Self {
            topic,
            spool_dir: tempfile::tempdir()?,
            from: Minute::containing(Utc::now()).plus(-1),
        })
    }
}

/// What the simulator's truth says the agent must have sent for `first..=last`: every
/// resource of the agent's host alive then, the first minute without traffic (its counters
/// prime) — the chaos runner's [`Sampled`].
fn expected_samples(
    resources: usize,
    from: Minute,
    first: Minute,
    last: Minute,
) -> BTreeMap<(String, Minute), Sample> {
    let sampled = Sampled {
        fleet: simulated_fleet(HOST, resources, SEED, from, from.plus(24 * 60)),
        first,
        last,
    };
    sampled
        .chunks()
        .flatten()
        .map(|sample| ((sample.resource_id.clone(), sample.minute), sample))
        .collect()
}

/// Checks that `received` holds every expected sample, each copy equal to it, and
/// nothing else. Returns how many duplicates arrived.
fn check_delivery(
    received: &[Sample],
    expected: &BTreeMap<(String, Minute), Sample>,
    missing_allowed: &BTreeSet<(String, Minute)>,
) -> usize {
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for sample in received {
        let key = (sample.resource_id.clone(), sample.minute);
        let Some(truth) = expected.get(&key) else {
            panic!("a sample nobody took: {sample:?}");
        };
        assert_eq!(sample, truth, "sample of {} at {}", key.0, key.1);
        if !seen.insert(key) {
            duplicates += 1;
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|key| !seen.contains(*key) && !missing_allowed.contains(*key))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "samples lost, for example {missing:?}");
    duplicates
}

/// The newest minute the spool's checkpoint says was sampled, and the samples the spool
/// still holds (opening the spool as the next start would).
fn spool_state(dir: &Path) -> (Minute, u64) {
    let (_, _, recovery) = spool::open(&SpoolConfig::new(dir)).expect("spool opens");
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&recovery.checkpoint.expect("a checkpoint")).expect("json");
    let last = checkpoint["last_sampled"]
        .as_str()
        .expect("a minute was sampled")
        .parse()
        .expect("minute");
    (last, recovery.pending_samples)
}

/// The agent's minute now, on the fast clock that started at `from`.
fn agent_now(from: Minute) -> Minute {
    let from = from.to_datetime();
    Minute::containing(from + (Utc::now() - from) * SPEED as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_40_minutes_loses_nothing() -> anyhow::Result<()> {
    // The agent's log goes with the test's output (shown when it fails); RUST_LOG filters.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
    let outage = Duration::from_secs(
        std::env::var("TALLY_COLLECTOR_OUTAGE_SECONDS").map_or(Ok(40), |s| s.parse())?,
    );
    let mut broker = OwnBroker::start()?;
    let Setup {
        topic,
        spool_dir,
        from,
    } = Setup::new(&broker.address(), "collector-outage", 2).await?;
    let resources = 100;
    let config = agent_config(spool_dir.path(), &broker.address(), &topic, from, resources);
    let metrics = Arc::new(AgentMetrics::default());
    let agent_start = agent_now(from);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(
        config,
        Arc::clone(&metrics),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(120),
    ));

    // When the agent starts sampling and sending depends on how busy the machine is: wait
    // for both instead of guessing. `sampling_seen` is the agent minute by which its first
    // minute had been sampled, so the first sample's minute can be bounded on both sides.
    wait_until("the agent sampled a minute", || {
        metrics.minutes_sampled.load(Ordering::Relaxed) > 0
    })
    .await?;
    let sampling_seen = agent_now(from);
    wait_until("the agent sent a sample before the outage", || {
        metrics.samples_sent.load(Ordering::Relaxed) > 0
    })
    .await?;
    broker.stop()?;
    tokio::time::sleep(outage).await;
    let spooled_in_outage = metrics.spool_pending_samples.load(Ordering::Relaxed);
    broker.restart()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(());
    let report = agent.await??;

    assert!(
        spooled_in_outage >= (outage.as_secs() - 5) * resources as u64 / 2,
        "the outage's samples should wait in the spool: {spooled_in_outage}"
    );
    assert_eq!(report.stopped, Stopped::Drained);
    let (last, pending) = spool_state(spool_dir.path());
    assert_eq!(pending, 0);
    let received = read_samples(&broker.address(), &topic)?;
    let first = received
        .iter()
        .map(|s| s.minute)
        .min()
        .expect("samples arrived");
    // The first minute sampled is the one that had just ended when the agent started
    // sampling: after the minute the agent was spawned in, and no later than the minute
    // in which the test saw that it had sampled.
    assert!(
        agent_start.plus(-1) <= first && first <= sampling_seen,
        "the first sample is for {first}; the agent was spawned at {agent_start} and had \
         sampled by {sampling_seen}"
    );
    let expected = expected_samples(resources, from, first, last);
    check_delivery(&received, &expected, &BTreeSet::new());
    assert!(
        last.unix_minutes() - first.unix_minutes() >= outage.as_secs() as i64,
        "{first}..{last} should span the outage"
    );
    Ok(())
}

/// Waits until `condition` holds, checking every 20 ms; an error naming `what` after a
/// minute.
async fn wait_until(what: &str, condition: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "waited a minute for this in vain: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

const CHILD: &str = "TALLY_COLLECTOR_CHILD";

/// Run by the child process only: the agent on the configuration the parent wrote.
#[test]
fn collector_child() -> anyhow::Result<()> {
    let Ok(config_path) = std::env::var(CHILD) else {
        return Ok(()); // an ordinary test run: nothing to do
    };
    let config = AgentConfig::load(Path::new(&config_path))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let terminate = async {
            let mut signal =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            signal.recv().await;
        };
        agent::run(
            config,
            Arc::new(AgentMetrics::default()),
            terminate,
            Duration::from_secs(60),
        )
        .await
    })?;
    Ok(())
}

fn start_child(config_path: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "collector::collector_child", "--nocapture"])
        .env(CHILD, config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_again_and_again_loses_nothing() -> anyhow::Result<()> {
    let brokers = broker();
    let Setup {
        topic,
        spool_dir,
        from,
    } = Setup::new(&brokers, "collector-sigkill", 2).await?;
    let resources = 150;
    let config_path = spool_dir.path().join("collect.toml");
    let spool_path = spool_dir.path().join("spool");
    std::fs::write(
        &config_path,
        config_text(&spool_path, &brokers, &topic, from, resources),
    )?;
    // Killed at 1.7 s, 2.3 s, ... into each run: mid-minute, mid-fsync, mid-send.
    for run_millis in [1_700u64, 2_300, 900, 3_100, 1_300] {
        let mut child = start_child(&config_path);
        tokio::time::sleep(Duration::from_millis(run_millis)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("the killed agent is reaped");
    }
    let mut child = start_child(&config_path);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("the last agent is reaped");
    assert!(
        terminated.is_ok_and(|status| status.success()),
        "SIGTERM sent"
    );
    assert!(
        status.success(),
        "the last run should stop cleanly: {status}"
    );

    let (last, pending) = spool_state(&spool_path);
    assert_eq!(pending, 0, "the last run flushed the spool");
    let received = read_samples(&brokers, &topic)?;
    let first = received
        .iter()
        .map(|s| s.minute)
        .min()
        .expect("samples arrived");
    let expected = expected_samples(resources, from, first, last);
    let duplicates = check_delivery(&received, &expected, &BTreeSet::new());
    println!(
        "{} samples expected over {first}..{last}, {} received ({duplicates} duplicates)",
        expected.len(),
        received.len()
    );
    assert!(last.unix_minutes() - first.unix_minutes() >= 10);
    Ok(())
}

/// Three servers whose counters start again from zero every five minutes without the
/// source noticing (no new incarnation): what a live migration looks like to libvirt.
struct ResettingCounters;

fn bytes_in_minute(minute: Minute, server: u64) -> u64 {
    1_000 + (minute.unix_minutes() as u64 % 7) * 10 + server
}

impl Source for ResettingCounters {
    fn observe(&mut self, minute: Minute) -> Result<Vec<Observation>, SourceError> {
        let last_reset = minute.unix_minutes() - minute.unix_minutes().rem_euclid(5);
        Ok((0..3)
            .map(|server| {
                let counter: u64 = (last_reset..=minute.unix_minutes())
                    .map(|m| bytes_in_minute(Minute::from_unix_minutes(m), server))
                    .sum();
                Observation::Reading(Reading {
                    resource_id: format!("vm-{server}"),
                    account_id: "acme".to_owned(),
                    kind: ResourceKind::Server,
                    sku: "cx22".to_owned(),
                    zone: "fsn1".to_owned(),
                    state: ResourceState::Running,
                    gpus: 0,
                    size_bytes: 0,
                    labels: BTreeMap::new(),
                    incarnation: 1,
                    interfaces: vec![InterfaceCounters {
                        device: "vnet0".to_owned(),
                        attachment: "public".to_owned(),
                        sent_bytes: counter,
                        received_bytes: counter * 2,
                    }],
                })
            })
            .collect())
    }

    fn name(&self) -> &'static str {
        "resetting-counters"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_resets_give_neither_negative_nor_doubled_traffic() -> anyhow::Result<()> {
    let brokers = broker();
    let Setup {
        topic,
        spool_dir,
        from,
    } = Setup::new(&brokers, "collector-resets", 1).await?;
    let mut config = agent_config(spool_dir.path(), &brokers, &topic, from, 1);
    config.fast_clock = Some(FastClock {
        from: from.to_datetime(),
        speed: SPEED,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run_with_source(
        config,
        Box::new(ResettingCounters),
        Arc::new(AgentMetrics::default()),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(60),
    ));
    tokio::time::sleep(Duration::from_secs(14)).await;
    let _ = stop.send(());
    assert_eq!(agent.await??.stopped, Stopped::Drained);

    let received = read_samples(&brokers, &topic)?;
    let first = received
        .iter()
        .map(|s| s.minute)
        .min()
        .expect("samples arrived");
    let mut resets_crossed = 0;
    for sample in &received {
        let server: u64 = sample.resource_id.trim_start_matches("vm-").parse()?;
        let sent = if sample.minute == first {
            0 // primed
        } else {
            bytes_in_minute(sample.minute, server)
        };
        assert_eq!(
            (sample.out_external_bytes, sample.in_bytes),
            (sent, sent * 2),
            "{} at {}",
            sample.resource_id,
            sample.minute
        );
        if sample.minute.unix_minutes().rem_euclid(5) == 0 && sample.minute != first {
            resets_crossed += 1;
        }
    }
    assert!(
        resets_crossed >= 3,
        "the run should cross a reset: {resets_crossed}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_spool_record_is_skipped_and_reported_and_the_rest_delivered()
-> anyhow::Result<()> {
    let brokers = broker();
    let Setup {
        topic,
        spool_dir,
        from,
    } = Setup::new(&brokers, "collector-corrupt", 2).await?;
    let resources = 20;
    // First run: no broker listens on this port, so every sample stays in the spool.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let offline = agent_config(spool_dir.path(), &nobody, &topic, from, resources);
    let report = agent::run(
        offline,
        Arc::new(AgentMetrics::default()),
        tokio::time::sleep(Duration::from_secs(6)),
        Duration::from_millis(500),
    )
    .await?;
    assert_eq!(report.stopped, Stopped::Pending);
    assert!(report.samples_taken >= 4 * resources as u64);

    // Damage one sample record: a byte of a resource id, in the segment's first record of
    // it (sample records hold ids as plain bytes; checkpoints quote them). Not one of the
    // last append: a damaged last append makes its checkpoint untrusted, the agent then
    // samples those minutes again from the older checkpoint, and a live source's second
    // look differs (a known limit, see the collector's closing note); this test is about
    // a record skipped and the rest delivered.
    let fleet = simulated_fleet(HOST, resources, SEED, from, from.plus(24 * 60));
    let victim = fleet.resources[5].resource_id.clone();
    let segment = std::fs::read_dir(spool_dir.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "spool"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment)?;
    let places: Vec<usize> = bytes
        .windows(victim.len())
        .enumerate()
        .filter(|(at, window)| *window == victim.as_bytes() && bytes[at - 1] != b'"')
        .map(|(at, _)| at)
        .collect();
    assert!(
        places.len() >= 4,
        "{victim} is in {} sample records",
        places.len()
    );
    let damaged_at = places[0];
    bytes[damaged_at] ^= 0x20;
    std::fs::write(&segment, &bytes)?;

    // Second run, with the broker: everything but the damaged record arrives.
    let metrics = Arc::new(AgentMetrics::default());
    let online = agent_config(spool_dir.path(), &brokers, &topic, from, resources);
    let report = agent::run(
        online,
        Arc::clone(&metrics),
        tokio::time::sleep(Duration::from_secs(3)),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(report.stopped, Stopped::Drained);
    assert_eq!(metrics.spool_corrupt_records.load(Ordering::Relaxed), 1);

    let (last, _) = spool_state(spool_dir.path());
    let received = read_samples(&brokers, &topic)?;
    let first = received
        .iter()
        .map(|s| s.minute)
        .min()
        .expect("samples arrived");
    let expected = expected_samples(resources, from, first, last);
    let victims: BTreeSet<_> = expected
        .keys()
        .filter(|(id, _)| *id == victim)
        .cloned()
        .collect();
    check_delivery(&received, &expected, &victims);
    let victim_minutes_received: BTreeSet<Minute> = received
        .iter()
        .filter(|sample| sample.resource_id == victim)
        .map(|sample| sample.minute)
        .collect();
    assert_eq!(
        victim_minutes_received.len() + 1,
        victims.len(),
        "exactly the damaged sample of {victim} is missing"
    );
    Ok(())
}
