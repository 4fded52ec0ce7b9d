//! `cargo bench -p tally-benches --bench aggregate`: see `tally_benches::aggregate`.
//!
//! ```sh
//! cargo bench -p tally-benches --bench aggregate -- --fleet-copies 170 --hours 4 --runs 9
//! cargo bench -p tally-benches --bench aggregate -- --smoke     # 1 copy, 2 hours, 1 run
//! ```

use anyhow::{Context, bail};
use tally_benches::aggregate::{Options, run};

fn args() -> anyhow::Result<Options> {
    let mut options = Options {
        fleet_copies: 170,
        hours: 4,
        runs: 9,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--fleet-copies" => {
                options.fleet_copies = given.next().context("--fleet-copies N")?.parse()?;
            }
            "--hours" => options.hours = given.next().context("--hours N")?.parse()?,
            "--runs" => options.runs = given.next().context("--runs N")?.parse()?,
            "--smoke" => {
                options.fleet_copies = 1;
                options.hours = 2;
                options.runs = 1;
            }
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}: use --fleet-copies N, --hours N, --runs N or --smoke"
            ),
        }
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    run(&args()?)?.print();
    Ok(())
}
