//! `cargo bench -p tally-benches --bench rating`: see `tally_benches::rating`.
//!
//! ```sh
//! cargo bench -p tally-benches --bench rating -- --resources 100000 --runs 3
//! cargo bench -p tally-benches --bench rating -- --smoke      # 1,000 resources, 1 run
//! cargo bench -p tally-benches --bench rating -- --tally-only # the job alone, for a profiler
//! cargo bench -p tally-benches --bench rating -- --ballista   # the job's queries on Ballista
//! ```
//!
//! Generated data is kept under `${TALLY_CACHE_DIR:-~/.cache/tally}/bench-data/` and reused.
//! `RUST_LOG=info` shows the rating job's stages with timestamps.

use anyhow::{Context, bail};
use tally_benches::rating::{Options, cache_dir, run};

fn args() -> anyhow::Result<Options> {
    let mut options = Options {
        resources: 100_000,
        runs: 3,
        data_root: cache_dir().join("bench-data"),
        tally_only: false,
        ballista: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--resources" => options.resources = given.next().context("--resources N")?.parse()?,
            "--runs" => options.runs = given.next().context("--runs N")?.parse()?,
            "--tally-only" => options.tally_only = true,
            "--ballista" => options.ballista = true,
            "--smoke" => {
                options.resources = 1_000;
                options.runs = 1;
            }
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}: use --resources N, --runs N, --tally-only, --ballista or --smoke"
            ),
        }
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    tally_benches::log_if_asked();
    run(&args()?)?.print();
    Ok(())
}
