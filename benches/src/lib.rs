//! Tally's benchmarks live in `benches/benches/` (harness-less binaries that print medians
//! and a same-run baseline); `BENCHMARKS.md` at the repository root lists the figures and the
//! command that reproduces each.
