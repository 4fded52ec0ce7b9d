//! A month of hourly rollups for `resources` resources, deterministic from a seed, written
//! with the aggregator's own writer (`tally_aggregator::write`): one file per hour, rows
//! sorted by account and resource, encoded as that writer does.
//!
//! The fleet is spread over the four reference tariffs: 10 resources per account, each
//! account on one tariff. Per tariff the mix is mostly servers, some GPU servers (Trooper
//! only sells those), IPs, snapshots and add-ons. About 10 % of the resources are created
//! or deleted during the month; servers are stopped for some hours; traffic varies by hour.

use std::ops::Range;
use std::path::Path;

use tally_aggregator::write::{encode_rows, file_name, hour_dir};
use tally_model::{Hour, ResourceKind, ResourceState, RollupKey, RollupMeters, RollupRow};

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct MonthSpec {
    pub resources: usize,
    /// The month's hours, `[first, end)`, UTC.
    pub first: Hour,
    pub end: Hour,
    pub seed: u64,
}

/// What was generated.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub accounts: usize,
}

/// One generated resource.
#[derive(Clone, Debug)]
pub struct Resource {
    pub account_id: String,
    pub tariff_id: &'static str,
    pub resource_id: String,
    pub kind: ResourceKind,
    pub sku: &'static str,
    pub gpus: u16,
    pub labels: &'static str,
    /// Hours `[created, deleted)` relative to the month's first hour.
    pub created: i64,
    pub deleted: i64,
    seed: u64,
}

pub const RESOURCES_PER_ACCOUNT: usize = 10;

/// SplitMix64: a tiny deterministic generator, so the data depends on the seed alone.
fn mix(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fleet of `spec`, sorted by account and resource id (the lake's order).
pub fn fleet(spec: &MonthSpec) -> Vec<Resource> {
    let hours = spec.end.unix_hours() - spec.first.unix_hours();
    let mut fleet: Vec<Resource> = (0..spec.resources)
        .map(|index| {
            let seed = mix(spec.seed ^ index as u64);
            let account = index / RESOURCES_PER_ACCOUNT;
            let slot = index % RESOURCES_PER_ACCOUNT;
            let tariff_id = ["hetzner-cloud", "vps-672", "centron", "trooper-ai"][account % 4];
            let (kind, sku, gpus, labels) = product(tariff_id, slot, seed);
            // One resource in ten lives only part of the month.
            let (created, deleted) = if seed.is_multiple_of(10) {
                let a = (mix(seed) % hours as u64) as i64;
                let b = (mix(seed ^ 1) % hours as u64) as i64;
                if seed.is_multiple_of(20) {
                    (a.min(b), a.max(b) + 1)
                } else {
                    (a, hours)
                }
            } else {
                (0, hours)
            };
            Resource {
                account_id: format!("acct-{account:06}"),
                tariff_id,
                resource_id: format!("res-{index:08}"),
                kind,
                sku,
                gpus,
                labels,
                created,
                deleted,
                seed,
            }
        })
        .collect();
    fleet.sort_by(|a, b| (&a.account_id, &a.resource_id).cmp(&(&b.account_id, &b.resource_id)));
    fleet
}

fn product(
    tariff_id: &str,
    slot: usize,
    seed: u64,
) -> (ResourceKind, &'static str, u16, &'static str) {
    use ResourceKind::{Addon, GpuServer, Ip, Server, Snapshot};
    const LINUX: &str = r#"{"os":"linux"}"#;
    const WINDOWS: &str = r#"{"os":"windows"}"#;
    match (tariff_id, slot) {
        ("hetzner-cloud", 0..=5) => (
            Server,
            if seed.is_multiple_of(3) {
                "cx32"
            } else {
                "cx22"
            },
            0,
            "",
        ),
        ("hetzner-cloud", 6 | 7) => (Ip, "primary-ipv4", 0, ""),
        ("hetzner-cloud", 8) => (Ip, "floating-ipv4", 0, ""),
        ("hetzner-cloud", _) => (Snapshot, "snapshot", 0, ""),
        ("vps-672", 0..=7) => (
            Server,
            if seed.is_multiple_of(3) {
                "vps-m"
            } else {
                "vps-s"
            },
            0,
            "",
        ),
        ("vps-672", _) => (Snapshot, "snapshot", 0, ""),
        ("centron", 0..=6) => {
            let os = if seed.is_multiple_of(4) {
                WINDOWS
            } else {
                LINUX
            };
            (
                Server,
                if seed.is_multiple_of(3) {
                    "c4m8"
                } else {
                    "c2m4"
                },
                0,
                os,
            )
        }
        ("centron", 7) => (GpuServer, "gpu-a100", 1, LINUX),
        ("centron", 8) => (Addon, "ha-feature", 0, ""),
        ("centron", _) => (Ip, "extra-ipv4", 0, ""),
        (_, _) => {
            const SKUS: [&str; 4] = [
                "erkunder-a4000",
                "powerai-4090",
                "sparbox-3090",
                "infinityai-a100",
            ];
            let sku = SKUS[(seed % 4) as usize];
            let gpus = if sku == "infinityai-a100" {
                8
            } else {
                1 + (seed % 4) as u16
            };
            (GpuServer, sku, gpus, "")
        }
    }
}

/// The resource's row for hour `offset` of the month, if it exists then. Every row covers
/// the whole hour in one state (60 samples), which lets the scale run spread it back into
/// the per-minute samples the aggregator must roll up into this very row.
pub fn hour_row(resource: &Resource, hour: Hour, offset: i64) -> Option<RollupRow> {
    if offset < resource.created || offset >= resource.deleted {
        return None;
    }
    let noise = mix(resource.seed ^ (offset as u64).wrapping_mul(0x1000_0001));
    let full = (1u64 << 60) - 1;
    let mut meters = RollupMeters::default();
    let state = match resource.kind {
        ResourceKind::Ip | ResourceKind::Snapshot | ResourceKind::Addon => ResourceState::Active,
        // Servers are stopped for about one hour in twenty.
        _ if noise.is_multiple_of(20) => ResourceState::Stopped,
        _ => ResourceState::Running,
    };
    meters.state_masks[state.index()] = full;
    meters.sample_count = 60;
    match resource.kind {
        ResourceKind::Server | ResourceKind::GpuServer => {
            meters.out_external_bytes = (noise >> 8) % 40_000_000_000;
            meters.out_internal_bytes = (noise >> 16) % 10_000_000_000;
            meters.in_bytes = (noise >> 24) % 5_000_000_000;
        }
        ResourceKind::Snapshot => {
            let size = (1 + resource.seed % 100) << 30;
            meters.size_byte_minutes = size * 60;
            meters.max_size_bytes = size;
        }
        _ => {}
    }
    Some(RollupRow {
        key: RollupKey {
            account_id: resource.account_id.clone(),
            resource_id: resource.resource_id.clone(),
            hour,
            kind: resource.kind,
            sku: resource.sku.to_owned(),
            zone: "fsn1".to_owned(),
            gpus: resource.gpus,
            labels: resource.labels.to_owned(),
        },
        meters,
    })
}

/// Writes the month under `lake` (two threads, one hour file at a time each), as
/// partition 0 of source `tally.samples`.
pub fn write_month(lake: &Path, spec: &MonthSpec) -> anyhow::Result<Generated> {
    write_month_except(lake, spec, "tally.samples", 0..0)
}

/// Writes the month's hours but those at the offsets in `skipped` (hours another writer
/// fills: the scale run's aggregated day), as partition 0 of source `source`. When the
/// aggregator shares the lake, `source` must be one it does not write: at start-up it
/// removes the files of its own source partitions that its manifest does not name.
pub fn write_month_except(
    lake: &Path,
    spec: &MonthSpec,
    source: &str,
    skipped: Range<i64>,
) -> anyhow::Result<Generated> {
    let fleet = fleet(spec);
    let hours: Vec<i64> = (0..spec.end.unix_hours() - spec.first.unix_hours())
        .filter(|offset| !skipped.contains(offset))
        .collect();
    let results: Vec<anyhow::Result<(u64, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let fleet = &fleet;
                let hours = &hours;
                scope.spawn(move || -> anyhow::Result<(u64, u64)> {
                    let (mut rows_written, mut bytes) = (0, 0);
                    for offset in hours.iter().copied().skip(worker).step_by(2) {
                        let hour = Hour::from_unix_hours(spec.first.unix_hours() + offset);
                        let rows: Vec<RollupRow> = fleet
                            .iter()
                            .filter_map(|r| hour_row(r, hour, offset))
                            .collect();
                        let key = hour_dir(Path::new(""), hour)
                            .join(file_name(source, 0, 0))
                            .to_string_lossy()
                            .into_owned();
                        let (encoded, written) = encode_rows(&rows, &key)?;
                        tally_rating::Lake::directory(lake).put(&key, encoded)?;
                        bytes += written.bytes;
                        rows_written += rows.len() as u64;
                    }
                    Ok((rows_written, bytes))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("generator thread"))
            .collect()
    });
    let mut generated = Generated {
        files: hours.len() as u64,
        accounts: spec.resources.div_ceil(RESOURCES_PER_ACCOUNT),
        ..Generated::default()
    };
    for result in results {
        let (rows, bytes) = result?;
        generated.rows += rows;
        generated.bytes += bytes;
    }
    Ok(generated)
}

/// The contracts file of the fleet: each account on its tariff.
pub fn contracts_json(spec: &MonthSpec) -> String {
    let accounts: Vec<String> = (0..spec.resources.div_ceil(RESOURCES_PER_ACCOUNT))
        .map(|account| {
            let tariff = ["hetzner-cloud", "vps-672", "centron", "trooper-ai"][account % 4];
            format!(r#"{{ "account_id": "acct-{account:06}", "tariff_id": "{tariff}" }}"#)
        })
        .collect();
    format!("{{ \"accounts\": [\n{}\n] }}\n", accounts.join(",\n"))
}
