//! Prepaid budgets (T5, T6, T7) on hand-made lakes, against timelines computed by hand:
//! the hour the balance runs out, each state change and notice, the retroactive charge
//! when funds return, the start decision, and notices sent exactly once across runs.

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde_json::json;
use tally_model::{Hour, ResourceState};
use tally_rating::budget::{StartRequest, check_start};
use tally_rating::deliver::Sink;
use tally_rating::ledger::{EntryKind, Ledger};
use tally_rating::notice::{Notice, NoticeKind};
use tally_rating::watch::{self, WatchRequest};

use crate::lake::{Lake, Layout, dec, gpu_server, rate_with_contracts, reference_tariff_files};

use ResourceState::{Frozen, Running, Stopped};

/// A lake, tariffs, contracts and a ledger in one directory.
pub struct Scene {
    pub root: tempfile::TempDir,
    pub request: WatchRequest,
}

impl Scene {
    pub fn new(lake: &Lake, contracts: serde_json::Value, top_ups: &[(&str, &str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        lake.write(root.path(), Layout::ONE_FILE);
        let tariffs = reference_tariff_files(root.path());
        let contracts_path = root.path().join("contracts.json");
        std::fs::write(&contracts_path, contracts.to_string()).expect("contracts");
        let ledger = root.path().join("ledger.ndjson");
        let mut text = String::new();
        for (index, (account, at, amount)) in top_ups.iter().enumerate() {
            text.push_str(
                &json!({"id": format!("pay-{index}"), "at": at, "account_id": account,
                        "entry": "top_up", "amount": amount})
                .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(&ledger, text).expect("ledger");
        let request = WatchRequest {
            lake: root.path().to_owned(),
            tariffs,
            contracts: contracts_path,
            ledger: Some(ledger),
            since: "2026-10".to_owned(),
            until: hour("2026-10-07T04"),
            state_dir: root.path().join("watch"),
        };
        Self { root, request }
    }

    pub fn until(&mut self, until: &str) -> &mut Self {
        self.request.until = hour(until);
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

pub fn hour(text: &str) -> Hour {
    Hour::parse_partition_value(text).expect("hour")
}

/// The notices delivered so far, from the state directory's log.
pub fn delivered(state_dir: &Path) -> Vec<Notice> {
    std::fs::read_to_string(state_dir.join("notices.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("notice"))
        .collect()
}

fn ids_of(notices: &[Notice], kind: NoticeKind) -> Vec<String> {
    notices
        .iter()
        .filter(|notice| notice.kind == kind)
        .map(|notice| format!("{} @ {}", notice.id, notice.at.format("%m-%dT%H:%M")))
        .collect()
}

/// One powerai-4090 (1 GPU, 0.65/h running, T3: stopped 35 % = 0.2275, frozen 10 % =
/// 0.065) that runs out of budget, is stopped and frozen as prescribed, and runs again
/// after a top-up.
fn run_out_lake() -> Lake {
    let server = gpu_server("lab", "gpu-1", "powerai-4090", 1);
    let mut lake = Lake::default();
    lake.span(&server, Running, "2026-10-05T00:00:00Z", 16 * 60, 0, 0)
        // Stopped by the control plane at 16:00 as the budget ran out, frozen a day later.
        .span(&server, Stopped, "2026-10-05T16:00:00Z", 24 * 60, 0, 0)
        .span(&server, Frozen, "2026-10-06T16:00:00Z", 5 * 60, 0, 0)
        // Started again by the customer after the top-up.
        .span(&server, Running, "2026-10-06T21:00:00Z", 7 * 60, 0, 0);
    lake
}

fn lab_contracts() -> serde_json::Value {
    json!({"accounts": [{"account_id": "lab", "tariff_id": "trooper-ai"}]})
}

#[tokio::test]
async fn t5_the_balance_runs_out_servers_stop_freeze_and_funds_return_with_12_hours_charged() {
    let scene = Scene::new(
        &run_out_lake(),
        lab_contracts(),
        &[
            ("lab", "2026-10-04T23:30:00Z", "10.00"),
            ("lab", "2026-10-06T20:30:00Z", "50.00"),
        ],
    );
    let findings = watch::find(&scene.request).await.expect("find");
    let timeline = &findings.timelines["lab"];
    // 10.00 pays 15 running hours (9.75, 0.25 left); hour 15's 0.65 is the first it cannot.
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::BudgetExhausted),
        vec!["budget_exhausted/lab/2026-10-05T15 @ 10-05T16:00"]
    );
    // Stopped at once, frozen 24 h later (the tariff's freeze_after_hours); the funds
    // return before the 72 h termination, so there is none.
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::ServerStateChanged),
        vec![
            "server_state_changed/lab/gpu-1/2026-10-05T15/stopped @ 10-05T16:00",
            "server_state_changed/lab/gpu-1/2026-10-06T15/frozen @ 10-06T16:00",
        ]
    );
    // T6: a paying account is warned after 16 h stopped: 16:00 + 16 h.
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::StoppedServerCost),
        vec!["stopped_server_cost/lab/gpu-1/2026-10-05T16 @ 10-06T08:00"]
    );
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::BudgetRestored),
        vec!["budget_restored/lab/2026-10-06T20 @ 10-06T20:30"]
    );
    let sum = |kind: EntryKind| -> Decimal {
        timeline
            .entries
            .iter()
            .filter(|entry| entry.entry == kind)
            .map(|entry| entry.amount)
            .sum()
    };
    let count = |kind: EntryKind| timeline.entries.iter().filter(|e| e.entry == kind).count();
    // Unpaid: hour 15 (0.65), 24 stopped hours (× 0.2275), 4 frozen hours 16–19 (× 0.065).
    assert_eq!(count(EntryKind::Unpaid), 1 + 24 + 4);
    assert_eq!(
        sum(EntryKind::Unpaid),
        dec("0.65") + dec("5.46") + dec("0.26")
    );
    // The top-up at 20:30 reaches back 12 h, to hour 08 of the 6th: 8 stopped hours
    // (1.82) and the 4 frozen ones (0.26) are charged; hour 15 of the 5th and the 16
    // stopped hours before 08:00 (0.65 + 3.64) are written off.
    assert_eq!(count(EntryKind::RetroactiveCharge), 12);
    assert_eq!(sum(EntryKind::RetroactiveCharge), dec("2.08"));
    assert_eq!(count(EntryKind::WriteOff), 17);
    assert_eq!(sum(EntryKind::WriteOff), dec("4.29"));
    // Paid: 15 × 0.65 before, hour 20 frozen (0.065), 7 running hours after (4.55).
    assert_eq!(
        sum(EntryKind::Charge),
        dec("9.75") + dec("0.065") + dec("4.55")
    );
    // 10 + 50 − 9.75 − 2.08 − 0.065 − 4.55 = 43.555.
    assert_eq!(timeline.balance, dec("43.555"));
    assert_eq!(timeline.exhausted_since, None);
    assert_eq!(timeline.last_charge, dec("0.65"));
    // 43.555 / 0.65 covers 67 more hours after hour 03 of the 7th: the 68th is 04:00 + 67 h.
    assert_eq!(timeline.runs_out(), Some(hour("2026-10-09T23")));

    // Every hour's charge, paid or not, adds up to the month's invoice lines (unrounded).
    let rated = rate_with_contracts(
        &run_out_lake(),
        lab_contracts(),
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    let lines: Decimal = rated
        .lines("lab")
        .iter()
        .map(|line| dec(line["amount"].as_str().expect("amount")))
        .sum();
    let charged = sum(EntryKind::Charge) + sum(EntryKind::Unpaid);
    assert_eq!(charged, lines);
    // 16 running hours, 24 stopped, 5 frozen, 7 running.
    assert_eq!(
        lines,
        dec("10.40") + dec("5.46") + dec("0.325") + dec("4.55")
    );
}

/// Runs 16 h on 10.00, then stopped for a day and frozen for two: terminated at 72 h.
fn terminated_lake() -> Lake {
    let server = gpu_server("lab", "gpu-1", "powerai-4090", 1);
    let mut lake = Lake::default();
    lake.span(&server, Running, "2026-10-05T00:00:00Z", 16 * 60, 0, 0)
        .span(&server, Stopped, "2026-10-05T16:00:00Z", 24 * 60, 0, 0)
        .span(&server, Frozen, "2026-10-06T16:00:00Z", 48 * 60, 0, 0);
    lake
}

#[tokio::test]
async fn t5_without_funds_servers_are_terminated_72_hours_after_the_balance_ran_out() {
    let mut scene = Scene::new(
        &terminated_lake(),
        lab_contracts(),
        &[("lab", "2026-10-04T20:00:00Z", "10.00")],
    );
    scene.until("2026-10-09T00");
    let findings = watch::find(&scene.request).await.expect("find");
    let timeline = &findings.timelines["lab"];
    // 10.00 pays 15 hours (9.75); hour 15's 0.65 is more than the 0.25 left.
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::ServerStateChanged),
        vec![
            "server_state_changed/lab/gpu-1/2026-10-05T15/stopped @ 10-05T16:00",
            "server_state_changed/lab/gpu-1/2026-10-06T15/frozen @ 10-06T16:00",
            "server_state_changed/lab/gpu-1/2026-10-08T15/terminated @ 10-08T16:00",
        ]
    );
    assert_eq!(timeline.balance, dec("0.25"));
    assert_eq!(timeline.exhausted_since, Some(hour("2026-10-05T15")));
    // Unpaid since it ran out: 0.65 + 24 × 0.2275 + 48 × 0.065 = 9.23.
    assert_eq!(timeline.unpaid, dec("9.23"));
    // A top-up after hour 23 of the 8th reaches back to 12:00: the frozen hours 12–15
    // (4 × 0.065), as the terminated server has no usage after 16:00.
    assert_eq!(timeline.retroactive_due, dec("0.26"));
    assert_eq!(timeline.runs_out(), None);
    let tariff = trooper();
    let decision = check_start(
        &tariff,
        timeline,
        &["powerai-4090".parse::<StartRequest>().expect("request")],
    )
    .expect("decision");
    assert!(!decision.allowed, "{}", decision.reason);
    assert!(
        decision
            .reason
            .contains("exhausted since hour 2026-10-05T15"),
        "{}",
        decision.reason
    );
}

#[tokio::test]
async fn t5_a_top_up_after_the_last_settled_hour_counts_at_once() {
    let mut scene = Scene::new(
        &terminated_lake(),
        lab_contracts(),
        &[
            ("lab", "2026-10-04T20:00:00Z", "10.00"),
            ("lab", "2026-10-09T00:30:00Z", "10.00"),
        ],
    );
    scene.until("2026-10-09T00");
    let findings = watch::find(&scene.request).await.expect("find");
    let timeline = &findings.timelines["lab"];
    // The top-up at 00:30 reaches back to 12:00 of the 8th: 4 frozen hours (0.26) are
    // charged, the older unpaid hours written off: 0.25 + 10 − 0.26 = 9.99.
    assert_eq!(timeline.balance, dec("9.99"));
    assert_eq!(timeline.exhausted_since, None);
    assert_eq!(
        ids_of(&timeline.notices, NoticeKind::BudgetRestored),
        vec!["budget_restored/lab/2026-10-09T00 @ 10-09T00:30"]
    );
    let decision = check_start(
        &trooper(),
        timeline,
        &["erkunder-a4000".parse::<StartRequest>().expect("request")],
    )
    .expect("decision");
    // 24 × 0.22 = 5.28 ≤ 9.99.
    assert!(decision.allowed, "{}", decision.reason);
    // The next run, with the hour of the top-up replayed, settles it at the same point.
    scene.until("2026-10-09T02");
    let later = watch::find(&scene.request).await.expect("find");
    assert_eq!(later.timelines["lab"].balance, dec("9.99"));
    let retroactive = |timeline: &tally_rating::budget::Timeline| {
        timeline
            .entries
            .iter()
            .filter(|entry| entry.entry == EntryKind::RetroactiveCharge)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(retroactive(timeline), retroactive(&later.timelines["lab"]));
    assert_eq!(retroactive(timeline).len(), 4);
}

#[tokio::test]
async fn t6_a_trial_accounts_stopped_server_is_frozen_after_4_hours_and_any_after_7_days() {
    let trial = gpu_server("try", "t-1", "erkunder-a4000", 1);
    let paying = gpu_server("pay", "p-1", "erkunder-a4000", 1);
    let mut lake = Lake::default();
    lake.span(&trial, Running, "2026-10-05T10:00:00Z", 60, 0, 0)
        .span(&trial, Stopped, "2026-10-05T11:00:00Z", 6 * 60, 0, 0)
        // A second stop, of 2 h 30 min (3 clock hours), stays under 4 h: no freeze.
        .span(&trial, Running, "2026-10-05T17:00:00Z", 60, 0, 0)
        .span(&trial, Stopped, "2026-10-05T18:00:00Z", 2 * 60 + 30, 0, 0)
        .span(&paying, Stopped, "2026-10-01T00:00:00Z", 8 * 24 * 60, 0, 0);
    let mut scene = Scene::new(
        &lake,
        json!({"accounts": [
            {"account_id": "try", "tariff_id": "trooper-ai", "trial": true},
            {"account_id": "pay", "tariff_id": "trooper-ai"}
        ]}),
        &[
            ("try", "2026-10-05T09:00:00Z", "10"),
            ("pay", "2026-09-30T12:00:00Z", "1000"),
        ],
    );
    scene.until("2026-10-10T00");
    let findings = watch::find(&scene.request).await.expect("find");
    // Trial: stopped from 11:00; the 4th whole stopped hour ends at 15:00.
    assert_eq!(
        ids_of(
            &findings.timelines["try"].notices,
            NoticeKind::ServerStateChanged
        ),
        vec!["server_state_changed/try/t-1/2026-10-05T11/frozen @ 10-05T15:00"]
    );
    assert!(
        ids_of(
            &findings.timelines["try"].notices,
            NoticeKind::StoppedServerCost
        )
        .is_empty()
    );
    // Paying: warned after 16 h (T6), frozen after 7 days = 168 h stopped.
    let pay = &findings.timelines["pay"].notices;
    assert_eq!(
        ids_of(pay, NoticeKind::StoppedServerCost),
        vec!["stopped_server_cost/pay/p-1/2026-10-01T00 @ 10-01T16:00"]
    );
    assert_eq!(
        ids_of(pay, NoticeKind::ServerStateChanged),
        vec!["server_state_changed/pay/p-1/2026-10-01T00/frozen @ 10-08T00:00"]
    );
    // 8 days stopped at 0.077/h: 192 × 0.077 = 14.784 of the 1000.
    assert_eq!(findings.timelines["pay"].balance, dec("985.216"));
}

fn trooper() -> tally_model::tariff::Tariff {
    let text = tally_rating::reference_tariffs()
        .into_iter()
        .find(|(name, _)| *name == "trooper-ai.toml")
        .expect("trooper")
        .1;
    toml::from_str(text).expect("tariff")
}

#[tokio::test]
async fn t5_starting_servers_needs_24_hours_of_each_or_the_minimum_starting_budget() {
    let server = gpu_server("lab", "gpu-1", "powerai-4090", 1);
    let mut lake = Lake::default();
    lake.span(&server, Running, "2026-10-05T00:00:00Z", 60, 0, 0);
    let mut scene = Scene::new(
        &lake,
        lab_contracts(),
        &[("lab", "2026-10-04T20:00:00Z", "737.00")],
    );
    scene.until("2026-10-05T01");
    let findings = watch::find(&scene.request).await.expect("find");
    let timeline = &findings.timelines["lab"];
    // 737.00 − one hour of 0.65 = 736.35.
    assert_eq!(timeline.balance, dec("736.35"));
    let tariff = trooper();
    let decide = |requests: &[&str]| {
        let requests: Vec<StartRequest> = requests
            .iter()
            .map(|text| text.parse().expect("request"))
            .collect();
        check_start(&tariff, timeline, &requests).expect("decision")
    };
    // An 8-GPU infinityai needs 96 h × 7.67 (its configuration price) = 736.32.
    let big = decide(&["infinityai-a100/8"]);
    assert!(big.allowed, "{}", big.reason);
    assert_eq!(big.required, dec("736.32"));
    // Two of them: 1472.64.
    let two = decide(&["infinityai-a100/8×2"]);
    assert!(!two.allowed);
    assert_eq!(two.required, dec("1472.64"));
    assert!(
        two.reason
            .starts_with("refused: balance 736.35 is less than the required 1472.64"),
        "{}",
        two.reason
    );
    // Otherwise 24 h of each: 2 × 24 × 0.65 + 24 × 4 × 0.22 = 31.2 + 21.12.
    let mixed = decide(&["powerai-4090*2", "erkunder-a4000/4"]);
    assert!(mixed.allowed);
    assert_eq!(mixed.required, dec("52.32"));
    assert!("infinityai-a100/0".parse::<StartRequest>().is_err());
    assert!(check_start(&tariff, timeline, &["nope".parse().expect("request")]).is_err());
}

#[tokio::test]
async fn t7_notices_are_sent_once_across_runs_and_the_ledger_is_appended_once() {
    let mut scene = Scene::new(
        &run_out_lake(),
        lab_contracts(),
        &[
            ("lab", "2026-10-04T23:30:00Z", "10.00"),
            ("lab", "2026-10-06T20:30:00Z", "50.00"),
        ],
    );
    let state = scene.request.state_dir.clone();
    let ledger_path = scene.path("ledger.ndjson");
    // First run: up to 20:00 on the 6th, the hour of the second top-up not replayed yet.
    scene.until("2026-10-06T20");
    let first = watch::run(&scene.request, &[]).await.expect("first run");
    let after_first = delivered(&state);
    assert_eq!(first.notices_sent, after_first.len());
    assert_eq!(
        ids_of(&after_first, NoticeKind::BudgetExhausted),
        vec!["budget_exhausted/lab/2026-10-05T15 @ 10-05T16:00"]
    );
    // The top-up at 20:30 is in the ledger, after the last hour replayed: it counts now.
    assert_eq!(
        ids_of(&after_first, NoticeKind::BudgetRestored),
        vec!["budget_restored/lab/2026-10-06T20 @ 10-06T20:30"]
    );
    // Same hours again: nothing new to send or write.
    let again = watch::run(&scene.request, &[]).await.expect("same run");
    assert_eq!((again.notices_sent, again.ledger_entries_written), (0, 0));
    // A run stopped mid-append leaves a torn line: it is cut off and its notice sent again.
    let log = state.join("notices.ndjson");
    let text = std::fs::read_to_string(&log).expect("log");
    let last_start = text.trim_end().rfind('\n').map_or(0, |at| at + 1);
    std::fs::write(&log, &text[..last_start + 10]).expect("tear");
    // Later: the rest of the timeline.
    scene.until("2026-10-07T04");
    let second = watch::run(&scene.request, &[]).await.expect("second run");
    let all = delivered(&state);
    let mut ids: Vec<&str> = all.iter().map(|notice| notice.id.as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "a notice recorded twice");
    assert_eq!(second.notices_sent, all.len() - (after_first.len() - 1));
    assert_eq!(
        ids_of(&all, NoticeKind::BudgetRestored),
        vec!["budget_restored/lab/2026-10-06T20 @ 10-06T20:30"]
    );
    // The ledger holds each settled entry once, after the top-ups.
    let ledger = Ledger::load(&ledger_path).expect("ledger");
    let settled = watch::find(&scene.request).await.expect("find").timelines["lab"]
        .entries
        .clone();
    assert_eq!(ledger.entries.len(), 2 + settled.len());
    assert!(ledger.missing(&settled, |_| true).is_empty());
    // Late usage for a settled hour: the next run appends the difference, once.
    let late = gpu_server("lab", "gpu-2", "powerai-4090", 1);
    let mut lake = run_out_lake();
    lake.span(&late, Running, "2026-10-06T23:00:00Z", 30, 0, 0);
    lake.write(scene.root.path(), Layout::ONE_FILE);
    let third = watch::run(&scene.request, &[Sink::Stdout])
        .await
        .expect("third run");
    let ledger = Ledger::load(&ledger_path).expect("ledger");
    let adjustments: Vec<_> = ledger
        .entries
        .iter()
        .filter(|entry| entry.entry == EntryKind::Adjustment)
        .collect();
    assert_eq!(adjustments.len(), 1, "{:?}", third);
    assert_eq!(adjustments[0].id, "lab/2026-10-06T23/charge/adjustment-1");
    assert_eq!(adjustments[0].amount, dec("0.65"));
}

/// Tally's entries of a ledger summed by id (adjustments into the entry they adjust).
fn net(ledger: &Ledger) -> std::collections::BTreeMap<String, Decimal> {
    let mut sums = std::collections::BTreeMap::new();
    for entry in ledger
        .entries
        .iter()
        .filter(|e| e.entry != EntryKind::TopUp)
    {
        let base = entry.id.split("/adjustment-").next().unwrap_or(&entry.id);
        *sums.entry(base.to_owned()).or_insert(Decimal::ZERO) += entry.amount;
    }
    sums.retain(|_, amount| !amount.is_zero());
    sums
}

#[tokio::test]
async fn t5_late_usage_that_runs_the_budget_out_earlier_restates_the_ledger_once() {
    let mut scene = Scene::new(
        &run_out_lake(),
        lab_contracts(),
        &[("lab", "2026-10-04T23:30:00Z", "10.00")],
    );
    let ledger_path = scene.path("ledger.ndjson");
    scene.until("2026-10-05T12");
    // Hours 00–11 paid: 12 × 0.65 = 7.80.
    watch::run(&scene.request, &[]).await.expect("first run");
    let first = Ledger::load(&ledger_path).expect("ledger");
    assert_eq!(net(&first).len(), 12);
    // Late: a second server ran hours 00–05. At 1.30 an hour the 10.00 pays hours 00–08
    // (9.35) and runs out at hour 09 (0.65 > 0.25): hours 09–11, written as paid, are
    // unpaid now.
    let mut lake = run_out_lake();
    lake.span(
        &gpu_server("lab", "gpu-2", "powerai-4090", 1),
        Running,
        "2026-10-05T00:00:00Z",
        6 * 60,
        0,
        0,
    );
    lake.write(scene.root.path(), Layout::ONE_FILE);
    let second = watch::run(&scene.request, &[]).await.expect("second run");
    let ledger = Ledger::load(&ledger_path).expect("ledger");
    let settled: std::collections::BTreeMap<String, Decimal> =
        watch::find(&scene.request).await.expect("find").timelines["lab"]
            .entries
            .iter()
            .map(|entry| (entry.id.clone(), entry.amount))
            .collect();
    // Summed by id, the ledger now says exactly what the replay does.
    assert_eq!(net(&ledger), settled);
    assert_eq!(settled["lab/2026-10-05T09/unpaid"], dec("0.65"));
    assert!(!settled.contains_key("lab/2026-10-05T09/charge"));
    // 6 adjustments up (00–05), 3 cancelled charges (09–11), 3 new unpaid hours.
    assert_eq!(second.ledger_entries_written, 6 + 3 + 3);
    let cancelled: Vec<&str> = ledger
        .entries
        .iter()
        .filter(|entry| entry.entry == EntryKind::Adjustment && entry.amount < Decimal::ZERO)
        .map(|entry| entry.id.as_str())
        .collect();
    assert_eq!(
        cancelled,
        vec![
            "lab/2026-10-05T09/charge/adjustment-1",
            "lab/2026-10-05T10/charge/adjustment-1",
            "lab/2026-10-05T11/charge/adjustment-1",
        ]
    );
    // The notice of the earlier exhaustion goes out once; a third run changes nothing.
    assert_eq!(
        ids_of(
            &delivered(&scene.request.state_dir),
            NoticeKind::BudgetExhausted
        ),
        vec!["budget_exhausted/lab/2026-10-05T09 @ 10-05T10:00"]
    );
    let third = watch::run(&scene.request, &[]).await.expect("third run");
    assert_eq!((third.ledger_entries_written, third.notices_sent), (0, 0));
}
