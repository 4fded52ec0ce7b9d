//! Rules that need the contracts file besides the meters: billing intervals (T2),
//! backups (H6), managing and add-ons (C4, C7), reservations (C5) and commitments (C6).
//! Each test shows its arithmetic.

use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_model::ResourceState;

use crate::lake::{Lake, Layout, dec, gpu_server, rate_with_contracts, server, with_os};

use ResourceState::{Running, Stopped};

/// One account on `tariff` with the contract fields in `extra`.
fn contract(account: &str, tariff: &str, extra: Value) -> Value {
    let mut account_contract = json!({ "account_id": account, "tariff_id": tariff });
    if let (Some(fields), Some(extra)) = (account_contract.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    json!({ "accounts": [account_contract] })
}

fn rules(rated: &crate::lake::Rated, account: &str) -> Vec<String> {
    rated
        .lines(account)
        .iter()
        .map(|line| line["rule"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn t2_monthly_interval_is_paid_in_advance_without_state_reduction() {
    // A powerai-4090 (1 GPU) on a monthly contract from 15 October, stopped most of the
    // time: one started contract month begins in October → 370.00, no reduction (T3).
    let gpu = gpu_server("t", "g1", "powerai-4090", 1);
    let mut lake = Lake::default();
    lake.span(&gpu, Running, "2026-10-15T08:00:00Z", 120, 0, 0)
        .span(&gpu, Stopped, "2026-10-15T10:00:00Z", 60 * 24 * 5, 0, 0);
    let terms = json!({ "resources": [
        { "resource_id": "g1", "interval": "monthly", "start": "2026-10-15T08:00:00Z" }
    ]});
    let rated = rate_with_contracts(
        &lake,
        contract("t", "trooper-ai", terms.clone()),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("t", "monthly"), vec![dec("370")]);
    assert_eq!(rated.total("t"), dec("370.00"));
    // November: the second contract month starts on 15 November; the server still runs
    // then, so it is paid again, in November.
    let mut november = Lake::default();
    november.span(&gpu, Stopped, "2026-11-14T23:00:00Z", 60 * 24 * 3, 0, 0);
    let rated = rate_with_contracts(
        &november,
        contract("t", "trooper-ai", terms),
        "2026-11",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.total("t"), dec("370.00"));
}

#[tokio::test]
async fn t2_t3_daily_interval_at_the_largest_factor_of_each_day() {
    // erkunder-a4000, 1 GPU, daily = 24 × 0.22 = 5.28 per day, from 03 Oct 00:00 UTC.
    // Day 1 runs an hour, then is stopped: 5.28 × 1. Day 2 is stopped: 5.28 × 0.35 =
    // 1.848. Nothing on day 3. 5.28 + 1.848 = 7.128 → 7.13.
    let gpu = gpu_server("d", "g", "erkunder-a4000", 1);
    let mut lake = Lake::default();
    lake.span(&gpu, Running, "2026-10-03T00:00:00Z", 60, 0, 0)
        .span(&gpu, Stopped, "2026-10-03T01:00:00Z", 47 * 60, 0, 0);
    let terms = json!({ "resources": [
        { "resource_id": "g", "interval": "daily", "start": "2026-10-03T00:00:00Z" }
    ]});
    let rated = rate_with_contracts(
        &lake,
        contract("d", "trooper-ai", terms),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    let line = &rated.lines_with("d", "daily")[0];
    assert_eq!(line["quantity"], "1.35");
    assert_eq!(dec(line["amount"].as_str().expect("amount")), dec("7.128"));
    assert_eq!(rated.total("d"), dec("7.13"));
}

#[tokio::test]
async fn t2_an_interval_the_tariff_does_not_sell_is_an_error() {
    let mut lake = Lake::default();
    lake.span(
        &server("h", "cx", "cx22"),
        Running,
        "2026-10-03T00:00:00Z",
        60,
        0,
        0,
    );
    let terms = json!({ "resources": [
        { "resource_id": "cx", "interval": "weekly", "start": "2026-10-03T00:00:00Z" }
    ]});
    let error = rate_with_contracts(
        &lake,
        contract("h", "hetzner-cloud", terms),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .err()
    .expect("no weekly cx22")
    .to_string();
    assert!(error.contains("weekly") && error.contains("cx"), "{error}");
}

#[tokio::test]
async fn h6_backups_are_20_percent_of_the_capped_server_charge() {
    // Two cx22 all October (745 h × 0.006 = 4.47 > cap 3.79 → 3.79 each). Backups on
    // one: 3.79 × 0.2 = 0.758. Total 3.79 + 0.758 + 3.79 = 8.338 → 8.34.
    let mut lake = Lake::default();
    for id in ["with", "without"] {
        lake.span(
            &server("b", id, "cx22"),
            Running,
            "2026-09-30T22:00:00Z",
            745 * 60,
            0,
            0,
        );
    }
    let terms = json!({ "resources": [ { "resource_id": "with", "options": ["backups"] } ] });
    let rated = rate_with_contracts(
        &lake,
        contract("b", "hetzner-cloud", terms),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("b", "backups"), vec![dec("0.758")]);
    let backup = &rated.lines_with("b", "backups")[0];
    assert_eq!(backup["resource_id"], "with");
    assert_eq!(rated.total("b"), dec("8.34"));
}

#[tokio::test]
async fn c4_managing_is_billed_for_the_month_its_vm_is_deleted_and_not_after() {
    // Managing booked for vm-1 from September; vm-1 runs 10 h in October and is deleted.
    // October: 49.00 managing + 10 h × 0.04 = 49.40. November: vm-1 is gone, so the
    // managing is not renewed; a second booking without a VM ends on 1 November.
    let vm = with_os(server("m", "vm-1", "c2m4"), "linux");
    let mut lake = Lake::default();
    lake.span(&vm, Running, "2026-10-10T00:00:00Z", 600, 0, 0);
    let bookings = json!({ "subscriptions": [
        { "sku": "managing", "start": "2026-09-01", "resource_id": "vm-1" },
        { "sku": "managing", "start": "2026-10-20", "end": "2026-11-01" }
    ]});
    let rated = rate_with_contracts(
        &lake,
        contract("m", "centron", bookings.clone()),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("m", "Managing"), vec![dec("49"), dec("49")]);
    assert_eq!(rated.total("m"), dec("98.40"));
    let rated = rate_with_contracts(
        &Lake::default(),
        contract("m", "centron", bookings),
        "2026-11",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert!(rated.invoices.is_empty(), "{:?}", rated.invoices.keys());
}

#[tokio::test]
async fn c5_reservation_contingent_is_shared_by_instances_and_expires() {
    // c2m4-dedicated ordered 15 Oct: the term starts 00:00 that day, so October holds
    // 17 days × 24 h = 408 h at 0.025 = 10.20. Two c2m4 instances run 300 h each from
    // 15 Oct: 600 h, 408 covered, 192 h pay-per-use × 0.04 = 7.68. Total 17.88.
    let mut lake = Lake::default();
    for id in ["a", "b"] {
        lake.span(
            &with_os(server("r", id, "c2m4"), "linux"),
            Running,
            "2026-10-15T00:00:00Z",
            300 * 60,
            0,
            0,
        );
    }
    let order = json!({ "reservations": [
        { "reservation": "c2m4-dedicated", "order_date": "2026-10-15", "term_months": 12 }
    ]});
    let rated = rate_with_contracts(
        &lake,
        contract("r", "centron", order.clone()),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("r", "Dedicated c2m4"), vec![dec("10.2")]);
    assert_eq!(rated.amounts("r", "flavor"), vec![dec("7.68")]);
    assert_eq!(rated.total("r"), dec("17.88"));
    assert!(
        rules(&rated, "r")
            .iter()
            .any(|rule| rule.contains("408 h used") && rule.contains("0 h expired")),
        "{:?}",
        rules(&rated, "r")
    );

    // One instance for 100 h: the contingent is paid in full, 308 h expire, nothing is
    // pay-per-use. 10.20.
    let mut lake = Lake::default();
    lake.span(
        &with_os(server("r", "a", "c2m4"), "linux"),
        Running,
        "2026-10-20T00:00:00Z",
        100 * 60,
        0,
        0,
    );
    let rated = rate_with_contracts(
        &lake,
        contract("r", "centron", order),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.total("r"), dec("10.20"));
    assert!(
        rules(&rated, "r")
            .iter()
            .any(|rule| rule.contains("100 h used") && rule.contains("308 h expired")),
        "{:?}",
        rules(&rated, "r")
    );
}

#[tokio::test]
async fn c5_a_term_not_on_offer_is_refused() {
    let order = json!({ "reservations": [
        { "reservation": "c2m4-dedicated", "order_date": "2026-10-15", "term_months": 6 }
    ]});
    let error = rate_with_contracts(
        &Lake::default(),
        contract("r", "centron", order),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .err()
    .expect("6 months are not offered")
    .to_string();
    assert!(error.contains("not 6"), "{error}");
}

#[tokio::test]
async fn c6_commitment_then_pay_per_use_beyond_it_and_after_the_term() {
    // 1000 h/month of c4m8 at 0.06 for 12 months from 1 Jan 2026. October: two VMs
    // 600 h each = 1200 h; 1000 × 0.06 = 60.00 committed, 200 h × 0.08 = 16.00 beyond.
    let mut lake = Lake::default();
    for id in ["a", "b"] {
        lake.span(
            &with_os(server("k", id, "c4m8"), "linux"),
            Running,
            "2026-10-02T00:00:00Z",
            600 * 60,
            0,
            0,
        );
    }
    let commitment = |start: &str| {
        json!({ "commitments": [ {
            "name": "k1", "sku": "c4m8", "kind": "server", "covers": "flavor",
            "hours_per_month": "1000", "price": "0.06", "start": start, "term_months": 12
        } ] })
    };
    let rated = rate_with_contracts(
        &lake,
        contract("k", "centron", commitment("2026-01-01")),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("k", "Commitment k1"), vec![dec("60")]);
    assert_eq!(rated.total("k"), dec("76.00"));

    // A term that ended on 1 October: all pay-per-use, 1200 × 0.08 = 96.00.
    let rated = rate_with_contracts(
        &lake,
        contract("k", "centron", commitment("2025-10-01")),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.total("k"), dec("96.00"));

    // A term from 16 October commits 16/31 of the month: 1000 × 16 / 31 h at 0.06 =
    // 30.967741…; the 1200 h beyond cover 516.129… h, the rest at 0.08. The invoice is
    // rounded once: 30.9677… + (1200 − 516.1290…) × 0.08 = 30.9677… + 54.7096… = 85.68.
    let rated = rate_with_contracts(
        &lake,
        contract("k", "centron", commitment("2026-10-16")),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.total("k"), dec("85.68"));
    let committed: Decimal = rated.amounts("k", "Commitment k1").into_iter().sum();
    assert_eq!(committed.round_dp(6), dec("30.967742"));
}
