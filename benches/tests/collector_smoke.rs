//! The collector benchmark's smoke variant, run by the test suite: 1,000 simulated
//! resources for three fast minutes, one run, through Tansu. The benchmark itself checks
//! that every minute was sampled and its samples acknowledged; RSS and CPU are printed,
//! not asserted (`BENCHMARKS.md` has the real figures).

use tally_benches::collector::{AGENT_CHILD, Options, agent, agent_child};

/// Run by the child process only: the agent the benchmark measures.
#[test]
fn collector_agent_child() -> anyhow::Result<()> {
    let Ok(config) = std::env::var(AGENT_CHILD) else {
        return Ok(()); // an ordinary test run: nothing to do
    };
    agent_child(config.as_ref())
}

#[test]
fn the_collector_benchmark_runs_and_every_minute_is_acknowledged() {
    let figures = agent(&Options {
        resources: 1_000,
        minutes: 3,
        speed: 60,
        runs: 1,
        child_args: vec![
            "--exact".into(),
            "collector_agent_child".into(),
            "--nocapture".into(),
        ],
    })
    .expect("benchmark");
    figures.print();
    assert!(figures.runs[0].rss_peak > 0);
}
