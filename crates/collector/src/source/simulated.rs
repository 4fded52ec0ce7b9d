//! The fleet simulator as a source: its resources shown the way a hypervisor shows them.
//!
//! Each running resource has two interfaces, `eth0` on network `public` (external traffic
//! out, all traffic in) and `eth1` on network `private` (internal traffic out), whose
//! cumulative counters add up the simulator's per-minute bytes and start again from zero
//! at every boot (a stopped → running change); the boot minute is the incarnation. So the
//! simulator exercises the same counters and traffic stages as libvirt, and what the agent
//! makes of it can be checked against the simulator's exact ground truth.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tally_model::{Minute, ResourceState};

use super::{InterfaceCounters, Observation, Reading, Source, SourceError};
use crate::simulator::Fleet;

/// The networks of the simulated interfaces, to map in the traffic configuration.
pub const PUBLIC_NETWORK: &str = "public";
pub const PRIVATE_NETWORK: &str = "private";

/// A simulated fleet seen from one host.
pub struct SimulatedSource {
    fleet: Fleet,
    counters: HashMap<String, Counters>,
}

/// A resource's counters since its last boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    booted: i64,
    public_sent: u64,
    private_sent: u64,
    received: u64,
    /// The last minute added, so a minute observed twice is not added twice.
    through: i64,
}

impl SimulatedSource {
    pub fn new(fleet: Fleet) -> Self {
        Self {
            fleet,
            counters: HashMap::new(),
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

impl Source for SimulatedSource {
    fn observe(&mut self, minute: Minute) -> Result<Vec<Observation>, SourceError> {
        let mut observations = Vec::with_capacity(self.fleet.resources.len());
        for resource in &self.fleet.resources {
            let Some(sample) = resource.sample_at(minute) else {
                self.counters.remove(&resource.resource_id);
                continue;
            };
            let running = sample.state == ResourceState::Running;
            let mut interfaces = Vec::new();
            let mut incarnation = 0;
            if running {
                let counters =
                    self.counters
                        .entry(resource.resource_id.clone())
                        .or_insert(Counters {
                            booted: minute.unix_minutes(),
                            through: minute.unix_minutes() - 1,
                            ..Counters::default()
                        });
                if counters.through < minute.unix_minutes() {
                    counters.public_sent += sample.out_external_bytes;
                    counters.private_sent += sample.out_internal_bytes;
                    counters.received += sample.in_bytes;
                    counters.through = minute.unix_minutes();
                }
                incarnation = counters.booted as u64;
                interfaces = vec![
                    InterfaceCounters {
                        device: "eth0".to_owned(),
                        attachment: PUBLIC_NETWORK.to_owned(),
                        sent_bytes: counters.public_sent,
                        received_bytes: counters.received,
                    },
                    InterfaceCounters {
                        device: "eth1".to_owned(),
                        attachment: PRIVATE_NETWORK.to_owned(),
                        sent_bytes: counters.private_sent,
                        received_bytes: 0,
                    },
                ];
            } else {
                // Stopped: the interfaces are gone, and the next boot starts from zero.
                self.counters.remove(&resource.resource_id);
            }
            observations.push(Observation::Reading(Reading {
                resource_id: sample.resource_id,
                account_id: sample.account_id,
                kind: sample.kind,
                sku: sample.sku,
                zone: sample.zone,
                state: sample.state,
                gpus: sample.gpus,
                size_bytes: sample.size_bytes,
                labels: sample.labels,
                incarnation,
                interfaces,
            }));
        }
        Ok(observations)
    }

    fn name(&self) -> &'static str {
        "simulator"
    }

    fn checkpoint(&self) -> serde_json::Value {
        serde_json::to_value(&self.counters).unwrap_or_default()
    }

    fn restore(&mut self, checkpoint: serde_json::Value) -> Result<(), SourceError> {
        self.counters = serde_json::from_value(checkpoint).map_err(|error| {
            SourceError::Other(format!("the simulator's checkpoint does not read: {error}"))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::FleetSpec;

    #[test]
    fn counters_add_up_the_simulators_bytes_and_restart_at_boot() {
        let start: Minute = "2026-11-01T00:00:00Z".parse().expect("minute");
        let fleet = Fleet::generate(FleetSpec {
            seed: 3,
            start,
            end: start.plus(7 * 24 * 60),
            scale: 1,
        });
        let mut source = SimulatedSource::new(fleet.clone());
        // A server that stops and runs again within the week.
        let server = fleet
            .resources
            .iter()
            .find(|r| {
                r.states.len() > 2
                    && r.created == start
                    && r.states[1].1 == ResourceState::Stopped
                    && r.states[2].1 == ResourceState::Running
            })
            .expect("a server with a stop episode");
        let boot = server.states[2].0;
        let mut public_total = 0;
        for minute in (boot.unix_minutes() - 3)..(boot.unix_minutes() + 3) {
            let minute = Minute::from_unix_minutes(minute);
            let observations = source.observe(minute).expect("observes");
            let reading = observations
                .iter()
                .find_map(|o| match o {
                    Observation::Reading(r) if r.resource_id == server.resource_id => Some(r),
                    _ => None,
                })
                .expect("the server is seen");
            let truth = server.sample_at(minute).expect("alive");
            if minute < boot {
                assert_eq!(reading.state, ResourceState::Stopped);
                assert!(reading.interfaces.is_empty());
                continue;
            }
            public_total += truth.out_external_bytes;
            assert_eq!(reading.incarnation, boot.unix_minutes() as u64);
            assert_eq!(reading.interfaces[0].sent_bytes, public_total);
        }
    }
}
