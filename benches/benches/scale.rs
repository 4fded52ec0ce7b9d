//! `cargo bench -p tally-benches --bench scale`: see `tally_benches::scale`.
//!
//! ```sh
//! cargo bench -p tally-benches --bench scale -- --resources 100000 --partitions 2 --runs 3
//! cargo bench -p tally-benches --bench scale -- --smoke     # 200 resources, 1 run
//! ```
//!
//! The month's generated hours are kept under
//! `${TALLY_CACHE_DIR:-~/.cache/tally}/bench-data/scale-…/` and reused; the day's samples
//! are made afresh in every run. `RUST_LOG=info` shows the rating job's stages.

use anyhow::{Context, bail};
use tally_benches::rating::cache_dir;
use tally_benches::scale::{Options, run};

fn args() -> anyhow::Result<Options> {
    let mut options = Options {
        resources: 100_000,
        partitions: 2,
        runs: 3,
        data_root: cache_dir().join("bench-data"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--resources" => options.resources = given.next().context("--resources N")?.parse()?,
            "--partitions" => {
                options.partitions = given.next().context("--partitions N")?.parse()?;
            }
            "--runs" => options.runs = given.next().context("--runs N")?.parse()?,
            "--smoke" => {
                options.resources = 200;
                options.runs = 1;
            }
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}: use --resources N, --partitions N, --runs N or --smoke"
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
