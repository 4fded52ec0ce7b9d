//! Record framing: how records sit in a segment file, and how a reader finds them again
//! after damage.
//!
//! ```text
//! offset  size  field
//! 0       4     marker F5 'T' 'S' 01   (0xF5 occurs in no UTF-8 text; 01 is the format)
//! 4       4     payload length n, u32 little-endian, at most MAX_PAYLOAD
//! 8       4     CRC-32 (crc32fast) of bytes 4..8, byte 12 and the payload
//! 12      1     record type: 1 a sample, 2 the agent's checkpoint
//! 13      n     payload
//! ```
//!
//! A record is valid when its marker is there, its length fits the readable bytes and the
//! checksum matches; the checksum covers the length, so a damaged length fails it too.
//! After an invalid record the reader does not trust any length it read: it looks for the
//! next marker whose record is valid, one byte further on each time, and reports the bytes
//! in between as one damaged region. A region counts the markers found in it as its
//! records (at least one): exact for records whose marker survived, a lower bound where
//! markers were overwritten too.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// The first four bytes of every record.
pub(crate) const MARKER: [u8; 4] = [0xF5, b'T', b'S', 1];
/// Marker, length, checksum and type.
pub(crate) const HEADER_LEN: usize = 13;
/// The longest payload a valid record has: a damaged length beyond it is refused at once.
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;

pub(crate) const SAMPLE: u8 = 1;
pub(crate) const CHECKPOINT: u8 = 2;

/// Bytes read from a segment at once.
const READ_CHUNK: usize = 4 << 20;

/// Appends one record to `out`, its payload written by `write_payload`; returns its length.
pub(crate) fn append_record(
    out: &mut Vec<u8>,
    record_type: u8,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = out.len();
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0; 8]);
    out.push(record_type);
    write_payload(out);
    // The writer refuses a longer payload after this returns (readers would skip it).
    let payload_len = out.len() - start - HEADER_LEN;
    out[start + 4..start + 8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = checksum(&out[start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// A checkpoint record's payload: the offset in its segment where the append that wrote
/// it began (u64 little-endian), then the agent's bytes.
pub(crate) fn append_checkpoint(out: &mut Vec<u8>, append_start: u64, checkpoint: &[u8]) -> usize {
    append_record(out, CHECKPOINT, |payload| {
        payload.extend_from_slice(&append_start.to_le_bytes());
        payload.extend_from_slice(checkpoint);
    })
}

/// The length of the record [`append_checkpoint`] writes for `checkpoint_len` bytes.
pub(crate) const fn checkpoint_record_len(checkpoint_len: usize) -> usize {
    HEADER_LEN + 8 + checkpoint_len
}

/// The append start and the agent's bytes of a checkpoint payload.
pub(crate) fn read_checkpoint(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (start, bytes) = payload.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*start), bytes))
}

/// The checksum of a whole record (header included, whose marker and checksum it skips).
fn checksum(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[4..8]);
    hasher.update(&record[12..]);
    hasher.finalize()
}

/// What a segment holds next.
#[derive(Debug)]
pub(crate) enum Frame<'w> {
    Record {
        offset: u64,
        record_type: u8,
        payload: &'w [u8],
    },
    /// Bytes with no valid record, up to the next valid one or the end.
    Damaged {
        offset: u64,
        bytes: u64,
        records: u64,
    },
}

impl Frame<'_> {
    /// Where the frame starts in its segment.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Frame::Record { offset, .. } | Frame::Damaged { offset, .. } => *offset,
        }
    }

    /// The bytes of the segment this frame covers.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Frame::Record { payload, .. } => (HEADER_LEN + payload.len()) as u64,
            Frame::Damaged { bytes, .. } => *bytes,
        }
    }
}

/// The frames of one segment from an offset up to a limit (the durable end), read
/// through a window of the file.
pub(crate) struct Frames<'a> {
    file: &'a File,
    window: &'a mut Vec<u8>,
    /// The file offset of `window[0]`.
    window_start: u64,
    next: u64,
    limit: u64,
}

impl<'a> Frames<'a> {
    /// `window` is only a buffer to reuse: whatever it holds is discarded.
    pub(crate) fn new(file: &'a File, window: &'a mut Vec<u8>, from: u64, limit: u64) -> Self {
        window.clear();
        Self {
            file,
            window,
            window_start: from,
            next: from,
            limit,
        }
    }

    /// The offset after the last frame returned.
    pub(crate) fn position(&self) -> u64 {
        self.next
    }

    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        if self.next >= self.limit {
            return Ok(None);
        }
        let offset = self.next;
        if let Some((record_type, payload_len)) = self.valid_record_at(offset)? {
            self.next = offset + (HEADER_LEN + payload_len) as u64;
            let start = (offset - self.window_start) as usize + HEADER_LEN;
            return Ok(Some(Frame::Record {
                offset,
                record_type,
                payload: &self.window[start..start + payload_len],
            }));
        }
        let mut records = u64::from(self.marker_at(offset)?);
        let mut search_from = offset + 1;
        let resume_at = loop {
            let Some(candidate) = self.find_marker(search_from)? else {
                break self.limit;
            };
            if self.valid_record_at(candidate)?.is_some() {
                break candidate;
            }
            records += 1;
            search_from = candidate + 1;
        };
        self.next = resume_at;
        Ok(Some(Frame::Damaged {
            offset,
            bytes: resume_at - offset,
            records: records.max(1),
        }))
    }

    /// The type and payload length of the record at `offset`, if one is valid there.
    fn valid_record_at(&mut self, offset: u64) -> io::Result<Option<(u8, usize)>> {
        if !self.marker_at(offset)? || !self.load(offset, HEADER_LEN)? {
            return Ok(None);
        }
        let start = (offset - self.window_start) as usize;
        let header = &self.window[start..start + HEADER_LEN];
        let payload_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if payload_len > MAX_PAYLOAD || !self.load(offset, HEADER_LEN + payload_len)? {
            return Ok(None);
        }
        let start = (offset - self.window_start) as usize;
        let record = &self.window[start..start + HEADER_LEN + payload_len];
        let stored = u32::from_le_bytes([record[8], record[9], record[10], record[11]]);
        if checksum(record) != stored {
            return Ok(None);
        }
        Ok(Some((record[12], payload_len)))
    }

    fn marker_at(&mut self, offset: u64) -> io::Result<bool> {
        if !self.load(offset, MARKER.len())? {
            return Ok(false);
        }
        let start = (offset - self.window_start) as usize;
        Ok(self.window[start..start + MARKER.len()] == MARKER)
    }

    /// The first offset at or after `from` where a marker starts.
    fn find_marker(&mut self, mut from: u64) -> io::Result<Option<u64>> {
        loop {
            if !self.load(from, MARKER.len())? {
                return Ok(None);
            }
            let start = (from - self.window_start) as usize;
            let found = self.window[start..]
                .windows(MARKER.len())
                .position(|bytes| bytes == MARKER);
            if let Some(at) = found {
                return Ok(Some(from + at as u64));
            }
            // Go on from the last bytes of the window, which may begin a marker.
            from = self.window_start + (self.window.len() - (MARKER.len() - 1)) as u64;
        }
    }

    /// Makes `offset..offset + length` readable in the window; false if it passes the limit.
    fn load(&mut self, offset: u64, length: usize) -> io::Result<bool> {
        let end = offset.saturating_add(length as u64);
        if end > self.limit {
            return Ok(false);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset >= self.window_start && end <= window_end {
            return Ok(true);
        }
        // Keep what the new window shares with the old one, read the rest.
        if offset >= self.window_start && offset < window_end {
            let keep_from = (offset - self.window_start) as usize;
            self.window.copy_within(keep_from.., 0);
            self.window.truncate(self.window.len() - keep_from);
        } else {
            self.window.clear();
        }
        self.window_start = offset;
        let have = self.window.len() as u64;
        let want = (length.max(READ_CHUNK) as u64).min(self.limit - offset);
        let mut reader = self.file;
        reader.seek(SeekFrom::Start(offset + have))?;
        let missing = want - have;
        self.window.reserve(missing as usize);
        let read = reader.take(missing).read_to_end(self.window)?;
        if (read as u64) < missing {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends at {} bytes, before its durable length {}",
                    offset + have + read as u64,
                    self.limit
                ),
            ));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A frame as (offset, payload) or (offset, (damaged bytes, records)).
    type Found = (u64, Result<Vec<u8>, (u64, u64)>);

    fn frames_of(bytes: &[u8]) -> Vec<Found> {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(bytes).expect("write");
        let mut window = Vec::new();
        let mut frames = Frames::new(&file, &mut window, 0, bytes.len() as u64);
        let mut found = Vec::new();
        while let Some(frame) = frames.next_frame().expect("read") {
            found.push(match frame {
                Frame::Record {
                    offset, payload, ..
                } => (offset, Ok(payload.to_vec())),
                Frame::Damaged {
                    offset,
                    bytes,
                    records,
                } => (offset, Err((bytes, records))),
            });
        }
        found
    }

    fn records(payloads: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for payload in payloads {
            offsets.push(bytes.len() as u64);
            append_record(&mut bytes, SAMPLE, |out| out.extend_from_slice(payload));
        }
        offsets.push(bytes.len() as u64);
        (bytes, offsets)
    }

    #[test]
    fn valid_records_are_read_back_in_order() {
        let (bytes, offsets) = records(&[b"one", b"", b"three"]);
        assert_eq!(
            frames_of(&bytes),
            vec![
                (offsets[0], Ok(b"one".to_vec())),
                (offsets[1], Ok(Vec::new())),
                (offsets[2], Ok(b"three".to_vec())),
            ]
        );
    }

    #[test]
    fn a_damaged_length_is_skipped_up_to_the_next_valid_record() {
        for length in [0u32, 1, 40, u32::MAX] {
            let (mut bytes, offsets) = records(&[b"first", b"second", b"third"]);
            let at = offsets[1] as usize + 4;
            bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
            assert_eq!(
                frames_of(&bytes),
                vec![
                    (offsets[0], Ok(b"first".to_vec())),
                    (offsets[1], Err((offsets[2] - offsets[1], 1))),
                    (offsets[2], Ok(b"third".to_vec())),
                ],
                "length {length}"
            );
        }
    }

    #[test]
    fn a_marker_inside_a_damaged_payload_does_not_end_the_damage() {
        let mut inner = MARKER.to_vec();
        inner.extend_from_slice(b"looks like a record");
        let (mut bytes, offsets) = records(&[&inner, b"after"]);
        bytes[offsets[0] as usize + HEADER_LEN + 10] ^= 1;
        assert_eq!(
            frames_of(&bytes),
            vec![
                (offsets[0], Err((offsets[1], 2))),
                (offsets[1], Ok(b"after".to_vec())),
            ]
        );
    }

    #[test]
    fn damage_reaching_the_end_is_one_region() {
        let (mut bytes, offsets) = records(&[b"kept", b"torn"]);
        bytes.truncate(bytes.len() - 2);
        let end = bytes.len() as u64;
        assert_eq!(
            frames_of(&bytes),
            vec![
                (offsets[0], Ok(b"kept".to_vec())),
                (offsets[1], Err((end - offsets[1], 1))),
            ]
        );
    }

    #[test]
    fn records_larger_than_the_read_chunk_are_read_whole() {
        let big = vec![7u8; READ_CHUNK + 1000];
        let (mut bytes, offsets) = records(&[b"small", &big, b"after"]);
        // Damage the big one: the search for the next marker crosses window reloads.
        bytes[offsets[1] as usize + HEADER_LEN + READ_CHUNK / 2] ^= 1;
        let found = frames_of(&bytes);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1], (offsets[1], Err((offsets[2] - offsets[1], 1))));
        assert_eq!(found[2], (offsets[2], Ok(b"after".to_vec())));
        let (bytes, _) = records(&[b"small", &big]);
        assert_eq!(frames_of(&bytes)[1].1, Ok(big));
    }
}
