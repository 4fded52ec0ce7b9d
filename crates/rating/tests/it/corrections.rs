//! H8: late usage for an issued month becomes correction lines against what was issued,
//! never a silent rewrite; and `--explain` shows each line's rule and usage.

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use tally_model::ResourceState::Running;
use tally_rating::{RateRequest, rate};

use crate::lake::{Lake, Layout, dec, reference_tariff_files, server};

struct Setup {
    root: tempfile::TempDir,
    tariffs: Vec<PathBuf>,
    contracts: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let tariffs = reference_tariff_files(root.path());
        let contracts = root.path().join("contracts.json");
        std::fs::write(
            &contracts,
            r#"{ "accounts": [ { "account_id": "h", "tariff_id": "hetzner-cloud" } ] }"#,
        )
        .expect("contracts");
        Self {
            root,
            tariffs,
            contracts,
        }
    }

    fn out(&self) -> PathBuf {
        self.root.path().join("out")
    }

    /// A lake of its own with cx22 `web` running `hours` hours from 1 October.
    fn lake(&self, name: &str, hours: i64) -> PathBuf {
        let mut lake = Lake::default();
        lake.span(
            &server("h", "web", "cx22"),
            Running,
            "2026-10-01T00:00:00Z",
            hours * 60,
            0,
            0,
        );
        let path = self.root.path().join(name);
        lake.write(&path, Layout::ONE_FILE);
        path
    }

    fn request(&self, lake: &Path, issue: bool, explain: Option<&str>) -> RateRequest {
        RateRequest {
            lake: lake.into(),
            month: "2026-10".to_owned(),
            tariffs: self.tariffs.clone(),
            contracts: self.contracts.clone(),
            out: self.out().into(),
            issue,
            explain: explain.map(str::to_owned),
            engine: tally_rating::Engine::InProcess,
        }
    }
}

/// The invoice of `account` in the invoices directory `dir`.
fn invoice(dir: &str, account: &str) -> serde_json::Value {
    tally_rating::write::read_invoices(Path::new(dir))
        .expect("invoices")
        .remove(account)
        .expect("the account's invoice")
}

#[tokio::test]
async fn h8_late_usage_after_issue_becomes_correction_lines() {
    let setup = Setup::new();
    // Issued with 100 h: 100 × 0.006 = 0.60.
    let issued = rate(&setup.request(&setup.lake("first", 100), true, None))
        .await
        .expect("rate");
    assert!(issued.issued);
    assert_eq!(issued.invoices[0].total, dec("0.60"));
    let invoice_path = Path::new(&issued.invoices_dir).join("invoices.jsonl");
    let invoice_bytes = std::fs::read(&invoice_path).expect("invoice");
    let line_items_bytes = std::fs::read(&issued.line_items_file).expect("line items");

    // 50 late hours arrive (restated into the lake): 150 h → 0.90, a correction of +0.30.
    let late = setup.lake("late", 150);
    let corrected = rate(&setup.request(&late, false, None))
        .await
        .expect("rate");
    assert_eq!(corrected.correction_round, Some(1));
    assert_eq!(corrected.line_items, 1);
    assert_eq!(corrected.invoices[0].total, dec("0.30"));
    assert!(
        corrected
            .line_items_file
            .ends_with("month=2026-10/corrections-001.parquet"),
        "{}",
        corrected.line_items_file
    );
    let correction = invoice(&corrected.invoices_dir, "h");
    let line = &correction["lines"][0];
    assert_eq!(dec(line["amount"].as_str().expect("amount")), dec("0.3"));
    assert_eq!(line["quantity"], "50");
    assert!(
        line["rule"]
            .as_str()
            .is_some_and(|rule| rule.starts_with("H8 correction 1: billed 0.6 before, 0.9 now")),
        "{line}"
    );
    // What was issued is untouched.
    assert_eq!(
        std::fs::read(&invoice_path).expect("invoice"),
        invoice_bytes
    );
    assert_eq!(
        std::fs::read(&issued.line_items_file).expect("line items"),
        line_items_bytes
    );

    // The same lake again: nothing changed, nothing written.
    let again = rate(&setup.request(&late, false, None))
        .await
        .expect("rate");
    assert_eq!(again.correction_round, None);
    assert!(again.written.is_empty(), "{:?}", again.written);

    // Analysts see the corrected month: issued line plus correction (the output
    // directory holds no rollups of its own).
    std::fs::create_dir_all(setup.out().join("rollups")).expect("mkdir");
    let batches = tally_rating::sql(
        &setup.out().into(),
        r#"SELECT CAST(sum("BilledCost") AS VARCHAR) AS total, count(*) AS lines FROM line_items WHERE month = '2026-10'"#,
    )
    .await
    .expect("sql");
    let table = tally_rating::format_batches(&batches).expect("format");
    assert!(table.contains("| 0.9"), "{table}");

    // Usage restated away again: a second round takes back the 50 h.
    let back = rate(&setup.request(&setup.lake("back", 100), false, None))
        .await
        .expect("rate");
    assert_eq!(back.correction_round, Some(2));
    assert_eq!(back.invoices[0].total, dec("-0.30"));
}

#[tokio::test]
async fn before_issue_a_rerun_replaces_the_invoice() {
    let setup = Setup::new();
    rate(&setup.request(&setup.lake("first", 100), false, None))
        .await
        .expect("rate");
    let report = rate(&setup.request(&setup.lake("late", 150), false, None))
        .await
        .expect("rate");
    assert_eq!(report.correction_round, None);
    assert_eq!(report.invoices[0].total, dec("0.90"));
    let total: Decimal = dec(invoice(&report.invoices_dir, "h")["total"]
        .as_str()
        .expect("total"));
    assert_eq!(total, dec("0.90"));
}

#[tokio::test]
async fn explain_names_the_rule_and_the_usage_and_writes_nothing() {
    let setup = Setup::new();
    let report = rate(&setup.request(&setup.lake("first", 800), false, Some("h")))
        .await
        .expect("rate");
    let text = report.explanation.expect("explanation");
    // The span runs past the month: October (Berlin) ends 31 Oct 23:00 UTC, so 743 h of
    // it are October's; 743 × 0.006 = 4.458 > cap 3.79.
    assert!(text.contains("CX22 server: server"), "{text}");
    assert!(text.contains("H1/H2"), "{text}");
    assert!(text.contains("monthly cap 3.79 applied"), "{text}");
    assert!(text.contains("usage of web (server cx22"), "{text}");
    assert!(text.contains("running 44580 min"), "{text}");
    assert!(text.contains("total 3.79 EUR"), "{text}");
    assert!(report.written.is_empty());
    assert!(!setup.out().join("invoices").exists());
}
