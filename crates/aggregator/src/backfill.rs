//! `tally aggregate --from-file`: rolls up an NDJSON sample file through the same path
//! as Kafka messages (decode, validate, dedup, rollup, seal), for imports and tests.
//!
//! The file is read in chunks of lines; each chunk counts as one message whose offset is
//! its first line's number, so dead letters name the exact line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::deadletter::{CollectedDeadLetters, DeadLetter};
use crate::error::{Error, Result};
use crate::ingest::{AggregateConfig, AggregateReport, Ingest};

const LINES_PER_CHUNK: usize = 4096;

/// Rolls up `path` into the lake and seals every hour. Returns the report and the dead
/// letters (the caller decides where they go).
pub fn run_file(
    config: &AggregateConfig,
    path: &Path,
) -> Result<(AggregateReport, Vec<DeadLetter>)> {
    let input_error = |source| Error::Input {
        path: path.to_owned(),
        source,
    };
    let source = format!(
        "file-{}",
        path.file_stem()
            .map(|stem| stem.to_string_lossy())
            .unwrap_or_default()
    );
    let topic = path.display().to_string();
    let reader = BufReader::new(File::open(path).map_err(input_error)?);
    let mut dead_letters = CollectedDeadLetters::default();
    let mut ingest = Ingest::new(config.clone(), &source, &mut dead_letters);
    ingest.open_partition(0)?;
    let mut chunk = Vec::new();
    let mut chunk_first_line = 1i64;
    let mut line_number = 0i64;
    for line in reader.split(b'\n') {
        let line = line.map_err(input_error)?;
        line_number += 1;
        chunk.extend_from_slice(&line);
        chunk.push(b'\n');
        if line_number - chunk_first_line + 1 >= LINES_PER_CHUNK as i64 {
            ingest.process(&topic, 0, chunk_first_line, None, &chunk)?;
            ingest.seal_ready(0, line_number + 1)?;
            chunk.clear();
            chunk_first_line = line_number + 1;
        }
    }
    if !chunk.is_empty() {
        ingest.process(&topic, 0, chunk_first_line, None, &chunk)?;
    }
    ingest.seal_all(0, line_number + 1)?;
    let report = ingest.report;
    Ok((report, dead_letters.letters))
}
