//! Outbound bytes split into internal and external.
//!
//! The tariffs bill only outbound traffic leaving the provider's network zone (BILLING.md
//! H4: traffic to servers in the same zone or to the provider's own services is free;
//! traffic to another zone is outbound). A host counts traffic in one of two ways, and
//! the configuration says how each maps:
//!
//! - **per interface** (libvirt): an interface is attached to a network or bridge that
//!   carries one kind of traffic (`public` → external, `private` → internal). The
//!   `networks` map names them; an attachment it does not name is `unlisted` (external
//!   unless configured otherwise) and counted, so a forgotten network shows in metrics.
//! - **per destination** (a host that accounts by destination prefix): the attachment
//!   is an address or CIDR prefix. It is internal when it lies within the provider's
//!   services or within the ranges of the resource's own zone, else external.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// Whether outbound bytes are billed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficClass {
    /// Leaves the zone: billed as outbound traffic. The default for anything not known
    /// to stay inside (see `default_unlisted`).
    #[default]
    External,
    /// Stays in the zone or goes to the provider's services: free.
    Internal,
}

/// The `[traffic]` section of the agent's configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// What each libvirt network or bridge carries, by name.
    #[serde(default)]
    pub networks: BTreeMap<String, TrafficClass>,
    /// The class of an attachment `networks` does not name.
    #[serde(default = "default_unlisted")]
    pub unlisted: TrafficClass,
    /// The provider's address ranges by zone, for hosts that count per destination.
    #[serde(default)]
    pub zones: BTreeMap<String, Vec<String>>,
    /// Ranges of the provider's own services (mirrors, DNS, backup): internal from
    /// every zone.
    #[serde(default)]
    pub services: Vec<String>,
}

/// Anything not known to stay inside is billed: a network left out of the map shows in
/// `tally_collector_unlisted_attachment_bytes_total` rather than going free unnoticed.
const fn default_unlisted() -> TrafficClass {
    TrafficClass::External
}

/// A configuration value that is not an address prefix.
#[derive(Debug, thiserror::Error)]
#[error("traffic.{field}: '{value}' is not an IP address or CIDR prefix (like 10.0.0.0/16)")]
pub struct BadPrefix {
    pub field: String,
    pub value: String,
}

/// The validated traffic rules.
#[derive(Clone, Debug)]
pub struct TrafficClassifier {
    networks: BTreeMap<String, TrafficClass>,
    unlisted: TrafficClass,
    zones: BTreeMap<String, Vec<Prefix>>,
    services: Vec<Prefix>,
}

impl TrafficClassifier {
    pub fn new(config: &TrafficConfig) -> Result<Self, BadPrefix> {
        let parse_all = |field: String, texts: &[String]| {
            texts
                .iter()
                .map(|text| {
                    text.parse::<Prefix>().map_err(|()| BadPrefix {
                        field: field.clone(),
                        value: text.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut zones = BTreeMap::new();
        for (zone, texts) in &config.zones {
            zones.insert(zone.clone(), parse_all(format!("zones.{zone}"), texts)?);
        }
        Ok(Self {
            networks: config.networks.clone(),
            unlisted: config.unlisted,
            zones,
            services: parse_all("services".to_owned(), &config.services)?,
        })
    }

    /// How bytes a resource in `zone` sent through `attachment` are billed, and whether
    /// the rules named the attachment at all.
    pub fn classify(&self, zone: &str, attachment: &str) -> (TrafficClass, Listed) {
        if let Ok(destination) = attachment.parse::<Prefix>() {
            let inside = |prefixes: &[Prefix]| prefixes.iter().any(|p| p.contains(&destination));
            let same_zone = self.zones.get(zone).is_some_and(|ranges| inside(ranges));
            let class = if same_zone || inside(&self.services) {
                TrafficClass::Internal
            } else {
                TrafficClass::External
            };
            return (class, Listed::Yes);
        }
        match self.networks.get(attachment) {
            Some(class) => (*class, Listed::Yes),
            None => (self.unlisted, Listed::No),
        }
    }
}

/// Whether the configuration named an attachment or it fell to `unlisted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    Yes,
    No,
}

/// An IPv4 or IPv6 prefix; a bare address is a prefix of its full length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Prefix {
    /// IPv4 addresses are mapped into IPv6 (`::ffff:a.b.c.d`) so one comparison serves both.
    bits: u128,
    length: u32,
}

impl Prefix {
    /// Whether `other` lies wholly within this prefix.
    fn contains(&self, other: &Prefix) -> bool {
        other.length >= self.length && mask(self.length) & other.bits == self.bits
    }
}

fn mask(length: u32) -> u128 {
    u128::MAX.checked_shl(128 - length).unwrap_or(0)
}

impl FromStr for Prefix {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text, None),
        };
        let (bits, offset, full) = match address.parse::<IpAddr>().map_err(|_| ())? {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 0, 128),
        };
        let length = match length {
            Some(text) => text.parse::<u32>().map_err(|_| ())?,
            None => full,
        };
        if length > full {
            return Err(());
        }
        let length = length + offset;
        Ok(Self {
            bits: bits & mask(length),
            length,
        })
    }
}

impl fmt::Display for TrafficClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficClass::External => "external",
            TrafficClass::Internal => "internal",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> TrafficClassifier {
        let config: TrafficConfig = toml::from_str(
            r#"
            networks = { public = "external", private = "internal" }
            services = ["10.255.0.0/16", "2a01:4f8:ffff::/48"]
            [zones]
            fsn1 = ["10.0.0.0/16", "2a01:4f8:1::/48"]
            nbg1 = ["10.1.0.0/16"]
            "#,
        )
        .expect("valid config");
        TrafficClassifier::new(&config).expect("valid prefixes")
    }

    #[test]
    fn networks_map_by_name_and_unlisted_ones_are_billed_and_flagged() {
        let rules = classifier();
        assert_eq!(
            rules.classify("fsn1", "public"),
            (TrafficClass::External, Listed::Yes)
        );
        assert_eq!(
            rules.classify("fsn1", "private"),
            (TrafficClass::Internal, Listed::Yes)
        );
        assert_eq!(
            rules.classify("fsn1", "br-forgotten"),
            (TrafficClass::External, Listed::No)
        );
    }

    #[test]
    fn destinations_in_the_own_zone_or_services_are_internal_and_other_zones_external() {
        let rules = classifier();
        let class = |zone: &str, destination: &str| rules.classify(zone, destination).0;
        assert_eq!(class("fsn1", "10.0.3.4"), TrafficClass::Internal);
        assert_eq!(class("fsn1", "10.0.128.0/17"), TrafficClass::Internal);
        // H4: another zone of the same provider is outbound.
        assert_eq!(class("fsn1", "10.1.0.9"), TrafficClass::External);
        assert_eq!(class("nbg1", "10.1.0.9"), TrafficClass::Internal);
        assert_eq!(class("nbg1", "10.255.1.1"), TrafficClass::Internal);
        assert_eq!(class("fsn1", "8.8.8.8"), TrafficClass::External);
        // A prefix only partly inside a zone's range is not internal.
        assert_eq!(class("fsn1", "10.0.0.0/8"), TrafficClass::External);
        assert_eq!(class("fsn1", "2a01:4f8:1:2::1"), TrafficClass::Internal);
        assert_eq!(
            class("fsn1", "2a01:4f8:ffff:1::/64"),
            TrafficClass::Internal
        );
        assert_eq!(class("fsn1", "2a01:4f8:2::1"), TrafficClass::External);
        // An IPv4 address never matches an IPv6 range that happens to share bits.
        assert_eq!(class("fsn1", "0.0.0.1"), TrafficClass::External);
    }

    #[test]
    fn a_bad_prefix_is_named_with_its_field() {
        let config: TrafficConfig =
            toml::from_str("[zones]\nfsn1 = [\"10.0.0.0/33\"]").expect("parses");
        let error = TrafficClassifier::new(&config).expect_err("/33 is not an IPv4 prefix");
        assert_eq!(
            error.to_string(),
            "traffic.zones.fsn1: '10.0.0.0/33' is not an IP address or CIDR prefix (like 10.0.0.0/16)"
        );
    }
}
