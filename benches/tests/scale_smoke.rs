//! The scale run's smoke variant, run by the test suite: 200 resources, one run, in a
//! temporary directory. The run itself checks that the aggregator took every sample of
//! the day and wrote exactly the generator's rows for it; this checks that rating then
//! covered every account. Timings are not asserted (`BENCHMARKS.md` has the real figures).

use tally_benches::scale::{Options, run};

#[test]
fn the_scale_run_aggregates_the_day_exactly_and_rates_the_month() {
    let data = tempfile::tempdir().expect("tempdir");
    let figures = run(&Options {
        resources: 200,
        partitions: 2,
        runs: 1,
        data_root: data.path().to_owned(),
    })
    .expect("scale run");
    figures.print();
    // About 200 resources × 1,440 minutes (a few are created or deleted during the day).
    assert!(
        figures.day_samples > 250_000,
        "{} samples",
        figures.day_samples
    );
    assert!(figures.day_rows > 4_000, "{} rows", figures.day_rows);
    // 10 resources per account: every account gets an invoice.
    assert_eq!(figures.invoices, 20);
    assert!(
        figures.line_items >= 200,
        "{} line items",
        figures.line_items
    );
}
