//! One source partition's state: its open hours, its watermark and its sealed hours.
//!
//! The watermark is the latest minute seen on the partition minus the allowed lateness;
//! an hour is sealed once the watermark has passed its end. A sample for an hour that is
//! already sealed reopens it from its file (a restatement): the hour is sealed again as
//! the next generation if the sample added a minute, and left as it was otherwise.

use std::collections::BTreeMap;
use std::path::Path;

use tally_lake::{Lake, Outcome, Version};
use tally_model::{Hour, Minute, RollupRow, Sample};

use crate::dedup::Verdict;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::manifest::{self, QUARANTINE_DIR};
use crate::manifest::{Checkpoint, Manifest, OpenHourState, SealedHour};
use crate::rollup::OpenHour;
use crate::write::{Written, decode_rows, read_lake_rows, write_rows};

/// How often opening a partition on an object store reads its manifest again when a
/// previous owner wrote it in between. That owner writes the manifest once per seal or
/// checkpoint, so the next attempt all but always succeeds.
const CLAIM_ATTEMPTS: u32 = 10;

pub struct PartitionState {
    /// The partition's lock on a directory lake, held while this state exists (see
    /// [`claim`]); on an object store, [`Self::manifest_version`] fences instead.
    _claim: Option<std::fs::File>,
    lake: Lake,
    /// The version of the manifest this owner last read or wrote: its next write must
    /// replace exactly that one (see [`Manifest::store`]).
    manifest_version: Option<Version>,
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
    pub fn open(lake: &Lake, source: &str, partition: i32, lateness_minutes: i64) -> Result<Self> {
        let lake = lake.clone().with_write_hook(failpoint::lake_write);
        let claim = match lake.local_root() {
            Some(root) => Some(claim(root, source, partition)?),
            None => None,
        };
        let (mut manifest, mut manifest_version) =
            Manifest::load_versioned(&lake, source, partition)?;
        if claim.is_none() {
            // Count this owner in before anything is written or removed: from now on the
            // previous owner's writes of the manifest are refused. A previous owner still
            // writing can change the manifest between this read and this write: then the
            // manifest is read again, and counted into again.
            let mut attempts = 0;
            loop {
                manifest.owners += 1;
                match manifest.store(&lake, manifest_version.as_ref()) {
                    Ok(version) => {
                        manifest_version = Some(version);
                        break;
                    }
                    Err(Error::TakenOver { .. }) if attempts < CLAIM_ATTEMPTS => {
                        attempts += 1;
                        (manifest, manifest_version) =
                            Manifest::load_versioned(&lake, source, partition)?;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        manifest.remove_unrecorded_files(&lake)?;
        manifest.remove_stale_checkpoints(&lake)?;
        let mut state = Self {
            _claim: claim,
            lake,
            manifest_version,
            lateness_minutes,
            open: BTreeMap::new(),
            latest_minute: None,
            manifest,
        };
        if let Some(checkpoint) = state.manifest.checkpoint.clone() {
            match checkpoint_rows(&state.lake, &checkpoint) {
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
        let location = self.lake.location(&manifest::key(&checkpoint.file));
        let mut rows_by_hour: BTreeMap<Hour, Vec<_>> = BTreeMap::new();
        for row in rows {
            rows_by_hour.entry(row.key.hour).or_default().push(row);
        }
        for (hour, saved) in &checkpoint.hours {
            let hour = Hour::parse_partition_value(hour).map_err(|error| Error::Manifest {
                location: self.lake.location(&Manifest::key(source, partition)),
                detail: format!("checkpoint hour '{hour}': {error}"),
            })?;
            let rows = rows_by_hour.remove(&hour).unwrap_or_default();
            let mut open = OpenHour::restore(hour, rows, saved.generation, &location)?;
            open.samples_added = saved.samples_added;
            open.first_offset = saved.first_offset;
            self.open.insert(hour, open);
        }
        if let Some((hour, _)) = rows_by_hour.first_key_value() {
            return Err(Error::Manifest {
                location: self.lake.location(&Manifest::key(source, partition)),
                detail: format!(
                    "checkpoint {location} has rows of hour {hour}, which the manifest does not list"
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
        let file = manifest::key(&checkpoint.file);
        if self.lake.exists(&file)? {
            // A later checkpoint can have the same name (the same offset, reached again).
            let name = file.rsplit('/').next().unwrap_or_default();
            let mut copy = 1;
            let target = loop {
                let target = format!("{QUARANTINE_DIR}/{source}/{name}.{copy}");
                if !self.lake.exists(&target)? {
                    break target;
                }
                copy += 1;
            };
            self.lake.rename(&file, &target)?;
        }
        tracing::error!(
            checkpoint = %self.lake.location(&file),
            damage,
            resume_offset = self.manifest.resume_offset,
            "damaged checkpoint quarantined; reading its open hours again from the topic"
        );
        self.manifest.checkpoint = None;
        self.store_manifest()
    }

    /// Writes the manifest over the version this owner last read or wrote.
    fn store_manifest(&mut self) -> Result<()> {
        let version = self
            .manifest
            .store(&self.lake, self.manifest_version.as_ref())?;
        self.manifest_version = Some(version);
        Ok(())
    }

    /// Writes a rollup or checkpoint file of this partition. A file already there that
    /// the manifest does not name was left by a crash, or written by an owner that has
    /// lost the partition since this one opened it: it is replaced only after the
    /// manifest shows that this owner still holds the partition.
    fn write_file(&self, file: &Path, rows: &[RollupRow]) -> Result<Written> {
        let key = manifest::key(file);
        let (outcome, written) = write_rows(&self.lake, &key, rows)?;
        if outcome == Outcome::Conflict {
            self.check_still_owner()?;
            tracing::warn!(file = %self.lake.location(&key), "replacing a file the manifest does not name");
            self.lake.delete(&key)?;
            if write_rows(&self.lake, &key, rows)?.0 == Outcome::Conflict {
                self.check_still_owner()?;
                return Err(Error::TakenOver {
                    partition: self.manifest.partition,
                    location: self.lake.location(&key),
                });
            }
        }
        Ok(written)
    }

    /// An error unless the manifest in the lake is still the one this owner wrote last.
    fn check_still_owner(&self) -> Result<()> {
        if self.lake.local_root().is_some() {
            return Ok(()); // a directory lake's owner holds its lock
        }
        let (_, current) =
            Manifest::load_versioned(&self.lake, &self.manifest.source, self.manifest.partition)?;
        if current == self.manifest_version {
            Ok(())
        } else {
            Err(Error::TakenOver {
                partition: self.manifest.partition,
                location: self.lake.location(&Manifest::key(
                    &self.manifest.source,
                    self.manifest.partition,
                )),
            })
        }
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
            let written = self.write_file(&file, &rows)?;
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
        self.store_manifest()?;
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
                    let file = manifest::key(&sealed.file);
                    let rows = read_lake_rows(&self.lake, &file)?;
                    let location = self.lake.location(&file);
                    OpenHour::restore(hour, rows, sealed.generation + 1, &location)?
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
            let bytes = self.write_file(&file, &rows)?.bytes;
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
            self.store_manifest()?;
            self.manifest.remove_stale_checkpoints(&self.lake)?;
        }
        // Only once the manifest names the new generations may the old ones go.
        if !superseded.is_empty() {
            failpoint::pass(failpoint::SUPERSEDED_KEPT);
        }
        for file in superseded {
            if let Err(error) = self.lake.delete(&manifest::key(&file)) {
                tracing::warn!(%error, "could not remove a superseded generation; it is removed at the next start");
            }
        }
        Ok(report)
    }
}

/// A checkpoint's rows, or what is wrong with its file: missing or unreadable, not
/// matching the checksum its manifest recorded, or not rollup rows.
fn checkpoint_rows(
    lake: &Lake,
    checkpoint: &Checkpoint,
) -> std::result::Result<Vec<RollupRow>, String> {
    let file = manifest::key(&checkpoint.file);
    let bytes = match lake.get(&file) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err("it is missing".to_owned()),
        Err(error) => return Err(format!("cannot read it: {error}")),
    };
    if let Some(expected) = checkpoint.crc32 {
        let found = crc32fast::hash(&bytes);
        if found != expected {
            return Err(format!(
                "CRC-32 {found:08x}, the manifest recorded {expected:08x}"
            ));
        }
    }
    decode_rows(bytes.into(), &lake.location(&file)).map_err(|error| error.to_string())
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

    use futures::stream::BoxStream;
    use tally_lake::object_store::path::Path as StorePath;
    use tally_lake::object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMode,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result as ObjectResult,
    };

    fn memory_lake() -> Lake {
        let store = tally_lake::object_store::memory::InMemory::new();
        let base = "memory:///".parse().expect("url");
        Lake::store(std::sync::Arc::new(store), base, "lake".into())
    }

    /// Samples of vm-1 at 10:00 and after, `minutes` of them.
    fn samples(resource: &str, minutes: i64) -> Vec<Sample> {
        let first = crate::dedup::tests::sample().minute.hour().first_minute();
        (0..minutes)
            .map(|minute| Sample {
                minute: first.plus(minute),
                resource_id: resource.to_owned(),
                ..crate::dedup::tests::sample()
            })
            .collect()
    }

    fn accept_all(state: &mut PartitionState, samples: &[Sample]) {
        for (offset, sample) in samples.iter().enumerate() {
            state.accept(sample, offset as i64).expect("accept");
        }
    }

    #[test]
    fn on_an_object_store_an_owner_that_lost_its_partition_writes_nothing_over_the_next() {
        let lake = memory_lake();
        let mut stale = PartitionState::open(&lake, "samples", 0, 15).expect("first owner");
        accept_all(&mut stale, &samples("vm-stale", 60));
        // The group gives the partition to another instance while the first still runs.
        let mut owner = PartitionState::open(&lake, "samples", 0, 15).expect("next owner");
        accept_all(&mut owner, &samples("vm-owner", 60));
        owner.seal_all(60).expect("the owner seals");

        // The stale owner's rollup file has the owner's name: creating it fails, and the
        // manifest says someone else holds the partition.
        let error = stale.seal_all(60).expect_err("the stale owner is fenced");
        assert!(
            matches!(error, Error::TakenOver { partition: 0, .. }),
            "{error}"
        );
        let manifest = Manifest::load(&lake, "samples", 0).expect("manifest");
        assert_eq!(manifest.owners, 2);
        let [(_, sealed)] = manifest.sealed.iter().collect::<Vec<_>>()[..] else {
            panic!("one sealed hour: {manifest:?}");
        };
        let rows = read_lake_rows(&lake, &manifest::key(&sealed.file)).expect("rows");
        assert!(
            rows.iter().all(|row| row.key.resource_id == "vm-owner"),
            "{rows:?}"
        );

        // A stale owner that writes a file first leaves it unrecorded; its manifest
        // write is refused, and the owner replaces the file when it seals the hour.
        let mut stale = PartitionState::open(&lake, "samples", 1, 15).expect("first owner");
        accept_all(&mut stale, &samples("vm-stale", 60));
        let mut owner = PartitionState::open(&lake, "samples", 1, 15).expect("next owner");
        let error = stale.seal_all(60).expect_err("the stale owner is fenced");
        assert!(
            matches!(error, Error::TakenOver { partition: 1, .. }),
            "{error}"
        );
        accept_all(&mut owner, &samples("vm-owner", 60));
        owner
            .seal_all(60)
            .expect("the owner seals over the stale file");
        let manifest = Manifest::load(&lake, "samples", 1).expect("manifest");
        let sealed = manifest.sealed.values().next().expect("a sealed hour");
        let rows = read_lake_rows(&lake, &manifest::key(&sealed.file)).expect("rows");
        assert!(
            rows.iter().all(|row| row.key.resource_id == "vm-owner"),
            "{rows:?}"
        );
    }

    /// An in-memory store on which, once armed, the previous owner writes the manifest
    /// once more just before the next conditional write of it (between the new owner's
    /// read and write: the race a claim retries), setting `resume_offset` to 42.
    #[derive(Debug)]
    struct PreviousOwnerWritesFirst {
        inner: tally_lake::object_store::memory::InMemory,
        armed: std::sync::atomic::AtomicBool,
        raced: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for PreviousOwnerWritesFirst {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PreviousOwnerWritesFirst({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl tally_lake::object_store::ObjectStore for PreviousOwnerWritesFirst {
        async fn put_opts(
            &self,
            location: &StorePath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> ObjectResult<PutResult> {
            let manifest_update = matches!(opts.mode, PutMode::Update(_))
                && location.as_ref().ends_with(".json")
                && location.as_ref().contains("/_state/");
            if manifest_update
                && self.armed.load(std::sync::atomic::Ordering::SeqCst)
                && !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let bytes = self.inner.get_opts(location, GetOptions::default()).await?;
                let mut manifest: serde_json::Value =
                    serde_json::from_slice(&bytes.bytes().await?).expect("manifest JSON");
                manifest["resume_offset"] = 42.into();
                let text = serde_json::to_vec(&manifest).expect("JSON");
                self.inner
                    .put_opts(location, text.into(), PutOptions::default())
                    .await?;
            }
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &StorePath,
            opts: PutMultipartOptions,
        ) -> ObjectResult<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &StorePath,
            options: GetOptions,
        ) -> ObjectResult<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, ObjectResult<StorePath>>,
        ) -> BoxStream<'static, ObjectResult<StorePath>> {
            self.inner.delete_stream(locations)
        }

        fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, ObjectResult<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&StorePath>,
        ) -> ObjectResult<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &StorePath,
            to: &StorePath,
            options: CopyOptions,
        ) -> ObjectResult<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[test]
    fn a_claim_that_races_the_previous_owners_manifest_write_reads_again() {
        let store = std::sync::Arc::new(PreviousOwnerWritesFirst {
            inner: tally_lake::object_store::memory::InMemory::new(),
            armed: false.into(),
            raced: false.into(),
        });
        let lake = Lake::store(
            store.clone(),
            "memory:///".parse().expect("url"),
            "lake".into(),
        );
        // The previous owner's manifest is there before the new owner opens the partition.
        let mut previous = PartitionState::open(&lake, "samples", 0, 15).expect("previous");
        accept_all(&mut previous, &samples("vm-previous", 60));
        previous.seal_all(60).expect("the previous owner seals");

        store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        PartitionState::open(&lake, "samples", 0, 15).expect("the next owner claims");
        assert!(store.raced.load(std::sync::atomic::Ordering::SeqCst));
        let manifest = Manifest::load(&lake, "samples", 0).expect("manifest");
        // The claim was refused once, read the manifest again and counted itself into
        // the previous owner's latest write, keeping it.
        assert_eq!((manifest.owners, manifest.resume_offset), (2, 42));
        assert_eq!(manifest.sealed.len(), 1);
    }

    #[test]
    fn a_partition_has_one_owner_at_a_time() {
        let directory = tempfile::tempdir().expect("lake");
        let lake = Lake::directory(directory.path());
        let first = PartitionState::open(&lake, "samples", 3, 15).expect("first owner");
        let (opened, wait) = channel();
        let shared = lake.clone();
        let second = std::thread::spawn(move || {
            let state = PartitionState::open(&shared, "samples", 3, 15).expect("second owner");
            opened.send(()).expect("send");
            state
        });
        assert!(
            wait.recv_timeout(Duration::from_millis(500)).is_err(),
            "the second owner opened the partition while the first held it"
        );
        // Another partition is free all along.
        PartitionState::open(&lake, "samples", 4, 15).expect("another partition");
        drop(first);
        wait.recv_timeout(Duration::from_secs(5))
            .expect("the second owner opens it once the first let go");
        second.join().expect("second");
    }
}
