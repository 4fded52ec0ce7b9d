//! `tally aggregate --from-file`: rolls up an NDJSON sample file through the same path
//! as Kafka messages (decode, validate, dedup, rollup, seal), for imports and tests.
//!
//! The file's samples are spread over [`PARTITIONS`] partitions by resource, as a Kafka
//! topic keyed by resource spreads them, and each partition is read like a Kafka
//! partition: its lines in file order, with its own manifest and rollup files. One worker
//! thread per core owns some of the partitions and decodes and rolls up their lines. The
//! file is cut into blocks of whole lines, each line's partition told from its resource
//! id, by whichever worker is running low on lines; it hands every block to every worker.
//! A sample is thus decoded on the thread that rolls it up, whose cache still holds it,
//! no two threads share a resource's state, and no core waits for a reader thread that
//! the scheduler has not run yet (with a reader thread of its own, each worker spent a
//! quarter of the run waiting for blocks).
//!
//! Each block counts as one message of each partition, at the offset of its first line;
//! dead letters name the line (`item` is the line number in the file).

use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use tally_model::wire::DecodedItems;

use crate::deadletter::{CollectedDeadLetters, DeadLetter};
use crate::error::{Error, Result};
use crate::ingest::{AggregateConfig, AggregateReport, Ingest, Original, PickedLine};

/// Partitions of a file's samples. Fixed, not the number of cores: importing the same
/// file again, on any machine, must put every resource in the partition that holds its
/// hours, or its minutes would be counted once in each.
pub const PARTITIONS: usize = 4;

/// About 500 samples a block: small enough that a worker's block and its roll-up's
/// tables share a core's cache (1 MiB blocks cost a fifth more CPU here).
const BLOCK_BYTES: usize = 1 << 17;

/// Blocks a worker may have waiting: 1 MiB.
const BLOCKS_AHEAD: usize = 8;

/// A worker reads the next block once fewer than this many are waiting for it, not only
/// when none is: both workers are handed the same blocks, so they would run dry together
/// and one would wait for the other to read.
const READ_AHEAD: usize = 4;

/// A block of whole lines, the number of its first line, how many lines it holds and
/// its non-blank lines by partition.
#[derive(Default)]
struct Block {
    first_line: i64,
    lines: i64,
    bytes: Vec<u8>,
    partitions: [Vec<PickedLine>; PARTITIONS],
}

/// What every worker is sent: blocks, then the end of the file (a worker that sees its
/// channel close without it stops without sealing: the read failed).
enum FromReader {
    Block(Arc<Block>),
    End { next_line: i64 },
}

/// Rolls up `path` into the lake and seals every hour. Returns the report and the dead
/// letters in line order (the caller decides where they go).
pub fn run_file(
    config: &AggregateConfig,
    path: &Path,
) -> Result<(AggregateReport, Vec<DeadLetter>)> {
    let input_error = |source| Error::Input {
        path: path.to_owned(),
        source,
    };
    let source = format!(
        "file-{}",
        path.file_stem()
            .map(|stem| stem.to_string_lossy())
            .unwrap_or_default()
    );
    let topic = path.display().to_string();
    let file = File::open(path).map_err(input_error)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(PARTITIONS);
    let (recycle, recycled) = sync_channel::<Block>(BLOCKS_AHEAD);
    let mut to_workers = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..workers {
        let (sender, queue) = sync_channel::<FromReader>(BLOCKS_AHEAD);
        to_workers.push(sender);
        queues.push(queue);
    }
    let reader = SharedReader {
        blocks_sent: AtomicUsize::new(0),
        state: Mutex::new(BlockReader {
            file,
            carry: Vec::new(),
            first_line: 1,
            to_workers,
            recycled,
            failure: None,
        }),
    };
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(worker, queue)| {
                let owned: Vec<usize> = (worker..PARTITIONS).step_by(workers).collect();
                let (source, topic, reader, recycle) = (&source, &topic, &reader, &recycle);
                scope.spawn(move || {
                    roll_up_partitions(config, source, topic, &owned, &queue, reader, recycle)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let reader = reader
        .state
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(error) = reader.failure {
        return Err(input_error(error));
    }
    let mut report = AggregateReport::default();
    let mut dead_letters = Vec::new();
    for outcome in outcomes {
        let (worker_report, letters) = outcome?;
        report.add(&worker_report);
        dead_letters.extend(letters);
    }
    dead_letters.sort_by_key(|letter| letter.item);
    Ok((report, dead_letters))
}

/// A worker: decodes and rolls up the lines of the partitions it `owns`, block by block,
/// sealing what each block's end lets it seal, and everything at the end of the file.
/// When few blocks are waiting for it, it reads the next one for every worker, unless
/// another worker is doing that already.
fn roll_up_partitions(
    config: &AggregateConfig,
    source: &str,
    topic: &str,
    owned: &[usize],
    queue: &Receiver<FromReader>,
    reader: &SharedReader,
    recycle: &SyncSender<Block>,
) -> Result<(AggregateReport, Vec<DeadLetter>)> {
    let mut dead_letters = CollectedDeadLetters::default();
    let mut ingest = Ingest::new(config.clone(), source, &mut dead_letters);
    let partition_ids: Vec<i32> = owned
        .iter()
        .map(|&partition| partition_id(partition))
        .collect();
    for &partition in &partition_ids {
        ingest.open_partition(partition)?;
    }
    let mut items = DecodedItems::default();
    let mut blocks_taken = 0;
    loop {
        if reader.blocks_sent.load(Ordering::Acquire) < blocks_taken + READ_AHEAD {
            match reader.state.try_lock() {
                Ok(state) => CloseIfPanicking(state).0.read_block(&reader.blocks_sent),
                // Whoever holds the lock is reading a block that will come here too.
                Err(TryLockError::WouldBlock) => {}
                // A worker panicked while reading; `run_file` passes its panic on.
                Err(TryLockError::Poisoned(_)) => break,
            }
        }
        // Never waits for ever: this worker's queue holds a block or the end, or another
        // worker holds the lock and is sending one, or the read failed or panicked and
        // the queue is closed.
        let Ok(next) = queue.recv() else {
            break;
        };
        match next {
            FromReader::Block(block) => {
                blocks_taken += 1;
                let next_line = block.first_line + block.lines;
                for (&partition, &id) in owned.iter().zip(&partition_ids) {
                    let lines = &block.partitions[partition];
                    items.clear();
                    for line in lines {
                        items.push_json_line(&block.bytes[line.start..line.end], line.number);
                    }
                    let original = Original::PickedLines {
                        bytes: &block.bytes,
                        lines,
                    };
                    ingest.process_decoded(topic, id, block.first_line, original, &items)?;
                    ingest.seal_ready(id, next_line)?;
                }
                // The last worker done with a block sends it back to be filled again.
                if let Some(block) = Arc::into_inner(block) {
                    let _ = recycle.try_send(block);
                }
            }
            FromReader::End { next_line } => {
                for &partition in &partition_ids {
                    ingest.seal_all(partition, next_line)?;
                }
                let report = ingest.report;
                return Ok((report, dead_letters.letters));
            }
        }
    }
    // The read failed: its error is the one to report; nothing more is sealed.
    Ok((AggregateReport::default(), Vec::new()))
}

fn partition_id(partition: usize) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

/// The file being cut into blocks, shared by the workers: one reads at a time.
struct SharedReader {
    /// Blocks sent to every worker so far.
    blocks_sent: AtomicUsize,
    state: Mutex<BlockReader>,
}

struct BlockReader {
    file: File,
    /// The start of a line that the last block cut off.
    carry: Vec<u8>,
    first_line: i64,
    /// Emptied at the end of the file or on a read error, which ends every worker.
    to_workers: Vec<SyncSender<FromReader>>,
    /// Blocks the workers are done with, to be filled again: a fresh buffer for every
    /// block made copying the file into it cost several times more.
    recycled: Receiver<Block>,
    failure: Option<std::io::Error>,
}

/// Closes every worker's queue if the reading worker panics, so that the others stop
/// instead of waiting for a block that will not come.
struct CloseIfPanicking<'a>(MutexGuard<'a, BlockReader>);

impl Drop for CloseIfPanicking<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.to_workers.clear();
        }
    }
}

impl BlockReader {
    /// Reads the next block, which ends at a line's end, numbers and sorts its lines
    /// into partitions and sends it to every worker; at the end of the file, sends the
    /// end. Does nothing once the file is done.
    fn read_block(&mut self, blocks_sent: &AtomicUsize) {
        if self.to_workers.is_empty() {
            return;
        }
        match self.next_block() {
            Ok(Some(block)) => {
                let block = Arc::new(block);
                for worker in &self.to_workers {
                    // A worker that has hung up failed; its error is reported by `run_file`.
                    let _ = worker.send(FromReader::Block(Arc::clone(&block)));
                }
                blocks_sent.fetch_add(1, Ordering::Release);
            }
            Ok(None) => {
                for worker in std::mem::take(&mut self.to_workers) {
                    let _ = worker.send(FromReader::End {
                        next_line: self.first_line,
                    });
                }
            }
            Err(error) => {
                self.failure = Some(error);
                self.to_workers.clear();
            }
        }
    }

    /// The next block of whole lines with its lines picked, or `None` at the end.
    fn next_block(&mut self) -> std::io::Result<Option<Block>> {
        let mut block = self.recycled.try_recv().unwrap_or_default();
        block.bytes.clear();
        block.bytes.reserve(BLOCK_BYTES + self.carry.len());
        block.bytes.append(&mut self.carry);
        loop {
            // What is left at the end is the last line, without its newline.
            let bytes = &mut block.bytes;
            if (&mut self.file)
                .take(BLOCK_BYTES as u64)
                .read_to_end(bytes)?
                == 0
            {
                break;
            }
            if let Some(end) = memchr::memrchr(b'\n', bytes) {
                self.carry.extend_from_slice(&bytes[end + 1..]);
                bytes.truncate(end + 1);
                break;
            } // else a line longer than a block: read on
        }
        if block.bytes.is_empty() {
            return Ok(None);
        }
        block.pick_lines(self.first_line);
        self.first_line += block.lines;
        Ok(Some(block))
    }
}

impl Block {
    /// Numbers the block's lines from `first_line` and sorts the non-blank ones into
    /// their partitions.
    fn pick_lines(&mut self, first_line: i64) {
        let bytes = &self.bytes;
        self.partitions.iter_mut().for_each(Vec::clear);
        let first = usize::try_from(first_line).unwrap_or(usize::MAX);
        let ends = memchr::memchr_iter(b'\n', bytes).chain(
            // A last line without its newline.
            (bytes.last() != Some(&b'\n')).then_some(bytes.len()),
        );
        let (mut start, mut lines) = (0, 0);
        for (index, end) in ends.enumerate() {
            let line = &bytes[start..end];
            if !line.iter().all(u8::is_ascii_whitespace) {
                let number = first + index;
                self.partitions[partition_of_line(line)].push(PickedLine { number, start, end });
            }
            start = end + 1;
            lines = index + 1;
        }
        self.first_line = first_line;
        self.lines = i64::try_from(lines).unwrap_or(i64::MAX);
    }
}

/// The partition of a line's resource. Collectors write `minute`, `host`, `account_id`
/// and `resource_id` first, as plain strings: the id is read from there. Any other line
/// is parsed for its `resource_id` the way the worker will parse it, so that a sample
/// written another way (escapes, spaces, another field order) still joins its
/// resource's partition; a line without one is not a sample and goes to partition 0.
fn partition_of_line(line: &[u8]) -> usize {
    if let Some(resource) = plain_resource_id(line) {
        return partition_of(resource);
    }
    #[derive(serde::Deserialize)]
    struct ResourceOnly {
        resource_id: String,
    }
    serde_json::from_slice::<ResourceOnly>(line)
        .map_or(0, |sample| partition_of(sample.resource_id.as_bytes()))
}

/// `resource_id`'s value if the line starts as collectors write it:
/// `{"minute":"<20 bytes>","host":"…","account_id":"…","resource_id":"…"`, each string
/// without escapes (so the next quote ends it).
fn plain_resource_id(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{\"minute\":\"")?.get(20..)?;
    let rest = skip_plain_string(rest.strip_prefix(b"\",\"host\":\"")?)?;
    let rest = skip_plain_string(rest.strip_prefix(b",\"account_id\":\"")?)?;
    let rest = rest.strip_prefix(b",\"resource_id\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// What follows a string's closing quote, if no escape comes before it.
fn skip_plain_string(rest: &[u8]) -> Option<&[u8]> {
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[end + 1..])
}

/// A resource id's partition: FNV-1a of its bytes, a hash fixed forever (the partition
/// a resource's hours live in must not change between imports).
fn partition_of(resource_id: &[u8]) -> usize {
    let hash = resource_id
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    usize::try_from(hash % PARTITIONS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_has_one_partition_however_its_line_is_written() {
        let plain = br#"{"minute":"2026-10-01T10:07:00Z","host":"hv-1","account_id":"a","resource_id":"vm-17","kind":"server"}"#;
        let escaped = br#"{"minute":"2026-10-01T10:07:00Z","host":"hv-1","account_id":"a","resource_id":"vm-\u0031\u0037","kind":"server"}"#;
        let reordered = br#"{"resource_id" : "vm-17", "minute":"2026-10-01T10:07:00Z"}"#;
        let labelled = br#"{"labels":{"resource_id":"other"},"minute":"2026-10-01T10:07:00Z","host":"hv-1","account_id":"a","resource_id":"vm-17"}"#;
        assert_eq!(plain_resource_id(plain), Some(&b"vm-17"[..]));
        assert_eq!(plain_resource_id(escaped), None);
        assert_eq!(plain_resource_id(labelled), None);
        let expected = partition_of(b"vm-17");
        for line in [&plain[..], escaped, reordered, labelled] {
            assert_eq!(
                partition_of_line(line),
                expected,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(partition_of_line(b"{not json"), 0);
        // The ids spread over every partition.
        let used: std::collections::BTreeSet<usize> = (0..64)
            .map(|n| partition_of(format!("vm-{n}").as_bytes()))
            .collect();
        assert_eq!(used.len(), PARTITIONS);
    }

    #[test]
    fn blocks_number_every_line_and_skip_blank_ones() {
        let mut block = Block {
            bytes: b"{\"a\":1}\n\n  \n{\"b\":2}".to_vec(),
            ..Block::default()
        };
        block.pick_lines(10);
        assert_eq!(block.lines, 4);
        let mut picked: Vec<(usize, &[u8])> = block
            .partitions
            .iter()
            .flatten()
            .map(|line| (line.number, &block.bytes[line.start..line.end]))
            .collect();
        picked.sort_unstable();
        assert_eq!(
            picked,
            vec![(10, &b"{\"a\":1}"[..]), (13, &b"{\"b\":2}"[..])]
        );
    }
}
