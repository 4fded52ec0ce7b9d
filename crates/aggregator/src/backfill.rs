//! `tally aggregate --from-file`: rolls up an NDJSON sample file through the same path
//! as Kafka messages (decode, validate, dedup, rollup, seal), for imports and tests.
//!
//! The file is cut into blocks of whole lines, each of which counts as one message whose
//! offset is its first line's number; dead letters name the line (`item` is the line
//! number in the file). Decoding JSON is most of the work, so the blocks are decoded on
//! every core at once while this thread rolls them up in file order: a reader thread cuts
//! the blocks and deals them out round-robin, and the results are taken back in the same
//! order.

use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use tally_model::Sample;
use tally_model::wire::{Decoded, decode_json_reusing};

use crate::deadletter::{CollectedDeadLetters, DeadLetter};
use crate::error::{Error, Result};
use crate::ingest::{AggregateConfig, AggregateReport, Ingest, Original};

/// About 4,000 samples a block: large enough to keep the decoders busy, small enough
/// that the seal checks between blocks come often.
const BLOCK_BYTES: usize = 1 << 20;

/// Samples a decoder keeps to fill: about four blocks' worth.
const MAX_SPARE_SAMPLES: usize = 16_384;

/// A block of whole lines, the number of its first line and how many lines it holds.
struct Block {
    first_line: i64,
    lines: i64,
    bytes: Vec<u8>,
}

/// Rolls up `path` into the lake and seals every hour. Returns the report and the dead
/// letters (the caller decides where they go).
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
    let decoders = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mut dead_letters = CollectedDeadLetters::default();
    let mut ingest = Ingest::new(config.clone(), &source, &mut dead_letters);
    ingest.open_partition(0)?;
    let mut next_line = 1;
    std::thread::scope(|scope| -> Result<()> {
        let mut to_decoders = Vec::new();
        let mut from_decoders = Vec::new();
        let mut spare_to_decoders = Vec::new();
        for _ in 0..decoders {
            let (blocks, block_receiver) = sync_channel::<std::io::Result<Block>>(2);
            let (decoded_sender, decoded) = sync_channel(2);
            let (spare, spare_receiver) = sync_channel(2);
            scope.spawn(move || decode_blocks(&block_receiver, &spare_receiver, &decoded_sender));
            to_decoders.push(blocks);
            from_decoders.push(decoded);
            spare_to_decoders.push(spare);
        }
        scope.spawn(move || cut_blocks(file, &to_decoders));
        // Block k went to decoder k % n; a decoder that has hung up got no block k.
        for decoder in (0..decoders).cycle() {
            let Ok(result) = from_decoders[decoder].recv() else {
                break;
            };
            let (block, mut items) = result.map_err(input_error)?;
            let original = Original::Lines {
                bytes: &block.bytes,
                first_line: usize::try_from(block.first_line).unwrap_or(usize::MAX),
            };
            ingest.process_decoded(&topic, 0, block.first_line, original, &mut items)?;
            // The samples go back to be filled again; a decoder with enough drops them.
            let _ = spare_to_decoders[decoder].try_send(ingest.take_spare());
            next_line = block.first_line + block.lines;
            ingest.seal_ready(0, next_line)?;
        }
        Ok(())
    })?;
    ingest.seal_all(0, next_line)?;
    let report = ingest.report;
    Ok((report, dead_letters.letters))
}

/// Reads `file` in blocks that end at a line's end, numbered, dealt out round-robin.
fn cut_blocks(mut file: File, decoders: &[SyncSender<std::io::Result<Block>>]) {
    let mut first_line = 1;
    let mut carry = Vec::new();
    for decoder in decoders.iter().cycle() {
        // Room for the whole block at once: growing by doubling would copy it repeatedly.
        let mut bytes = Vec::with_capacity(BLOCK_BYTES + carry.len());
        bytes.append(&mut carry);
        let mut at_end = false;
        let read = loop {
            match (&mut file).take(BLOCK_BYTES as u64).read_to_end(&mut bytes) {
                Err(error) => break Err(error),
                // What is left is the last line, without its newline.
                Ok(0) => {
                    at_end = true;
                    break Ok(());
                }
                Ok(_) => {
                    if let Some(end) = memchr::memrchr(b'\n', &bytes) {
                        carry = bytes.split_off(end + 1);
                        break Ok(());
                    } // else a line longer than a block: read on
                }
            }
        };
        let block = match read {
            Err(error) => Err(error),
            Ok(()) if bytes.is_empty() => return,
            Ok(()) => {
                let lines = count_lines(&bytes);
                let block = Block {
                    first_line,
                    lines,
                    bytes,
                };
                first_line += lines;
                Ok(block)
            }
        };
        let last = at_end || block.is_err();
        if decoder.send(block).is_err() || last {
            return;
        }
    }
}

/// Decodes each block it is given into samples handed back by the roll-up where there
/// are any; line numbers in errors become lines of the file.
fn decode_blocks(
    blocks: &Receiver<std::io::Result<Block>>,
    spare_samples: &Receiver<Vec<Sample>>,
    decoded: &SyncSender<std::io::Result<(Block, Vec<Decoded>)>>,
) {
    let mut spare = Vec::new();
    for block in blocks {
        spare.extend(spare_samples.try_iter().flatten());
        spare.truncate(MAX_SPARE_SAMPLES);
        let result = block.map(|block| {
            let mut items = Vec::new();
            decode_json_reusing(&block.bytes, &mut spare, &mut items);
            let before = usize::try_from(block.first_line - 1).unwrap_or(0);
            for error in items.iter_mut().filter_map(|item| item.as_mut().err()) {
                error.position += before;
            }
            (block, items)
        });
        if decoded.send(result).is_err() {
            return;
        }
    }
}

/// Lines in a block: its newlines, plus one for a last line without one.
fn count_lines(bytes: &[u8]) -> i64 {
    let newlines = memchr::memchr_iter(b'\n', bytes).count();
    let unterminated = usize::from(bytes.last().is_some_and(|byte| *byte != b'\n'));
    i64::try_from(newlines + unterminated).unwrap_or(i64::MAX)
}
