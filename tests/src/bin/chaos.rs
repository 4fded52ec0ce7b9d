//! `chaos [--smoke] [--seed N] [--keep] [SCENARIO...]`: runs fault scenarios against the
//! real pipeline and prints one line of figures for each (see RELIABILITY.md). Run it
//! through `tests/chaos`, which builds `tally` and this runner and installs Tansu.
//!
//! Exits non-zero if any scenario lost, doubled or invented a minute, dead-lettered
//! anything it did not inject on purpose, or rated an invoice differently from the truth.

use std::path::PathBuf;
use std::process::ExitCode;

use tally_tests::chaos::{Scenario, Size};

struct Options {
    size: Size,
    seed: u64,
    keep: bool,
    scenarios: Vec<Scenario>,
}

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut options = Options {
        size: Size::Full,
        seed: 0x7a11_c4a0,
        keep: false,
        scenarios: Vec::new(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => options.size = Size::Smoke,
            "--keep" => options.keep = true,
            "--seed" => {
                let value = args.next().unwrap_or_default();
                options.seed = value
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--seed takes a number, not '{value}'"))?;
            }
            number => {
                let scenario = number
                    .parse()
                    .ok()
                    .and_then(Scenario::from_number)
                    .ok_or_else(|| {
                        let known: Vec<_> = Scenario::ALL
                            .iter()
                            .map(|scenario| format!("{} ({})", scenario.number(), scenario.name()))
                            .collect();
                        anyhow::anyhow!(
                            "unknown argument '{number}': scenarios are {}; options --smoke, \
                             --seed N, --keep",
                            known.join(", ")
                        )
                    })?;
                options.scenarios.push(scenario);
            }
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = Scenario::ALL.to_vec();
    }
    Ok(options)
}

/// `tally` is built next to this runner (`tests/chaos` builds both); `TALLY_BIN` overrides.
fn tally_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TALLY_BIN") {
        return Ok(path.into());
    }
    let beside = std::env::current_exe()?.with_file_name("tally");
    anyhow::ensure!(
        beside.is_file(),
        "{} is missing: build it (tests/chaos does) or set TALLY_BIN",
        beside.display()
    );
    Ok(beside)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let options = parse(std::env::args().skip(1))?;
    let tally = tally_binary()?;
    let mut all_kept = true;
    for scenario in &options.scenarios {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tally-chaos-{}-", scenario.number()))
            .tempdir()?;
        let outcome = scenario
            .run(&tally, dir.path(), options.size, options.seed)
            .await;
        let failures = match &outcome {
            Ok((figures, expected)) => {
                println!("{figures}");
                figures.failures(expected)
            }
            Err(error) => vec![format!("the run failed: {error:#}")],
        };
        if failures.is_empty() && !options.keep {
            continue;
        }
        let kept = dir.keep();
        if failures.is_empty() {
            println!("  kept {}", kept.display());
        } else {
            all_kept = false;
            println!(
                "  FAILED scenario {} (seed {:#x}): {}\n  logs, lake and invoices kept in {}",
                scenario.number(),
                options.seed,
                failures.join("; "),
                kept.display()
            );
        }
    }
    Ok(all_kept)
}
