//! The aggregator killed with SIGKILL again and again while it drains a million samples
//! from the real broker: the lake it leaves must equal the ground truth exactly.
//!
//! The aggregator runs as a process of its own: this test binary started again with
//! `TALLY_CRASH_CHILD` set, which makes [`aggregator_child`] run `run_kafka`, the code
//! behind `tally aggregate`, on the lake and topic the parent names. The parent kills it
//! at random moments (a seeded generator, so a failure can be replayed), restarts it, and
//! after the last kill lets it drain the topic. Every restart resumes from the manifests
//! and checkpoints in the lake, as a new instance on another machine would.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_aggregator::{AggregateConfig, KafkaInput, Ownership};
use tally_collector::{Fleet, FleetSpec, GroundTruth, ShipConfig, Shipper};
use tally_model::clock::FixedClock;
use tally_tests::{broker, create_topic, read_dead_letters, unique_topic};

const CHILD: &str = "TALLY_CRASH_CHILD";
const KILLS: usize = 12;

/// 35 copies of the base fleet for 10 hours: a little over a million samples.
fn fleet_spec() -> FleetSpec {
    FleetSpec {
        seed: 23,
        start: "2026-10-20T00:00:00Z".parse().expect("minute"),
        end: "2026-10-20T10:00:00Z".parse().expect("minute"),
        scale: 35,
    }
}

/// Run by the child process only: aggregates the named topic into the named lake.
#[test]
fn aggregator_child() -> anyhow::Result<()> {
    let Ok(lake) = std::env::var(CHILD) else {
        return Ok(()); // an ordinary test run: nothing to do
    };
    let brokers = std::env::var("TALLY_CRASH_BROKERS")?;
    let topic = std::env::var("TALLY_CRASH_TOPIC")?;
    let mut config = AggregateConfig::new(std::path::PathBuf::from(lake));
    config.clock = Arc::new(FixedClock(fleet_spec().end.to_datetime()));
    // Checkpoints of the open hours often enough that kills land in and between them.
    config.checkpoint_interval = Duration::from_millis(150);
    let mut input = KafkaInput::new(&brokers, &topic);
    input.dead_letter_topic = std::env::var("TALLY_CRASH_DEAD_LETTERS")?;
    input.until_drained = true;
    // One aggregator restarted in place (a group would first wait out the session of
    // the instance just killed); `aggregator_groups` covers hand-overs between instances.
    input.ownership = Ownership::AllPartitions;
    tally_aggregator::run_kafka(&config, &input)?;
    Ok(())
}

fn start_child(lake: &Path, brokers: &str, topic: &str, dead_letters: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "aggregator_crash::aggregator_child",
            "--nocapture",
        ])
        .env(CHILD, lake)
        .env("TALLY_CRASH_BROKERS", brokers)
        .env("TALLY_CRASH_TOPIC", topic)
        .env("TALLY_CRASH_DEAD_LETTERS", dead_letters)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the aggregator")
}

/// The sum over the partitions' manifests of where a restart resumes reading.
fn resume_offsets(lake: &Path) -> anyhow::Result<i64> {
    let mut sum = 0;
    let state = lake.join(tally_aggregator::manifest::STATE_DIR);
    if !state.is_dir() {
        return Ok(0);
    }
    for source in std::fs::read_dir(state)? {
        for manifest in std::fs::read_dir(source?.path())? {
            let path = manifest?.path();
            if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
                // Past the checkpoint of the open hours if there is one.
                let resume = manifest["checkpoint"]["next_offset"]
                    .as_i64()
                    .or_else(|| manifest["resume_offset"].as_i64());
                sum += resume.unwrap_or_default();
            }
        }
    }
    Ok(sum)
}

/// xorshift64*: a seeded sequence of kill moments.
struct Moments(u64);

impl Moments {
    fn next_millis(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_again_and_again_the_aggregator_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    let brokers = broker();
    let topic = unique_topic("crash-samples");
    let dead_letters = unique_topic("crash-deadletter");
    create_topic(&brokers, &topic, 3).await?;
    create_topic(&brokers, &dead_letters, 1).await?;

    let fleet = Fleet::generate(fleet_spec());
    let mut truth = GroundTruth::default();
    let hours: Vec<_> = fleet.chunks(60).collect();
    hours
        .iter()
        .flatten()
        .for_each(|sample| truth.record(sample));
    let shipped = truth.totals().samples as usize;
    assert!(shipped >= 1_000_000, "{shipped} samples");
    // Small messages: the aggregator checks what to seal every 64 messages of a
    // partition, so this makes it seal hour after hour while it is being killed.
    let mut ship_config = ShipConfig::new(&brokers, &topic);
    ship_config.max_batch_samples = 300;
    let shipper = Shipper::connect(&ship_config)?;
    // The hours arrive while the aggregator runs, as from a fleet's collectors: a run
    // that drains the topic seals the hour in progress, and its later samples restate it.
    let shipping = tokio::spawn(async move {
        for hour in hours {
            shipper.ship(hour).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::Ok(())
    });

    let lake = tempfile::tempdir()?;
    let seed = std::env::var("TALLY_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x7a11_c0de);
    let mut moments = Moments(seed);
    let started = Instant::now();
    let (mut kills, mut drained_runs, mut resumes) = (0, 0, Vec::new());
    while kills < KILLS || !shipping.is_finished() {
        anyhow::ensure!(
            kills + drained_runs < 10 * KILLS,
            "{kills} kills in {} runs: the runs end before they can be killed",
            kills + drained_runs
        );
        let mut child = start_child(lake.path(), &brokers, &topic, &dead_letters);
        // Early kills hit start-up (opening manifests, removing unrecorded files); later
        // ones reading, sealing, writing Parquet, renaming and storing manifests.
        let wait = Duration::from_millis(100 + moments.next_millis(1_200));
        tokio::time::sleep(wait).await;
        if child.try_wait()?.is_some() {
            drained_runs += 1; // read everything shipped so far before the kill
            continue;
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        kills += 1;
        resumes.push(resume_offsets(lake.path())?);
    }
    shipping.await??;
    let status = start_child(lake.path(), &brokers, &topic, &dead_letters).wait()?;
    assert!(status.success(), "the last aggregator run failed: {status}");
    println!(
        "{shipped} samples, {kills} SIGKILLs and {drained_runs} runs that drained the topic \
         (seed {seed:#x}), {:.1} s; after each kill the resume offsets summed to {resumes:?}",
        started.elapsed().as_secs_f64()
    );
    // The kills must have hit a run in progress, not only start-ups.
    assert!(
        resumes.iter().any(|&offset| offset > 0),
        "no run sealed anything before its kill"
    );

    // Every file in the lake is counted: a leftover generation or a duplicate row would
    // show as more minutes than the truth.
    tally_demo::check_against_truth(lake.path(), &truth)?;
    // Replayed samples are duplicates, never conflicts or rejects.
    let letters = read_dead_letters(&brokers, &dead_letters)?;
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    Ok(())
}
