//! The acknowledgement cursor: the spool position before which the broker acknowledged
//! everything, in a small file replaced whole (written to a temporary file, synced, renamed).
//!
//! The file is one line, `tally-spool-cursor v1 segment=3 offset=1234 crc=0a1b2c3d`, the
//! checksum over `segment=3 offset=1234`. The rename is not followed by a sync of the
//! directory: after a crash the previous cursor may come back, which lags, and lagging
//! only sends acknowledged samples again. A missing or unreadable cursor starts at the
//! oldest segment, which lags too; the cursor never runs ahead.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{SpoolError, SpoolPosition};

pub(super) const FILE_NAME: &str = "ack.cursor";
pub(super) const TEMP_NAME: &str = "ack.cursor.tmp";
const PREFIX: &str = "tally-spool-cursor v1 ";

/// What the cursor file says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Loaded {
    Missing,
    At(SpoolPosition),
    /// The file is there but does not read; why.
    Unreadable(String),
}

pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

pub(super) fn load(dir: &Path) -> Result<Loaded, SpoolError> {
    let path = path(dir);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(source) => {
            return Err(SpoolError::Io {
                action: "read the acknowledgement cursor",
                path,
                source,
            });
        }
    };
    Ok(match parse(&text) {
        Some(position) => Loaded::At(position),
        None => Loaded::Unreadable(format!(
            "{} holds {:?}, not a cursor line",
            path.display(),
            String::from_utf8_lossy(&text[..text.len().min(120)])
        )),
    })
}

pub(super) fn store(dir: &Path, position: SpoolPosition) -> Result<(), SpoolError> {
    let temp = dir.join(TEMP_NAME);
    let io_error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io {
            action,
            path,
            source,
        }
    };
    let mut file =
        fs::File::create(&temp).map_err(io_error("create the acknowledgement cursor", &temp))?;
    file.write_all(render(position).as_bytes())
        .map_err(io_error("write the acknowledgement cursor", &temp))?;
    file.sync_data()
        .map_err(io_error("sync the acknowledgement cursor", &temp))?;
    let target = path(dir);
    fs::rename(&temp, &target).map_err(io_error("replace the acknowledgement cursor", &target))
}

fn fields(position: SpoolPosition) -> String {
    format!("segment={} offset={}", position.segment, position.offset)
}

fn render(position: SpoolPosition) -> String {
    let fields = fields(position);
    format!(
        "{PREFIX}{fields} crc={:08x}\n",
        crc32fast::hash(fields.as_bytes())
    )
}

fn parse(bytes: &[u8]) -> Option<SpoolPosition> {
    let line = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    let rest = line.strip_prefix(PREFIX)?;
    let (fields_text, crc_text) = rest.rsplit_once(" crc=")?;
    let crc = u32::from_str_radix(crc_text, 16).ok()?;
    if crc32fast::hash(fields_text.as_bytes()) != crc {
        return None;
    }
    let (segment_text, offset_text) = fields_text.split_once(' ')?;
    let position = SpoolPosition {
        segment: segment_text.strip_prefix("segment=")?.parse().ok()?,
        offset: offset_text.strip_prefix("offset=")?.parse().ok()?,
    };
    // Rendering it again must give the same text: no signs, zeros or spaces slip through.
    (fields(position) == fields_text).then_some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_cursor_loads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(load(dir.path()).expect("load"), Loaded::Missing);
        let position = SpoolPosition {
            segment: 12,
            offset: 345_678,
        };
        store(dir.path(), position).expect("store");
        assert_eq!(load(dir.path()).expect("load"), Loaded::At(position));
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    #[test]
    fn a_changed_digit_is_caught_by_the_checksum() {
        let position = SpoolPosition {
            segment: 1,
            offset: 1000,
        };
        let text = render(position);
        assert_eq!(parse(text.as_bytes()), Some(position));
        let changed = text.replace("offset=1000", "offset=9000");
        assert_eq!(parse(changed.as_bytes()), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(&text.as_bytes()[..text.len() - 3]), None);
    }
}
