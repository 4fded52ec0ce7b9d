//! Every input of the fuzzers' kept corpus and every crash they ever found
//! (`tests/fuzz/corpus/<target>/`, `tests/fuzz/artifacts/<target>/`), run through the same
//! checks as the fuzz targets, on the stable toolchain.

use std::path::Path;

#[path = "../fuzz/src/checks.rs"]
mod checks;

fn run_kept_inputs(target: &str, check: fn(&[u8])) {
    // Cargo's variable at run time, not `env!`: a target directory shared by checkouts in
    // different places keeps a test binary built in another one.
    let package = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let fuzz = Path::new(&package).join("fuzz");
    let mut inputs = 0;
    for kept in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kept).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_default();
                panic!("{}: {message}", path.display());
            }
            inputs += 1;
        }
    }
    assert!(
        inputs > 0,
        "no kept inputs for {target}: the corpus is part of the repository"
    );
}

#[test]
fn json_samples_corpus() {
    run_kept_inputs("json_samples", checks::json_samples);
}

#[test]
fn arrow_samples_corpus() {
    run_kept_inputs("arrow_samples", checks::arrow_samples);
}

#[test]
fn tariff_corpus() {
    run_kept_inputs("tariff", checks::tariff);
}
