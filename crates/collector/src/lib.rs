//! The collector agent's library: where samples come from and how they reach Kafka.
//!
//! A sample goes through the agent's stages in this order, one file each:
//!
//! - [`source`]: what the host shows (libvirt domains, the simulator, a file of samples);
//! - [`tick`]: which minutes are due, caught up after a stall, with clock jumps reported;
//! - [`counters`]: cumulative interface counters turned into per-minute deltas;
//! - [`traffic`]: outbound bytes split into internal and external;
//! - [`spool`]: every sample on disk, checksummed and fsynced, before it counts as taken;
//! - [`ship`]: the Kafka producer; [`forward`] sends the spool's oldest samples through it
//!   and removes them only once the broker acknowledged them;
//! - [`agent`]: the loop that runs these stages, with its [`config`] and [`metrics`].
//!
//! [`simulator`] is the deterministic fleet (with its exact ground truth) that the
//! simulator source, the demo and the tests share; [`partition`] is Kafka's murmur2.

pub mod agent;
pub mod config;
pub mod counters;
pub mod forward;
pub mod metrics;
pub mod partition;
pub mod ship;
pub mod simulator;
pub mod source;
pub mod spool;
pub mod tick;
pub mod traffic;

pub use ship::{ShipConfig, ShipError, Shipper};
pub use simulator::{Fleet, FleetSpec, GroundTruth};
