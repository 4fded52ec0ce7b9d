//! Tally's benchmarks live in `benches/benches/` (harness-less binaries that print medians
//! and a same-run baseline); `benches/BENCHMARKS.md` lists the figures and the
//! command that reproduces each.
//!
//! [`rating`] is the rating benchmark (run by `benches/benches/rating.rs`, and as a smoke
//! test with 1,000 resources by `cargo test`). [`rollup_month`] generates the input of the rating benchmark: a month of hourly rollups
//! for a large fleet, written exactly as the aggregator writes them.

pub mod aggregate;
pub mod backfill;
pub mod broker;
pub mod collector;
pub mod rating;
pub mod rollup_month;
pub mod scale;

/// Logs to stderr when `RUST_LOG` asks for it (`RUST_LOG=info` shows the rating job's
/// stage timings), and stays quiet otherwise: the benches' output is their figures.
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// This package's directory (where `scripts/` is): cargo's at run time, so a target
/// directory shared by checkouts in different places finds the running checkout's files;
/// the one it was built in when run without cargo.
pub fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
