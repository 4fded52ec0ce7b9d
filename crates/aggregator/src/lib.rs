//! `tally aggregate`: from samples on Kafka to the hourly rollup lake.
//!
//! The steps, each in the file of its name:
//! [`consume`] (or [`backfill`] from a file) → [`decode`] → validate (in the model crate)
//! → [`dedup`] → [`rollup`] → seal ([`partition`]) → [`write`](mod@write) → [`manifest`];
//! [`deadletter`] keeps what could not be used, [`metrics`] counts. [`ingest`] ties them
//! together for one input. [`failpoint`] lets fault tests kill the process at chosen
//! places of the write path.
//!
//! Guarantees: a sample counts once however often it arrives (dedup on
//! `(resource_id, minute)`, no time window); files are written temp → fsync → rename and
//! are a function of their rows; after a crash or a rebalance, reading resumes where the
//! partition's manifest says (the first message of its oldest open hour, whose
//! checkpointed state is restored), which never passes a sample that is only in memory;
//! one instance at a time writes a partition.

pub mod backfill;
pub mod consume;
pub mod deadletter;
pub mod decode;
pub mod dedup;
pub mod error;
pub mod failpoint;
pub mod ingest;
pub mod manifest;
pub mod metrics;
pub mod partition;
pub mod rollup;
pub mod write;

pub use backfill::run_file;
pub use consume::{KafkaInput, Ownership, run_kafka};
pub use error::{Error, Result};
pub use ingest::{AggregateConfig, AggregateReport};
