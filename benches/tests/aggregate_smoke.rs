//! The aggregator benchmark's smoke variant, run by the test suite: one copy of the
//! simulator's fleet for two hours, one run. It checks that the benchmark runs end to end
//! and that every sample was taken (the run itself fails otherwise); timings are not
//! asserted (`BENCHMARKS.md` has the real figures).

use tally_benches::aggregate::{Options, run};

#[test]
fn the_aggregator_benchmark_runs_and_takes_every_sample() {
    let figures = run(&Options {
        fleet_copies: 1,
        hours: 2,
        runs: 1,
    })
    .expect("benchmark");
    figures.print();
    assert!(figures.samples > 5_000, "{} samples", figures.samples);
    assert!(
        figures.rows > 0 && figures.bytes > 0,
        "sealing wrote nothing"
    );
}

/// The backfill benchmark's smoke variant: a small NDJSON file rolled up by `run_file` and
/// by DuckDB (the real one, from the venv the rating smoke test uses too). The benchmark
/// itself checks that Tally took every sample and that both wrote the same number of
/// rollup rows.
#[test]
fn the_backfill_benchmark_runs_against_duckdb() {
    let figures = tally_benches::backfill::backfill(1, 2, 1).expect("backfill benchmark");
    figures.print();
    assert!(figures.samples > 5_000, "{} samples", figures.samples);
    assert!(figures.tally_rows > 0, "nothing rolled up");
    assert_eq!(figures.tally_rows, figures.duckdb_rows);
}
