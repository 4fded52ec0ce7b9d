//! `schemas/tariff.v1.schema.json` and `tally_model::tariff::Tariff` must agree: every
//! shipped reference tariff and a tariff using every field validate against the schema and
//! deserialise into the type, the property names of both sides are the same, and
//! documents the schema refuses the type refuses too.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tally_model::tariff::Tariff;

/// The checkout is found at run time (cargo sets the variable for `cargo test`), not baked in
/// at compile time: a test binary reused from a shared target directory must read this
/// checkout's files, not those of the checkout that built it.
fn repo() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test");
    PathBuf::from(crate_dir).join("../..")
}

fn schema() -> Value {
    let text =
        std::fs::read_to_string(repo().join("schemas/tariff.v1.schema.json")).expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

/// A tariff that uses every field the type has.
const EVERY_FIELD: &str = r#"
schema = "tally.tariff.v1"
id = "everything"
version = "1"
effective_from = "2026-01-01"
provider = "Example"
currency = "EUR"
time_zone = "Europe/Berlin"
[invoice]
decimal_places = 2
rounding = "half_up"
line_amounts = "full_precision"
[[products]]
sku = "big"
kind = "gpu_server"
description = "a server"
group_by = ["os"]
[[products.time]]
name = "server"
rule = "X1"
price = "1.5"
per = "hour"
quantity = "started_hours"
states = { running = "1", stopped = "0.5" }
per_gpu = true
configuration_prices = { "8" = "7.67" }
when_labels = { os = "windows" }
monthly_cap = "100"
max_hours = 672
minimum_monthly = "0.01"
[[products.time]]
name = "server, monthly"
rule = "X4"
interval = "monthly"
price = "125"
per = "month"
quantity = "started_periods"
states = { running = "1", stopped = "1" }
per_gpu = true
[[products.surcharges]]
name = "backups"
rule = "X5"
of = "server"
factor = "0.20"
option = "backups"
[products.traffic]
rule = "X2"
counters = ["out_external", "in"]
included = "5"
included_unit = "TB"
included_per = "gpu"
prorate_over_hours = 672
price = "7"
unit = "TB"
rounding = "exact"
notify_shares = ["0.75", "1"]
[products.storage]
rule = "X3"
price = "0.03"
unit = "GiB"
accounting = "unit_hours"
hours_per_month = 672
minimum_monthly = "0.01"
[[products]]
sku = "tiered"
kind = "server"
description = "tiered traffic"
[products.traffic]
rule = "X8"
counters = ["out_external"]
included = "0"
included_unit = "TB"
included_per = "resource"
tiers = [{ up_to = "10", price = "2" }, { price = "1" }]
tier_mode = "volume"
unit = "TB"
rounding = "ceil"
[[subscriptions]]
sku = "managing"
description = "Managing"
rule = "X6"
price = "49.00"
[[reservations]]
name = "big-dedicated"
description = "Dedicated big"
rule = "X7"
sku = "big"
kind = "gpu_server"
covers = "server"
price = "0.025"
terms_months = [12, 24, 36]
[prepaid]
rule = "X9"
top_up_min = "10"
top_up_max = "1000"
start_cover_hours = 24
freeze_after_hours = 24
terminate_after_hours = 72
retroactive_hours = 12
stopped_warning_hours = 16
trial_freeze_after_stopped_hours = 4
max_stopped_hours = 168
[[prepaid.minimum_start]]
sku = "big"
gpus = 8
hours = 96
"#;

fn tariff_documents() -> Vec<(String, String)> {
    let mut documents = vec![("every field".to_owned(), EVERY_FIELD.to_owned())];
    let directory = repo().join("crates/rating/tariffs");
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .expect("tariffs dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "the four reference tariffs");
    for path in files {
        documents.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).expect("tariff"),
        ));
    }
    documents
}

#[test]
fn every_tariff_validates_and_deserialises() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    for (name, text) in tariff_documents() {
        let json: Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name} against the schema: {errors:?}");
        let tariff: Tariff =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{name} as the type: {e}"));
        // What the type writes back is valid too.
        let written = serde_json::to_value(&tariff).expect("serialise");
        assert!(
            validator.is_valid(&written),
            "{name}: the type's own output fails the schema: {written}"
        );
    }
}

/// Every property name below `value`, with its path.
fn keys(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                // Map-valued fields (states, prices by GPU count, labels) have data keys.
                let data_map = matches!(
                    key.as_str(),
                    "states" | "configuration_prices" | "when_labels"
                );
                let here = format!("{path}/{key}");
                out.insert(here.clone());
                if !data_map {
                    keys(child, &here, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| keys(item, path, out)),
        _ => {}
    }
}

/// Every property name the schema declares, with its path.
fn schema_keys(schema: &Value, node: &Value, path: &str, out: &mut BTreeSet<String>) {
    let node = match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => &schema["$defs"][reference.trim_start_matches("#/$defs/")],
        None => node,
    };
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            let here = format!("{path}/{key}");
            out.insert(here.clone());
            schema_keys(schema, child, &here, out);
        }
    }
    if let Some(items) = node.get("items") {
        schema_keys(schema, items, path, out);
    }
}

#[test]
fn the_schema_and_the_type_have_the_same_fields() {
    let schema = schema();
    let mut declared = BTreeSet::new();
    schema_keys(&schema, &schema, "", &mut declared);
    let tariff: Tariff = toml::from_str(EVERY_FIELD).expect("every field");
    let mut written = BTreeSet::new();
    keys(
        &serde_json::to_value(&tariff).expect("serialise"),
        "",
        &mut written,
    );
    assert_eq!(
        written, declared,
        "fields of Tariff (left) and of tariff.v1.schema.json (right) differ"
    );
}

#[test]
fn what_the_schema_refuses_the_type_refuses() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    for (broken, why) in [
        (
            EVERY_FIELD.replace("rounding = \"exact\"", "rounding = \"up\""),
            "unknown rounding",
        ),
        (
            EVERY_FIELD.replace("max_hours = 672", "max_hours = 672\ncolour = \"red\""),
            "unknown field",
        ),
        (
            EVERY_FIELD.replace("price = \"1.5\"", "price = 1.5"),
            "a float price",
        ),
        (
            EVERY_FIELD.replace("kind = \"gpu_server\"", "kind = \"toaster\""),
            "unknown kind",
        ),
    ] {
        let json: Value = toml::from_str(&broken).expect("still TOML");
        assert!(!validator.is_valid(&json), "schema accepts {why}");
        assert!(
            toml::from_str::<Tariff>(&broken).is_err(),
            "type accepts {why}"
        );
    }
}
