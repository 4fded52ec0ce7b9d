//! The per-partition manifest: which files are the sealed hours of one source partition,
//! and where to resume reading it.
//!
//! It lives in the lake next to the data (`_state/<source>/p<partition>.json`), so
//! whichever instance owns the partition next finds it there. It may name a checkpoint
//! of the open hours (`_state/<source>/p<partition>.open-<offset>.parquet`). It is replaced
//! atomically (on a directory: temp file, fsync, rename, directory fsync; on an object
//! store: one PUT that must match the version its owner last read or wrote, so that an
//! owner that lost the partition cannot overwrite its successor's). Files of the
//! partition that it does not name (a crash between writing a file and recording it, or a
//! superseded generation not yet removed) are deleted when the partition is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_lake::{Lake, Outcome, Version};
use tally_model::Hour;

use crate::error::{Error, Result};
use crate::write::{ROLLUPS_DIR, file_name, hour_dir};

/// Where manifests live under the lake root.
pub const STATE_DIR: &str = "_state";

/// Where damaged checkpoints are moved (`_quarantine/<source>/<file>`), kept for a look.
pub const QUARANTINE_DIR: &str = "_quarantine";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub source: String,
    pub partition: i32,
    /// The offset to read from after a restart: every sample before it is in a sealed
    /// file named below.
    pub resume_offset: i64,
    /// Sealed hours (`YYYY-MM-DDTHH`) and their current file.
    pub sealed: BTreeMap<String, SealedHour>,
    /// The open hours as of a later offset, if checkpointed since the last seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// How often an instance took the partition on an object store. Each owner counts
    /// itself in when it opens the partition, which changes the manifest: a previous owner
    /// still running finds its next compare-and-swap refused (a directory lake's owners
    /// hold a lock instead, and leave this 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub owners: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// The partition's open hours, saved so that a restart (or the next owner) resumes at
/// `next_offset` instead of reading the open hours' samples again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The open hours' rows, in the rollup format (path relative to the lake root).
    pub file: PathBuf,
    /// Every message before it is in a sealed file or in the checkpoint's rows.
    pub next_offset: i64,
    /// The latest minute seen on the partition (the watermark's base), unix minutes.
    pub latest_minute: Option<i64>,
    /// Per open hour (`YYYY-MM-DDTHH`): what its rows alone do not say.
    pub hours: BTreeMap<String, OpenHourState>,
    /// CRC-32 of the file: a checkpoint that does not match is quarantined, and the
    /// partition read again from `resume_offset` (absent in manifests of Tally before
    /// checkpoints were checksummed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenHourState {
    pub generation: u32,
    pub samples_added: u64,
    pub first_offset: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedHour {
    pub generation: u32,
    /// Path relative to the lake root.
    pub file: PathBuf,
    pub rows: u64,
    pub samples: u64,
    pub bytes: u64,
}

impl Manifest {
    /// The manifest's key in the lake.
    pub fn key(source: &str, partition: i32) -> String {
        format!("{STATE_DIR}/{source}/p{partition:03}.json")
    }

    /// The manifest's path in a lake on local disk.
    pub fn path(lake: &Path, source: &str, partition: i32) -> PathBuf {
        lake.join(Self::key(source, partition))
    }

    /// Loads the manifest of a partition, or an empty one if it was never sealed.
    pub fn load(lake: &Lake, source: &str, partition: i32) -> Result<Self> {
        Ok(Self::load_versioned(lake, source, partition)?.0)
    }

    /// Loads the manifest of a partition and the version read (`None`: there is none yet).
    pub fn load_versioned(
        lake: &Lake,
        source: &str,
        partition: i32,
    ) -> Result<(Self, Option<Version>)> {
        let key = Self::key(source, partition);
        match lake.get_versioned(&key)? {
            Some((bytes, version)) => {
                let manifest = serde_json::from_slice(&bytes).map_err(|error| Error::Manifest {
                    location: lake.location(&key),
                    detail: error.to_string(),
                })?;
                Ok((manifest, Some(version)))
            }
            None => Ok((
                Self {
                    version: 1,
                    source: source.to_owned(),
                    partition,
                    resume_offset: 0,
                    sealed: BTreeMap::new(),
                    checkpoint: None,
                    owners: 0,
                },
                None,
            )),
        }
    }

    /// Replaces the manifest in the lake if it is still the `read` version (`None`: if
    /// there is none), and returns the version written. Another version there means that
    /// another instance has taken the partition: [`Error::TakenOver`].
    pub fn store(&self, lake: &Lake, read: Option<&Version>) -> Result<Version> {
        let key = Self::key(&self.source, self.partition);
        let bytes = serde_json::to_vec_pretty(self).map_err(|error| Error::Manifest {
            location: lake.location(&key),
            detail: error.to_string(),
        })?;
        match lake.replace(&key, bytes, read)? {
            Outcome::Written(version) => Ok(version),
            Outcome::Conflict => Err(Error::TakenOver {
                partition: self.partition,
                location: lake.location(&key),
            }),
        }
    }

    /// Where to read the partition from: after the checkpoint if there is one.
    pub fn next_offset(&self) -> i64 {
        self.checkpoint
            .as_ref()
            .map_or(self.resume_offset, |checkpoint| checkpoint.next_offset)
    }

    /// The relative path of a checkpoint of this partition taken at `next_offset`.
    pub fn checkpoint_file(&self, next_offset: i64) -> PathBuf {
        Path::new(STATE_DIR).join(&self.source).join(format!(
            "{}{next_offset}.parquet",
            checkpoint_prefix(self.partition)
        ))
    }

    /// Deletes checkpoint files of this partition other than the one the manifest names.
    pub fn remove_stale_checkpoints(&self, lake: &Lake) -> Result<usize> {
        let prefix = format!(
            "{STATE_DIR}/{}/{}",
            self.source,
            checkpoint_prefix(self.partition)
        );
        let current = self
            .checkpoint
            .as_ref()
            .map(|checkpoint| key(&checkpoint.file));
        let mut removed = 0;
        for file in lake.list(&format!("{STATE_DIR}/{}", self.source))? {
            if file.starts_with(&prefix) && current.as_ref() != Some(&file) {
                lake.delete(&file)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn sealed_hour(&self, hour: Hour) -> Option<&SealedHour> {
        self.sealed.get(&hour.partition_value())
    }

    /// Relative path of a generation of an hour of this partition.
    pub fn file_for(&self, hour: Hour, generation: u32) -> PathBuf {
        let directory = hour_dir(Path::new(""), hour);
        directory.join(file_name(&self.source, self.partition, generation))
    }

    /// Deletes this partition's files that the manifest does not name, and temp files.
    /// Returns how many were removed.
    pub fn remove_unrecorded_files(&self, lake: &Lake) -> Result<usize> {
        let prefix = format!("{}-p{:03}-g", self.source, self.partition);
        let recorded: std::collections::HashSet<String> = self
            .sealed
            .values()
            .map(|sealed| key(&sealed.file))
            .collect();
        let mut removed = 0;
        for file in lake.list(ROLLUPS_DIR)? {
            let name = file.rsplit('/').next().unwrap_or_default();
            if !name.starts_with(&prefix) || recorded.contains(&file) {
                continue;
            }
            lake.delete(&file)?;
            tracing::warn!(file = %lake.location(&file), "removed a rollup file the manifest does not name");
            removed += 1;
        }
        Ok(removed)
    }
}

/// A path the manifest records (relative to the lake's root) as a key of the lake.
pub fn key(path: &Path) -> String {
    path.components()
        .map(|part| part.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Checkpoint files of a partition start with this (`p007.open-`).
fn checkpoint_prefix(partition: i32) -> String {
    format!("p{partition:03}.open-")
}
