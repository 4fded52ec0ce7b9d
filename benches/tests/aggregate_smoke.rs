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
