//! The per-partition manifest: which files are the sealed hours of one source partition,
//! and where to resume reading it.
//!
//! It lives in the lake next to the data (`_state/<source>/p<partition>.json`), so
//! whichever instance owns the partition next finds it there. It may name a checkpoint
//! of the open hours (`_state/<source>/p<partition>.open-<offset>.parquet`). It is replaced atomically
//! (temp file, fsync, rename, directory fsync). Files of the partition that it does not
//! name (a crash between writing a file and recording it, or a superseded generation not
//! yet removed) are deleted when the partition is opened.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_model::Hour;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::write::{ROLLUPS_DIR, TEMP_SUFFIX, file_name, hour_dir, sync_dir};

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
    pub fn path(lake: &Path, source: &str, partition: i32) -> PathBuf {
        lake.join(STATE_DIR)
            .join(source)
            .join(format!("p{partition:03}.json"))
    }

    /// Loads the manifest of a partition, or an empty one if it was never sealed.
    pub fn load(lake: &Path, source: &str, partition: i32) -> Result<Self> {
        let path = Self::path(lake, source, partition);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| Error::Manifest {
                path,
                detail: error.to_string(),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Self {
                version: 1,
                source: source.to_owned(),
                partition,
                resume_offset: 0,
                sealed: BTreeMap::new(),
                checkpoint: None,
            }),
            Err(source) => Err(Error::Io {
                action: format!("read {}", path.display()),
                source,
            }),
        }
    }

    pub fn store(&self, lake: &Path) -> Result<()> {
        let path = Self::path(lake, &self.source, self.partition);
        let io_error = |action: &str, source: io::Error| Error::Io {
            action: format!("{action} {}", path.display()),
            source,
        };
        let directory = path.parent().unwrap_or(lake);
        fs::create_dir_all(directory).map_err(|e| io_error("create the directory of", e))?;
        let temp = path.with_extension(format!("json{TEMP_SUFFIX}"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|error| Error::Manifest {
            path: path.clone(),
            detail: error.to_string(),
        })?;
        let mut file = fs::File::create(&temp).map_err(|e| io_error("create", e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", e))?;
        failpoint::pass(failpoint::MANIFEST_WRITTEN);
        fs::rename(&temp, &path).map_err(|e| io_error("rename into place", e))?;
        failpoint::pass(failpoint::MANIFEST_RENAMED);
        sync_dir(directory)
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
    pub fn remove_stale_checkpoints(&self, lake: &Path) -> Result<usize> {
        let directory = lake.join(STATE_DIR).join(&self.source);
        let Ok(files) = fs::read_dir(&directory) else {
            return Ok(0);
        };
        let prefix = checkpoint_prefix(self.partition);
        let current = self
            .checkpoint
            .as_ref()
            .map(|checkpoint| lake.join(&checkpoint.file));
        let mut removed = 0;
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || current.as_ref() == Some(&file.path()) {
                continue;
            }
            fs::remove_file(file.path()).map_err(|source| Error::Io {
                action: format!("remove stale checkpoint {}", file.path().display()),
                source,
            })?;
            removed += 1;
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
    pub fn remove_unrecorded_files(&self, lake: &Path) -> Result<usize> {
        let prefix = format!("{}-p{:03}-g", self.source, self.partition);
        let rollups = lake.join(ROLLUPS_DIR);
        let Ok(hours) = fs::read_dir(&rollups) else {
            return Ok(0);
        };
        let recorded: std::collections::HashSet<PathBuf> = self
            .sealed
            .values()
            .map(|sealed| lake.join(&sealed.file))
            .collect();
        let mut removed = 0;
        for hour in hours.flatten() {
            let Ok(files) = fs::read_dir(hour.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if !name.starts_with(&prefix) || recorded.contains(&file.path()) {
                    continue;
                }
                fs::remove_file(file.path()).map_err(|source| Error::Io {
                    action: format!("remove unrecorded file {}", file.path().display()),
                    source,
                })?;
                tracing::warn!(file = %file.path().display(), "removed a rollup file the manifest does not name");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Checkpoint files of a partition start with this (`p007.open-`).
fn checkpoint_prefix(partition: i32) -> String {
    format!("p{partition:03}.open-")
}
