//! The schema files in `schemas/` and the Rust types must agree: a field added, removed,
//! renamed or retyped on one side only fails here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use serde_json::Value;
use tally_model::line_item::line_item_arrow_schema;
use tally_model::rollup::rollup_arrow_schema;
use tally_model::{ResourceKind, ResourceState, Sample};

fn schema_file(name: &str) -> Value {
    // Found at run time, not compile time: a test binary reused from a shared target
    // directory must read this checkout's schemas.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run through cargo test");
    let path = PathBuf::from(crate_dir).join("../../schemas").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn full_sample() -> Sample {
    serde_json::from_value(serde_json::json!({
        "minute": "2026-10-01T12:34:00Z", "host": "hv-1", "account_id": "acme",
        "resource_id": "vm-1", "kind": "gpu_server", "sku": "powerai-4090", "zone": "de-fra",
        "state": "running", "gpus": 4, "out_external_bytes": 1, "out_internal_bytes": 2,
        "in_bytes": 3, "size_bytes": 0, "labels": { "os": "linux" }
    }))
    .expect("a full sample deserialises")
}

fn string_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item.as_str().expect("a string").to_owned())
        .collect()
}

#[test]
fn sample_fields_match_the_json_schema() {
    let schema = schema_file("sample.v1.schema.json");
    let properties: BTreeSet<String> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    let serialised = serde_json::to_value(full_sample()).expect("serialise");
    let fields: BTreeSet<String> = serialised
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        fields, properties,
        "Sample's fields differ from the schema's properties"
    );

    // A field is required in the schema exactly when the type cannot do without it.
    let required = string_set(&schema["required"]);
    for field in &fields {
        let mut without = serialised.clone();
        without.as_object_mut().expect("object").remove(field);
        let accepted = serde_json::from_value::<Sample>(without).is_ok();
        assert_eq!(
            accepted,
            !required.contains(field),
            "field '{field}': required by the schema = {}, by the type = {}",
            required.contains(field),
            !accepted
        );
    }

    let kinds: BTreeSet<String> = ResourceKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(string_set(&schema["properties"]["kind"]["enum"]), kinds);
    let states: BTreeSet<String> = ResourceState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(string_set(&schema["properties"]["state"]["enum"]), states);
}

#[test]
fn the_json_schema_and_the_type_accept_and_refuse_the_same_documents() {
    let schema = schema_file("sample.v1.schema.json");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let good = serde_json::to_value(full_sample()).expect("serialise");
    let mut cases = vec![(good.clone(), true)];
    let mut extra = good.clone();
    extra["colour"] = "blue".into();
    cases.push((extra, false));
    let mut unaligned = good.clone();
    unaligned["minute"] = "2026-10-01T12:34:56Z".into();
    cases.push((unaligned, false));
    let mut toaster = good.clone();
    toaster["kind"] = "toaster".into();
    cases.push((toaster, false));
    let mut negative = good.clone();
    negative["in_bytes"] = (-1).into();
    cases.push((negative, false));
    let mut offset = good;
    offset["minute"] = "2026-10-01T14:34:00+02:00".into();
    cases.push((offset, true));
    for (document, valid) in cases {
        assert_eq!(validator.is_valid(&document), valid, "schema on {document}");
        assert_eq!(
            serde_json::from_value::<Sample>(document.clone()).is_ok(),
            valid,
            "type on {document}"
        );
    }
}

fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 => "string".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) => format!("timestamp[us, {zone}]"),
        DataType::Decimal128(precision, scale) => format!("decimal128({precision}, {scale})"),
        other => panic!("no schema-file name for {other}"),
    }
}

fn assert_columns_match(file: &str, arrow: SchemaRef) {
    let schema = schema_file(file);
    let documented: Vec<(String, String, bool)> = schema["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|column| {
            assert!(
                column["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{file}: {column} needs a description"
            );
            (
                column["name"].as_str().expect("name").to_owned(),
                column["type"].as_str().expect("type").to_owned(),
                column["nullable"].as_bool().expect("nullable"),
            )
        })
        .collect();
    let actual: Vec<(String, String, bool)> = arrow
        .fields()
        .iter()
        .map(|field| {
            (
                field.name().clone(),
                type_name(field.data_type()),
                field.is_nullable(),
            )
        })
        .collect();
    assert_eq!(actual, documented, "{file} and the Arrow schema differ");
}

#[test]
fn rollup_columns_match_the_schema_file() {
    assert_columns_match("rollup.v1.json", rollup_arrow_schema());
}

#[test]
fn line_item_columns_match_the_schema_file() {
    assert_columns_match("line_item.v1.json", line_item_arrow_schema());
}
