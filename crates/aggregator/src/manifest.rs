//! The per-partition manifest: which files are the sealed hours of one source partition,
//! and where to resume reading it.
//!
//! It lives in the lake next to the data (`_state/<source>/p<partition>.json`), so
//! whichever instance owns the partition next finds it there. It is replaced atomically
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
use crate::write::{ROLLUPS_DIR, TEMP_SUFFIX, file_name, hour_dir, sync_dir};

/// Where manifests live under the lake root.
pub const STATE_DIR: &str = "_state";

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
        fs::rename(&temp, &path).map_err(|e| io_error("rename into place", e))?;
        sync_dir(directory)
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
