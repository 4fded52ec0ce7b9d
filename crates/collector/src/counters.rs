//! Cumulative interface counters turned into per-minute deltas.
//!
//! A hypervisor reports bytes since the interface appeared; a sample carries the bytes of
//! one minute. The delta is the difference to the previous reading of the same device,
//! except:
//!
//! - **the first reading after the agent's first start primes**: the device has counted
//!   since some unknown moment, and its total is not one minute's traffic, so it becomes
//!   the baseline and the minute gets 0 from it;
//! - **a device first seen later counts from zero**: every domain is listed every
//!   minute, so a device the agent has not seen before started (or migrated in) since
//!   the last reading, and its whole count is new traffic;
//! - **a restart counts from zero**: a counter that went down, or a resource whose
//!   incarnation changed (libvirt's domain id changes at every start), started again
//!   from zero, so the new count is the traffic since the restart. Bytes sent between
//!   the last reading and the restart are unknowable; they are neither invented nor
//!   counted twice.
//!
//! The book of last readings is part of the agent's checkpoint, written in the same
//! fsync as the samples that used it, so a restarted agent carries on from exactly the
//! baseline its last spooled minute ended with: no priming, no gap, no double count.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::source::InterfaceCounters;

/// The last reading of every interface the agent knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterBook {
    /// Whether a reading has been taken before (by this agent or one it restored): until
    /// then, every device primes.
    primed: bool,
    /// By resource id, then device.
    devices: HashMap<String, HashMap<String, LastReading>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LastReading {
    incarnation: u64,
    sent: u64,
    received: u64,
    /// The round it was last seen in, so devices gone for good are forgotten.
    round: u64,
}

/// Bytes of one interface since its last reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceDelta {
    pub sent: u64,
    pub received: u64,
    pub how: DeltaKind,
}

/// How a delta was found, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeltaKind {
    /// The difference to the last reading.
    #[default]
    Counted,
    /// The first reading after the agent's first start: the baseline, 0 bytes.
    Primed,
    /// A device not seen before, counted from zero.
    New,
    /// The counter started again from zero (went down, or the resource restarted).
    Restarted,
}

/// A device not seen for this many rounds is forgotten (deleted domains, detached
/// interfaces); a domain that is back after that long counts from zero, as a new one.
const FORGET_AFTER_ROUNDS: u64 = 60;

impl CounterBook {
    /// The delta of `counters` on resource `resource_id` in `round` (any number that
    /// grows by one per reading round).
    pub fn delta(
        &mut self,
        resource_id: &str,
        incarnation: u64,
        counters: &InterfaceCounters,
        round: u64,
    ) -> InterfaceDelta {
        let now = LastReading {
            incarnation,
            sent: counters.sent_bytes,
            received: counters.received_bytes,
            round,
        };
        let resource = match self.devices.get_mut(resource_id) {
            Some(resource) => resource,
            None => self.devices.entry(resource_id.to_owned()).or_default(),
        };
        let last = match resource.get_mut(&counters.device) {
            Some(last) => Some(std::mem::replace(last, now)),
            None => resource.insert(counters.device.clone(), now),
        };
        match last {
            None if !self.primed => InterfaceDelta {
                how: DeltaKind::Primed,
                ..InterfaceDelta::default()
            },
            None => InterfaceDelta {
                sent: now.sent,
                received: now.received,
                how: DeltaKind::New,
            },
            Some(last)
                if last.incarnation != incarnation
                    || now.sent < last.sent
                    || now.received < last.received =>
            {
                InterfaceDelta {
                    sent: now.sent,
                    received: now.received,
                    how: DeltaKind::Restarted,
                }
            }
            Some(last) => InterfaceDelta {
                sent: now.sent - last.sent,
                received: now.received - last.received,
                how: DeltaKind::Counted,
            },
        }
    }

    /// Ends a reading round: later first sightings count from zero, and devices unseen
    /// for long are forgotten.
    pub fn end_round(&mut self, round: u64) {
        self.primed = true;
        self.devices.retain(|_, devices| {
            devices.retain(|_, last| round.saturating_sub(last.round) < FORGET_AFTER_ROUNDS);
            !devices.is_empty()
        });
    }

    pub fn devices(&self) -> usize {
        self.devices.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn counters(sent: u64, received: u64) -> InterfaceCounters {
        InterfaceCounters {
            device: "vnet0".to_owned(),
            attachment: "public".to_owned(),
            sent_bytes: sent,
            received_bytes: received,
        }
    }

    #[test]
    fn the_first_reading_after_the_first_start_primes_instead_of_billing_the_total() {
        let mut book = CounterBook::default();
        let first = book.delta("vm-1", 7, &counters(9_000_000_000, 5), 1);
        assert_eq!((first.sent, first.how), (0, DeltaKind::Primed));
        book.end_round(1);
        let second = book.delta("vm-1", 7, &counters(9_000_000_500, 9), 2);
        assert_eq!(
            (second.sent, second.received, second.how),
            (500, 4, DeltaKind::Counted)
        );
    }

    #[test]
    fn a_domain_started_after_the_first_round_counts_from_zero() {
        let mut book = CounterBook::default();
        book.delta("vm-1", 7, &counters(100, 0), 1);
        book.end_round(1);
        let new = book.delta("vm-2", 3, &counters(4_000, 10), 2);
        assert_eq!(
            (new.sent, new.received, new.how),
            (4_000, 10, DeltaKind::New)
        );
    }

    #[test]
    fn a_counter_reset_is_neither_negative_nor_doubled() {
        let mut book = CounterBook::default();
        book.delta("vm-1", 7, &counters(1_000, 1_000), 1);
        book.end_round(1);
        book.delta("vm-1", 7, &counters(1_600, 1_100), 2);
        book.end_round(2);
        // Rebooted: the counter went down; the new count is the traffic since.
        let reset = book.delta("vm-1", 7, &counters(250, 30), 3);
        assert_eq!(
            (reset.sent, reset.received, reset.how),
            (250, 30, DeltaKind::Restarted)
        );
        book.end_round(3);
        let after = book.delta("vm-1", 7, &counters(300, 40), 4);
        assert_eq!((after.sent, after.received), (50, 10));
    }

    #[test]
    fn a_restart_whose_new_count_already_passed_the_old_one_is_caught_by_the_incarnation() {
        let mut book = CounterBook::default();
        book.delta("vm-1", 7, &counters(1_000, 0), 1);
        book.end_round(1);
        let restarted = book.delta("vm-1", 8, &counters(5_000, 0), 2);
        assert_eq!(
            (restarted.sent, restarted.how),
            (5_000, DeltaKind::Restarted)
        );
    }

    #[test]
    fn a_restored_book_carries_on_without_priming() {
        let mut book = CounterBook::default();
        book.delta("vm-1", 7, &counters(1_000, 0), 1);
        book.end_round(1);
        let saved = serde_json::to_vec(&book).expect("serialises");
        let mut restored: CounterBook = serde_json::from_slice(&saved).expect("deserialises");
        assert_eq!(restored, book);
        let next = restored.delta("vm-1", 7, &counters(1_300, 0), 2);
        assert_eq!((next.sent, next.how), (300, DeltaKind::Counted));
    }

    #[test]
    fn devices_gone_for_an_hour_are_forgotten() {
        let mut book = CounterBook::default();
        book.delta("vm-gone", 1, &counters(1, 1), 1);
        book.end_round(1);
        for round in 2..=FORGET_AFTER_ROUNDS + 1 {
            book.delta("vm-1", 1, &counters(round, round), round);
            book.end_round(round);
        }
        assert_eq!(book.devices(), 1);
    }

    proptest! {
        /// Over any run of readings with resets, the deltas add up to the bytes the
        /// device really sent after its first reading: each reset's count is new bytes
        /// (a reset here happens just after a reading, so nothing is unknowable).
        #[test]
        fn deltas_add_up_to_the_bytes_sent_across_resets(
            steps in prop::collection::vec((0u64..1_000_000, any::<bool>()), 1..50),
        ) {
            let mut book = CounterBook::default();
            let (mut counter, mut incarnation, mut truth, mut counted) = (500u64, 1u64, 0u64, 0u64);
            book.delta("vm", incarnation, &counters(counter, 0), 0);
            book.end_round(0);
            for (round, (bytes, restart)) in steps.into_iter().enumerate() {
                if restart {
                    counter = 0;
                    incarnation += 1;
                }
                counter += bytes;
                truth += bytes;
                let round = round as u64 + 1;
                counted += book.delta("vm", incarnation, &counters(counter, 0), round).sent;
                book.end_round(round);
            }
            prop_assert_eq!(counted, truth);
        }
    }
}
