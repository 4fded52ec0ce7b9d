//! The aggregator's errors. Bad input is never an error here: it is dead-lettered.
//! These are the failures of the aggregator's own I/O, which stop it so that no offset
//! moves past data that was not written.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action}: {source}")]
    Io { action: String, source: io::Error },
    #[error(transparent)]
    Lake(#[from] tally_lake::Error),
    #[error("parquet file {location}: {source}")]
    Parquet {
        location: String,
        source: parquet::errors::ParquetError,
    },
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        source: arrow::error::ArrowError,
    },
    #[error(
        "manifest {location} is unreadable: {detail}; it is written only by the aggregator, restore it from a backup or remove the partition's files and replay"
    )]
    Manifest { location: String, detail: String },
    #[error(
        "sealed rollup file {location} cannot be reopened for a restatement: {detail}; it is written only by the aggregator, restore it from a backup or replay its hour"
    )]
    SealedFile { location: String, detail: String },
    #[error(
        "partition {partition} was taken over by another instance ({location} changed since this one last wrote it); stopping without writing, the new owner carries on"
    )]
    TakenOver { partition: i32, location: String },
    #[error("kafka ({context}): {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "a message of partition {partition} (offset {offset}) arrived, which this instance does not own; stopping before anything passes it unread"
    )]
    NotOwned { partition: i32, offset: i64 },
    #[error(
        "partition {partition}: the broker delivered offset {got} where {expected} was next; stopping rather than skip {expected}..{got}"
    )]
    Gap {
        partition: i32,
        expected: i64,
        got: i64,
    },
    #[error(
        "partition {partition} was started at offset {started_at}, but once its previous owner let go its manifest said {resume}; stopping so that a restart reads from there"
    )]
    StaleStart {
        partition: i32,
        started_at: i64,
        resume: i64,
    },
    #[error("input file {path}: {source}")]
    Input { path: PathBuf, source: io::Error },
}
