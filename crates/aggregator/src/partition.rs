//! One source partition's state: its open hours, its watermark and its sealed hours.
//!
//! The watermark is the latest minute seen on the partition minus the allowed lateness;
//! an hour is sealed once the watermark has passed its end. A sample for an hour that is
//! already sealed reopens it from its file (a restatement): the hour is sealed again as
//! the next generation if the sample added a minute, and left as it was otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tally_model::{Hour, Minute, Sample};

use crate::dedup::Verdict;
use crate::error::Result;
use crate::manifest::{Manifest, SealedHour};
use crate::rollup::OpenHour;
use crate::write::{read_rows, write_rows};

pub struct PartitionState {
    lake: PathBuf,
    lateness_minutes: i64,
    open: BTreeMap<Hour, OpenHour>,
    latest_minute: Option<Minute>,
    manifest: Manifest,
}

/// What sealing wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealReport {
    pub hours: u64,
    pub restatements: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl PartitionState {
    /// Opens a partition's state from its manifest, removing files it does not name.
    pub fn open(lake: &Path, source: &str, partition: i32, lateness_minutes: i64) -> Result<Self> {
        let manifest = Manifest::load(lake, source, partition)?;
        manifest.remove_unrecorded_files(lake)?;
        Ok(Self {
            lake: lake.to_owned(),
            lateness_minutes,
            open: BTreeMap::new(),
            latest_minute: None,
            manifest,
        })
    }

    /// Where to start reading this partition.
    pub fn resume_offset(&self) -> i64 {
        self.manifest.resume_offset
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn open_hours(&self) -> usize {
        self.open.len()
    }

    /// Adds a valid sample read at `offset`.
    pub fn accept(&mut self, sample: &Sample, offset: i64) -> Result<Verdict> {
        let hour = sample.minute.hour();
        if !self.open.contains_key(&hour) {
            let reopened = match self.manifest.sealed_hour(hour) {
                Some(sealed) => {
                    let path = self.lake.join(&sealed.file);
                    let rows = read_rows(&path)?;
                    OpenHour::restore(hour, rows, sealed.generation + 1, &path)?
                }
                None => OpenHour::new(hour),
            };
            self.open.insert(hour, reopened);
        }
        self.latest_minute = Some(
            self.latest_minute
                .map_or(sample.minute, |m| m.max(sample.minute)),
        );
        let open = self
            .open
            .get_mut(&hour)
            .ok_or_else(|| unreachable_open(hour))?;
        Ok(open.add(sample, offset))
    }

    /// Seals the hours the watermark has passed; `next_offset` is the offset after the
    /// last message processed.
    pub fn seal_ready(&mut self, next_offset: i64) -> Result<SealReport> {
        let Some(latest) = self.latest_minute else {
            return self.seal(Vec::new(), next_offset);
        };
        let watermark = latest.plus(-self.lateness_minutes);
        let ready: Vec<Hour> = self
            .open
            .keys()
            .copied()
            .take_while(|hour| hour.end_minute() <= watermark)
            .collect();
        self.seal(ready, next_offset)
    }

    /// Seals every open hour (end of a backfill or of a drained topic).
    pub fn seal_all(&mut self, next_offset: i64) -> Result<SealReport> {
        let hours = self.open.keys().copied().collect();
        self.seal(hours, next_offset)
    }

    fn seal(&mut self, hours: Vec<Hour>, next_offset: i64) -> Result<SealReport> {
        let mut report = SealReport::default();
        let mut superseded = Vec::new();
        for hour in hours {
            let Some(open) = self.open.remove(&hour) else {
                continue;
            };
            if open.samples_added == 0 {
                continue; // reopened by duplicates only: the sealed file stays as it is
            }
            let generation = open.generation;
            let samples_added = open.samples_added;
            let rows = open.into_sorted_rows();
            let file = self.manifest.file_for(hour, generation);
            let bytes = write_rows(&self.lake, &file, &rows)?;
            let samples = rows
                .iter()
                .map(|row| u64::from(row.meters.sample_count))
                .sum();
            debug_assert!(samples >= samples_added);
            let previous = self.manifest.sealed.insert(
                hour.partition_value(),
                SealedHour {
                    generation,
                    file,
                    rows: rows.len() as u64,
                    samples,
                    bytes,
                },
            );
            if let Some(previous) = previous {
                superseded.push(previous.file);
                report.restatements += 1;
                tracing::info!(%hour, generation, "restated a sealed hour with late samples");
            }
            report.hours += 1;
            report.rows += rows.len() as u64;
            report.bytes += bytes;
        }
        let resume = self
            .open
            .values()
            .filter_map(|open| open.first_offset)
            .min()
            .unwrap_or(next_offset);
        let changed = report.hours > 0 || resume != self.manifest.resume_offset;
        self.manifest.resume_offset = resume;
        if changed {
            self.manifest.store(&self.lake)?;
        }
        // Only once the manifest names the new generations may the old ones go.
        for file in superseded {
            let path = self.lake.join(&file);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "could not remove a superseded generation; it is removed at the next start");
            }
        }
        Ok(report)
    }
}

fn unreachable_open(hour: Hour) -> crate::error::Error {
    crate::error::Error::Io {
        action: format!("find open hour {hour}"),
        source: std::io::Error::other("an hour inserted just before is missing"),
    }
}
