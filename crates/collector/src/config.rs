//! The agent's configuration file (TOML), validated once at start-up.
//!
//! `docker/collect.sample.toml` is a commented example of every setting. Unknown keys are
//! errors (a typo must not silently fall back to a default), and every error names the
//! file, and the line where TOML can tell it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_model::Minute;
use tally_model::wire::Encoding;

use crate::ship::ShipConfig;
use crate::spool::SpoolConfig;
use crate::traffic::{TrafficClassifier, TrafficConfig};

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Stamped on every sample; default: the machine's host name.
    pub host: Option<String>,
    pub source: SourceConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub traffic: TrafficConfig,
    pub spool: SpoolSection,
    pub kafka: KafkaSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// Where samples come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Domains polled through libvirt (needs the `libvirt` build feature).
    Libvirt {
        /// A libvirt connection URI (`qemu:///system`).
        uri: String,
    },
    /// The deterministic fleet simulator, for demos and load.
    Simulator {
        /// How many resources (rounded up to whole copies of the simulator's ~60).
        resources: usize,
        #[serde(default)]
        seed: u64,
        /// The simulated span: resources are created and deleted within it.
        from: Minute,
        to: Minute,
        /// Agent minutes per real minute: > 1 runs hours of sampling in seconds, from
        /// `from` on (demos and tests; only the simulator may, as only it can tell any
        /// minute's state).
        #[serde(default = "default_speed")]
        speed: u32,
        /// The agent's clock reads this many seconds off the machine's (negative: behind),
        /// as on a host whose clock is wrong: for tests of how the aggregator judges
        /// late and early samples. Only at `speed = 1`.
        #[serde(default)]
        clock_offset_seconds: i64,
    },
    /// NDJSON samples appended to a file by another process; `-` is stdin.
    File { path: PathBuf },
}

const fn default_speed() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Missed minutes caught up after a stall (the agent stopped, the host overloaded, the
    /// clock jumped ahead); minutes further back are reported as a gap, never invented.
    #[serde(default = "default_max_catch_up_minutes")]
    pub max_catch_up_minutes: u32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            max_catch_up_minutes: default_max_catch_up_minutes(),
        }
    }
}

/// Ten minutes: longer than any stall of a healthy host, short enough that the state
/// read now still stands for what the resource did then.
const fn default_max_catch_up_minutes() -> u32 {
    10
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    pub dir: PathBuf,
    /// The spool's bound: at it, the oldest samples are kept and new ones refused, loudly.
    #[serde(default = "default_max_mib")]
    pub max_mib: u64,
    #[serde(default = "default_segment_mib")]
    pub segment_mib: u64,
}

/// 1 GiB holds about a week of a 1,000-VM host's samples: a broker outage over a long
/// weekend is bridged.
const fn default_max_mib() -> u64 {
    1024
}

const fn default_segment_mib() -> u64 {
    64
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub encoding: WireEncoding,
    #[serde(default = "default_max_batch_samples")]
    pub max_batch_samples: usize,
    /// Any librdkafka setting, passed through last (TLS, SASL/SCRAM, batching).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// This host's signing key (a file holding its seed as 64 hex digits, from `tally
    /// keygen`): every message is signed, for aggregators that check a keyring.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
}

fn default_topic() -> String {
    "tally.samples".to_owned()
}

const fn default_max_batch_samples() -> usize {
    4096
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireEncoding {
    /// Arrow IPC batches: the compact default.
    #[default]
    Arrow,
    Json,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to serve Prometheus metrics (`127.0.0.1:9464`); none when absent.
    pub listen: Option<String>,
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub host: String,
    pub source: SourceConfig,
    pub max_catch_up_minutes: u32,
    pub traffic: TrafficClassifier,
    pub spool: SpoolConfig,
    pub ship: ShipConfig,
    pub metrics_listen: Option<SocketAddr>,
    /// The simulator's fast clock: agent time runs `speed` times faster from `from` on.
    pub fast_clock: Option<FastClock>,
    /// The simulator's skewed clock: agent time is the machine's plus this many seconds.
    pub clock_offset_seconds: i64,
}

/// Agent time = `from` + (real time − `from`) × `speed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastClock {
    pub from: DateTime<Utc>,
    pub speed: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration {path}: {detail}")]
    Invalid { path: String, detail: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`, naming it `origin` in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |detail: String| ConfigError::Invalid {
            path: origin.to_owned(),
            detail,
        };
        // toml's message names the line and column and shows the offending line.
        let file: ConfigFile = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
        let host = match file.host {
            Some(host) => host,
            None => machine_host_name().ok_or_else(|| {
                invalid("`host` is not set and the machine's host name cannot be read".into())
            })?,
        };
        if host.trim().is_empty() {
            return Err(invalid("`host` is empty".into()));
        }
        let mut fast_clock = None;
        let mut clock_offset_seconds = 0;
        match &file.source {
            SourceConfig::Simulator {
                resources,
                from,
                to,
                speed,
                clock_offset_seconds: offset,
                ..
            } => {
                if *resources == 0 {
                    return Err(invalid("source.resources must be at least 1".into()));
                }
                if to <= from {
                    return Err(invalid(format!(
                        "source.to ({to}) must come after source.from ({from})"
                    )));
                }
                if *speed == 0 {
                    return Err(invalid("source.speed must be at least 1".into()));
                }
                if *speed > 1 && *offset != 0 {
                    return Err(invalid(
                        "source.clock_offset_seconds skews a clock that runs at speed 1: \
                         drop source.speed or the offset"
                            .into(),
                    ));
                }
                clock_offset_seconds = *offset;
                if *speed > 1 {
                    fast_clock = Some(FastClock {
                        from: from.to_datetime(),
                        speed: *speed,
                    });
                }
            }
            SourceConfig::Libvirt { uri } => {
                if !cfg!(feature = "libvirt") {
                    return Err(invalid(format!(
                        "source.kind = \"libvirt\" ({uri}) needs a tally built with the \
                         `libvirt` feature (cargo build --release -p tally --features libvirt)"
                    )));
                }
            }
            SourceConfig::File { path } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("source.path is empty (use \"-\" for stdin)".into()));
                }
            }
        }
        let traffic =
            TrafficClassifier::new(&file.traffic).map_err(|error| invalid(error.to_string()))?;
        if file.spool.segment_mib == 0 || file.spool.max_mib < file.spool.segment_mib * 2 {
            return Err(invalid(format!(
                "spool.max_mib ({}) must hold at least two segments of spool.segment_mib ({})",
                file.spool.max_mib, file.spool.segment_mib
            )));
        }
        let mut spool = SpoolConfig::new(file.spool.dir);
        spool.max_bytes = file.spool.max_mib << 20;
        spool.segment_bytes = file.spool.segment_mib << 20;
        if file.kafka.brokers.trim().is_empty() || file.kafka.topic.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers and kafka.topic must not be empty".into(),
            ));
        }
        if file.kafka.max_batch_samples == 0 {
            return Err(invalid("kafka.max_batch_samples must be at least 1".into()));
        }
        let mut ship = ShipConfig::new(file.kafka.brokers, file.kafka.topic);
        ship.encoding = match file.kafka.encoding {
            WireEncoding::Arrow => Encoding::Arrow,
            WireEncoding::Json => Encoding::Json,
        };
        ship.max_batch_samples = file.kafka.max_batch_samples;
        ship.librdkafka = file.kafka.librdkafka;
        if let Some(path) = &file.kafka.signing_key {
            let seed = std::fs::read_to_string(path).map_err(|error| {
                invalid(format!("kafka.signing_key {}: {error}", path.display()))
            })?;
            let key =
                tally_model::signing::HostKey::from_seed_hex(&host, &seed).map_err(|error| {
                    invalid(format!("kafka.signing_key {}: {error}", path.display()))
                })?;
            ship.signing = Some(std::sync::Arc::new(key));
        }
        let metrics_listen = file
            .metrics
            .listen
            .map(|listen| {
                listen.parse::<SocketAddr>().map_err(|error| {
                    invalid(format!(
                        "metrics.listen '{listen}' is not an address:port: {error}"
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            host,
            source: file.source,
            max_catch_up_minutes: file.schedule.max_catch_up_minutes,
            traffic,
            spool,
            ship,
            metrics_listen,
            fast_clock,
            clock_offset_seconds,
        })
    }
}

fn machine_host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULATOR: &str = r#"
        host = "hv-1"
        [source]
        kind = "simulator"
        resources = 1000
        from = "2026-11-01T00:00:00Z"
        to = "2026-12-01T00:00:00Z"
        [spool]
        dir = "/var/lib/tally/spool"
        [kafka]
        brokers = "127.0.0.1:9092"
        [kafka.librdkafka]
        "security.protocol" = "SASL_SSL"
        [traffic]
        networks = { public = "external", private = "internal" }
    "#;

    #[test]
    fn a_valid_file_gives_defaults_where_it_is_silent() {
        let config = AgentConfig::parse(SIMULATOR, "collect.toml").expect("valid");
        assert_eq!(config.host, "hv-1");
        assert_eq!(config.max_catch_up_minutes, 10);
        assert_eq!(config.ship.topic, "tally.samples");
        assert_eq!(config.ship.encoding, Encoding::Arrow);
        assert_eq!(config.ship.librdkafka["security.protocol"], "SASL_SSL");
        assert_eq!(config.spool.max_bytes, 1 << 30);
        assert_eq!(config.fast_clock, None);
        assert_eq!(config.metrics_listen, None);
    }

    #[test]
    fn a_typo_is_an_error_naming_the_file_line_and_key() {
        let text = SIMULATOR.replace("[spool]\n", "[spool]\n        max_mb = 5\n");
        let error = AgentConfig::parse(&text, "collect.toml").expect_err("unknown key");
        let message = error.to_string();
        assert!(
            message.starts_with("configuration collect.toml: "),
            "{message}"
        );
        assert!(message.contains("max_mb"), "{message}");
        assert!(message.contains("line 9"), "{message}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                SIMULATOR.replace("resources = 1000", "resources = 0"),
                "source.resources must be at least 1",
            ),
            (
                SIMULATOR.replace(
                    "to = \"2026-12-01T00:00:00Z\"",
                    "to = \"2026-10-01T00:00:00Z\"",
                ),
                "must come after source.from",
            ),
            (
                SIMULATOR.replace("[spool]\n", "[spool]\n        max_mib = 64\n"),
                "must hold at least two segments",
            ),
            (
                SIMULATOR.replace(
                    "[traffic]\n",
                    "[traffic]\n        services = [\"10.0.0.0/40\"]\n",
                ),
                "traffic.services: '10.0.0.0/40'",
            ),
            (
                SIMULATOR.replace("host = \"hv-1\"", "host = \" \""),
                "`host` is empty",
            ),
            (
                format!("{SIMULATOR}\n[metrics]\nlisten = \"localhost\"\n"),
                "metrics.listen 'localhost' is not an address:port",
            ),
        ];
        for (text, expected) in cases {
            let message = AgentConfig::parse(&text, "collect.toml")
                .expect_err(expected)
                .to_string();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn a_signing_key_signs_as_the_host_and_a_bad_one_is_named() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("host.key");
        let key = tally_model::signing::HostKey::from_seed("any", [4; 32]);
        std::fs::write(&path, format!("{}\n", key.seed_hex())).expect("key");
        let text = SIMULATOR.replace(
            "[kafka]\n",
            &format!("[kafka]\n        signing_key = \"{}\"\n", path.display()),
        );
        let config = AgentConfig::parse(&text, "collect.toml").expect("valid");
        let signing = config.ship.signing.expect("signing key");
        assert_eq!(signing.host(), "hv-1");
        assert_eq!(signing.public_hex(), key.public_hex());
        std::fs::write(&path, "not hex").expect("key");
        let error = AgentConfig::parse(&text, "collect.toml").expect_err("bad key");
        assert!(error.to_string().contains("kafka.signing_key"), "{error}");
    }

    #[test]
    fn only_the_simulator_runs_a_fast_clock() {
        let text = SIMULATOR.replace("resources = 1000", "resources = 10\n        speed = 600");
        let config = AgentConfig::parse(&text, "collect.toml").expect("valid");
        assert_eq!(
            config.fast_clock,
            Some(FastClock {
                from: "2026-11-01T00:00:00Z".parse().expect("time"),
                speed: 600
            })
        );
        let file = r#"
            [source]
            kind = "file"
            path = "-"
            speed = 600
            [spool]
            dir = "/tmp/s"
            [kafka]
            brokers = "b:9092"
        "#;
        let message = AgentConfig::parse(file, "collect.toml")
            .expect_err("speed is the simulator's")
            .to_string();
        assert!(message.contains("speed"), "{message}");
    }

    #[test]
    fn a_simulated_host_may_run_a_skewed_clock_but_not_a_fast_one_too() {
        let text = SIMULATOR.replace(
            "resources = 1000",
            "resources = 10\n        clock_offset_seconds = -600",
        );
        let config = AgentConfig::parse(&text, "collect.toml").expect("valid");
        assert_eq!(
            (config.clock_offset_seconds, config.fast_clock),
            (-600, None)
        );
        let both = text.replace("resources = 10", "resources = 10\n        speed = 60");
        let message = AgentConfig::parse(&both, "collect.toml")
            .expect_err("a skewed clock at speed 60")
            .to_string();
        assert!(message.contains("clock_offset_seconds"), "{message}");
    }
}
