//! `cargo bench -p tally-benches --bench aggregate`: see `tally_benches::aggregate`.
//!
//! ```sh
//! cargo bench -p tally-benches --bench aggregate -- --fleet-copies 170 --hours 4 --runs 9
//! cargo bench -p tally-benches --bench aggregate -- --smoke     # 1 copy, 2 hours, 1 run
//! cargo bench -p tally-benches --bench aggregate -- --open-state 1000000
//! cargo bench -p tally-benches --bench aggregate -- --through-broker --fleet-copies 140 --hours 4 --runs 5
//! cargo bench -p tally-benches --bench aggregate -- --backfill --fleet-copies 170 --hours 4 --runs 5
//! ```
//!
//! `--open-state N` measures memory instead of speed: the resident set of N resources
//! with two open hours, in a process of its own so nothing else is resident.
//! `--through-broker` drains a topic on Tansu (started for the run, from the cache
//! `tests/run` installs it into) with a bare consumer and with the aggregator.
//! `--backfill` rolls one NDJSON file up with `tally aggregate --from-file` and with DuckDB.

use anyhow::{Context, bail};
use tally_benches::aggregate::{Options, open_state, run};
use tally_benches::backfill::backfill;
use tally_benches::broker::through_broker;

enum Mode {
    Speed(Options),
    OpenState(usize),
    ThroughBroker(Options),
    Backfill(Options),
}

fn args() -> anyhow::Result<Mode> {
    let mut options = Options {
        fleet_copies: 170,
        hours: 4,
        runs: 9,
    };
    let (mut broker, mut from_file) = (false, false);
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
            "--through-broker" => broker = true,
            "--backfill" => from_file = true,
            "--open-state" => {
                return Ok(Mode::OpenState(
                    given.next().context("--open-state N")?.parse()?,
                ));
            }
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}: use --fleet-copies N, --hours N, --runs N, --smoke, --through-broker, --backfill or --open-state N"
            ),
        }
    }
    Ok(if broker {
        Mode::ThroughBroker(options)
    } else if from_file {
        Mode::Backfill(options)
    } else {
        Mode::Speed(options)
    })
}

fn main() -> anyhow::Result<()> {
    match args()? {
        Mode::Speed(options) => run(&options)?.print(),
        Mode::OpenState(resources) => open_state(resources, 2)?.print(),
        Mode::Backfill(options) => {
            backfill(options.fleet_copies, options.hours, options.runs)?.print();
        }
        Mode::ThroughBroker(options) => {
            through_broker(options.fleet_copies, options.hours, options.runs)?.print();
        }
    }
    Ok(())
}
