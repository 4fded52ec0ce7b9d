//! A deterministic simulated fleet and the exact ground truth of what it emitted.
//!
//! The fleet covers every resource kind on each of the four reference tariffs (Trooper.ai
//! GPU servers, a 672-hour VPS provider, Hetzner Cloud, centron), with resources created
//! and deleted mid-month, state changes mid-hour, heavy and idle traffic, snapshots and a
//! server that exists for a single minute. The same [`FleetSpec`] always yields the same
//! samples, so a test can rebuild the truth instead of storing it.

use std::collections::{BTreeMap, HashMap};

use tally_model::{Hour, Minute, ResourceKind, ResourceState, Sample};

/// What fleet to simulate, over which minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSpec {
    pub seed: u64,
    /// First simulated minute.
    pub start: Minute,
    /// First minute after the simulation.
    pub end: Minute,
    /// Copies of the base fleet (about 60 resources each: 4 providers, every kind).
    pub scale: usize,
}

/// One simulated resource and its whole life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimResource {
    pub resource_id: String,
    pub account_id: String,
    pub tariff_id: &'static str,
    pub host: String,
    pub kind: ResourceKind,
    pub sku: &'static str,
    pub zone: &'static str,
    pub gpus: u16,
    pub labels: BTreeMap<String, String>,
    /// First minute of existence.
    pub created: Minute,
    /// First minute after deletion.
    pub deleted: Minute,
    /// `(from minute, state)`, sorted; the first entry is at `created`.
    pub states: Vec<(Minute, ResourceState)>,
    /// Mean bytes per minute: outbound external, outbound internal, inbound.
    pub traffic_per_minute: [u64; 3],
    pub size_bytes: u64,
    seed: u64,
}

/// The simulated fleet.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub spec: FleetSpec,
    pub resources: Vec<SimResource>,
}

/// What the simulator emitted for one resource in one hour, summed the simple way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruthHour {
    /// Minutes per state, indexed by [`ResourceState::index`].
    pub minutes: [u32; ResourceState::COUNT],
    pub out_external_bytes: u64,
    pub out_internal_bytes: u64,
    pub in_bytes: u64,
    pub size_byte_minutes: u64,
    pub samples: u32,
}

/// The exact usage a fleet produced, per `(resource_id, hour)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroundTruth {
    pub hours: BTreeMap<(String, Hour), TruthHour>,
}

impl GroundTruth {
    pub fn record(&mut self, sample: &Sample) {
        let hour = self
            .hours
            .entry((sample.resource_id.clone(), sample.minute.hour()))
            .or_default();
        hour.minutes[sample.state.index()] += 1;
        hour.out_external_bytes += sample.out_external_bytes;
        hour.out_internal_bytes += sample.out_internal_bytes;
        hour.in_bytes += sample.in_bytes;
        hour.size_byte_minutes += sample.size_bytes;
        hour.samples += 1;
    }

    /// Everything summed: a one-line check before the per-hour comparison.
    pub fn totals(&self) -> TruthHour {
        self.hours
            .values()
            .fold(TruthHour::default(), |mut total, hour| {
                for (sum, minutes) in total.minutes.iter_mut().zip(hour.minutes) {
                    *sum += minutes;
                }
                total.out_external_bytes += hour.out_external_bytes;
                total.out_internal_bytes += hour.out_internal_bytes;
                total.in_bytes += hour.in_bytes;
                total.size_byte_minutes += hour.size_byte_minutes;
                total.samples += hour.samples;
                total
            })
    }
}

/// splitmix64: a tiny, well-mixed deterministic generator (no dependency, same on every
/// platform), used both as a sequence and as a hash of (seed, resource, minute).
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }

    /// Uniform in `low..high` (`high > low`).
    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low).max(1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One line of the base fleet: how many resources of a product, and how they behave.
struct Product {
    tariff_id: &'static str,
    kind: ResourceKind,
    sku: &'static str,
    count: usize,
    gpus: u16,
    os: Option<&'static str>,
    zone: &'static str,
    /// Mean outbound external bytes per minute.
    egress_per_minute: u64,
    size_bytes: u64,
    /// Whether stop (and freeze) episodes happen.
    power_cycles: bool,
}

const GIB: u64 = 1 << 30;
const MB: u64 = 1_000_000;

#[allow(clippy::too_many_arguments)]
const fn product(
    tariff_id: &'static str,
    kind: ResourceKind,
    sku: &'static str,
    count: usize,
    gpus: u16,
    os: Option<&'static str>,
    zone: &'static str,
    egress_per_minute: u64,
    size_bytes: u64,
) -> Product {
    Product {
        tariff_id,
        kind,
        sku,
        count,
        gpus,
        os,
        zone,
        egress_per_minute,
        size_bytes,
        power_cycles: matches!(kind, ResourceKind::Server | ResourceKind::GpuServer),
    }
}

use ResourceKind::{Addon, GpuServer, Ip, Server, Snapshot};

/// The base fleet. Egress rates are chosen so some resources stay inside their included
/// traffic and some exceed it (560 MB/min is about 25 TB a month).
const BASE_FLEET: &[Product] = &[
    product(
        "trooper-ai",
        GpuServer,
        "erkunder-a4000",
        1,
        1,
        None,
        "de-fra",
        20 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "novadrive-v100",
        1,
        2,
        None,
        "de-fra",
        50 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "eroberer-4070tis",
        1,
        1,
        None,
        "de-fra",
        10 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "sparbox-3090",
        1,
        2,
        None,
        "de-fra",
        5 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "novatesla-v100-32",
        1,
        1,
        None,
        "de-fra",
        30 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "powerai-4090",
        1,
        4,
        None,
        "de-fra",
        560 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "darkrock-5090",
        1,
        1,
        None,
        "de-fra",
        150 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "stellarai-4090-48",
        1,
        2,
        None,
        "de-fra",
        40 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "infinityai-a100",
        1,
        8,
        None,
        "de-fra",
        300 * MB,
        0,
    ),
    product(
        "trooper-ai",
        GpuServer,
        "infinityai-a100",
        1,
        1,
        None,
        "de-fra",
        10 * MB,
        0,
    ),
    product("vps-672", Server, "vps-s", 4, 0, None, "nbg", 10 * MB, 0),
    product("vps-672", Server, "vps-m", 3, 0, None, "nbg", 60 * MB, 0),
    product(
        "vps-672",
        Snapshot,
        "snapshot",
        3,
        0,
        None,
        "nbg",
        0,
        40 * GIB,
    ),
    product(
        "hetzner-cloud",
        Server,
        "cx22",
        4,
        0,
        None,
        "fsn1",
        100 * MB,
        0,
    ),
    product(
        "hetzner-cloud",
        Server,
        "cx32",
        3,
        0,
        None,
        "nbg1",
        520 * MB,
        0,
    ),
    product(
        "hetzner-cloud",
        Ip,
        "primary-ipv4",
        5,
        0,
        None,
        "fsn1",
        0,
        0,
    ),
    product(
        "hetzner-cloud",
        Ip,
        "primary-ipv6",
        5,
        0,
        None,
        "fsn1",
        0,
        0,
    ),
    product(
        "hetzner-cloud",
        Ip,
        "floating-ipv4",
        2,
        0,
        None,
        "fsn1",
        0,
        0,
    ),
    product(
        "hetzner-cloud",
        Snapshot,
        "snapshot",
        2,
        0,
        None,
        "fsn1",
        0,
        25 * GIB,
    ),
    product(
        "centron",
        Server,
        "c2m4",
        3,
        0,
        Some("linux"),
        "de-ham",
        5 * MB,
        0,
    ),
    product(
        "centron",
        Server,
        "c2m4",
        2,
        0,
        Some("windows"),
        "de-ham",
        5 * MB,
        0,
    ),
    product(
        "centron",
        Server,
        "c4m8",
        2,
        0,
        Some("linux"),
        "de-ham",
        15 * MB,
        0,
    ),
    product(
        "centron",
        GpuServer,
        "gpu-a100",
        2,
        1,
        Some("linux"),
        "de-ham",
        20 * MB,
        0,
    ),
    product("centron", Addon, "ha-feature", 2, 0, None, "de-ham", 0, 0),
    product("centron", Addon, "cprotect", 2, 0, None, "de-ham", 0, 0),
    product("centron", Ip, "extra-ipv4", 2, 0, None, "de-ham", 0, 0),
];

const HOSTS_PER_COPY: usize = 4;

impl Fleet {
    /// Builds the fleet of `spec`: the same spec always gives the same fleet.
    pub fn generate(spec: FleetSpec) -> Self {
        let mut rng = Rng(spec.seed);
        let span = (spec.end.unix_minutes() - spec.start.unix_minutes()).max(1);
        let mut resources = Vec::new();
        for copy in 0..spec.scale {
            let mut serial = 0usize;
            for product in BASE_FLEET {
                for _ in 0..product.count {
                    serial += 1;
                    let resource_seed = rng.next();
                    let provider = product.tariff_id.split('-').next().unwrap_or("acct");
                    let account_id = format!("{provider}-{copy}-{}", ["a", "b"][serial % 2]);
                    let (created, deleted) = lifetime(&mut rng, spec.start, span);
                    let states = state_schedule(&mut rng, product, created, deleted);
                    let egress = product.egress_per_minute;
                    let mut labels = BTreeMap::new();
                    if let Some(os) = product.os {
                        labels.insert("os".to_owned(), os.to_owned());
                    }
                    resources.push(SimResource {
                        resource_id: format!("{}-{copy}-{serial:03}", product.sku),
                        account_id,
                        tariff_id: product.tariff_id,
                        host: format!("hv-{copy}-{}", serial % HOSTS_PER_COPY),
                        kind: product.kind,
                        sku: product.sku,
                        zone: product.zone,
                        gpus: product.gpus,
                        labels,
                        created,
                        deleted,
                        states,
                        traffic_per_minute: [egress, egress / 4, egress / 2],
                        size_bytes: product.size_bytes + (rng.next() % 8) * product.size_bytes / 8,
                        seed: resource_seed,
                    });
                }
            }
            // The shortest life a resource can have: one minute (an edge case for rating).
            let minute = spec.start.plus(span / 3);
            resources.push(SimResource {
                resource_id: format!("cx22-{copy}-one-minute"),
                account_id: format!("hetzner-{copy}-a"),
                tariff_id: "hetzner-cloud",
                host: format!("hv-{copy}-0"),
                kind: Server,
                sku: "cx22",
                zone: "fsn1",
                gpus: 0,
                labels: BTreeMap::new(),
                created: minute,
                deleted: minute.plus(1),
                states: vec![(minute, ResourceState::Running)],
                traffic_per_minute: [MB, 0, 0],
                size_bytes: 0,
                seed: rng.next(),
            });
        }
        Self { spec, resources }
    }

    /// Every account and the tariff it is billed on, sorted by account.
    pub fn contracts(&self) -> Vec<(String, &'static str)> {
        let accounts: BTreeMap<String, &'static str> = self
            .resources
            .iter()
            .map(|resource| (resource.account_id.clone(), resource.tariff_id))
            .collect();
        accounts.into_iter().collect()
    }

    /// Appends the samples of `minute` (one per resource alive then) to `out`.
    pub fn samples_at(&self, minute: Minute, out: &mut Vec<Sample>) {
        for resource in &self.resources {
            if let Some(sample) = resource.sample_at(minute) {
                out.push(sample);
            }
        }
    }

    /// Every sample of the simulation, minute by minute, in `chunk_minutes` slices.
    pub fn chunks(&self, chunk_minutes: i64) -> impl Iterator<Item = Vec<Sample>> + '_ {
        let (start, end) = (self.spec.start.unix_minutes(), self.spec.end.unix_minutes());
        (start..end)
            .step_by(chunk_minutes.max(1) as usize)
            .map(move |first| {
                let mut samples = Vec::new();
                for minute in first..(first + chunk_minutes).min(end) {
                    self.samples_at(Minute::from_unix_minutes(minute), &mut samples);
                }
                samples
            })
    }

    /// The ground truth of the whole simulation.
    pub fn ground_truth(&self) -> GroundTruth {
        let mut truth = GroundTruth::default();
        for chunk in self.chunks(60) {
            chunk.iter().for_each(|sample| truth.record(sample));
        }
        truth
    }

    /// Resources by id, for tests that look one up.
    pub fn by_id(&self) -> HashMap<&str, &SimResource> {
        self.resources
            .iter()
            .map(|resource| (resource.resource_id.as_str(), resource))
            .collect()
    }
}

impl SimResource {
    pub fn state_at(&self, minute: Minute) -> Option<ResourceState> {
        if minute < self.created || minute >= self.deleted {
            return None;
        }
        let index = self.states.partition_point(|(from, _)| *from <= minute);
        self.states
            .get(index.checked_sub(1)?)
            .map(|(_, state)| *state)
    }

    /// This resource's sample for `minute`, if it existed then.
    pub fn sample_at(&self, minute: Minute) -> Option<Sample> {
        let state = self.state_at(minute)?;
        // Traffic varies minute by minute between 0 and twice the mean; a stopped or
        // frozen server sends nothing.
        let noise = mix(self.seed ^ minute.unix_minutes() as u64) % 2001;
        let flowing = matches!(state, ResourceState::Running);
        let bytes = |mean: u64| if flowing { mean * noise / 1000 } else { 0 };
        Some(Sample {
            minute,
            host: self.host.clone(),
            account_id: self.account_id.clone(),
            resource_id: self.resource_id.clone(),
            kind: self.kind,
            sku: self.sku.to_owned(),
            zone: self.zone.to_owned(),
            state,
            gpus: self.gpus,
            out_external_bytes: bytes(self.traffic_per_minute[0]),
            out_internal_bytes: bytes(self.traffic_per_minute[1]),
            in_bytes: bytes(self.traffic_per_minute[2]),
            size_bytes: self.size_bytes,
            labels: self.labels.clone(),
        })
    }
}

/// Most resources live through the whole span; some are created in its first half or
/// deleted in its second, at an arbitrary minute (so mid-hour too).
fn lifetime(rng: &mut Rng, start: Minute, span: i64) -> (Minute, Minute) {
    let created = if rng.chance(25) {
        start.plus(rng.between(1, span / 2))
    } else {
        start
    };
    let deleted = if rng.chance(25) {
        start.plus(rng.between(span / 2 + 1, span))
    } else {
        start.plus(span)
    };
    (created, deleted)
}

/// Servers run, with a few stop episodes (30 minutes to 3 days) starting mid-hour; GPU
/// servers are sometimes frozen after a stop. Everything else is `active`.
fn state_schedule(
    rng: &mut Rng,
    product: &Product,
    created: Minute,
    deleted: Minute,
) -> Vec<(Minute, ResourceState)> {
    if !product.power_cycles {
        return vec![(created, ResourceState::Active)];
    }
    let mut states = vec![(created, ResourceState::Running)];
    let life = deleted.unix_minutes() - created.unix_minutes();
    let episodes = if life > 240 { rng.next() % 4 } else { 0 };
    let mut cursor = created;
    for episode in 0..episodes {
        let slot = life / episodes as i64;
        let stop = created.plus(episode as i64 * slot + rng.between(1, slot / 2));
        if stop <= cursor {
            continue;
        }
        let stopped_for = rng.between(30, 3 * 24 * 60).min(slot / 2 - 1).max(1);
        states.push((stop, ResourceState::Stopped));
        let mut resume = stop.plus(stopped_for);
        if product.kind == ResourceKind::GpuServer && rng.chance(50) {
            let frozen_at = stop.plus(stopped_for / 2 + 1);
            if frozen_at < resume {
                states.push((frozen_at, ResourceState::Frozen));
            }
            resume = resume.plus(17);
        }
        states.push((resume, ResourceState::Running));
        cursor = resume;
    }
    states.retain(|(from, _)| *from < deleted);
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn october() -> FleetSpec {
        FleetSpec {
            seed: 7,
            start: "2026-09-30T22:00:00Z".parse().expect("minute"),
            end: "2026-10-31T23:00:00Z".parse().expect("minute"),
            scale: 1,
        }
    }

    #[test]
    fn the_same_spec_gives_the_same_fleet() {
        let first = Fleet::generate(october());
        let second = Fleet::generate(october());
        assert_eq!(first.resources, second.resources);
        let minute = october().start.plus(12_345);
        let mut a = Vec::new();
        let mut b = Vec::new();
        first.samples_at(minute, &mut a);
        second.samples_at(minute, &mut b);
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }

    #[test]
    fn the_fleet_covers_every_kind_on_every_tariff() {
        let fleet = Fleet::generate(october());
        for kind in [Server, GpuServer, Ip, Snapshot, Addon] {
            assert!(
                fleet.resources.iter().any(|r| r.kind == kind),
                "{kind} missing"
            );
        }
        let tariffs: std::collections::BTreeSet<_> = fleet
            .contracts()
            .into_iter()
            .map(|(_, tariff)| tariff)
            .collect();
        assert_eq!(tariffs.len(), 4);
        let states: std::collections::BTreeSet<_> = fleet
            .resources
            .iter()
            .flat_map(|r| r.states.iter().map(|(_, state)| *state))
            .collect();
        assert_eq!(states.len(), ResourceState::COUNT, "every state occurs");
    }

    #[test]
    fn ground_truth_counts_one_sample_per_resource_minute() {
        let mut spec = october();
        spec.end = spec.start.plus(3 * 60);
        let fleet = Fleet::generate(spec.clone());
        let truth = fleet.ground_truth();
        let expected: u32 = fleet
            .resources
            .iter()
            .map(|resource| {
                (spec.start.unix_minutes()..spec.end.unix_minutes())
                    .filter(|m| resource.state_at(Minute::from_unix_minutes(*m)).is_some())
                    .count() as u32
            })
            .sum();
        assert_eq!(truth.totals().samples, expected);
        assert_eq!(truth.totals().minutes.iter().sum::<u32>(), expected);
    }
}
