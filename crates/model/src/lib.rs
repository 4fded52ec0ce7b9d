//! Tally's data contracts, shared by every stage and by nothing else.
//!
//! The pipeline's stages (collector, aggregator, rating) never import one another: they
//! meet only through Kafka, the Parquet lake and the types in this crate. Each type here
//! has a versioned schema file in the repository's `schemas/` folder, and a test fails when
//! the two disagree.
//!
//! - [`sample`]: one resource's meters for one UTC minute (sample v1), identity
//!   `(resource_id, minute)`.
//! - [`wire`]: the two encodings of samples on Kafka: NDJSON and Arrow IPC batches.
//! - [`validate`]: what makes a sample usable, and the reasons one is not.
//! - [`rollup`]: one resource's hour (hourly rollup v1) with per-state minute masks.
//! - [`line_item`]: a FOCUS-aligned invoice line (line item v1).
//! - [`minute`]: UTC minutes and hours, the only clock units of the data.
//! - [`units`]: byte units as billing pages use them (GiB vs GB, TiB vs TB).
//!
//! This crate does no I/O: it turns values into bytes and back, and checks them.

pub mod clock;
mod flat_json;
pub mod line_item;
pub mod minute;
pub mod money;
pub mod rollup;
pub mod sample;
pub mod signing;
pub mod tariff;
pub mod units;
pub mod validate;
pub mod wire;

pub use line_item::LineItem;
pub use minute::{Hour, Minute};
pub use rollup::{RollupFileName, RollupKey, RollupMeters, RollupRow};
pub use sample::{ResourceKind, ResourceState, Sample};
pub use validate::{RejectReason, Rejection, ValidationLimits};
