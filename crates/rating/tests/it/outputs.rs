//! What `rate` writes and how: reproducible files, credits, stale invoices, month bounds,
//! an empty lake, and `sql` over the same lake.

use std::path::Path;

use datafusion::arrow::array::{Array, Int64Array};
use tally_model::ResourceKind;
use tally_model::ResourceState::{Active, Running};
use tally_rating::{RateRequest, rate, sql};

use crate::lake::{
    GIB, Lake, Layout, dec, of_kind, rate_lake, rate_with_contracts, reference_tariff_files,
    server, with_os,
};

/// A lake with something of every reference tariff.
fn mixed_lake() -> Lake {
    let mut lake = Lake::default();
    lake.span(
        &server("h", "web", "cx22"),
        Running,
        "2026-10-01T10:00:00Z",
        500,
        7,
        0,
    )
    .span(
        &of_kind(ResourceKind::Snapshot, "n", "snap", "snapshot"),
        Active,
        "2026-10-02T00:00:00Z",
        300,
        0,
        3 * GIB,
    )
    .span(
        &with_os(server("c", "vm", "c4m8"), "windows"),
        Running,
        "2026-10-03T00:00:00Z",
        61,
        0,
        0,
    );
    lake
}

const MIXED_CONTRACTS: [(&str, &str); 3] =
    [("h", "hetzner-cloud"), ("n", "vps-672"), ("c", "centron")];

#[tokio::test]
async fn re_running_gives_byte_identical_files() {
    let lake = mixed_lake();
    let first = rate_lake(&lake, &MIXED_CONTRACTS, "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    let second = rate_lake(&lake, &MIXED_CONTRACTS, "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    let written = first.written();
    // The line items, and the month's invoices as JSON Lines and CSV.
    assert_eq!(written.len(), 3, "{:?}", written.keys());
    assert_eq!(first.invoices.len(), 3);
    assert_eq!(written, second.written());
}

#[tokio::test]
async fn n6_a_credit_is_offset_against_the_total() {
    let mut lake = Lake::default();
    lake.span(
        &server("a", "full", "cx22"),
        Running,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    )
    .span(
        &server("b", "hour", "cx22"),
        Running,
        "2026-10-01T10:00:00Z",
        60,
        0,
        0,
    );
    let contracts = serde_json::json!({ "accounts": [
        { "account_id": "a", "tariff_id": "hetzner-cloud", "credit": "1.00" },
        { "account_id": "b", "tariff_id": "hetzner-cloud", "credit": "5" },
    ]});
    let rated = rate_with_contracts(&lake, contracts, "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    let a = rated.invoice("a");
    assert_eq!(a["total"], "3.79");
    assert_eq!(a["credit_applied"], "1.00");
    assert_eq!(a["amount_due"], "2.79");
    // 0.006 rounds to 0.01; a credit larger than that covers it and is not paid out.
    let b = rated.invoice("b");
    assert_eq!(b["subtotal"], "0.006");
    assert_eq!(b["total"], "0.01");
    assert_eq!(b["credit_applied"], "0.01");
    assert_eq!(b["amount_due"], "0.00");
    let summary = rated
        .report
        .invoices
        .iter()
        .find(|invoice| invoice.account_id == "a")
        .expect("summary");
    assert_eq!(summary.amount_due, dec("2.79"));
}

#[tokio::test]
async fn an_invoice_no_longer_produced_is_removed() {
    let root = tempfile::tempdir().expect("tempdir");
    let tariffs = reference_tariff_files(root.path());
    let contracts = root.path().join("contracts.json");
    std::fs::write(
        &contracts,
        serde_json::json!({ "accounts": [
            { "account_id": "h", "tariff_id": "hetzner-cloud" },
            { "account_id": "n", "tariff_id": "vps-672" },
            { "account_id": "c", "tariff_id": "centron" },
        ]})
        .to_string(),
    )
    .expect("contracts");
    let out = root.path().join("out");
    let run = |lake: &Path| RateRequest {
        lake: lake.into(),
        month: "2026-10".to_owned(),
        tariffs: tariffs.clone(),
        contracts: contracts.clone(),
        out: out.clone().into(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    };
    let before = root.path().join("before");
    mixed_lake().write(&before, Layout::ONE_FILE);
    let report = rate(&run(&before)).await.expect("rate");
    assert_eq!(report.invoices.len(), 3);
    // The usage of account n turns out to belong to another month (a restatement).
    let mut lake = Lake::default();
    lake.span(
        &server("h", "web", "cx22"),
        Running,
        "2026-10-01T10:00:00Z",
        500,
        7,
        0,
    );
    let after = root.path().join("after");
    lake.write(&after, Layout::ONE_FILE);
    let report = rate(&run(&after)).await.expect("rate");
    let mut left: Vec<String> = std::fs::read_dir(&report.invoices_dir)
        .expect("invoices")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, vec!["invoices.csv", "invoices.jsonl"]);
    let invoices =
        tally_rating::write::read_invoices(Path::new(&report.invoices_dir)).expect("read");
    assert_eq!(invoices.keys().collect::<Vec<_>>(), vec!["h"]);
    let csv =
        std::fs::read_to_string(Path::new(&report.invoices_dir).join("invoices.csv")).expect("csv");
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some(tally_rating::invoice::CSV_HEADER.trim_end())
    );
    let rows: Vec<&str> = rows.collect();
    assert!(rows.iter().all(|row| row.starts_with("h,")), "{csv}");
    // 500 minutes from 10:00: 9 started hours × 0.006 = 0.054, due 0.05.
    assert_eq!(
        rows.last().copied(),
        Some("h,amount_due,,,,,,0.05,,"),
        "{csv}"
    );
}

#[tokio::test]
async fn usage_is_billed_in_the_month_of_its_local_time() {
    // Berlin's October 2026 starts at 2026-09-30T22:00Z: 21:30–22:29Z is 30 minutes of
    // September and 30 of October, one started hour (H1: rounded up) in each.
    let mut lake = Lake::default();
    lake.span(
        &server("h", "edge", "cx22"),
        Running,
        "2026-09-30T21:30:00Z",
        60,
        0,
        0,
    );
    for month in ["2026-09", "2026-10"] {
        let rated = rate_lake(&lake, &[("h", "hetzner-cloud")], month, Layout::ONE_FILE)
            .await
            .expect("rate");
        assert_eq!(rated.amounts("h", "CX22"), vec![dec("0.006")], "{month}");
    }
    let november = rate_lake(
        &lake,
        &[("h", "hetzner-cloud")],
        "2026-11",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert!(november.invoices.is_empty());
}

#[tokio::test]
async fn an_empty_lake_rates_to_nothing() {
    let rated = rate_lake(
        &Lake::default(),
        &[("idle", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("an empty lake is no usage, not an error");
    assert!(rated.invoices.is_empty());
    assert_eq!(rated.report.line_items, 0);
    assert!(Path::new(&rated.report.line_items_file).is_file());
}

#[tokio::test]
async fn sql_sees_rollups_and_rated_line_items() {
    let lake = mixed_lake();
    let rated = rate_lake(&lake, &MIXED_CONTRACTS, "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    let single = |batches: &[datafusion::arrow::array::RecordBatch]| -> i64 {
        let column = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("Int64")
            .clone();
        assert_eq!(column.len(), 1);
        column.value(0)
    };
    let lake: tally_rating::Lake = rated.root.path().into();
    let minutes = sql(
        &lake,
        "SELECT CAST(sum(popcount(running_mask) + popcount(active_mask)) AS BIGINT) FROM rollups",
    )
    .await
    .expect("sql");
    assert_eq!(single(&minutes), 500 + 300 + 61);
    let lines = sql(
        &lake,
        "SELECT count(*) FROM line_items WHERE month = '2026-10'",
    )
    .await
    .expect("sql");
    assert_eq!(single(&lines), rated.report.line_items as i64);
    let text = tally_rating::format_batches(&lines).expect("format");
    assert!(
        text.contains(&rated.report.line_items.to_string()),
        "{text}"
    );
    // Account h: one cx22 for 500 minutes = 9 h × 0.006 = 0.054.
    let billed = sql(
        &lake,
        "SELECT CAST(sum(\"BilledCost\") * 1000 AS BIGINT) FROM line_items WHERE \"BillingAccountId\" = 'h'",
    )
    .await
    .expect("sql");
    assert_eq!(single(&billed), 54);
}
