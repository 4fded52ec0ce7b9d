//! The aggregator's core, shared by the Kafka consumer and the file backfill: each
//! message is decoded, each sample validated, deduplicated and rolled up into its
//! partition's open hours, and everything unusable is dead-lettered with its reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_lake::Lake;
use tally_model::clock::Clock;
use tally_model::signing::Keyring;
use tally_model::validate::validate;
use tally_model::wire::{DecodedItems, Encoding, json_lines};
use tally_model::{Minute, RejectReason, ValidationLimits};

use crate::deadletter::{DeadLetter, DeadLetterCounts, DeadLetterSink};
use crate::decode::decode_message;
use crate::dedup::Verdict;
use crate::error::Result;
use crate::partition::{PartitionState, SealReport};

/// The signature headers of a Kafka message (`tally-host`, `tally-signature`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SignedBy<'a> {
    pub host: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
}

/// How the aggregator rolls up, whatever its input.
#[derive(Clone, Debug)]
pub struct AggregateConfig {
    /// The lake (`rollups/`, `_state/` below its root).
    pub lake: Lake,
    /// How long after an hour's end its samples are still merged before it is sealed.
    pub lateness_minutes: i64,
    pub limits: ValidationLimits,
    pub clock: Arc<dyn Clock>,
    /// How often the Kafka consumer saves each partition's open hours (and at a
    /// graceful stop): what a restart reads again is at most this much.
    pub checkpoint_interval: std::time::Duration,
    /// The hosts allowed to send samples: with it, every Kafka message must carry a
    /// matching signature of a listed host, and each sample must be one that host may
    /// report (see [`tally_model::signing`]); others are dead-lettered. A file backfill is
    /// the operator's own input and is not checked.
    pub keyring: Option<Arc<Keyring>>,
}

impl AggregateConfig {
    pub fn new(lake: impl Into<Lake>) -> Self {
        Self {
            lake: lake.into(),
            lateness_minutes: default_lateness_minutes(),
            limits: ValidationLimits::default(),
            clock: tally_model::clock::system_clock(),
            checkpoint_interval: std::time::Duration::from_secs(60),
            keyring: None,
        }
    }
}

/// Fifteen minutes: a collector bridging a short broker outage from its spool delivers
/// within it; later samples are still kept, as restatements.
pub const fn default_lateness_minutes() -> i64 {
    15
}

/// What an aggregation run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AggregateReport {
    pub messages: u64,
    /// Samples that decoded (valid or not).
    pub samples: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub dead_letters: DeadLetterCounts,
    /// Samples added to an hour already sealed (restated into it).
    pub late_samples: u64,
    pub hours_sealed: u64,
    pub restatements: u64,
    pub max_restatement_lag_minutes: i64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub checkpoints: u64,
    /// How long the last checkpoint took to write.
    pub last_checkpoint_micros: u64,
}

impl AggregateReport {
    /// Adds another reader's figures of the same run (a file's partitions are rolled
    /// up on several threads). Every field is named, so a new one cannot be forgotten.
    pub fn add(&mut self, other: &AggregateReport) {
        let AggregateReport {
            messages,
            samples,
            accepted,
            duplicates,
            conflicts,
            dead_letters,
            late_samples,
            hours_sealed,
            restatements,
            max_restatement_lag_minutes,
            rows_written,
            bytes_written,
            checkpoints,
            last_checkpoint_micros,
        } = other;
        self.messages += messages;
        self.samples += samples;
        self.accepted += accepted;
        self.duplicates += duplicates;
        self.conflicts += conflicts;
        for (reason, count) in dead_letters {
            *self.dead_letters.entry(reason).or_default() += count;
        }
        self.late_samples += late_samples;
        self.hours_sealed += hours_sealed;
        self.restatements += restatements;
        self.max_restatement_lag_minutes = self
            .max_restatement_lag_minutes
            .max(*max_restatement_lag_minutes);
        self.rows_written += rows_written;
        self.bytes_written += bytes_written;
        self.checkpoints += checkpoints;
        self.last_checkpoint_micros = self.last_checkpoint_micros.max(*last_checkpoint_micros);
    }

    fn add_seal(&mut self, seal: SealReport) {
        self.hours_sealed += seal.hours;
        self.restatements += seal.restatements;
        self.max_restatement_lag_minutes = self
            .max_restatement_lag_minutes
            .max(seal.max_restatement_lag_minutes);
        self.rows_written += seal.rows;
        self.bytes_written += seal.bytes;
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// One input's partitions and where their rejects go.
pub struct Ingest<'sink> {
    config: AggregateConfig,
    source: String,
    partitions: BTreeMap<i32, PartitionState>,
    dead_letters: &'sink mut dyn DeadLetterSink,
    unflushed_dead_letters: bool,
    /// The current message's samples, refilled message after message.
    decoded: DecodedItems,
    pub report: AggregateReport,
}

impl<'sink> Ingest<'sink> {
    /// `source` names the input in file names and manifests (the topic, or the file).
    pub fn new(
        config: AggregateConfig,
        source: &str,
        dead_letters: &'sink mut dyn DeadLetterSink,
    ) -> Self {
        Self {
            config,
            source: source_name(source),
            partitions: BTreeMap::new(),
            dead_letters,
            unflushed_dead_letters: false,
            decoded: DecodedItems::default(),
            report: AggregateReport::default(),
        }
    }

    /// Opens (or returns) a partition's state and says where to resume reading it.
    pub fn open_partition(&mut self, partition: i32) -> Result<i64> {
        if let Some(state) = self.partitions.get(&partition) {
            return Ok(state.resume_offset());
        }
        let state = PartitionState::open(
            &self.config.lake,
            &self.source,
            partition,
            self.config.lateness_minutes,
        )?;
        let resume = state.resume_offset();
        self.partitions.insert(partition, state);
        Ok(resume)
    }

    /// Drops a partition's state without sealing anything: another instance owns it
    /// now, and resumes from its manifest.
    pub fn close_partition(&mut self, partition: i32) {
        if let Some(state) = self.partitions.remove(&partition) {
            tracing::info!(
                partition,
                open_hours = state.open_hours(),
                "partition handed over; its open hours are read again by the next owner"
            );
        }
    }

    /// Processes one message read from `topic`/`partition` at `offset`, unsigned.
    pub fn process(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        content_type: Option<&str>,
        payload: &[u8],
    ) -> Result<()> {
        self.process_signed(
            topic,
            partition,
            offset,
            content_type,
            SignedBy::default(),
            payload,
        )
    }

    /// Processes one message with its signature headers: with a keyring, a message that
    /// is not signed by a listed host is dead-lettered whole, and each of its samples must
    /// be one the host may report.
    pub fn process_signed(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        content_type: Option<&str>,
        signed: SignedBy<'_>,
        payload: &[u8],
    ) -> Result<()> {
        let origin = self.begin_message(topic, partition, offset)?;
        let keyring = self.config.keyring.clone();
        let signer = match &keyring {
            None => None,
            Some(keyring) => match keyring.verify(signed.host, signed.signature, payload) {
                Ok(host) => Some((keyring.as_ref(), host)),
                Err(rejection) => {
                    return self.dead_letter(origin.letter(
                        rejection.reason,
                        rejection.detail,
                        None,
                        payload.to_vec(),
                    ));
                }
            },
        };
        let mut decoded = std::mem::take(&mut self.decoded);
        let result = match decode_message(content_type, payload, &mut decoded) {
            Ok(encoding) => {
                let original = match encoding {
                    Encoding::Json => Original::Lines {
                        bytes: payload,
                        first_line: 1,
                    },
                    Encoding::Arrow => Original::Rows(payload),
                };
                self.process_items(&origin, original, &decoded, signer)
            }
            Err(rejection) => self.dead_letter(origin.letter(
                rejection.reason,
                rejection.detail,
                None,
                payload.to_vec(),
            )),
        };
        self.decoded = decoded;
        result
    }

    /// Processes the samples of one message decoded elsewhere (the file backfill decodes
    /// on several threads); `original` is the message, whose bytes dead letters carry.
    pub fn process_decoded(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        original: Original<'_>,
        decoded: &DecodedItems,
    ) -> Result<()> {
        let origin = self.begin_message(topic, partition, offset)?;
        self.process_items(&origin, original, decoded, None)
    }

    /// A message of `partition` begins: the partition is open, the message counted.
    fn begin_message<'t>(
        &mut self,
        topic: &'t str,
        partition: i32,
        offset: i64,
    ) -> Result<Origin<'t>> {
        self.open_partition(partition)?;
        self.report.messages += 1;
        Ok(Origin {
            topic,
            partition,
            offset,
        })
    }

    /// `signer`: the keyring and the host that signed the message, when checked.
    fn process_items(
        &mut self,
        origin: &Origin<'_>,
        original: Original<'_>,
        decoded: &DecodedItems,
        signer: Option<(&Keyring, &str)>,
    ) -> Result<()> {
        let partition = origin.partition;
        let offset = origin.offset;
        let now = Minute::containing(self.config.clock.now());
        for (index, item) in decoded.iter().enumerate() {
            let sample = match item {
                Ok(sample) => sample,
                Err(error) => {
                    let raw = if error.raw.is_empty() {
                        original.bytes()
                    } else {
                        &error.raw
                    };
                    let detail = format!(
                        "{} {}: {}",
                        error.unit, error.position, error.rejection.detail
                    );
                    self.dead_letter(origin.letter(
                        error.rejection.reason,
                        detail,
                        Some(error.position),
                        raw.to_vec(),
                    ))?;
                    continue;
                }
            };
            self.report.samples += 1;
            let admitted = match signer {
                Some((keyring, host)) => keyring.admits(host, sample),
                None => Ok(()),
            };
            if let Err(rejection) =
                admitted.and_then(|()| validate(sample, &self.config.limits, now))
            {
                let (item, raw) = original.item(index);
                let detail = format!(
                    "resource {} minute {}: {}",
                    sample.resource_id, sample.minute, rejection.detail
                );
                self.dead_letter(origin.letter(rejection.reason, detail, Some(item), raw))?;
                continue;
            }
            let state = self
                .partitions
                .get_mut(&partition)
                .ok_or_else(|| missing(partition))?;
            let (verdict, late) = state.accept(sample, offset)?;
            match verdict {
                Verdict::New => {
                    self.report.accepted += 1;
                    self.report.late_samples += u64::from(late);
                }
                Verdict::Duplicate => self.report.duplicates += 1,
                Verdict::Conflict => {
                    self.report.conflicts += 1;
                    let (item, raw) = original.item(index);
                    let detail = format!(
                        "resource {} minute {} was already counted with different values; the first sample is kept",
                        sample.resource_id, sample.minute
                    );
                    self.dead_letter(origin.letter(
                        RejectReason::Conflict,
                        detail,
                        Some(item),
                        raw,
                    ))?;
                }
            }
        }
        Ok(())
    }

    fn dead_letter(&mut self, letter: DeadLetter) -> Result<()> {
        *self
            .report
            .dead_letters
            .entry(letter.reason.code())
            .or_default() += 1;
        tracing::debug!(reason = letter.reason.code(), partition = letter.source_partition, offset = letter.source_offset, detail = %letter.detail, "dead-lettered");
        self.unflushed_dead_letters = true;
        self.dead_letters.send(letter)
    }

    /// Seals what the watermark has passed on `partition`.
    pub fn seal_ready(&mut self, partition: i32, next_offset: i64) -> Result<()> {
        let seal = self
            .partition_to_write(partition)?
            .seal_ready(next_offset)?;
        self.report.add_seal(seal);
        Ok(())
    }

    /// Seals every open hour of `partition`.
    pub fn seal_all(&mut self, partition: i32, next_offset: i64) -> Result<()> {
        let seal = self.partition_to_write(partition)?.seal_all(next_offset)?;
        self.report.add_seal(seal);
        Ok(())
    }

    /// Saves `partition`'s open hours so that reading resumes at `next_offset`.
    pub fn checkpoint(&mut self, partition: i32, next_offset: i64) -> Result<()> {
        let state = self.partition_to_write(partition)?;
        let started = std::time::Instant::now();
        state.checkpoint(next_offset)?;
        self.report.checkpoints += 1;
        self.report.last_checkpoint_micros =
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// `partition`'s state for a step that writes its manifest (sealing, checkpointing),
    /// once the dead letters so far are stored.
    fn partition_to_write(&mut self, partition: i32) -> Result<&mut PartitionState> {
        self.flush_dead_letters()?;
        self.partitions
            .get_mut(&partition)
            .ok_or_else(|| missing(partition))
    }

    /// Dead letters must be stored before a manifest lets the resume offset pass them.
    fn flush_dead_letters(&mut self) -> Result<()> {
        if self.unflushed_dead_letters {
            self.dead_letters.flush()?;
            self.unflushed_dead_letters = false;
        }
        Ok(())
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }
}

/// A decoded message's bytes: what a sample's dead letter carries as its original bytes.
#[derive(Clone, Copy, Debug)]
pub enum Original<'a> {
    /// NDJSON: the decoded items are its non-blank lines in order; `first_line` is the
    /// number of its first line (1 within a Kafka message, the file's line for a backfill).
    Lines { bytes: &'a [u8], first_line: usize },
    /// Arrow IPC: item `k` is row `k`; a row is not bytes of its own, so its dead letter
    /// carries the whole message and names the row.
    Rows(&'a [u8]),
    /// NDJSON lines picked out of a block of a file (one partition's lines): item `k` is
    /// `lines[k]`.
    PickedLines {
        bytes: &'a [u8],
        lines: &'a [PickedLine],
    },
}

/// A line of a block: its number in the file and where it lies in the block.
#[derive(Clone, Copy, Debug)]
pub struct PickedLine {
    pub number: usize,
    pub start: usize,
    pub end: usize,
}

impl Original<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Original::Lines { bytes, .. }
            | Original::Rows(bytes)
            | Original::PickedLines { bytes, .. } => bytes,
        }
    }

    /// The line number or row index of item `index`, and its original bytes.
    fn item(&self, index: usize) -> (usize, Vec<u8>) {
        match self {
            Original::Lines { bytes, first_line } => json_lines(bytes)
                .nth(index)
                .map_or((0, Vec::new()), |(number, line)| {
                    (first_line + number, line.to_vec())
                }),
            Original::Rows(bytes) => (index, bytes.to_vec()),
            Original::PickedLines { bytes, lines } => {
                lines.get(index).map_or((0, Vec::new()), |line| {
                    (line.number, bytes[line.start..line.end].to_vec())
                })
            }
        }
    }
}

/// Where a message came from: what its dead letters name.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl Origin<'_> {
    fn letter(
        &self,
        reason: RejectReason,
        detail: String,
        item: Option<usize>,
        payload: Vec<u8>,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            detail,
            source_topic: self.topic.to_owned(),
            source_partition: self.partition,
            source_offset: self.offset,
            item,
            payload,
        }
    }
}

fn missing(partition: i32) -> crate::error::Error {
    crate::error::Error::Io {
        action: format!("find the state of partition {partition}"),
        source: std::io::Error::other("the partition was not opened"),
    }
}

/// The name an input has in file names and manifests: `source` with anything but
/// letters, digits, `-` and `.` replaced by `_`.
pub fn source_name(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
