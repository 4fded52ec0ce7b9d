//! One source partition's state: its open hours, its watermark and its sealed hours.
//!
//! The watermark is the latest minute seen on the partition minus the allowed lateness;
//! an hour is sealed once the watermark has passed its end. A sample for an hour that is
//! already sealed reopens it from its file (a restatement): the hour is sealed again as
//! the next generation if the sample added a minute, and left as it was otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tally_model::{Hour, Minute, RollupRow, Sample};

use crate::dedup::Verdict;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::manifest::QUARANTINE_DIR;
use crate::manifest::{Checkpoint, Manifest, OpenHourState, SealedHour};
use crate::rollup::OpenHour;
use crate::write::{file_crc32, read_rows, write_rows};

pub struct PartitionState {
    /// The partition's lock, held while this state exists (see [`claim`]).
    _claim: std::fs::File,
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
    /// Of the hours restated: the most minutes between an hour's end and the latest
    /// minute seen on the partition when it was sealed again.
    pub max_restatement_lag_minutes: i64,
    pub rows: u64,
    pub bytes: u64,
}

impl PartitionState {
    /// Opens a partition's state from its manifest, removing files it does not name,
    /// with the open hours of its checkpoint if it has one.
    pub fn open(lake: &Path, source: &str, partition: i32, lateness_minutes: i64) -> Result<Self> {
        let claim = claim(lake, source, partition)?;
        let manifest = Manifest::load(lake, source, partition)?;
        manifest.remove_unrecorded_files(lake)?;
        manifest.remove_stale_checkpoints(lake)?;
        let mut state = Self {
            _claim: claim,
            lake: lake.to_owned(),
            lateness_minutes,
            open: BTreeMap::new(),
            latest_minute: None,
            manifest,
        };
        if let Some(checkpoint) = state.manifest.checkpoint.clone() {
            match checkpoint_rows(lake, &checkpoint) {
                Ok(rows) => state.restore(&checkpoint, rows, source, partition)?,
                Err(damage) => state.quarantine(&checkpoint, &damage, source)?,
            }
        }
        Ok(state)
    }

    /// Brings back the open hours of a checkpoint whose rows were read.
    fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        rows: Vec<RollupRow>,
        source: &str,
        partition: i32,
    ) -> Result<()> {
        let path = self.lake.join(&checkpoint.file);
        let mut rows_by_hour: BTreeMap<Hour, Vec<_>> = BTreeMap::new();
        for row in rows {
            rows_by_hour.entry(row.key.hour).or_default().push(row);
        }
        for (hour, saved) in &checkpoint.hours {
            let hour = Hour::parse_partition_value(hour).map_err(|error| Error::Manifest {
                path: Manifest::path(&self.lake, source, partition),
                detail: format!("checkpoint hour '{hour}': {error}"),
            })?;
            let rows = rows_by_hour.remove(&hour).unwrap_or_default();
            let mut open = OpenHour::restore(hour, rows, saved.generation, &path)?;
            open.samples_added = saved.samples_added;
            open.first_offset = saved.first_offset;
            self.open.insert(hour, open);
        }
        if let Some((hour, _)) = rows_by_hour.first_key_value() {
            return Err(Error::Manifest {
                path: Manifest::path(&self.lake, source, partition),
                detail: format!(
                    "checkpoint {} has rows of hour {hour}, which the manifest does not list",
                    path.display()
                ),
            });
        }
        self.latest_minute = checkpoint.latest_minute.map(Minute::from_unix_minutes);
        Ok(())
    }

    /// Moves a damaged checkpoint to `_quarantine/<source>/` and forgets it: reading
    /// resumes at `resume_offset`, the first message of the oldest open hour, and builds
    /// the open hours again from the messages themselves. Nothing of the damaged file
    /// is counted.
    fn quarantine(&mut self, checkpoint: &Checkpoint, damage: &str, source: &str) -> Result<()> {
        let path = self.lake.join(&checkpoint.file);
        let quarantine = self.lake.join(QUARANTINE_DIR).join(source);
        let io_error = |action: String| move |source| Error::Io { action, source };
        std::fs::create_dir_all(&quarantine)
            .map_err(io_error(format!("create {}", quarantine.display())))?;
        if path.exists() {
            // A later checkpoint can have the same name (the same offset, reached again).
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let target = (1..)
                .map(|copy| quarantine.join(format!("{name}.{copy}")))
                .find(|target| !target.exists())
                .unwrap_or_default();
            std::fs::rename(&path, &target).map_err(io_error(format!(
                "move the damaged checkpoint {} to {}",
                path.display(),
                target.display()
            )))?;
        }
        tracing::error!(
            checkpoint = %path.display(),
            damage,
            resume_offset = self.manifest.resume_offset,
            "damaged checkpoint quarantined; reading its open hours again from the topic"
        );
        self.manifest.checkpoint = None;
        self.manifest.store(&self.lake)
    }

    /// Where to start reading this partition.
    pub fn resume_offset(&self) -> i64 {
        self.manifest.next_offset()
    }

    /// Saves the open hours, so that reading resumes at `next_offset` (the offset after
    /// the last message processed) instead of at their first samples.
    pub fn checkpoint(&mut self, next_offset: i64) -> Result<()> {
        if next_offset == self.manifest.next_offset() {
            return Ok(()); // nothing read since
        }
        if self.open.is_empty() {
            self.manifest.checkpoint = None;
            self.manifest.resume_offset = next_offset;
        } else {
            let file = self.manifest.checkpoint_file(next_offset);
            let rows: Vec<_> = self.open.values().flat_map(OpenHour::sorted_rows).collect();
            let written = write_rows(&self.lake, &file, &rows)?;
            failpoint::pass(failpoint::CHECKPOINT_WRITTEN);
            self.manifest.checkpoint = Some(Checkpoint {
                file,
                next_offset,
                latest_minute: self.latest_minute.map(Minute::unix_minutes),
                hours: self
                    .open
                    .iter()
                    .map(|(hour, open)| {
                        (
                            hour.partition_value(),
                            OpenHourState {
                                generation: open.generation,
                                samples_added: open.samples_added,
                                first_offset: open.first_offset,
                            },
                        )
                    })
                    .collect(),
                crc32: Some(written.crc32),
            });
        }
        self.manifest.store(&self.lake)?;
        self.manifest.remove_stale_checkpoints(&self.lake)?;
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn open_hours(&self) -> usize {
        self.open.len()
    }

    /// Adds a valid sample read at `offset`; says what it was, and whether it is late
    /// (for an hour already sealed).
    pub fn accept(&mut self, sample: &Sample, offset: i64) -> Result<(Verdict, bool)> {
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
        Ok((open.add(sample, offset), open.generation > 0))
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
            let rows = open.sorted_rows();
            let file = self.manifest.file_for(hour, generation);
            let bytes = write_rows(&self.lake, &file, &rows)?.bytes;
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
                // How far the partition's stream had moved past the hour: event time.
                let lag = self.latest_minute.map_or(0, |latest| {
                    latest.unix_minutes() - hour.end_minute().unix_minutes()
                });
                report.max_restatement_lag_minutes = report.max_restatement_lag_minutes.max(lag);
                tracing::info!(%hour, generation, lag_minutes = lag, "restated a sealed hour with late samples");
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
        if report.hours > 0 {
            // The checkpoint holds hours sealed just now: a restart reads from `resume`.
            self.manifest.checkpoint = None;
        }
        if changed {
            self.manifest.store(&self.lake)?;
            self.manifest.remove_stale_checkpoints(&self.lake)?;
        }
        // Only once the manifest names the new generations may the old ones go.
        if !superseded.is_empty() {
            failpoint::pass(failpoint::SUPERSEDED_KEPT);
        }
        for file in superseded {
            let path = self.lake.join(&file);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "could not remove a superseded generation; it is removed at the next start");
            }
        }
        Ok(report)
    }
}

/// A checkpoint's rows, or what is wrong with its file: missing or unreadable, not
/// matching the checksum its manifest recorded, or not rollup rows.
fn checkpoint_rows(
    lake: &Path,
    checkpoint: &Checkpoint,
) -> std::result::Result<Vec<RollupRow>, String> {
    let path = lake.join(&checkpoint.file);
    if let Some(expected) = checkpoint.crc32 {
        match file_crc32(&path) {
            Ok(found) if found == expected => {}
            Ok(found) => {
                return Err(format!(
                    "CRC-32 {found:08x}, the manifest recorded {expected:08x}"
                ));
            }
            Err(error) => return Err(format!("cannot read it: {error}")),
        }
    }
    read_rows(&path).map_err(|error| error.to_string())
}

/// Takes the partition's lock file (`_state/<source>/p<N>.lock`), waiting while another
/// process or instance holds it: whoever holds it is the only writer of the partition's
/// files and manifest. A consumer group gives a partition to one member at a time, but a
/// member paused past its session timeout still believes it owns its partitions until it
/// runs again and learns otherwise; the lock keeps the next owner from writing before
/// that one has let go (a killed process lets go at once). The lock is advisory
/// (`flock`): it holds for instances on one machine, or on a file system that honours it
/// across machines.
fn claim(lake: &Path, source: &str, partition: i32) -> Result<std::fs::File> {
    let path = Manifest::path(lake, source, partition).with_extension("lock");
    let io_error = |action: &str, source| Error::Io {
        action: format!("{action} {}", path.display()),
        source,
    };
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory).map_err(|e| io_error("create the directory of", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", e))?;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !waited {
                    tracing::warn!(partition, lock = %path.display(), "another instance still holds the partition; waiting for it to let go");
                    waited = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io_error("lock", error)),
        }
    }
}

fn unreachable_open(hour: Hour) -> crate::error::Error {
    crate::error::Error::Io {
        action: format!("find open hour {hour}"),
        source: std::io::Error::other("an hour inserted just before is missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn a_partition_has_one_owner_at_a_time() {
        let lake = tempfile::tempdir().expect("lake");
        let first = PartitionState::open(lake.path(), "samples", 3, 15).expect("first owner");
        let (opened, wait) = channel();
        let path = lake.path().to_owned();
        let second = std::thread::spawn(move || {
            let state = PartitionState::open(&path, "samples", 3, 15).expect("second owner");
            opened.send(()).expect("send");
            state
        });
        assert!(
            wait.recv_timeout(Duration::from_millis(500)).is_err(),
            "the second owner opened the partition while the first held it"
        );
        // Another partition is free all along.
        PartitionState::open(lake.path(), "samples", 4, 15).expect("another partition");
        drop(first);
        wait.recv_timeout(Duration::from_secs(5))
            .expect("the second owner opens it once the first let go");
        second.join().expect("second");
    }
}
