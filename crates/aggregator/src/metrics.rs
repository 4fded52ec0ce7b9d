//! The aggregator's metrics, in the Prometheus text format.
//!
//! `tally aggregate --metrics-file PATH` rewrites the file atomically every checkpoint
//! interval and at exit, for node_exporter's textfile collector (or anything that reads
//! the format); the same figures go to the log as one structured line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ingest::AggregateReport;

/// The metrics of `report`, with the consumer lag (messages behind the end) per
/// partition owned.
pub fn prometheus_text(topic: &str, report: &AggregateReport, lag: &BTreeMap<i32, i64>) -> String {
    let mut text = String::new();
    let topic = escape(topic);
    // One figure per topic: its help, its type and its value.
    let mut figure = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(
            text,
            "# HELP tally_aggregator_{name} {help}\n# TYPE tally_aggregator_{name} {kind}\ntally_aggregator_{name}{{topic=\"{topic}\"}} {value}"
        );
    };
    let mut counter = |name: &str, help: &str, value: u64| figure(name, "counter", help, &value);
    counter("messages_total", "Messages read.", report.messages);
    counter(
        "samples_total",
        "Samples decoded, valid or not.",
        report.samples,
    );
    counter("accepted_total", "Samples counted.", report.accepted);
    counter(
        "duplicates_total",
        "Samples already counted (re-sent or read again).",
        report.duplicates,
    );
    counter(
        "conflicts_total",
        "Samples contradicting one already counted for their minute.",
        report.conflicts,
    );
    counter(
        "late_samples_total",
        "Samples restated into an hour already sealed.",
        report.late_samples,
    );
    counter(
        "hours_sealed_total",
        "Hour files sealed.",
        report.hours_sealed,
    );
    counter(
        "restatements_total",
        "Sealed hours sealed again with late samples.",
        report.restatements,
    );
    counter(
        "rows_written_total",
        "Rollup rows written.",
        report.rows_written,
    );
    counter(
        "bytes_written_total",
        "Rollup bytes written.",
        report.bytes_written,
    );
    counter(
        "checkpoints_total",
        "Checkpoints of open hours written.",
        report.checkpoints,
    );
    figure(
        "restatement_lag_minutes",
        "gauge",
        "Most minutes a restated hour lay behind the partition's latest minute.",
        &report.max_restatement_lag_minutes,
    );
    figure(
        "checkpoint_seconds",
        "gauge",
        "How long the last checkpoint took.",
        &(report.last_checkpoint_micros as f64 / 1e6),
    );
    let _ = writeln!(
        text,
        "# HELP tally_aggregator_dead_letters_total Messages or samples dead-lettered, by reason.\n# TYPE tally_aggregator_dead_letters_total counter"
    );
    for reason in tally_model::RejectReason::ALL {
        let count = report.dead_letters.get(reason.code()).copied().unwrap_or(0);
        let _ = writeln!(
            text,
            "tally_aggregator_dead_letters_total{{topic=\"{topic}\",reason=\"{}\"}} {count}",
            reason.code()
        );
    }
    let _ = writeln!(
        text,
        "# HELP tally_aggregator_lag_messages Messages between the partition's end and the next one to read.\n# TYPE tally_aggregator_lag_messages gauge"
    );
    for (partition, behind) in lag {
        let _ = writeln!(
            text,
            "tally_aggregator_lag_messages{{topic=\"{topic}\",partition=\"{partition}\"}} {behind}"
        );
    }
    text
}

/// Replaces `path` with `text` atomically (a reader sees the old file or the new one).
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let temp = path.with_extension("prom.tmp");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|source| Error::Io {
            action: format!("write metrics to {}", path.display()),
            source,
        })
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_a_sample_line_with_help_and_type() {
        let mut report = AggregateReport {
            accepted: 42,
            conflicts: 1,
            ..AggregateReport::default()
        };
        report.dead_letters.insert("malformed", 3);
        let text = prometheus_text("tally.samples", &report, &BTreeMap::from([(0, 7), (2, 0)]));
        assert!(text.contains("tally_aggregator_accepted_total{topic=\"tally.samples\"} 42\n"));
        assert!(text.contains("tally_aggregator_conflicts_total{topic=\"tally.samples\"} 1\n"));
        assert!(text.contains(
            "tally_aggregator_dead_letters_total{topic=\"tally.samples\",reason=\"malformed\"} 3\n"
        ));
        assert!(text.contains(
            "tally_aggregator_dead_letters_total{topic=\"tally.samples\",reason=\"conflict\"} 0\n"
        ));
        assert!(text.contains(
            "tally_aggregator_lag_messages{topic=\"tally.samples\",partition=\"0\"} 7\n"
        ));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            assert!(name.starts_with("tally_aggregator_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
