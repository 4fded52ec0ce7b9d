//! What-if re-rating: a price change's difference per account and line, computed by hand,
//! with nothing written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tally_model::ResourceState::Running;
use tally_rating::RateRequest;
use tally_rating::compare::compare;

use crate::lake::{Lake, Layout, dec, reference_tariff_files, server};

fn files_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut directories = vec![root.to_owned()];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                directories.push(path);
            } else {
                files.insert(path);
            }
        }
    }
    files
}

#[tokio::test]
async fn a_price_change_shows_per_account_and_line_and_writes_nothing() {
    // October 2026 in Berlin has 745 hours.
    let mut lake = Lake::default();
    lake.span(
        &server("a", "a-1", "cx22"),
        Running,
        "2026-10-05T10:00:00Z",
        100 * 60,
        0,
        0,
    )
    // All month: 745 h × 0.006 = 4.47, capped at 3.79; at 0.007 still capped.
    .span(
        &server("b", "b-1", "cx22"),
        Running,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    )
    // A cx32 next to it: not repriced.
    .span(
        &server("b", "b-2", "cx32"),
        Running,
        "2026-10-01T00:00:00Z",
        10 * 60,
        0,
        0,
    )
    .span(
        &server("c", "c-1", "c2m4"),
        Running,
        "2026-10-05T10:00:00Z",
        90,
        0,
        0,
    );
    let root = tempfile::tempdir().expect("tempdir");
    lake.write(root.path(), Layout::ONE_FILE);
    let tariffs = reference_tariff_files(root.path());
    let contracts = root.path().join("contracts.json");
    std::fs::write(
        &contracts,
        serde_json::json!({"accounts": [
            {"account_id": "a", "tariff_id": "hetzner-cloud"},
            {"account_id": "b", "tariff_id": "hetzner-cloud"},
            {"account_id": "c", "tariff_id": "centron"}
        ]})
        .to_string(),
    )
    .expect("contracts");
    let hetzner = tally_rating::reference_tariffs()
        .into_iter()
        .find(|(name, _)| *name == "hetzner-cloud.toml")
        .expect("hetzner")
        .1;
    let first_price = "price = \"0.006\"";
    assert!(
        hetzner.contains(first_price),
        "the cx22 hourly price comes first"
    );
    let override_path = root.path().join("hetzner-next.toml");
    std::fs::write(
        &override_path,
        hetzner.replacen(first_price, "price = \"0.007\"", 1),
    )
    .expect("override");
    let request = RateRequest {
        lake: root.path().into(),
        month: "2026-10".to_owned(),
        tariffs,
        contracts,
        out: root.path().into(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    };
    let before = files_under(root.path());
    let comparison = compare(&request, &[override_path]).await.expect("compare");
    assert_eq!(files_under(root.path()), before, "a what-if writes nothing");

    let by_account = |id: &str| {
        comparison
            .accounts
            .iter()
            .find(|account| account.account_id == id)
            .unwrap_or_else(|| panic!("no account {id}"))
    };
    // a: 100 h × 0.006 = 0.60 → 100 h × 0.007 = 0.70.
    let a = by_account("a");
    assert_eq!((a.before, a.after), (dec("0.60"), dec("0.70")));
    assert_eq!(a.lines.len(), 1);
    assert_eq!(a.lines[0].resource_id.as_deref(), Some("a-1"));
    assert_eq!(
        (a.lines[0].before, a.lines[0].after),
        (dec("0.6"), dec("0.7"))
    );
    // b: the cx22 stays at its 3.79 cap, the cx32 keeps 10 × 0.0109 = 0.109: nothing changes.
    let b = by_account("b");
    assert_eq!((b.before, b.after), (dec("3.90"), dec("3.90")));
    assert!(b.lines.is_empty(), "{:?}", b.lines);
    // c is on another tariff: 1.5 h × 0.04 = 0.06 either way.
    let c = by_account("c");
    assert_eq!((c.before, c.after), (dec("0.06"), dec("0.06")));
    assert!(c.lines.is_empty());
    assert_eq!(
        comparison.total_after() - comparison.total_before(),
        dec("0.10")
    );
    let text = comparison.render();
    assert!(text.contains("(1 of 3 accounts changed)"), "{text}");

    // An override of a tariff nobody loaded is refused, naming the file.
    let stray = root.path().join("stray.toml");
    std::fs::write(
        &stray,
        hetzner.replacen("id = \"hetzner-cloud\"", "id = \"other\"", 1),
    )
    .expect("stray");
    let error = compare(&request, &[stray]).await.expect_err("refused");
    assert!(
        error.to_string().contains("stray.toml") && error.to_string().contains("'other'"),
        "{error}"
    );
    // So is one that would only take effect after the month.
    let later = root.path().join("later.toml");
    std::fs::write(
        &later,
        hetzner.replacen(
            "effective_from = \"2026-01-01\"",
            "effective_from = \"2026-11-01\"",
            1,
        ),
    )
    .expect("later");
    let error = compare(&request, &[later]).await.expect_err("refused");
    assert!(
        error.to_string().contains("later.toml")
            && error.to_string().contains("effective from 2026-11-01"),
        "{error}"
    );
}
