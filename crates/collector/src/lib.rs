//! The collector agent's library: where samples come from and how they reach Kafka.
//!
//! - [`simulator`]: a deterministic fleet of servers, GPU servers, IPs, snapshots and
//!   add-ons on the four reference tariffs, emitting one sample per resource per minute,
//!   with its exact [`simulator::GroundTruth`] so every later stage can be checked to the
//!   byte and minute.
//! - [`partition`]: which Kafka partition a resource's samples go to (Kafka's murmur2).
//! - [`ship`]: the Kafka producer: samples grouped by partition into batches of either
//!   encoding, sent idempotently with `acks=all`, and awaited until acknowledged.

pub mod partition;
pub mod ship;
pub mod simulator;

pub use ship::{ShipConfig, ShipError, Shipper};
pub use simulator::{Fleet, FleetSpec, GroundTruth};
