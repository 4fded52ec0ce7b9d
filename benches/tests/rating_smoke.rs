//! The rating benchmark's smoke variant, run by the test suite: 1,000 resources, one run
//! of each contender against the same files. It checks that the benchmark still runs end
//! to end (generator, `tally rate`, DataFusion, DuckDB) and that both engines agree on the
//! simplified query, and that the job runs on the `--ballista` cluster too; its timings are
//! not asserted (timed tests on a noisy machine prove nothing; `BENCHMARKS.md` has the real
//! figures).

use tally_benches::rating::{Options, run};

#[test]
fn the_rating_benchmark_runs_and_both_engines_agree() {
    let data = tempfile::tempdir().expect("tempdir");
    let figures = run(&Options {
        resources: 1_000,
        runs: 1,
        data_root: data.path().to_owned(),
        tally_only: false,
        ballista: false,
    })
    .expect("benchmark");
    figures.print();
    assert_eq!(figures.simplified_rows.0, 1_000, "one row per resource");
    assert_eq!(figures.simplified_rows.1, 1_000, "one row per resource");
    // 10 resources per account: every account gets an invoice.
    assert_eq!(figures.invoices, 100);
    assert!(
        figures.line_items >= 1_000,
        "{} line items",
        figures.line_items
    );
}

#[test]
fn the_rating_benchmark_runs_on_its_ballista_cluster() {
    let data = tempfile::tempdir().expect("tempdir");
    let figures = run(&Options {
        resources: 1_000,
        runs: 1,
        data_root: data.path().to_owned(),
        tally_only: true,
        ballista: true,
    })
    .expect("benchmark on Ballista");
    figures.print();
    assert_eq!(figures.invoices, 100);
}
