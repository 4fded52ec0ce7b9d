//! Invariants over random lakes: how the rollups are laid out in files and rows does not
//! change what anyone owes.

use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use tally_model::tariff::{Tier, TierMode};
use tally_model::{Minute, ResourceKind, ResourceState};
use tally_rating::fold::is_split_hour;
use tally_rating::month::BillingMonth;
use tally_rating::price::tiered_amount;
use tally_rating::usage::{MonthRollups, ResourceUsage};

use crate::lake::{
    Lake, Layout, Rated, Resource, dec, gpu_server, of_kind, rate_lake, server, with_os,
};

/// A resource of every reference tariff, each with the states it reports.
fn catalog() -> Vec<(Resource, &'static [ResourceState])> {
    use ResourceState::{Active, Frozen, Running, Stopped};
    const POWER: &[ResourceState] = &[Running, Stopped, Frozen];
    const EXISTS: &[ResourceState] = &[Active];
    vec![
        (server("h", "cx22-a", "cx22"), POWER),
        (server("h", "cx32-a", "cx32"), POWER),
        (
            of_kind(ResourceKind::Ip, "h", "fip", "floating-ipv4"),
            EXISTS,
        ),
        (
            of_kind(ResourceKind::Snapshot, "h", "snap-h", "snapshot"),
            EXISTS,
        ),
        (server("n", "vps-a", "vps-s"), POWER),
        (
            of_kind(ResourceKind::Snapshot, "n", "snap-n", "snapshot"),
            EXISTS,
        ),
        (gpu_server("t", "power", "powerai-4090", 4), POWER),
        (gpu_server("t", "a100", "infinityai-a100", 8), POWER),
        (with_os(server("c", "vm-1", "c2m4"), "linux"), POWER),
        (with_os(server("c", "vm-2", "c2m4"), "windows"), POWER),
        (with_os(server("c", "vm-3", "c2m4"), "windows"), POWER),
        (
            of_kind(ResourceKind::Addon, "c", "ha", "ha-feature"),
            EXISTS,
        ),
    ]
}

const CONTRACTS: [(&str, &str); 4] = [
    ("h", "hetzner-cloud"),
    ("n", "vps-672"),
    ("t", "trooper-ai"),
    ("c", "centron"),
];

/// (gap before, length, state choice, bytes per minute) of one stretch of usage.
type Segment = (i64, i64, usize, u64);

fn lake_from(plan: &[(usize, Vec<Segment>)]) -> Lake {
    let catalog = catalog();
    // 2026-09-30T20:00Z: a little before Berlin's October, so month bounds are crossed.
    let origin: Minute = "2026-09-30T20:00:00Z".parse().expect("minute");
    let mut lake = Lake::default();
    let mut used = std::collections::BTreeSet::new();
    for (pick, segments) in plan {
        let index = pick % catalog.len();
        if !used.insert(index) {
            continue; // one plan per resource, so its minutes never overlap
        }
        let (resource, states) = &catalog[index];
        let mut at = origin;
        for (gap, length, state, bytes) in segments {
            at = at.plus(*gap);
            let size = if resource.kind == ResourceKind::Snapshot {
                7 << 30
            } else {
                0
            };
            lake.span_at(
                resource,
                states[state % states.len()],
                at,
                *length,
                *bytes,
                size,
            );
            at = at.plus(*length);
        }
    }
    lake
}

/// October's usage of `lake` laid out as `layout`: by the fold (or its error) and by the
/// exact two-step plan, and what `usage` chose.
type Plans = (
    tally_rating::Result<Vec<ResourceUsage>>,
    Vec<ResourceUsage>,
    Vec<ResourceUsage>,
);

fn usage_blocking(lake: &Lake, layout: Layout) -> Plans {
    let root = tempfile::tempdir().expect("tempdir");
    lake.write(root.path(), layout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let month = BillingMonth::new("2026-10", chrono_tz::Europe::Berlin).expect("month");
        let rollups = MonthRollups::open(&root.path().into(), &month)
            .await
            .expect("open");
        (
            rollups.folded_usage().await,
            rollups.grouped_usage().await.expect("exact plan"),
            rollups.usage().await.expect("usage"),
        )
    })
}

fn rate_blocking(lake: &Lake, layout: Layout) -> Rated {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(rate_lake(lake, &CONTRACTS, "2026-10", layout))
        .expect("rate")
}

fn segment() -> impl Strategy<Value = Segment> {
    (0i64..600, 1i64..900, 0usize..3, 0u64..5_000_000_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Dealing each hour's rows over several files (one per Kafka partition), or leaving
    /// a superseded generation next to each file, gives byte-identical output; splitting rows into several rows of the same key (late
    /// restatements) changes only the lineage, never an amount or quantity.
    #[test]
    fn rating_is_invariant_to_how_rollups_are_split(
        plan in proptest::collection::vec((0usize..12, proptest::collection::vec(segment(), 1..5)), 1..8),
        files in 2usize..5,
    ) {
        let lake = lake_from(&plan);
        let baseline = rate_blocking(&lake, Layout::ONE_FILE);
        let over_files = rate_blocking(&lake, Layout { files_per_hour: files, split_rows: false, superseded: false });
        prop_assert_eq!(baseline.line_items_bytes(), over_files.line_items_bytes());
        prop_assert_eq!(&baseline.invoices, &over_files.invoices);
        let split_rows = rate_blocking(&lake, Layout { files_per_hour: files, split_rows: true, superseded: false });
        prop_assert_eq!(&baseline.invoices, &split_rows.invoices);
        prop_assert_eq!(baseline.report.line_items, split_rows.report.line_items);
        // A superseded generation left next to its successor is not counted again.
        let superseded = rate_blocking(&lake, Layout { superseded: true, ..Layout::ONE_FILE });
        prop_assert_eq!(baseline.line_items_bytes(), superseded.line_items_bytes());
        // H9: every invoice's total is its unrounded lines summed, rounded once, half-up.
        for (account, invoice) in &baseline.invoices {
            let sum: Decimal = baseline
                .lines(account)
                .iter()
                .map(|line| dec(line["amount"].as_str().expect("amount")))
                .sum();
            let rounded = sum.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
            prop_assert_eq!(baseline.total(account), rounded, "{}", invoice);
        }
    }

    /// The one-scan fold and the exact two-step plan sum the same usage. With every hour
    /// in one file (rows of a resource-hour next to each other, as the aggregator writes
    /// them) the fold must not give up; with a resource-hour's rows dealt over several
    /// files it may only give up by reporting the split, and `usage` then takes the exact
    /// plan.
    #[test]
    fn the_fold_sums_what_the_exact_plan_sums(
        plan in proptest::collection::vec((0usize..12, proptest::collection::vec(segment(), 1..5)), 1..8),
        files in 2usize..5,
        split_rows in any::<bool>(),
    ) {
        let (folded, exact, chosen) = usage_blocking(&lake_from(&plan), Layout { files_per_hour: 1, split_rows, superseded: false });
        prop_assert_eq!(folded.expect("one file per hour folds"), exact.clone());
        prop_assert_eq!(chosen, exact);

        let (folded, exact, chosen) = usage_blocking(&lake_from(&plan), Layout { files_per_hour: files, split_rows: true, superseded: false });
        match folded {
            Ok(folded) => prop_assert_eq!(folded, exact.clone()),
            Err(tally_rating::Error::DataFusion(error)) => prop_assert!(is_split_hour(&error), "{}", error),
            Err(other) => prop_assert!(false, "{}", other),
        }
        prop_assert_eq!(chosen, exact);
    }

    /// With one band, graduated and volume pricing agree, and both are quantity × price.
    #[test]
    fn graduated_equals_volume_for_one_tier(
        units in 0i64..10_000_000_000, scale in 0u32..9, price in 0i64..100_000, price_scale in 0u32..6,
    ) {
        let quantity = Decimal::new(units, scale);
        let price = Decimal::new(price, price_scale);
        let one = [Tier { up_to: None, price }];
        let (graduated, _) = tiered_amount(quantity, &one, TierMode::Graduated).expect("graduated");
        let (volume, _) = tiered_amount(quantity, &one, TierMode::Volume).expect("volume");
        prop_assert_eq!(graduated, volume);
        prop_assert_eq!(graduated, quantity * price);
    }

    /// Graduated bands charge each unit once: the amount of q is the amount up to a bound
    /// plus the units beyond it at the next band's price, so it never jumps at a bound.
    #[test]
    fn graduated_tiers_charge_each_unit_once(
        bound in 1i64..1_000, extra in 0i64..1_000, first in 0i64..1_000, second in 0i64..1_000,
    ) {
        let tiers = [
            Tier { up_to: Some(Decimal::from(bound)), price: Decimal::new(first, 2) },
            Tier { up_to: None, price: Decimal::new(second, 2) },
        ];
        let amount = |quantity: i64| {
            tiered_amount(Decimal::from(quantity), &tiers, TierMode::Graduated).expect("tiers").0
        };
        prop_assert_eq!(
            amount(bound + extra),
            amount(bound) + Decimal::from(extra) * Decimal::new(second, 2)
        );
        prop_assert_eq!(amount(bound), Decimal::from(bound) * Decimal::new(first, 2));
    }
}
