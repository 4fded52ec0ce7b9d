//! `cargo bench -p tally-benches --bench collector`: see `tally_benches::collector`.
//!
//! ```sh
//! cargo bench -p tally-benches --bench collector -- --speed 1 --minutes 5 --runs 1    # real minutes
//! cargo bench -p tally-benches --bench collector -- --speed 60 --minutes 30 --runs 3  # the work per minute
//! ```
//!
//! Tansu is started for the run from the cache `tests/run` installs it into.

use anyhow::Context;
use tally_benches::collector::{AGENT_CHILD, Options, agent, agent_child};

fn main() -> anyhow::Result<()> {
    if let Ok(config) = std::env::var(AGENT_CHILD) {
        return agent_child(config.as_ref());
    }
    let mut options = Options {
        resources: 1_000,
        minutes: 30,
        speed: 60,
        runs: 3,
        child_args: Vec::new(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--resources" => options.resources = given.next().context("--resources N")?.parse()?,
            "--minutes" => options.minutes = given.next().context("--minutes N")?.parse()?,
            "--speed" => options.speed = given.next().context("--speed N")?.parse()?,
            "--runs" => options.runs = given.next().context("--runs N")?.parse()?,
            "--bench" => {}
            other => anyhow::bail!(
                "unknown argument {other}; use --resources N --minutes N --speed N --runs N"
            ),
        }
    }
    agent(&options)?.print();
    Ok(())
}
