//! NDJSON samples from another process: a file it appends to, or the agent's stdin.
//!
//! For a provider whose own exporter already makes samples (one JSON object per line,
//! `schemas/sample.v1.schema.json`). A file is followed like `tail -f`: complete lines are
//! read as they are appended, and the offset after the last line taken is part of the
//! agent's checkpoint (saved in the same fsync as those samples), so a restarted agent
//! resumes after the last line it spooled: no line lost, none taken twice. A line that
//! is not a valid sample is refused with its file and line number and kept (the agent
//! writes it to its rejects file); the lines around it are taken.
//!
//! Stdin is read by a thread into a small bounded queue: when the spool cannot keep up,
//! the writing process blocks instead of the agent buffering without bound. Stdin cannot
//! be resumed, so a restart starts with whatever is written next.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_model::Minute;
use tally_model::wire::decode_json;

use super::{Observation, Rejected, Source, SourceError};

/// How often the agent looks for new lines.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most bytes read per look, so a huge backlog is spooled in bounded steps.
const MAX_BYTES_PER_POLL: u64 = 8 << 20;
/// Lines of stdin queued between the reading thread and the agent.
const STDIN_QUEUE_LINES: usize = 65_536;

/// Samples appended to a file, or written to stdin.
pub struct FileSource {
    input: Input,
    /// The next line's number (1-based).
    line: u64,
}

enum Input {
    File {
        path: PathBuf,
        file: File,
        /// Where the first line not yet taken starts.
        offset: u64,
    },
    Stdin {
        lines: Receiver<Vec<u8>>,
        closed: bool,
    },
}

/// Where a file source is: saved with the samples it led to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    offset: u64,
    line: u64,
}

impl FileSource {
    /// Follows `path`; `-` reads stdin.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        if path == Path::new("-") {
            return Self::reading(|| std::io::stdin().lock());
        }
        let file = File::open(path).map_err(|error| SourceError::File {
            path: path.display().to_string(),
            detail: format!("cannot open: {error}"),
        })?;
        Ok(Self {
            input: Input::File {
                path: path.to_owned(),
                file,
                offset: 0,
            },
            line: 1,
        })
    }

    /// Reads the lines of the input `open` gives (stdin) on a thread of its own.
    fn reading<R: BufRead>(open: impl FnOnce() -> R + Send + 'static) -> Result<Self, SourceError> {
        let (sender, lines) = sync_channel(STDIN_QUEUE_LINES);
        std::thread::Builder::new()
            .name("tally-stdin".to_owned())
            .spawn(move || read_lines(open(), &sender))
            .map_err(|error| SourceError::File {
                path: "stdin".to_owned(),
                detail: format!("cannot start its reader thread: {error}"),
            })?;
        Ok(Self {
            input: Input::Stdin {
                lines,
                closed: false,
            },
            line: 1,
        })
    }

    /// The file's name, or `stdin`, for locations of refused lines.
    fn name(&self) -> String {
        match &self.input {
            Input::File { path, .. } => path.display().to_string(),
            Input::Stdin { .. } => "stdin".to_owned(),
        }
    }

    /// Turns one line into an observation; blank lines give none.
    fn take_line(&mut self, bytes: &[u8], into: &mut Vec<Observation>) {
        let number = self.line;
        self.line += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // decode_json numbers lines from 1 within what it is given: one line here.
        for decoded in decode_json(bytes) {
            into.push(match decoded {
                Ok(sample) => Observation::Sample(sample),
                Err(error) => Observation::Rejected(Rejected {
                    location: format!("{}:{number}", self.name()),
                    reason: error.rejection.to_string(),
                    input: String::from_utf8_lossy(bytes).into_owned(),
                }),
            });
        }
    }
}

/// Reads lines into `sender` until the input ends or the agent is gone.
fn read_lines(input: impl BufRead, sender: &SyncSender<Vec<u8>>) {
    for line in input.split(b'\n') {
        match line {
            Ok(line) => {
                if sender.send(line).is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(%error, "reading stdin failed; no more samples from it");
                return;
            }
        }
    }
}

/// The complete lines appended to `file` since `offset`, which moves past them.
fn read_complete_lines(
    path: &Path,
    file: &mut File,
    offset: &mut u64,
    line: &mut u64,
) -> Result<Vec<u8>, SourceError> {
    let file_error = |detail: String| SourceError::File {
        path: path.display().to_string(),
        detail,
    };
    let length = file
        .metadata()
        .map_err(|error| file_error(format!("cannot stat: {error}")))?
        .len();
    if length < *offset {
        // Truncated in place (rotated by copy-and-truncate): what was taken stays
        // taken; the new content is read from its start.
        tracing::warn!(path = %path.display(), length, offset = *offset, "file shrank; reading it again from its start");
        *offset = 0;
        *line = 1;
    }
    file.seek(SeekFrom::Start(*offset))
        .map_err(|error| file_error(format!("cannot seek to {offset}: {error}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES_PER_POLL)
        .read_to_end(&mut bytes)
        .map_err(|error| file_error(format!("cannot read at {offset}: {error}")))?;
    // Only complete lines: the writer may be half-way through the last one.
    let consumed = match bytes.iter().rposition(|&byte| byte == b'\n') {
        Some(end) => end + 1,
        // No line ends within 8 MiB, and no sample is that long: taken as a line of its
        // own, it is refused with its place instead of stalling the file forever.
        None if bytes.len() as u64 == MAX_BYTES_PER_POLL => bytes.len(),
        None => 0,
    };
    bytes.truncate(consumed);
    if bytes.last().is_some_and(|&byte| byte != b'\n') {
        bytes.push(b'\n');
    }
    *offset += consumed as u64;
    Ok(bytes)
}

impl Source for FileSource {
    fn observe(&mut self, _minute: Minute) -> Result<Vec<Observation>, SourceError> {
        let mut observations = Vec::new();
        match &mut self.input {
            Input::Stdin { lines, closed } => {
                let mut taken = Vec::new();
                while taken.len() < STDIN_QUEUE_LINES {
                    match lines.try_recv() {
                        Ok(line) => taken.push(line),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            *closed = true;
                            break;
                        }
                    }
                }
                for line in taken {
                    self.take_line(&line, &mut observations);
                }
            }
            Input::File { path, file, offset } => {
                let bytes = read_complete_lines(path, file, offset, &mut self.line)?;
                for line in bytes.split_inclusive(|&byte| byte == b'\n') {
                    self.take_line(&line[..line.len() - 1], &mut observations);
                }
            }
        }
        Ok(observations)
    }

    fn name(&self) -> &'static str {
        "file"
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }

    fn finished(&self) -> bool {
        matches!(self.input, Input::Stdin { closed: true, .. })
    }

    fn checkpoint(&self) -> serde_json::Value {
        match &self.input {
            Input::File { offset, .. } => serde_json::to_value(FilePosition {
                offset: *offset,
                line: self.line,
            })
            .unwrap_or_default(),
            Input::Stdin { .. } => serde_json::Value::Null,
        }
    }

    fn restore(&mut self, checkpoint: serde_json::Value) -> Result<(), SourceError> {
        if let Input::File { offset, path, .. } = &mut self.input {
            if checkpoint.is_null() {
                return Ok(());
            }
            let position: FilePosition =
                serde_json::from_value(checkpoint).map_err(|error| SourceError::File {
                    path: path.display().to_string(),
                    detail: format!("the checkpoint's file position does not read: {error}"),
                })?;
            *offset = position.offset;
            self.line = position.line;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const SAMPLE: &str = r#"{"minute":"2026-11-23T10:00:00Z","host":"hv-1","account_id":"acme","resource_id":"vm-1","kind":"server","sku":"cx22","zone":"fsn1","state":"running"}"#;

    fn observe(source: &mut FileSource) -> Vec<Observation> {
        source
            .observe("2026-11-23T10:05:00Z".parse().expect("minute"))
            .expect("reads")
    }

    #[test]
    fn stdin_is_read_to_its_end_and_then_the_source_is_finished() {
        let input = format!("{SAMPLE}\nnot json\n{SAMPLE}");
        let mut source =
            FileSource::reading(move || std::io::Cursor::new(input.into_bytes())).expect("reads");
        let mut taken = Vec::new();
        for _ in 0..100 {
            let finished = source.finished();
            taken.extend(observe(&mut source));
            if finished {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(source.finished(), "the end of the input is seen");
        assert_eq!(taken.len(), 3, "{taken:?}");
        assert!(matches!(&taken[0], Observation::Sample(_)));
        assert!(matches!(&taken[1], Observation::Rejected(r) if r.location == "stdin:2"));
        // The last line has no newline: the end of the input ends it.
        assert!(matches!(&taken[2], Observation::Sample(_)));
    }

    #[test]
    fn complete_lines_are_taken_bad_ones_refused_with_their_place_and_a_restart_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("samples.ndjson");
        let mut file = File::create(&path).expect("create");
        // A sample, a blank line, a broken line, and half of a sample still being written.
        write!(file, "{SAMPLE}\n\n{{\"minute\": 7}}\n{}", &SAMPLE[..40]).expect("write");
        let mut source = FileSource::open(&path).expect("opens");
        let first = observe(&mut source);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(matches!(&first[0], Observation::Sample(sample) if sample.resource_id == "vm-1"));
        let Observation::Rejected(refused) = &first[1] else {
            panic!("the broken line is refused: {first:?}");
        };
        assert_eq!(refused.location, format!("{}:3", path.display()));
        assert_eq!(refused.input, "{\"minute\": 7}");
        assert!(observe(&mut source).is_empty(), "the half line waits");

        // The writer finishes the line; a restarted agent resumes after what was taken.
        writeln!(file, "{}", &SAMPLE[40..]).expect("write");
        let checkpoint = source.checkpoint();
        let mut restarted = FileSource::open(&path).expect("opens");
        restarted.restore(checkpoint).expect("restores");
        let resumed = observe(&mut restarted);
        assert_eq!(resumed.len(), 1, "{resumed:?}");
        assert!(matches!(&resumed[0], Observation::Sample(_)));
        assert!(observe(&mut restarted).is_empty());
    }
}
