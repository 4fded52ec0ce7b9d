//! Sample v1 (`schemas/sample.v1.schema.json`): every meter of one resource for one minute.
//!
//! A sample's identity is `(resource_id, minute)`: the aggregator counts it once however
//! often it arrives, with no time window.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::minute::Minute;

/// What a resource is. Tariffs price by kind and SKU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Server,
    GpuServer,
    Ip,
    Snapshot,
    Volume,
    Addon,
}

/// The state a resource was in during a minute. Resources without a power state (IPs,
/// snapshots, volumes, add-ons) are `active` for as long as they exist; a deleted
/// resource sends no samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    Running,
    Stopped,
    Frozen,
    Active,
}

/// One resource's meters for one UTC minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The minute this sample describes (not when it was sent), UTC, seconds zero.
    pub minute: Minute,
    /// The hypervisor host that measured it.
    pub host: String,
    /// The customer account that owns the resource.
    pub account_id: String,
    /// The resource's stable id; with `minute`, the sample's identity.
    pub resource_id: String,
    pub kind: ResourceKind,
    /// The product the resource is sold as (flavor, template, IP type, ...).
    pub sku: String,
    /// The network zone or location (for example `fsn1`, `eu-central`).
    pub zone: String,
    pub state: ResourceState,
    /// GPUs attached during the minute.
    #[serde(default)]
    pub gpus: u16,
    /// Bytes sent during the minute to destinations outside the provider's network zone.
    #[serde(default)]
    pub out_external_bytes: u64,
    /// Bytes sent during the minute within the zone or to the provider's own services.
    #[serde(default)]
    pub out_internal_bytes: u64,
    /// Bytes received during the minute.
    #[serde(default)]
    pub in_bytes: u64,
    /// Occupied size of a stored thing (snapshot, volume) during the minute.
    #[serde(default)]
    pub size_bytes: u64,
    /// Free-form labels (`os`, `project`, ...): tariffs may group lines by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::Server,
        ResourceKind::GpuServer,
        ResourceKind::Ip,
        ResourceKind::Snapshot,
        ResourceKind::Volume,
        ResourceKind::Addon,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Server => "server",
            ResourceKind::GpuServer => "gpu_server",
            ResourceKind::Ip => "ip",
            ResourceKind::Snapshot => "snapshot",
            ResourceKind::Volume => "volume",
            ResourceKind::Addon => "addon",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl ResourceState {
    /// Every state, in the order of the rollups' mask columns.
    pub const ALL: [ResourceState; 4] = [
        ResourceState::Running,
        ResourceState::Stopped,
        ResourceState::Frozen,
        ResourceState::Active,
    ];

    pub const COUNT: usize = Self::ALL.len();

    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceState::Running => "running",
            ResourceState::Stopped => "stopped",
            ResourceState::Frozen => "frozen",
            ResourceState::Active => "active",
        }
    }

    /// Position in [`ResourceState::ALL`] and in a rollup's masks.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Sample {
    /// The labels as one canonical text (a JSON object with sorted keys), the form rollups
    /// store and group by; empty when there are none.
    pub fn labels_text(&self) -> String {
        labels_to_text(&self.labels)
    }
}

/// Canonical text of a label set: `""` for none, else a JSON object with sorted keys.
pub fn labels_to_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    serde_json::to_string(labels).unwrap_or_default()
}

/// The inverse of [`labels_to_text`].
pub fn labels_from_text(text: &str) -> Result<BTreeMap<String, String>, serde_json::Error> {
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_indices_follow_the_mask_order() {
        for (position, state) in ResourceState::ALL.into_iter().enumerate() {
            assert_eq!(state.index(), position);
            assert_eq!(ResourceState::parse(state.as_str()), Some(state));
        }
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn labels_text_is_canonical() {
        let labels: BTreeMap<String, String> = [
            ("project".into(), "x".into()),
            ("os".into(), "linux".into()),
        ]
        .into();
        let text = labels_to_text(&labels);
        assert_eq!(text, r#"{"os":"linux","project":"x"}"#);
        assert_eq!(labels_from_text(&text).expect("round trip"), labels);
        assert_eq!(labels_to_text(&BTreeMap::new()), "");
    }
}
