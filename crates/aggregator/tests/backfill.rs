//! The file backfill goes through the same path as Kafka messages: decode, validate,
//! dedup, rollup, seal; bad lines are reported with their line number and good ones kept.

use std::io::Write;
use std::sync::Arc;

use tally_aggregator::{AggregateConfig, run_file};
use tally_model::clock::FixedClock;

fn line(minute: &str, resource: &str, state: &str, bytes: u64) -> String {
    format!(
        r#"{{"minute":"{minute}","host":"hv-1","account_id":"acme","resource_id":"{resource}","kind":"server","sku":"cx22","zone":"fsn1","state":"{state}","out_external_bytes":{bytes}}}"#
    )
}

#[test]
fn duplicates_count_once_conflicts_and_bad_lines_are_reported() {
    let directory = tempfile::tempdir().expect("tempdir");
    let input = directory.path().join("samples.ndjson");
    let mut lines = Vec::new();
    for minute in 0..90 {
        let stamp = format!("2026-10-01T{:02}:{:02}:00Z", 10 + minute / 60, minute % 60);
        let state = if minute < 45 { "running" } else { "stopped" };
        lines.push(line(&stamp, "vm-1", state, 100));
    }
    lines.push(line("2026-10-01T10:05:00Z", "vm-1", "running", 100)); // duplicate
    lines.push(line("2026-10-01T10:06:00Z", "vm-1", "running", 999)); // conflict
    lines.push("{not json".to_owned()); // line 93
    lines.push(line("2026-10-01T10:07:30Z", "vm-1", "running", 1)); // unaligned minute
    let mut file = std::fs::File::create(&input).expect("create");
    writeln!(file, "{}", lines.join("\n")).expect("write");

    let lake = directory.path().join("lake");
    let mut config = AggregateConfig::new(&lake);
    config.clock = Arc::new(FixedClock("2026-10-02T00:00:00Z".parse().expect("time")));
    let (report, dead_letters) = run_file(&config, &input).expect("backfill");
    assert_eq!(report.accepted, 90);
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.conflicts, 1);
    assert_eq!(report.hours_sealed, 2);
    let reasons: Vec<(&str, Option<usize>)> = dead_letters
        .iter()
        .map(|l| (l.reason.code(), l.item))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("conflict", Some(92)),
            ("malformed", Some(93)),
            ("malformed", Some(94))
        ]
    );
    // Each dead letter carries its line as it was written.
    assert_eq!(dead_letters[0].payload, lines[91].as_bytes());
    assert_eq!(dead_letters[1].payload, b"{not json");

    let mut rows = Vec::new();
    for hour in ["2026-10-01T10", "2026-10-01T11"] {
        // One resource: one partition of the file, one file per hour.
        let [file] = rollup_files(&lake, hour).try_into().expect("one file");
        assert!(file.ends_with("-g0000.parquet"), "{file}");
        let path = lake.join(format!("rollups/hour={hour}/{file}"));
        rows.extend(tally_aggregator::write::read_rows(&path).expect("rows"));
    }
    let running: u32 = rows
        .iter()
        .map(|r| r.meters.state_masks[0].count_ones())
        .sum();
    let stopped: u32 = rows
        .iter()
        .map(|r| r.meters.state_masks[1].count_ones())
        .sum();
    let bytes: u64 = rows.iter().map(|r| r.meters.out_external_bytes).sum();
    assert_eq!((running, stopped, bytes), (45, 45, 9000));

    // Replaying the same file changes nothing: every minute is already in a sealed hour.
    let (again, _) = run_file(&config, &input).expect("replay");
    assert_eq!(again.accepted, 0);
    assert_eq!(again.hours_sealed, 0);

    // A late sample for a sealed hour of the same source restates that hour as the next
    // generation; the superseded file is removed once the manifest names the new one.
    let later = directory.path().join("later");
    std::fs::create_dir_all(&later).expect("mkdir");
    let late = later.join("samples.ndjson");
    std::fs::write(&late, line("2026-10-01T11:59:00Z", "vm-1", "running", 7)).expect("write");
    let (restated, _) = run_file(&config, &late).expect("late");
    assert_eq!((restated.accepted, restated.restatements), (1, 1));
    let [file] = rollup_files(&lake, "2026-10-01T11")
        .try_into()
        .expect("one file");
    assert!(file.ends_with("-g0001.parquet"), "{file}");
    let hour = lake.join("rollups/hour=2026-10-01T11");
    let rows = tally_aggregator::write::read_rows(&hour.join(file)).expect("rows");
    let samples: u32 = rows.iter().map(|r| r.meters.sample_count).sum();
    assert_eq!(
        samples,
        30 + 1,
        "the hour keeps its 30 minutes and gains the late one"
    );
}

/// The rollup files of `hour`, by name.
fn rollup_files(lake: &std::path::Path, hour: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(lake.join(format!("rollups/hour={hour}")))
        .expect("hour directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_of_many_blocks_is_read_whole_and_bad_lines_are_named_by_their_number() {
    let directory = tempfile::tempdir().expect("tempdir");
    let input = directory.path().join("big.ndjson");
    // 20,000 lines (several blocks), a blank line, a bad line far down, and no newline
    // after the last line.
    let mut text = String::new();
    for number in 1..=20_000u32 {
        if number == 7_000 {
            text.push('\n'); // blank: skipped, but counted
            continue;
        }
        if number == 15_001 {
            text.push_str("{broken\n");
            continue;
        }
        let minute = number - 1;
        let stamp = format!(
            "2026-10-01T{:02}:{:02}:00Z",
            10 + minute / 60 % 10,
            minute % 60
        );
        text.push_str(&line(&stamp, &format!("vm-{}", minute / 600), "running", 1));
        if number < 20_000 {
            text.push('\n');
        }
    }
    std::fs::write(&input, text).expect("write");
    let mut config = AggregateConfig::new(directory.path().join("lake"));
    config.clock = Arc::new(FixedClock("2026-10-02T00:00:00Z".parse().expect("time")));
    let (report, dead_letters) = run_file(&config, &input).expect("backfill");
    assert_eq!(report.accepted, 19_998, "{report:?}");
    let named: Vec<(&str, Option<usize>)> = dead_letters
        .iter()
        .map(|letter| (letter.reason.code(), letter.item))
        .collect();
    assert_eq!(named, vec![("malformed", Some(15_001))]);
}

#[test]
fn a_file_that_cannot_be_read_is_named_and_nothing_is_sealed() {
    let directory = tempfile::tempdir().expect("tempdir");
    // A directory opens like a file on Linux; reading it fails.
    let input = directory.path().join("not-a-file.ndjson");
    std::fs::create_dir(&input).expect("mkdir");
    let lake = directory.path().join("lake");
    let error = run_file(&AggregateConfig::new(&lake), &input).expect_err("a directory");
    assert!(
        error.to_string().contains("not-a-file.ndjson"),
        "the error names the input: {error}"
    );
    assert!(
        !lake.join("rollups").exists(),
        "no hour was sealed from a file that could not be read"
    );
}
