//! The durable spool: every sample on disk, checksummed and fsynced, before it counts as
//! taken, and removed only once the broker acknowledged it.
//!
//! # Design
//!
//! **Segments.** The spool is a directory of append-only files,
//! `<dir>/00000000000000000001.spool`, `...02.spool`, ..., each a sequence of checksummed
//! records (the framing is in [`record`], a sample's payload in [`codec`]). The writer
//! appends to the newest; when it has reached `segment_bytes`, the next append starts a
//! new one (an append is never split, so a segment passes the size by at most one append).
//!
//! **Group fsync.** [`SpoolWriter::append`] encodes all its records into one buffer and
//! writes it with one `write` and one `sync_data`; only then does it return, count the
//! samples as pending and move the durable end that readers see. A reader never reads
//! past that end, so it never sees half an append.
//!
//! **The bound.** `max_bytes` bounds the unacknowledged bytes. An append takes samples in
//! order while they fit and refuses the rest: the oldest data is kept, the caller learns
//! exactly how many samples were refused (to raise the alarm), and acknowledging makes
//! room again. The disk holds at most the bound plus the acknowledged start of the oldest
//! segment (under one segment), plus one append.
//!
//! **Reading and acknowledging.** [`SpoolReader::read_batch`] returns the oldest durable
//! samples after its position and the position after them; [`SpoolReader::acknowledge`]
//! with that position persists it as the cursor (see [`cursor`]) and deletes the segments
//! wholly before it. A restart reads from the persisted cursor again, so everything not
//! acknowledged is delivered again (a duplicate, which the aggregator counts once).
//!
//! **Damage.** A record that fails its checksum is skipped up to the next valid record and
//! reported as a [`Corruption`] (segment file, offset, bytes, records), and so is a record
//! whose checksum passes but whose payload is no sample; everything after it is still
//! delivered. The one exception is the end of the newest segment: invalid bytes there,
//! with no valid record after them, are an append a crash cut short (it never returned,
//! so none of its samples counted as taken). [`open`] truncates them and says so in
//! [`Recovery::torn_tail`]. A crash can cut a large write between pages, leaving whole
//! records of the append before its torn bytes: for a writer that carries on from its
//! newest checkpoint ([`SpoolConfig::resumes_from_checkpoint`], the agent), they are cut
//! too, back to the end of the newest trusted checkpoint (never before the cursor). The
//! agent then samples those minutes again from that checkpoint: kept, they were either a
//! second, different sample of a minute (a live source's counters read later) or, for
//! the agent's first append, minutes with no baseline saved, after which the agent
//! started its counters afresh.
//!
//! **The agent's checkpoint.** An append may carry the agent's checkpoint (its counters
//! and source position): it is written as the append's last record, in the same fsync as
//! the samples, and [`open`] returns the newest one. A checkpoint is trusted only when
//! every byte its append wrote before it is valid, since a crash can persist the end of a
//! write without a page in its middle; otherwise the previous one is returned and the
//! agent samples those minutes again. Every segment begins with a copy of the newest
//! checkpoint, so deleting acknowledged segments never loses it.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tally_model::Sample;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

mod codec;
mod cursor;
mod record;

pub use codec::DecodeError;
use record::{Frame, Frames};

/// 1 GiB: about a week of a 1,000-VM host's samples.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// 64 MiB: acknowledged data is deleted a segment at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The largest checkpoint an append takes.
pub const MAX_CHECKPOINT_BYTES: usize = record::MAX_PAYLOAD - 8;

const SEGMENT_SUFFIX: &str = ".spool";
const LOCK_NAME: &str = "spool.lock";

/// Where the spool lives and how large it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// The bound on unacknowledged bytes: past it, new samples are refused.
    pub max_bytes: u64,
    /// A segment is closed, and a new one begun, once it holds this many bytes.
    pub segment_bytes: u64,
    /// The writer carries on from its newest checkpoint after a crash (the agent does):
    /// the whole records a torn append left after that checkpoint are cut with its torn
    /// bytes, since the writer takes them again. See [`open`].
    pub resumes_from_checkpoint: bool,
}

impl SpoolConfig {
    /// A spool in `dir` with the default bound (1 GiB) and segment size (64 MiB).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            resumes_from_checkpoint: false,
        }
    }

    pub fn resuming_from_checkpoint(mut self) -> Self {
        self.resumes_from_checkpoint = true;
        self
    }

    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn with_segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.segment_bytes = segment_bytes;
        self
    }
}

/// A place in the spool: a segment and a byte offset in it. Positions order as the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPosition {
    pub segment: u64,
    pub offset: u64,
}

impl fmt::Display for SpoolPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Samples now durable, the first `written` of those given.
    pub written: usize,
    /// Samples refused because the spool is at its bound: the rest of those given.
    pub refused: usize,
    /// Bytes written (records and framing).
    pub bytes: u64,
    /// Whether the checkpoint given was written (not when the spool is at its bound).
    pub checkpoint_written: bool,
}

/// The oldest unacknowledged samples, and where they end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolBatch {
    pub samples: Vec<Sample>,
    /// Acknowledge this once the broker took every sample of the batch.
    pub end: SpoolPosition,
    /// Damaged records passed over on the way, in order.
    pub skipped: Vec<Corruption>,
}

/// Records the reader skipped: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file.
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// Records lost: the record markers found in the bytes, at least one. Exact when the
    /// markers survived, a lower bound when they were overwritten too.
    pub records: u64,
    pub reason: CorruptionReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorruptionReason {
    /// No valid record: a checksum or a length does not match.
    Checksum,
    /// The checksum matches but the payload is no sample.
    NotASample(DecodeError),
    /// The checksum matches but the record type is unknown (a newer agent wrote it?).
    UnknownRecordType(u8),
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {} bytes, about {} record(s), skipped: ",
            self.path.display(),
            self.offset,
            self.bytes,
            self.records
        )?;
        match &self.reason {
            CorruptionReason::Checksum => f.write_str("no valid record (checksum mismatch)"),
            CorruptionReason::NotASample(error) => {
                write!(
                    f,
                    "the checksum matches but the payload is no sample: {error}"
                )
            }
            CorruptionReason::UnknownRecordType(record_type) => {
                write!(
                    f,
                    "the checksum matches but record type {record_type} is unknown"
                )
            }
        }
    }
}

/// What [`open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged samples, to be delivered again (damaged records counted as samples).
    pub pending_samples: u64,
    pub pending_bytes: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Where reading starts: the persisted cursor, or the oldest segment without one.
    pub resume_at: SpoolPosition,
    /// Why the cursor file was not used, when it was there but did not read.
    pub cursor_problem: Option<String>,
    /// The cut-short append truncated at the end of the newest segment.
    pub torn_tail: Option<TornTail>,
    /// Damaged records past the cursor, which the reader will report as it passes them.
    pub damaged_records: u64,
    /// Checkpoints not trusted because bytes of their append before them are damaged.
    pub untrusted_checkpoints: u64,
    /// The agent's newest trusted checkpoint.
    pub checkpoint: Option<Vec<u8>>,
}

/// Bytes at the end of the newest segment that were no record: an append cut short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// Figures for metrics, shared by both halves and updated as they go.
#[derive(Debug, Default)]
pub struct SpoolStats {
    pending_samples: AtomicU64,
    pending_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    segments: AtomicU64,
    refused_total: AtomicU64,
    corrupt_records_total: AtomicU64,
    corrupt_bytes_total: AtomicU64,
}

impl SpoolStats {
    /// Samples written and not yet acknowledged.
    pub fn pending_samples(&self) -> u64 {
        self.pending_samples.load(Ordering::Relaxed)
    }

    /// Bytes written and not yet acknowledged: what the bound applies to.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    pub fn segments(&self) -> u64 {
        self.segments.load(Ordering::Relaxed)
    }

    /// Samples refused at the bound since the spool was opened.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Damaged records the reader skipped since the spool was opened.
    pub fn corrupt_records_total(&self) -> u64 {
        self.corrupt_records_total.load(Ordering::Relaxed)
    }

    pub fn corrupt_bytes_total(&self) -> u64 {
        self.corrupt_bytes_total.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    fn subtract(counter: &AtomicU64, amount: u64) {
        // Never below zero, even when a damaged region's estimate overshoots.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
            Some(value.saturating_sub(amount))
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("invalid spool configuration: {0}")]
    Config(String),
    #[error("cannot create the spool directory {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("the spool directory {} is not writable ({source}); give the agent's user write access to it", dir.display())]
    NotWritable { dir: PathBuf, source: io::Error },
    #[error("the spool directory {} is in use by another process (it holds {LOCK_NAME}); run one agent per spool directory", dir.display())]
    Locked { dir: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} holds data although the spool was about to start it; move it aside", path.display())]
    SegmentExists { path: PathBuf },
    #[error(
        "the checkpoint of {bytes} bytes is larger than the spool's limit of {MAX_CHECKPOINT_BYTES} bytes"
    )]
    CheckpointTooLarge { bytes: usize },
    #[error(
        "the sample of resource {resource_id} at {minute} encodes to {bytes} bytes, more than a spool record holds"
    )]
    SampleTooLarge {
        resource_id: String,
        minute: String,
        bytes: usize,
    },
    #[error(
        "cannot acknowledge {position}: it is not the end of a batch read since {acknowledged} (read up to {read})"
    )]
    NotDelivered {
        position: SpoolPosition,
        acknowledged: SpoolPosition,
        read: SpoolPosition,
    },
}

/// What the two halves share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// The writer's segment and its durable length: readers stop there.
    durable: Mutex<SpoolPosition>,
    new_data: Notify,
    stats: Arc<SpoolStats>,
    /// Held (locked) while either half lives.
    _lock: File,
}

impl Shared {
    fn durable(&self) -> SpoolPosition {
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, durable: SpoolPosition) {
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner) = durable;
        self.new_data.notify_one();
    }
}

/// Opens (or creates) the spool in `config.dir`: truncates a torn tail, finds the cursor,
/// the pending samples and the newest checkpoint, and returns the two halves.
pub fn open(config: &SpoolConfig) -> Result<(SpoolWriter, SpoolReader, Recovery), SpoolError> {
    if config.max_bytes == 0 || config.segment_bytes == 0 {
        return Err(SpoolError::Config(format!(
            "max_bytes ({}) and segment_bytes ({}) must be above zero",
            config.max_bytes, config.segment_bytes
        )));
    }
    let dir = config.dir.clone();
    fs::create_dir_all(&dir).map_err(|source| SpoolError::CreateDir {
        dir: dir.clone(),
        source,
    })?;
    check_writable(&dir)?;
    let lock = lock(&dir)?;
    let mut segments = list_segments(&dir)?;
    let mut recovery = Recovery::default();

    let loaded = match cursor::load(&dir)? {
        cursor::Loaded::At(position) => Some(position),
        cursor::Loaded::Missing => None,
        cursor::Loaded::Unreadable(why) => {
            tracing::warn!(%why, "spool cursor unreadable; reading from the oldest segment, acknowledged samples are sent again");
            recovery.cursor_problem = Some(why);
            None
        }
    };
    let oldest = segments.first().copied();
    let mut resume_at = loaded.unwrap_or(SpoolPosition {
        segment: oldest.unwrap_or(1),
        offset: 0,
    });
    if resume_at.segment == 0 || oldest.is_some_and(|oldest| resume_at.segment < oldest) {
        // Older than anything left (the cursor's segment was deleted): start at the oldest.
        resume_at = SpoolPosition {
            segment: oldest.unwrap_or(1),
            offset: 0,
        };
    }
    // Segments before the cursor were acknowledged; a crash came before their deletion.
    for &segment in segments
        .iter()
        .filter(|segment| **segment < resume_at.segment)
    {
        let path = segment_path(&dir, segment);
        fs::remove_file(&path).map_err(io_error("delete the acknowledged segment", &path))?;
    }
    segments.retain(|segment| *segment >= resume_at.segment);
    match segments.first() {
        // The cursor's segment is missing: what follows it is where reading goes on.
        Some(&first) if first != resume_at.segment => {
            resume_at = SpoolPosition {
                segment: first,
                offset: 0,
            };
        }
        Some(_) => {}
        None => {
            let path = segment_path(&dir, resume_at.segment);
            File::create(&path).map_err(io_error("create the segment", &path))?;
            sync_dir(&dir)?;
            segments.push(resume_at.segment);
            resume_at.offset = 0;
        }
    }

    let newest = *segments.last().unwrap_or(&resume_at.segment);
    let mut window = Vec::new();
    let mut disk_bytes = 0;
    let mut newest_length = 0;
    for &segment in &segments {
        let path = segment_path(&dir, segment);
        let file = File::open(&path).map_err(io_error("open the segment", &path))?;
        let mut length = file
            .metadata()
            .map_err(io_error("read the length of", &path))?
            .len();
        let mut torn = None;
        // Where the last damaged region of this segment ends.
        let mut damage_end = 0;
        // Where this segment's newest trusted checkpoint ends, and the pending samples
        // and damaged records counted after it: what a torn append may take back.
        let mut checkpoint_end = 0;
        let (mut samples_after_checkpoint, mut damaged_after_checkpoint) = (0, 0);
        let mut frames = Frames::new(&file, &mut window, 0, length);
        while let Some(frame) = frames
            .next_frame()
            .map_err(io_error("read the segment", &path))?
        {
            let (frame_offset, frame_length) = (frame.offset(), frame.len());
            let pending = SpoolPosition {
                segment,
                offset: frame_offset,
            } >= resume_at;
            match frame {
                Frame::Record {
                    record_type: record::SAMPLE,
                    ..
                } => {
                    recovery.pending_samples += u64::from(pending);
                    samples_after_checkpoint += u64::from(pending);
                }
                Frame::Record {
                    record_type: record::CHECKPOINT,
                    offset,
                    payload,
                } => match record::read_checkpoint(payload) {
                    Some((append_start, bytes))
                        if damage_end <= append_start && append_start <= offset =>
                    {
                        let newest_checkpoint = recovery.checkpoint.get_or_insert_with(Vec::new);
                        newest_checkpoint.clear();
                        newest_checkpoint.extend_from_slice(bytes);
                        checkpoint_end = offset + frame_length;
                        (samples_after_checkpoint, damaged_after_checkpoint) = (0, 0);
                    }
                    _ => {
                        tracing::warn!(segment = %path.display(), offset, "spool checkpoint not trusted: bytes of its append before it are damaged");
                        recovery.untrusted_checkpoints += 1;
                    }
                },
                Frame::Record { .. } => {
                    recovery.damaged_records += u64::from(pending);
                    damaged_after_checkpoint += u64::from(pending);
                }
                Frame::Damaged {
                    offset,
                    bytes,
                    records,
                } => {
                    if segment == newest && offset + bytes == length {
                        let cursor = if segment == resume_at.segment {
                            resume_at.offset
                        } else {
                            0
                        };
                        let cut = if config.resumes_from_checkpoint {
                            checkpoint_end.max(cursor).min(offset)
                        } else {
                            offset
                        };
                        if cut < offset {
                            // Everything counted after the checkpoint was pending (at or
                            // after the cursor), and all of it is at or after `cut`.
                            recovery.pending_samples -= samples_after_checkpoint;
                            recovery.damaged_records -= damaged_after_checkpoint;
                        }
                        torn = Some(TornTail {
                            path: path.clone(),
                            offset: cut,
                            bytes: length - cut,
                        });
                    } else {
                        damage_end = offset + frame_length;
                        if pending {
                            recovery.damaged_records += records;
                            recovery.pending_samples += records;
                            samples_after_checkpoint += records;
                            damaged_after_checkpoint += records;
                        }
                    }
                }
            }
        }
        if let Some(tail) = torn {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open for truncation", &path))?;
            file.set_len(tail.offset)
                .and_then(|()| file.sync_data())
                .map_err(io_error("truncate the torn tail of", &path))?;
            tracing::info!(segment = %path.display(), offset = tail.offset, bytes = tail.bytes, "spool tail torn by a crash mid-append truncated; its append never returned");
            length = tail.offset;
            recovery.torn_tail = Some(tail);
        }
        if segment == resume_at.segment && resume_at.offset > length {
            tracing::warn!(segment = %path.display(), cursor = resume_at.offset, length, "spool cursor past the end of its segment; reading from the end");
            resume_at.offset = length;
        }
        recovery.pending_bytes += if segment == resume_at.segment {
            length - resume_at.offset
        } else {
            length
        };
        disk_bytes += length;
        newest_length = length;
    }
    if recovery.damaged_records > 0 {
        tracing::warn!(
            records = recovery.damaged_records,
            "spool holds damaged records; they are reported and skipped as they are read"
        );
    }
    recovery.segments = segments.len();
    recovery.resume_at = resume_at;

    let path = segment_path(&dir, newest);
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_error("open for appending", &path))?;
    file.seek(SeekFrom::Start(newest_length))
        .map_err(io_error("seek to the end of", &path))?;
    let stats = Arc::new(SpoolStats::default());
    stats
        .pending_samples
        .store(recovery.pending_samples, Ordering::Relaxed);
    stats
        .pending_bytes
        .store(recovery.pending_bytes, Ordering::Relaxed);
    stats.disk_bytes.store(disk_bytes, Ordering::Relaxed);
    stats
        .segments
        .store(segments.len() as u64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        dir,
        durable: Mutex::new(SpoolPosition {
            segment: newest,
            offset: newest_length,
        }),
        new_data: Notify::new(),
        stats,
        _lock: lock,
    });
    let writer = SpoolWriter {
        shared: Arc::clone(&shared),
        max_bytes: config.max_bytes,
        segment_bytes: config.segment_bytes,
        segment: newest,
        path,
        file,
        length: newest_length,
        damaged_past_length: false,
        newest_checkpoint: recovery.checkpoint.clone(),
        buffer: Vec::new(),
    };
    let reader = SpoolReader {
        shared,
        position: resume_at,
        acknowledged: resume_at,
        segments: segments.into_iter().collect(),
        open_segment: None,
        window,
        delivered: VecDeque::new(),
    };
    Ok((writer, reader, recovery))
}

/// The half that appends: the sampler's, on a blocking thread.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    max_bytes: u64,
    segment_bytes: u64,
    segment: u64,
    path: PathBuf,
    file: File,
    /// Durable bytes of the segment; the file's write position.
    length: u64,
    /// A write or sync failed: bytes past `length` may be garbage and must go first.
    damaged_past_length: bool,
    newest_checkpoint: Option<Vec<u8>>,
    buffer: Vec<u8>,
}

impl fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("segment", &self.path)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl SpoolWriter {
    /// Appends `samples` (and the agent's `checkpoint`, after them) with one write and one
    /// fsync, and returns once they are durable. At the bound, the samples that do not fit
    /// are refused (counted, never written); an error means nothing was taken.
    pub fn append(
        &mut self,
        samples: &[Sample],
        checkpoint: Option<&[u8]>,
    ) -> Result<Appended, SpoolError> {
        if let Some(bytes) = checkpoint
            && bytes.len() > MAX_CHECKPOINT_BYTES
        {
            return Err(SpoolError::CheckpointTooLarge { bytes: bytes.len() });
        }
        if samples.is_empty() && checkpoint.is_none() {
            return Ok(Appended::default());
        }
        if self.damaged_past_length {
            self.cut_back_to_durable_length()?;
        }
        if self.length >= self.segment_bytes {
            self.start_next_segment()?;
        }

        self.buffer.clear();
        if self.length == 0
            && let Some(newest) = &self.newest_checkpoint
        {
            record::append_checkpoint(&mut self.buffer, 0, newest);
        }
        let append_start = self.length + self.buffer.len() as u64;
        let mut room = self
            .max_bytes
            .saturating_sub(self.shared.stats.pending_bytes());
        let checkpoint_written = match checkpoint {
            Some(bytes) if record::checkpoint_record_len(bytes.len()) as u64 <= room => {
                room -= record::checkpoint_record_len(bytes.len()) as u64;
                true
            }
            _ => false,
        };
        let mut written = 0;
        let mut used = 0;
        for sample in samples {
            let record_start = self.buffer.len();
            let record_len = record::append_record(&mut self.buffer, record::SAMPLE, |out| {
                codec::encode_sample(sample, out);
            });
            if record_len - record::HEADER_LEN > record::MAX_PAYLOAD {
                return Err(SpoolError::SampleTooLarge {
                    resource_id: sample.resource_id.clone(),
                    minute: sample.minute.to_string(),
                    bytes: record_len,
                });
            }
            if used + record_len as u64 > room {
                self.buffer.truncate(record_start);
                break;
            }
            used += record_len as u64;
            written += 1;
        }
        let refused = samples.len() - written;
        SpoolStats::add(&self.shared.stats.refused_total, refused as u64);
        if written == 0 && !checkpoint_written {
            return Ok(Appended {
                refused,
                ..Appended::default()
            });
        }
        if let Some(bytes) = checkpoint.filter(|_| checkpoint_written) {
            record::append_checkpoint(&mut self.buffer, append_start, bytes);
        }

        let wrote = self
            .file
            .write_all(&self.buffer)
            .map_err(io_error("append to", &self.path))
            .and_then(|()| self.file.sync_data().map_err(io_error("fsync", &self.path)));
        if let Err(error) = wrote {
            self.damaged_past_length = true;
            return Err(error);
        }
        let bytes = self.buffer.len() as u64;
        self.length += bytes;
        if let Some(taken) = checkpoint.filter(|_| checkpoint_written) {
            let newest = self.newest_checkpoint.get_or_insert_with(Vec::new);
            newest.clear();
            newest.extend_from_slice(taken);
        }
        let stats = &self.shared.stats;
        SpoolStats::add(&stats.pending_samples, written as u64);
        SpoolStats::add(&stats.pending_bytes, bytes);
        SpoolStats::add(&stats.disk_bytes, bytes);
        self.shared.publish(SpoolPosition {
            segment: self.segment,
            offset: self.length,
        });
        Ok(Appended {
            written,
            refused,
            bytes,
            checkpoint_written,
        })
    }

    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.shared.stats
    }

    /// After a failed write or fsync: the segment back to its durable length, so the next
    /// append does not follow garbage (after a failed fsync, Linux may have dropped pages
    /// it still reports as written).
    fn cut_back_to_durable_length(&mut self) -> Result<(), SpoolError> {
        self.file
            .set_len(self.length)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.length)))
            .and_then(|_| self.file.sync_data())
            .map_err(io_error("cut back to its durable length", &self.path))?;
        self.damaged_past_length = false;
        Ok(())
    }

    fn start_next_segment(&mut self) -> Result<(), SpoolError> {
        let segment = self.segment + 1;
        let path = segment_path(&self.shared.dir, segment);
        // Not `create_new`: a failed earlier attempt may have left it, empty.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("create the segment", &path))?;
        let length = file
            .metadata()
            .map_err(io_error("read the length of", &path))?
            .len();
        if length != 0 {
            return Err(SpoolError::SegmentExists { path });
        }
        sync_dir(&self.shared.dir)?;
        tracing::debug!(segment = %path.display(), "spool segment started");
        self.segment = segment;
        self.path = path;
        self.file = file;
        self.length = 0;
        SpoolStats::add(&self.shared.stats.segments, 1);
        Ok(())
    }
}

/// The half that reads and acknowledges: the forwarder's.
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// Where the next batch starts.
    position: SpoolPosition,
    /// The persisted cursor.
    acknowledged: SpoolPosition,
    /// Segment files that exist (as far as this reader knows), deleted or not yet.
    segments: BTreeSet<u64>,
    open_segment: Option<(u64, File)>,
    window: Vec<u8>,
    /// Batches read and not yet acknowledged, oldest first.
    delivered: VecDeque<Delivered>,
}

/// A batch handed out: where it ends and what acknowledging it releases.
#[derive(Debug)]
struct Delivered {
    end: SpoolPosition,
    samples: u64,
    bytes: u64,
}

impl fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolReader")
            .field("dir", &self.shared.dir)
            .field("position", &self.position)
            .field("acknowledged", &self.acknowledged)
            .finish_non_exhaustive()
    }
}

impl SpoolReader {
    /// The oldest unacknowledged durable samples after the previous batch, up to
    /// `max_samples` (none when there are none); never waits.
    pub fn read_batch(&mut self, max_samples: usize) -> Result<SpoolBatch, SpoolError> {
        let durable = self.shared.durable();
        let start = self.position;
        let mut batch = SpoolBatch::default();
        let (mut samples_read, mut bytes_read) = (0u64, 0u64);
        while batch.samples.len() < max_samples {
            let segment = self.position.segment;
            let sealed = segment < durable.segment;
            let file = segment_file(&mut self.open_segment, &self.shared.dir, segment)?;
            let limit = if sealed {
                let path = segment_path(&self.shared.dir, segment);
                file.metadata()
                    .map_err(io_error("read the length of", &path))?
                    .len()
            } else {
                durable.offset
            };
            if self.position.offset >= limit {
                if !sealed {
                    break;
                }
                let next = self
                    .segments
                    .range(segment + 1..)
                    .next()
                    .copied()
                    .unwrap_or(segment + 1);
                self.segments.insert(next);
                self.position = SpoolPosition {
                    segment: next,
                    offset: 0,
                };
                continue;
            }
            let mut frames = Frames::new(file, &mut self.window, self.position.offset, limit);
            while batch.samples.len() < max_samples {
                let next = frames.next_frame().map_err(|source| SpoolError::Io {
                    action: "read the segment",
                    path: segment_path(&self.shared.dir, segment),
                    source,
                })?;
                let Some(frame) = next else {
                    break;
                };
                bytes_read += frame.len();
                let corruption = |offset, bytes, records, reason| Corruption {
                    path: segment_path(&self.shared.dir, segment),
                    offset,
                    bytes,
                    records,
                    reason,
                };
                match frame {
                    Frame::Record {
                        record_type: record::SAMPLE,
                        offset,
                        payload,
                    } => {
                        samples_read += 1;
                        match codec::decode_sample(payload) {
                            Ok(sample) => batch.samples.push(sample),
                            Err(error) => batch.skipped.push(corruption(
                                offset,
                                (record::HEADER_LEN + payload.len()) as u64,
                                1,
                                CorruptionReason::NotASample(error),
                            )),
                        }
                    }
                    Frame::Record {
                        record_type: record::CHECKPOINT,
                        ..
                    } => {}
                    Frame::Record {
                        record_type,
                        offset,
                        payload,
                    } => batch.skipped.push(corruption(
                        offset,
                        (record::HEADER_LEN + payload.len()) as u64,
                        1,
                        CorruptionReason::UnknownRecordType(record_type),
                    )),
                    Frame::Damaged {
                        offset,
                        bytes,
                        records,
                    } => {
                        samples_read += records;
                        batch.skipped.push(corruption(
                            offset,
                            bytes,
                            records,
                            CorruptionReason::Checksum,
                        ));
                    }
                }
            }
            self.position.offset = frames.position();
        }
        let stats = &self.shared.stats;
        for skipped in &batch.skipped {
            SpoolStats::add(&stats.corrupt_records_total, skipped.records);
            SpoolStats::add(&stats.corrupt_bytes_total, skipped.bytes);
        }
        if self.position != start {
            self.delivered.push_back(Delivered {
                end: self.position,
                samples: samples_read,
                bytes: bytes_read,
            });
        }
        batch.end = self.position;
        Ok(batch)
    }

    /// The broker acknowledged everything before `end` (a batch's end): persists the
    /// cursor, then deletes the segments wholly before it.
    pub fn acknowledge(&mut self, end: SpoolPosition) -> Result<(), SpoolError> {
        if end <= self.acknowledged {
            return Ok(());
        }
        let Some(index) = self.delivered.iter().position(|batch| batch.end == end) else {
            return Err(SpoolError::NotDelivered {
                position: end,
                acknowledged: self.acknowledged,
                read: self.position,
            });
        };
        cursor::store(&self.shared.dir, end)?;
        self.acknowledged = end;
        let stats = &self.shared.stats;
        for batch in self.delivered.drain(..=index) {
            SpoolStats::subtract(&stats.pending_samples, batch.samples);
            SpoolStats::subtract(&stats.pending_bytes, batch.bytes);
        }
        self.delete_acknowledged_segments()
    }

    /// Resolves when the writer made new samples durable since the last call (at once if
    /// it did in between): the forwarder awaits it when a batch came back empty.
    pub fn notified(&self) -> Notified<'_> {
        self.shared.new_data.notified()
    }

    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.shared.stats
    }

    /// Deletes the segments before the cursor's (retrying those a failure left).
    fn delete_acknowledged_segments(&mut self) -> Result<(), SpoolError> {
        let finished: Vec<u64> = self
            .segments
            .range(..self.acknowledged.segment)
            .copied()
            .collect();
        let mut first_error = None;
        for segment in finished {
            if self
                .open_segment
                .as_ref()
                .is_some_and(|(open, _)| *open == segment)
            {
                self.open_segment = None;
            }
            let path = segment_path(&self.shared.dir, segment);
            let length = fs::metadata(&path).map_or(0, |metadata| metadata.len());
            match fs::remove_file(&path) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    tracing::error!(segment = %path.display(), error = %source, "cannot delete an acknowledged spool segment; retried at the next acknowledgement");
                    first_error.get_or_insert(SpoolError::Io {
                        action: "delete the acknowledged segment",
                        path,
                        source,
                    });
                }
                _ => {
                    tracing::debug!(segment = %path.display(), "acknowledged spool segment deleted");
                    self.segments.remove(&segment);
                    SpoolStats::subtract(&self.shared.stats.disk_bytes, length);
                    SpoolStats::subtract(&self.shared.stats.segments, 1);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

/// The reader's handle on `segment`, opened if it holds another.
fn segment_file<'a>(
    open: &'a mut Option<(u64, File)>,
    dir: &Path,
    segment: u64,
) -> Result<&'a File, SpoolError> {
    let (_, file) = match open.take() {
        Some((held, file)) if held == segment => open.insert((held, file)),
        _ => {
            let path = segment_path(dir, segment);
            let file = File::open(&path).map_err(io_error("open the segment", &path))?;
            open.insert((segment, file))
        }
    };
    Ok(file)
}

/// The segment ids in `dir`, oldest first; other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let entries = fs::read_dir(dir).map_err(io_error("list the spool directory", dir))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list the spool directory", dir))?;
        let name = entry.file_name();
        let Some(digits) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if digits.len() == 20
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && let Ok(segment) = digits.parse::<u64>()
        {
            segments.push(segment);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Creates and removes the cursor's temporary file: a leftover of a crash goes, and a
/// directory the agent cannot write to is named as such before anything else fails.
fn check_writable(dir: &Path) -> Result<(), SpoolError> {
    let probe = dir.join(cursor::TEMP_NAME);
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                SpoolError::NotWritable {
                    dir: dir.to_path_buf(),
                    source,
                }
            }
            _ => SpoolError::Io {
                action: "write a probe file",
                path: probe.clone(),
                source,
            },
        })
}

/// Takes the directory's lock for as long as the returned file is open.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error("create the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(source)) => Err(SpoolError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

/// Makes a created file's name durable.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("fsync the spool directory", dir))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path = path.to_path_buf();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::time::{Duration, Instant};
    use tally_model::{Minute, ResourceKind, ResourceState};

    /// Samples of equal encoded length for `resource` below 100,000 and `minute` below 1,000.
    fn sample(resource: usize, minute: i64) -> Sample {
        Sample {
            minute: Minute::from_unix_minutes(29_000_000 + minute),
            host: "hv-01".to_owned(),
            account_id: "acct-0001".to_owned(),
            resource_id: format!("vm-{resource:06}"),
            kind: ResourceKind::Server,
            sku: "cx22".to_owned(),
            zone: "fsn1".to_owned(),
            state: ResourceState::Running,
            gpus: 0,
            out_external_bytes: 1_000_000 + resource as u64,
            out_internal_bytes: 5,
            in_bytes: 7,
            size_bytes: 0,
            labels: BTreeMap::new(),
        }
    }

    fn samples(range: std::ops::Range<usize>) -> Vec<Sample> {
        range.map(|resource| sample(resource, 0)).collect()
    }

    fn open_in(dir: &Path) -> (SpoolWriter, SpoolReader, Recovery) {
        open(&SpoolConfig::new(dir)).expect("open the spool")
    }

    /// The bytes one sample record of [`sample`] takes.
    fn record_len() -> u64 {
        let mut bytes = Vec::new();
        record::append_record(&mut bytes, record::SAMPLE, |out| {
            codec::encode_sample(&sample(0, 0), out);
        });
        bytes.len() as u64
    }

    /// Reads until the reader has nothing left.
    fn read_all(reader: &mut SpoolReader) -> SpoolBatch {
        let mut all = SpoolBatch::default();
        loop {
            let batch = reader.read_batch(1000).expect("read a batch");
            if batch.samples.is_empty() && batch.skipped.is_empty() && batch.end == all.end {
                return all;
            }
            all.samples.extend(batch.samples);
            all.skipped.extend(batch.skipped);
            all.end = batch.end;
        }
    }

    fn segment_ids(dir: &Path) -> Vec<u64> {
        list_segments(dir).expect("list segments")
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).expect("segment metadata").len()
    }

    /// Appends samples one per append and returns the record boundaries in segment 1.
    fn one_record_per_append(dir: &Path, count: usize) -> Vec<u64> {
        let (mut writer, _reader, _) = open_in(dir);
        let mut boundaries = vec![file_len(&segment_path(dir, 1))];
        for resource in 0..count {
            writer.append(&[sample(resource, 0)], None).expect("append");
            boundaries.push(file_len(&segment_path(dir, 1)));
        }
        boundaries
    }

    fn damage(path: &Path, at: u64, bytes: &[u8]) {
        let mut content = fs::read(path).expect("read segment");
        content[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        fs::write(path, content).expect("write segment");
    }

    #[test]
    fn both_halves_can_move_to_other_threads() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<SpoolWriter>();
        assert_send::<SpoolReader>();
        assert_send::<Arc<SpoolStats>>();
    }

    #[test]
    fn appended_samples_are_read_back_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, mut reader, recovery) = open_in(dir.path());
        assert_eq!(recovery.pending_samples, 0);
        assert_eq!(recovery.checkpoint, None);
        for first in [0, 100, 200] {
            let appended = writer
                .append(&samples(first..first + 100), None)
                .expect("append");
            assert_eq!((appended.written, appended.refused), (100, 0));
            assert_eq!(appended.bytes, 100 * record_len());
        }
        assert_eq!(writer.stats().pending_samples(), 300);
        assert_eq!(reader.stats().pending_bytes(), 300 * record_len());

        let first = reader.read_batch(150).expect("read");
        let second = reader.read_batch(150).expect("read");
        let third = reader.read_batch(150).expect("read");
        assert_eq!(first.samples, samples(0..150));
        assert_eq!(second.samples, samples(150..300));
        assert!(third.samples.is_empty() && third.skipped.is_empty());
        assert_eq!(third.end, second.end);
        assert_eq!(
            second.end,
            SpoolPosition {
                segment: 1,
                offset: 300 * record_len()
            }
        );

        reader.acknowledge(first.end).expect("acknowledge");
        assert_eq!(reader.stats().pending_samples(), 150);
        reader.acknowledge(second.end).expect("acknowledge");
        assert_eq!(reader.stats().pending_samples(), 0);
        assert_eq!(reader.stats().pending_bytes(), 0);
    }

    #[test]
    fn acknowledged_samples_are_not_delivered_again_after_a_restart_and_the_rest_are() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut writer, mut reader, _) = open_in(dir.path());
            writer.append(&samples(0..10), None).expect("append");
            let acknowledged = reader.read_batch(4).expect("read");
            assert_eq!(acknowledged.samples, samples(0..4));
            reader.acknowledge(acknowledged.end).expect("acknowledge");
            // Read, sent perhaps, but never acknowledged.
            assert_eq!(reader.read_batch(3).expect("read").samples, samples(4..7));
        }
        let (_writer, mut reader, recovery) = open_in(dir.path());
        assert_eq!(recovery.pending_samples, 6);
        assert_eq!(recovery.pending_bytes, 6 * record_len());
        assert_eq!(recovery.resume_at.offset, 4 * record_len());
        let again = read_all(&mut reader);
        assert_eq!(again.samples, samples(4..10));
        assert!(again.skipped.is_empty());
    }

    #[test]
    fn at_the_bound_the_oldest_are_kept_and_exactly_the_refused_are_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = record_len();
        let config = SpoolConfig::new(dir.path()).with_max_bytes(10 * record + record / 2);
        let (mut writer, mut reader, _) = open(&config).expect("open");

        let first = writer.append(&samples(0..15), None).expect("append");
        assert_eq!((first.written, first.refused), (10, 5));
        assert_eq!(first.bytes, 10 * record);
        let full = writer.append(&samples(15..18), None).expect("append");
        assert_eq!((full.written, full.refused, full.bytes), (0, 3, 0));
        assert_eq!(writer.stats().refused_total(), 8);
        assert_eq!(writer.stats().pending_samples(), 10);

        // Acknowledging four makes room for four.
        let batch = reader.read_batch(4).expect("read");
        assert_eq!(batch.samples, samples(0..4));
        reader.acknowledge(batch.end).expect("acknowledge");
        let after = writer.append(&samples(100..105), None).expect("append");
        assert_eq!((after.written, after.refused), (4, 1));
        assert_eq!(writer.stats().refused_total(), 9);

        let rest = read_all(&mut reader);
        let mut expected = samples(4..10);
        expected.extend(samples(100..104));
        assert_eq!(rest.samples, expected);
    }

    #[test]
    fn a_flipped_byte_in_the_middle_record_is_reported_with_its_place_and_the_others_delivered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let boundaries = one_record_per_append(dir.path(), 5);
        let segment = segment_path(dir.path(), 1);
        let middle = boundaries[2];
        let flip_at = (boundaries[2] + boundaries[3]) / 2;
        let mut content = fs::read(&segment).expect("read");
        content[flip_at as usize] ^= 0x10;
        fs::write(&segment, content).expect("write");

        let (_writer, mut reader, recovery) = open_in(dir.path());
        assert_eq!(recovery.damaged_records, 1);
        assert_eq!(recovery.torn_tail, None);
        let all = read_all(&mut reader);
        let mut expected = samples(0..2);
        expected.extend(samples(3..5));
        assert_eq!(all.samples, expected);
        assert_eq!(
            all.skipped,
            vec![Corruption {
                path: segment.clone(),
                offset: middle,
                bytes: boundaries[3] - middle,
                records: 1,
                reason: CorruptionReason::Checksum,
            }]
        );
        let message = all.skipped[0].to_string();
        assert!(
            message.contains(&segment.display().to_string())
                && message.contains(&format!("offset {middle}")),
            "{message}"
        );
        assert_eq!(reader.stats().corrupt_records_total(), 1);
        // Acknowledging past it releases everything.
        reader.acknowledge(all.end).expect("acknowledge");
        assert_eq!(reader.stats().pending_samples(), 0);
        assert_eq!(reader.stats().pending_bytes(), 0);
    }

    #[test]
    fn a_damaged_length_field_is_skipped_and_reading_resynchronises_on_the_next_record() {
        for length in [u32::MAX, 0x0100_0000, 3, 0] {
            let dir = tempfile::tempdir().expect("temp dir");
            let boundaries = one_record_per_append(dir.path(), 4);
            let segment = segment_path(dir.path(), 1);
            damage(&segment, boundaries[1] + 4, &length.to_le_bytes());

            let (_writer, mut reader, _) = open_in(dir.path());
            let all = read_all(&mut reader);
            let mut expected = samples(0..1);
            expected.extend(samples(2..4));
            assert_eq!(all.samples, expected, "length {length}");
            assert_eq!(all.skipped.len(), 1, "length {length}");
            assert_eq!(
                (all.skipped[0].offset, all.skipped[0].bytes),
                (boundaries[1], boundaries[2] - boundaries[1]),
                "length {length}"
            );
        }
    }

    #[test]
    fn a_torn_tail_is_truncated_at_open_not_reported_and_appends_go_on() {
        for tail in [TornKind::HalfARecord, TornKind::Zeros] {
            let dir = tempfile::tempdir().expect("temp dir");
            let boundaries = one_record_per_append(dir.path(), 3);
            let segment = segment_path(dir.path(), 1);
            let mut content = fs::read(&segment).expect("read");
            let torn: Vec<u8> = match tail {
                TornKind::HalfARecord => content[..(boundaries[1] / 2) as usize].to_vec(),
                TornKind::Zeros => vec![0; 100],
            };
            content.extend_from_slice(&torn);
            fs::write(&segment, content).expect("write");

            let (mut writer, mut reader, recovery) = open_in(dir.path());
            assert_eq!(
                recovery.torn_tail,
                Some(TornTail {
                    path: segment.clone(),
                    offset: boundaries[3],
                    bytes: torn.len() as u64,
                })
            );
            assert_eq!(recovery.damaged_records, 0);
            assert_eq!(recovery.pending_samples, 3);
            assert_eq!(file_len(&segment), boundaries[3]);
            let before = read_all(&mut reader);
            assert_eq!(before.samples, samples(0..3));
            assert!(before.skipped.is_empty());

            writer.append(&samples(3..4), None).expect("append");
            assert_eq!(read_all(&mut reader).samples, samples(3..4));
            drop((writer, reader));
            let (_writer, mut reader, recovery) = open_in(dir.path());
            assert_eq!(recovery.torn_tail, None);
            let after = read_all(&mut reader);
            assert_eq!(after.samples, samples(0..4));
            assert!(after.skipped.is_empty());
        }
    }

    /// The bytes a fresh spool writes for one append of `samples` with a checkpoint, and
    /// where its checkpoint record starts.
    fn append_bytes(samples: &[Sample], checkpoint: &[u8]) -> (Vec<u8>, usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, _reader, _) = open_in(dir.path());
        writer.append(samples, None).expect("append the samples");
        let checkpoint_at = file_len(&segment_path(dir.path(), 1)) as usize;
        writer
            .append(&[], Some(checkpoint))
            .expect("append the checkpoint");
        let bytes = fs::read(segment_path(dir.path(), 1)).expect("read");
        (bytes, checkpoint_at)
    }

    #[test]
    fn a_torn_append_takes_its_whole_records_with_it_when_the_writer_resumes_from_checkpoints() {
        // An append cut between pages: two whole sample records, then half its checkpoint.
        let (torn_append, checkpoint_at) = append_bytes(&samples(2..4), b"{\"minute\":2}");
        let torn_append = &torn_append[..checkpoint_at + (torn_append.len() - checkpoint_at) / 2];
        for earlier_append in [false, true] {
            let dir = tempfile::tempdir().expect("temp dir");
            let segment = segment_path(dir.path(), 1);
            let (mut writer, reader, _) = open_in(dir.path());
            if earlier_append {
                writer
                    .append(&samples(0..2), Some(b"{\"minute\":1}"))
                    .expect("append");
            }
            drop((writer, reader));
            let durable = file_len(&segment);
            let mut content = fs::read(&segment).expect("read");
            content.extend_from_slice(torn_append);
            fs::write(&segment, &content).expect("write");
            let before = samples(0..if earlier_append { 2 } else { 0 });

            // A spool whose writer does not resume from checkpoints keeps the whole records.
            let copy = tempfile::tempdir().expect("temp dir");
            fs::write(segment_path(copy.path(), 1), &content).expect("write");
            let (_writer, _reader, recovery) = open_in(copy.path());
            assert_eq!(recovery.pending_samples, before.len() as u64 + 2);

            let config = SpoolConfig::new(dir.path()).resuming_from_checkpoint();
            let (_writer, mut reader, recovery) = open(&config).expect("open");
            assert_eq!(
                recovery.torn_tail,
                Some(TornTail {
                    path: segment.clone(),
                    offset: durable,
                    bytes: torn_append.len() as u64,
                }),
                "earlier append: {earlier_append}"
            );
            assert_eq!(recovery.pending_samples, before.len() as u64);
            assert_eq!(recovery.damaged_records, 0);
            assert_eq!(
                recovery.checkpoint.as_deref(),
                earlier_append.then_some(b"{\"minute\":1}".as_slice())
            );
            assert_eq!(file_len(&segment), durable);
            assert_eq!(read_all(&mut reader).samples, before);
        }
    }

    #[test]
    fn a_torn_append_never_takes_back_what_was_acknowledged() {
        // Samples acknowledged, then a crash tore the append of their checkpoint: the cut
        // stops at the cursor, and the acknowledged samples are not sent again.
        let dir = tempfile::tempdir().expect("temp dir");
        let segment = segment_path(dir.path(), 1);
        let config = SpoolConfig::new(dir.path()).resuming_from_checkpoint();
        let (mut writer, mut reader, _) = open(&config).expect("open");
        writer.append(&samples(0..2), None).expect("append");
        let delivered = read_all(&mut reader);
        assert_eq!(delivered.samples, samples(0..2));
        reader.acknowledge(delivered.end).expect("acknowledge");
        drop((writer, reader));
        let durable = file_len(&segment);
        let mut content = fs::read(&segment).expect("read");
        let (torn_append, checkpoint_at) = append_bytes(&samples(2..3), b"{}");
        content.extend_from_slice(
            &torn_append[..checkpoint_at + (torn_append.len() - checkpoint_at) / 2],
        );
        fs::write(&segment, &content).expect("write");

        let (_writer, mut reader, recovery) = open(&config).expect("open");
        assert_eq!(recovery.torn_tail.map(|tail| tail.offset), Some(durable));
        assert_eq!(recovery.pending_samples, 0);
        assert!(read_all(&mut reader).samples.is_empty());
    }

    #[derive(Clone, Copy)]
    enum TornKind {
        HalfARecord,
        Zeros,
    }

    #[test]
    fn segments_rotate_and_wholly_acknowledged_ones_are_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = record_len();
        let config = SpoolConfig::new(dir.path()).with_segment_bytes(3 * record);
        let (mut writer, mut reader, _) = open(&config).expect("open");
        for resource in 0..10 {
            writer.append(&[sample(resource, 0)], None).expect("append");
        }
        assert_eq!(segment_ids(dir.path()), vec![1, 2, 3, 4]);
        assert_eq!(writer.stats().segments(), 4);
        assert_eq!(writer.stats().disk_bytes(), 10 * record);

        let first = reader.read_batch(4).expect("read");
        assert_eq!(first.samples, samples(0..4));
        assert_eq!(
            first.end,
            SpoolPosition {
                segment: 2,
                offset: record
            }
        );
        reader.acknowledge(first.end).expect("acknowledge");
        assert_eq!(segment_ids(dir.path()), vec![2, 3, 4]);

        let rest = read_all(&mut reader);
        assert_eq!(rest.samples, samples(4..10));
        reader.acknowledge(rest.end).expect("acknowledge");
        // The newest is the writer's: it stays, wholly acknowledged.
        assert_eq!(segment_ids(dir.path()), vec![4]);
        assert_eq!(reader.stats().segments(), 1);
        assert_eq!(reader.stats().disk_bytes(), record);
        assert_eq!(reader.stats().pending_bytes(), 0);

        writer.append(&samples(10..12), None).expect("append");
        assert_eq!(segment_ids(dir.path()), vec![4]);
        writer.append(&samples(12..13), None).expect("append");
        assert_eq!(segment_ids(dir.path()), vec![4, 5]);
        drop((writer, reader));
        let (_writer, mut reader, recovery) = open(&config).expect("reopen");
        assert_eq!(recovery.pending_samples, 3);
        assert_eq!(recovery.segments, 2);
        assert_eq!(read_all(&mut reader).samples, samples(10..13));
    }

    #[test]
    fn writer_and_reader_on_two_threads_lose_nothing_and_duplicate_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SpoolConfig::new(dir.path()).with_segment_bytes(8 << 10);
        let (mut writer, mut reader, _) = open(&config).expect("open");
        const APPENDS: usize = 200;
        const PER_APPEND: usize = 37;
        let written = std::thread::spawn(move || {
            for minute in 0..APPENDS {
                let batch: Vec<Sample> = (0..PER_APPEND)
                    .map(|resource| sample(resource, minute as i64))
                    .collect();
                let appended = writer.append(&batch, None).expect("append");
                assert_eq!(appended.refused, 0);
            }
            writer
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut received = Vec::new();
        while received.len() < APPENDS * PER_APPEND {
            assert!(
                Instant::now() < deadline,
                "only {} samples arrived",
                received.len()
            );
            let batch = reader.read_batch(50).expect("read");
            assert!(batch.skipped.is_empty(), "{:?}", batch.skipped);
            if batch.samples.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            received.extend(batch.samples);
            reader.acknowledge(batch.end).expect("acknowledge");
        }
        let writer = written.join().expect("writer thread");
        assert!(reader.read_batch(50).expect("read").samples.is_empty());
        let expected: Vec<Sample> = (0..APPENDS)
            .flat_map(|minute| (0..PER_APPEND).map(move |resource| sample(resource, minute as i64)))
            .collect();
        assert_eq!(received, expected);
        let distinct: HashSet<(String, Minute)> = received
            .iter()
            .map(|sample| (sample.resource_id.clone(), sample.minute))
            .collect();
        assert_eq!(distinct.len(), APPENDS * PER_APPEND);
        assert_eq!(writer.stats().pending_samples(), 0);
        assert!(
            segment_ids(dir.path()).len() <= 2,
            "acknowledged segments deleted"
        );
    }

    #[test]
    fn the_reader_is_woken_by_an_append_on_another_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, mut reader, _) = open_in(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        assert!(reader.read_batch(10).expect("read").samples.is_empty());
        let appender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.append(&samples(0..3), None).expect("append");
            writer
        });
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), reader.notified()).await
            })
            .expect("woken within ten seconds");
        assert_eq!(reader.read_batch(10).expect("read").samples, samples(0..3));
        appender.join().expect("appender");
    }

    #[test]
    fn the_newest_checkpoint_comes_back_after_a_restart_even_when_its_segment_was_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = record_len();
        let config = SpoolConfig::new(dir.path()).with_segment_bytes(2 * record);
        {
            let (mut writer, mut reader, _) = open(&config).expect("open");
            for minute in 0..3 {
                let checkpoint = format!("after minute {minute}");
                let appended = writer
                    .append(
                        &samples(minute * 2..minute * 2 + 2),
                        Some(checkpoint.as_bytes()),
                    )
                    .expect("append");
                assert!(appended.checkpoint_written);
            }
            // A checkpoint alone, and appends without one, leave it the newest; the
            // second of those starts a segment, which begins with a copy of it.
            writer.append(&[], Some(b"after minute 3")).expect("append");
            writer.append(&samples(6..8), None).expect("append");
            let segments_before = segment_ids(dir.path()).len();
            writer.append(&samples(8..10), None).expect("append");
            assert_eq!(segment_ids(dir.path()).len(), segments_before + 1);
            let all = read_all(&mut reader);
            assert_eq!(all.samples, samples(0..10), "checkpoints are no samples");
            reader.acknowledge(all.end).expect("acknowledge");
        }
        assert_eq!(segment_ids(dir.path()).len(), 1);
        let (_writer, _reader, recovery) = open(&config).expect("reopen");
        assert_eq!(recovery.checkpoint.as_deref(), Some(&b"after minute 3"[..]));
        assert_eq!(recovery.pending_samples, 0);
    }

    #[test]
    fn a_checkpoint_is_not_trusted_when_its_own_append_is_damaged_before_it() {
        let record = record_len();
        // Damage in the second append: its checkpoint is not trusted, the first one is used.
        // Damage in the first append's samples only: the second one stands.
        for (damaged_sample, expected) in [(3u64, &b"old"[..]), (0, &b"new"[..])] {
            let dir = tempfile::tempdir().expect("temp dir");
            let first_len = {
                let (mut writer, _reader, _) = open_in(dir.path());
                writer.append(&samples(0..2), Some(b"old")).expect("append");
                let first_len = file_len(&segment_path(dir.path(), 1));
                writer.append(&samples(2..5), Some(b"new")).expect("append");
                first_len
            };
            let sample_at = if damaged_sample < 2 {
                damaged_sample * record
            } else {
                first_len + (damaged_sample - 2) * record
            };
            let segment = segment_path(dir.path(), 1);
            let mut content = fs::read(&segment).expect("read");
            content[(sample_at + record - 1) as usize] ^= 1;
            fs::write(&segment, content).expect("write");

            let (_writer, mut reader, recovery) = open_in(dir.path());
            assert_eq!(recovery.checkpoint.as_deref(), Some(expected));
            // Damage in the first append's samples leaves its own checkpoint untrusted.
            assert_eq!(recovery.untrusted_checkpoints, 1);
            let all = read_all(&mut reader);
            assert_eq!(all.samples.len(), 4);
            assert_eq!(all.skipped.len(), 1);
            assert_eq!(all.skipped[0].offset, sample_at);
        }
    }

    #[test]
    fn a_payload_that_passes_its_checksum_but_is_no_sample_is_reported_and_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let boundaries = one_record_per_append(dir.path(), 2);
        let segment = segment_path(dir.path(), 1);
        let mut extra = Vec::new();
        let bad_len = record::append_record(&mut extra, record::SAMPLE, |out| {
            out.extend_from_slice(&[0xff; 5]);
        });
        record::append_record(&mut extra, 9, |out| out.extend_from_slice(b"future"));
        record::append_record(&mut extra, record::SAMPLE, |out| {
            codec::encode_sample(&sample(7, 0), out);
        });
        let mut content = fs::read(&segment).expect("read");
        content.extend_from_slice(&extra);
        fs::write(&segment, content).expect("write");

        let (_writer, mut reader, recovery) = open_in(dir.path());
        assert_eq!(recovery.torn_tail, None);
        let all = read_all(&mut reader);
        let mut expected = samples(0..2);
        expected.push(sample(7, 0));
        assert_eq!(all.samples, expected);
        let reasons: Vec<(u64, CorruptionReason)> = all
            .skipped
            .iter()
            .map(|skipped| (skipped.offset, skipped.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    boundaries[2],
                    CorruptionReason::NotASample(DecodeError::Truncated { field: "minute" })
                ),
                (
                    boundaries[2] + bad_len as u64,
                    CorruptionReason::UnknownRecordType(9)
                ),
            ]
        );
    }

    #[test]
    fn an_unreadable_cursor_reads_from_the_oldest_segment_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut writer, mut reader, _) = open_in(dir.path());
            writer.append(&samples(0..5), None).expect("append");
            let batch = reader.read_batch(3).expect("read");
            reader.acknowledge(batch.end).expect("acknowledge");
        }
        fs::write(cursor::path(dir.path()), "segment=1 offset=9999\n").expect("write");
        let (_writer, mut reader, recovery) = open_in(dir.path());
        assert!(recovery.cursor_problem.is_some());
        assert_eq!(recovery.pending_samples, 5);
        assert_eq!(read_all(&mut reader).samples, samples(0..5));
    }

    #[test]
    fn acknowledging_a_position_never_read_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, mut reader, _) = open_in(dir.path());
        writer.append(&samples(0..5), None).expect("append");
        let batch = reader.read_batch(2).expect("read");
        let ahead = SpoolPosition {
            segment: 1,
            offset: 4 * record_len(),
        };
        let inside = SpoolPosition {
            segment: 1,
            offset: record_len(),
        };
        for position in [ahead, inside] {
            let error = reader.acknowledge(position).expect_err("refused");
            assert!(matches!(error, SpoolError::NotDelivered { .. }), "{error}");
        }
        assert!(!cursor::path(dir.path()).exists());
        assert_eq!(reader.stats().pending_samples(), 5);
        reader.acknowledge(batch.end).expect("acknowledge");
        assert_eq!(reader.stats().pending_samples(), 3);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = open_in(dir.path());
        let error = open(&SpoolConfig::new(dir.path())).expect_err("locked");
        assert!(matches!(error, SpoolError::Locked { .. }), "{error}");
        drop(first);
        open_in(dir.path());
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_a_dir = dir.path().join("spool");
        fs::write(&not_a_dir, "").expect("write");
        let error = open(&SpoolConfig::new(&not_a_dir)).expect_err("not a directory");
        assert!(matches!(error, SpoolError::CreateDir { .. }), "{error}");
        assert!(error.to_string().contains(&not_a_dir.display().to_string()));
    }
}
