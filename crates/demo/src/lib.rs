//! `tally demo`: the whole pipeline in one process, with nothing to install.
//!
//! It simulates a small fleet on the four reference tariffs for one billing month,
//! ships the samples through librdkafka's in-process mock cluster, aggregates them into
//! the hourly Parquet lake, checks the lake against the simulator's ground truth, rates
//! the month with the reference tariffs and writes line items and invoices.

pub mod summary;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use rdkafka::mocking::MockCluster;
use tally_aggregator::{AggregateConfig, AggregateReport, KafkaInput};
use tally_collector::{Fleet, FleetSpec, GroundTruth, ShipConfig, Shipper};
use tally_model::clock::FixedClock;
use tally_model::{Hour, Minute, ResourceKind};

/// The time zone of all four reference tariffs: billing months are Berlin months.
const BILLING_TIME_ZONE: chrono_tz::Tz = chrono_tz::Europe::Berlin;
const SAMPLES_TOPIC: &str = "tally.samples";
const DEAD_LETTER_TOPIC: &str = "tally.deadletter";
/// The prepaid ledger the demo writes next to the lake, for `tally watch` and `tally budget`.
pub const LEDGER_FILE: &str = "ledger.ndjson";
/// Where the summary's `tally watch` keeps the notices it delivered.
pub const WATCH_STATE_DIR: &str = "watch";

#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub out: PathBuf,
    /// `YYYY-MM`; by default the last complete month.
    pub month: Option<String>,
    /// Copies of the base fleet (about 60 resources each).
    pub scale: usize,
    pub seed: u64,
    pub partitions: i32,
}

impl DemoConfig {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            month: None,
            scale: 2,
            seed: 2026,
            partitions: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("month '{0}' is not of the form YYYY-MM")]
    Month(String),
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Ship(#[from] tally_collector::ShipError),
    #[error(transparent)]
    Aggregate(#[from] tally_aggregator::Error),
    #[error(transparent)]
    Rate(#[from] tally_rating::Error),
    #[error("the aggregator task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the lake does not match the simulator's ground truth: {0}")]
    Mismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the demo did, stage by stage.
#[derive(Debug)]
pub struct DemoReport {
    pub month: String,
    pub resources: usize,
    pub samples: u64,
    pub messages: usize,
    pub aggregate: AggregateReport,
    pub rating: tally_rating::RateReport,
    pub lake: PathBuf,
    pub timings: Vec<(&'static str, Duration)>,
    /// The first hour after the month (`YYYY-MM-DDTHH`, UTC).
    pub end_hour: String,
}

/// The UTC minutes `[start, end)` of a billing month in the tariffs' time zone.
pub fn month_window(month: &str) -> Result<(Minute, Minute)> {
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .map_err(|_| Error::Month(month.to_owned()))?;
    let next = first
        .checked_add_months(Months::new(1))
        .ok_or_else(|| Error::Month(month.to_owned()))?;
    let start_of = |day: NaiveDate| -> Result<Minute> {
        let local = BILLING_TIME_ZONE
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
            .single()
            .ok_or_else(|| Error::Month(month.to_owned()))?;
        Ok(Minute::containing(local.with_timezone(&Utc)))
    };
    Ok((start_of(first)?, start_of(next)?))
}

/// The last complete billing month before `now`.
pub fn previous_month(now: DateTime<Utc>) -> String {
    let local = now.with_timezone(&BILLING_TIME_ZONE).date_naive();
    let previous = local
        .with_day(1)
        .and_then(|first| first.checked_sub_months(Months::new(1)))
        .unwrap_or(local);
    previous.format("%Y-%m").to_string()
}

pub async fn run(config: &DemoConfig) -> Result<DemoReport> {
    let mut timings = Vec::new();
    let month = config
        .month
        .clone()
        .unwrap_or_else(|| previous_month(Utc::now()));
    let (start, end) = month_window(&month)?;
    let lake = config.out.join("lake");
    prepare_out_dir(&config.out, &lake)?;
    let (tariffs, contracts) = write_inputs(&config.out)?;

    let started = Instant::now();
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(SAMPLES_TOPIC, config.partitions, 1)?;
    cluster.create_topic(DEAD_LETTER_TOPIC, 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let fleet = Fleet::generate(FleetSpec {
        seed: config.seed,
        start,
        end,
        scale: config.scale,
    });
    write_contracts(&contracts, &fleet, &format!("{month}-01"))?;
    write_ledger(&config.out.join(LEDGER_FILE), &fleet, start)?;
    // The mock cluster keeps only 5 MB per partition and drops older messages beyond it,
    // so the aggregator consumes while the collector ships, and the collector waits for
    // it after each chunk (as a real deployment's aggregator keeps up with its fleet).
    let mut aggregate_config = AggregateConfig::new(&lake);
    // The demo month may lie in the past: validate against the month's end, not today.
    aggregate_config.clock = Arc::new(FixedClock(end.to_datetime()));
    let mut input = KafkaInput::new(&brokers, SAMPLES_TOPIC);
    input.dead_letter_topic = DEAD_LETTER_TOPIC.to_owned();
    input.until_drained = true;
    // In-process, a fetch need not wait for data to accumulate (librdkafka waits 500 ms).
    input
        .librdkafka
        .insert("fetch.wait.max.ms".to_owned(), "5".to_owned());
    let stop = Arc::new(AtomicBool::new(false));
    input.stop = Some(stop.clone());
    let processed = input.processed.clone();
    let aggregator =
        tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&aggregate_config, &input));

    let shipper = Shipper::connect(&ShipConfig::new(&brokers, SAMPLES_TOPIC))?;
    let mut truth = GroundTruth::default();
    let (mut samples, mut messages) = (0u64, 0usize);
    let shipping = async {
        for chunk in fleet.chunks(6 * 60) {
            chunk.iter().for_each(|sample| truth.record(sample));
            let report = shipper.ship(chunk).await?;
            samples += report.samples as u64;
            messages += report.messages;
            while processed.load(Ordering::Acquire) < messages as u64 {
                if aggregator.is_finished() {
                    break; // it failed; its error is reported below
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok::<(), Error>(())
    };
    let shipped = shipping.await;
    stop.store(true, Ordering::Release);
    let aggregate = aggregator.await??;
    shipped?;
    timings.push(("simulate + ship + aggregate", started.elapsed()));

    let started = Instant::now();
    check_against_truth(&lake, &truth)?;
    timings.push(("check lake = ground truth", started.elapsed()));

    let started = Instant::now();
    let rating = tally_rating::rate(&tally_rating::RateRequest {
        lake: lake.clone().into(),
        month: month.clone(),
        tariffs,
        contracts,
        out: lake.clone().into(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    })
    .await?;
    timings.push(("rate", started.elapsed()));
    drop(shipper); // before the cluster it talks to
    drop(cluster);

    Ok(DemoReport {
        month,
        resources: fleet.resources.len(),
        samples,
        messages,
        aggregate,
        rating,
        lake,
        timings,
        end_hour: end.hour().partition_value(),
    })
}

/// Removes what an earlier demo wrote into `out`, and nothing else.
fn prepare_out_dir(out: &Path, lake: &Path) -> Result<()> {
    for stale in [
        lake.to_owned(),
        out.join("tariffs"),
        out.join("contracts.json"),
        out.join(LEDGER_FILE),
        out.join(WATCH_STATE_DIR),
    ] {
        let removed = if stale.is_dir() {
            fs::remove_dir_all(&stale)
        } else if stale.exists() {
            fs::remove_file(&stale)
        } else {
            Ok(())
        };
        removed.map_err(|source| Error::Io {
            action: format!("remove the earlier demo's {}", stale.display()),
            source,
        })?;
    }
    fs::create_dir_all(out.join("tariffs")).map_err(|source| Error::Io {
        action: format!("create {}", out.display()),
        source,
    })
}

fn write_inputs(out: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let mut tariffs = Vec::new();
    for (name, text) in tally_rating::reference_tariffs() {
        let path = out.join("tariffs").join(name);
        fs::write(&path, text).map_err(|source| Error::Io {
            action: format!("write {}", path.display()),
            source,
        })?;
        tariffs.push(path);
    }
    Ok((tariffs, out.join("contracts.json")))
}

/// The fleet's contracts, with a little of everything contracts can say: the first GPU
/// server of each Trooper.ai account on a monthly interval from its creation (T2), backups
/// on each Hetzner account's first CX server (H6), managing for each centron account and
/// a dedicated c2m4 reservation for the first (C4, C5).
fn write_contracts(path: &Path, fleet: &Fleet, first_day: &str) -> Result<()> {
    let mut reserved = false;
    let accounts: Vec<serde_json::Value> = fleet
        .contracts()
        .into_iter()
        .map(|(account, tariff)| {
            let mut contract = serde_json::json!({ "account_id": account, "tariff_id": tariff });
            let first_of = |kind: ResourceKind, sku_prefix: &str| {
                fleet.resources.iter().find(|resource| {
                    resource.account_id == account
                        && resource.kind == kind
                        && resource.sku.starts_with(sku_prefix)
                })
            };
            match tariff {
                "trooper-ai" => {
                    if let Some(server) = first_of(ResourceKind::GpuServer, "") {
                        contract["resources"] = serde_json::json!([{
                            "resource_id": server.resource_id,
                            "interval": "monthly",
                            "start": server.created.to_datetime().to_rfc3339(),
                        }]);
                    }
                }
                "hetzner-cloud" => {
                    if let Some(server) = first_of(ResourceKind::Server, "cx") {
                        contract["resources"] = serde_json::json!([{
                            "resource_id": server.resource_id,
                            "options": ["backups"],
                        }]);
                    }
                    contract["cost_alerts"] = serde_json::json!(["5.00", "20.00"]);
                }
                "centron" => {
                    contract["subscriptions"] =
                        serde_json::json!([{ "sku": "managing", "start": first_day }]);
                    if !reserved {
                        reserved = true;
                        contract["reservations"] = serde_json::json!([{
                            "reservation": "c2m4-dedicated",
                            "order_date": first_day,
                            "term_months": 12,
                        }]);
                    }
                }
                _ => {}
            }
            contract
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "accounts": accounts }))
        .unwrap_or_default();
    fs::write(path, text).map_err(|source| Error::Io {
        action: format!("write {}", path.display()),
        source,
    })
}

/// Top-ups for the Trooper.ai (prepaid) accounts an hour before the month: the first
/// account gets 50.00, too little for its month, so `tally watch` has a budget running out
/// to tell about; the others 1000.00 (the largest top-up, T5) on the 1st, 11th and 21st.
fn write_ledger(path: &Path, fleet: &Fleet, start: Minute) -> Result<()> {
    let mut text = String::new();
    let prepaid = fleet
        .contracts()
        .into_iter()
        .filter(|(_, tariff)| *tariff == "trooper-ai");
    for (index, (account, _)) in prepaid.enumerate() {
        let top_ups: &[(i64, &str)] = if index == 0 {
            &[(0, "50.00")]
        } else {
            &[(0, "1000.00"), (10, "1000.00"), (20, "1000.00")]
        };
        for (day, amount) in top_ups {
            let at =
                start.to_datetime() + chrono::Duration::days(*day) - chrono::Duration::hours(1);
            let entry = serde_json::json!({
                "id": format!("demo-{account}-{day}"),
                "at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "account_id": account,
                "entry": "top_up",
                "amount": amount,
            });
            text.push_str(&entry.to_string());
            text.push('\n');
        }
    }
    fs::write(path, text).map_err(|source| Error::Io {
        action: format!("write {}", path.display()),
        source,
    })
}

/// Compares every sealed rollup with the simulator's ground truth, resource-hour by
/// resource-hour.
pub fn check_against_truth(lake: &Path, truth: &GroundTruth) -> Result<()> {
    let lake_hours = lake_truth(lake)?;
    if &lake_hours != truth {
        let expected = truth.totals();
        let found = lake_hours.totals();
        let first_difference = truth
            .hours
            .iter()
            .find(|(key, hour)| lake_hours.hours.get(*key) != Some(*hour))
            .map(|((resource, hour), _)| format!("first difference at {resource} {hour}"))
            .unwrap_or_else(|| "the lake has extra hours".to_owned());
        return Err(Error::Mismatch(format!(
            "expected {expected:?}, found {found:?}; {first_difference}"
        )));
    }
    Ok(())
}

/// The lake's rollups summed back into ground-truth form.
pub fn lake_truth(lake: &Path) -> Result<GroundTruth> {
    let mut truth = GroundTruth::default();
    let rollups = lake.join(tally_aggregator::write::ROLLUPS_DIR);
    let hour_dirs = fs::read_dir(&rollups).map_err(|source| Error::Io {
        action: format!("list {}", rollups.display()),
        source,
    })?;
    for hour_dir in hour_dirs.flatten() {
        let files = fs::read_dir(hour_dir.path()).map_err(|source| Error::Io {
            action: format!("list {}", hour_dir.path().display()),
            source,
        })?;
        for file in files.flatten() {
            for row in tally_aggregator::write::read_rows(&file.path())? {
                let hour: Hour = row.key.hour;
                let entry = truth
                    .hours
                    .entry((row.key.resource_id.clone(), hour))
                    .or_default();
                for (minutes, mask) in entry.minutes.iter_mut().zip(row.meters.state_masks) {
                    *minutes += mask.count_ones();
                }
                entry.out_external_bytes += row.meters.out_external_bytes;
                entry.out_internal_bytes += row.meters.out_internal_bytes;
                entry.in_bytes += row.meters.in_bytes;
                entry.size_byte_minutes += row.meters.size_byte_minutes;
                entry.samples += row.meters.sample_count;
            }
        }
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn october_2026_in_berlin_has_745_hours() {
        let (start, end) = month_window("2026-10").expect("month");
        assert_eq!(start.to_string(), "2026-09-30T22:00:00Z");
        assert_eq!(end.to_string(), "2026-10-31T23:00:00Z");
        assert_eq!((end.unix_minutes() - start.unix_minutes()) / 60, 745);
        assert!(month_window("2026-13").is_err());
    }

    #[test]
    fn the_previous_month_is_a_berlin_month() {
        let now: DateTime<Utc> = "2026-11-30T23:30:00Z".parse().expect("time");
        assert_eq!(previous_month(now), "2026-11"); // already December 1st in Berlin
    }
}
