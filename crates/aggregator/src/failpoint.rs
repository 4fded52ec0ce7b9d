//! Failpoints: named places in the write path where a fault test can make the process
//! die on purpose, at moments a signal from outside almost never hits (between a file's
//! fsync and its rename, between a rename and the manifest that names it).
//!
//! `TALLY_FAILPOINT=NAME:N` makes the `N`th pass through `NAME` abort the process, which
//! like SIGKILL runs no destructors and flushes nothing. Unset (every real deployment),
//! a pass costs one load of a value parsed once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the failpoint to fire: `NAME:N`.
pub const ENV: &str = "TALLY_FAILPOINT";

/// A rollup or checkpoint file is written and fsynced under its temporary name.
pub const PARQUET_WRITTEN: &str = "parquet-written";
/// A rollup or checkpoint file was renamed into place; its directory is not fsynced yet.
pub const PARQUET_RENAMED: &str = "parquet-renamed";
/// A checkpoint file is in place; the manifest does not name it yet.
pub const CHECKPOINT_WRITTEN: &str = "checkpoint-written";
/// A manifest is written and fsynced under its temporary name.
pub const MANIFEST_WRITTEN: &str = "manifest-written";
/// A manifest was renamed into place; its directory is not fsynced yet.
pub const MANIFEST_RENAMED: &str = "manifest-renamed";
/// An hour's new generation is in the manifest; the one it supersedes is still on disk.
pub const SUPERSEDED_KEPT: &str = "superseded-kept";

/// Every failpoint, for fault runners that pick one.
pub const ALL: [&str; 6] = [
    PARQUET_WRITTEN,
    PARQUET_RENAMED,
    CHECKPOINT_WRITTEN,
    MANIFEST_WRITTEN,
    MANIFEST_RENAMED,
    SUPERSEDED_KEPT,
];

/// The lake's write hook (see `tally_lake::Lake::with_write_hook`): a manifest's steps
/// are the manifest failpoints, any other file's the Parquet ones.
pub fn lake_write(step: tally_lake::WriteStep, key: &str) {
    let manifest = key.ends_with(".json");
    pass(match (step, manifest) {
        (tally_lake::WriteStep::Durable, false) => PARQUET_WRITTEN,
        (tally_lake::WriteStep::InPlace, false) => PARQUET_RENAMED,
        (tally_lake::WriteStep::Durable, true) => MANIFEST_WRITTEN,
        (tally_lake::WriteStep::InPlace, true) => MANIFEST_RENAMED,
    });
}

struct Armed {
    name: String,
    at_pass: u64,
    passes: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok()?;
            let (name, at_pass) = value.split_once(':')?;
            Some(Armed {
                name: name.to_owned(),
                at_pass: at_pass.parse().ok()?,
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is armed and this is its fatal pass.
pub fn pass(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name == name && armed.passes.fetch_add(1, Ordering::Relaxed) + 1 == armed.at_pass {
        eprintln!("failpoint {name}: aborting at pass {}", armed.at_pass);
        std::process::abort();
    }
}
