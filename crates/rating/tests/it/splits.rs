//! A resource's month spread over several rollup rows (label, zone or GPU changes) is
//! still one resource: started hours, rounding and caps see each resource-hour once.
//! Regression tests for pricing per (resource, labels, zone) row group, which billed a
//! relabelled server's cap twice and an hour split over two label sets as two hours.

use tally_model::ResourceState::{Running, Stopped};

use crate::lake::{Lake, Layout, Resource, TB, dec, gpu_server, rate_lake, server, with_os};

#[tokio::test]
async fn a_label_change_mid_month_is_still_one_capped_server() {
    // 400 h as linux, then (from the middle of an hour) 345 h as windows: 745 h of one
    // cx22, min(3.79, 745 × 0.006 = 4.47) = 3.79, once. Priced per label set it was
    // min(3.79, 401 × 0.006) + min(3.79, 345 × 0.006) = 2.406 + 2.07.
    let mut lake = Lake::default();
    let linux = with_os(server("h", "web", "cx22"), "linux");
    let windows = with_os(server("h", "web", "cx22"), "windows");
    lake.span(&linux, Running, "2026-09-30T22:00:00Z", 400 * 60 + 30, 0, 0)
        .span(
            &windows,
            Stopped,
            "2026-10-17T14:30:00Z",
            345 * 60 - 30,
            0,
            0,
        );
    let rated = rate_lake(
        &lake,
        &[("h", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("h", "CX22"), vec![dec("3.79")]);
    let line = &rated.lines("h")[0];
    assert!(
        line["rule"]
            .as_str()
            .is_some_and(|rule| rule.contains("44700 minutes rounded up to 745 h")
                && rule.contains("monthly cap 3.79 applied")),
        "{line}"
    );
}

#[tokio::test]
async fn an_hour_split_over_two_label_sets_is_one_started_hour() {
    // vps-s, 00:00–01:59 with the label changing at 00:30: two started hours, 0.02.
    let mut lake = Lake::default();
    let linux = with_os(server("n", "vps", "vps-s"), "linux");
    let windows = with_os(server("n", "vps", "vps-s"), "windows");
    lake.span(&linux, Running, "2026-10-01T00:00:00Z", 30, 0, 0)
        .span(&windows, Running, "2026-10-01T00:30:00Z", 90, 0, 0);
    let rated = rate_lake(&lake, &[("n", "vps-672")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("n", "VPS S"), vec![dec("0.02")]);
}

#[tokio::test]
async fn a_zone_change_within_an_hour_counts_the_hour_once() {
    // One GPU of erkunder-a4000 running 01:00–02:59, moving zone at 01:20: 2 h × 0.22.
    let mut lake = Lake::default();
    let before = gpu_server("t", "gpu", "erkunder-a4000", 1);
    let after = Resource {
        zone: "z2",
        ..before.clone()
    };
    lake.span(&before, Running, "2026-10-01T01:00:00Z", 20, 0, 0)
        .span(&after, Running, "2026-10-01T01:20:00Z", 100, 0, 0);
    let rated = rate_lake(&lake, &[("t", "trooper-ai")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("t", "erkunder"), vec![dec("0.44")]);
}

#[tokio::test]
async fn a_gpu_resize_bills_each_configuration_at_its_price() {
    // infinityai-a100: 10 h with 4 GPUs (4 × 1.14 = 4.56/h) then 10 h with 8 GPUs (the
    // explicit 7.67/h): 45.60 + 76.70. The hour of the resize (4 GPUs for 30 min, then 8)
    // is one started hour at the larger configuration.
    let mut lake = Lake::default();
    let four = gpu_server("t", "a100", "infinityai-a100", 4);
    let eight = gpu_server("t", "a100", "infinityai-a100", 8);
    lake.span(&four, Running, "2026-10-05T00:00:00Z", 10 * 60 + 30, 0, 0)
        .span(&eight, Running, "2026-10-05T10:30:00Z", 9 * 60 + 30, 0, 0);
    let rated = rate_lake(&lake, &[("t", "trooper-ai")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("t", "4 GPUs"), vec![dec("45.60")]);
    assert_eq!(rated.amounts("t", "8 GPUs"), vec![dec("76.70")]);
    assert_eq!(rated.total("t"), dec("122.30"));
}

#[tokio::test]
async fn t4_allowance_follows_the_largest_gpu_count() {
    // 4 then 8 GPUs: the month's allowance is 8 × 5 TB = 40 TB; 41 TB out → 1 TB × 7.
    let mut lake = Lake::default();
    let four = gpu_server("t", "a100", "infinityai-a100", 4);
    let eight = gpu_server("t", "a100", "infinityai-a100", 8);
    lake.span(&four, Running, "2026-10-05T00:00:00Z", 60, TB / 2, 0)
        .span(&eight, Running, "2026-10-05T01:00:00Z", 10, TB + TB / 10, 0);
    let rated = rate_lake(&lake, &[("t", "trooper-ai")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("t", "traffic"), vec![dec("7")]);
    let rule = rated.lines_with("t", "traffic")[0]["rule"].clone();
    assert!(
        rule.as_str().is_some_and(
            |rule| rule.contains("overage 1 TB beyond 40 TB included (5 TB per GPU × 8)")
        ),
        "{rule}"
    );
}

#[tokio::test]
async fn c3_an_os_surcharge_follows_the_label_minute_by_minute() {
    // c2m4: 90 min as linux, then 30 min as windows. Flavor: 1.5 h × 0.04 on the linux
    // line, 0.5 h × 0.04 on the windows line; licence 0.5 h × 0.02 = 0.01.
    let mut lake = Lake::default();
    lake.span(
        &with_os(server("c", "vm", "c2m4"), "linux"),
        Running,
        "2026-10-01T00:00:00Z",
        90,
        0,
        0,
    )
    .span(
        &with_os(server("c", "vm", "c2m4"), "windows"),
        Running,
        "2026-10-01T01:30:00Z",
        30,
        0,
        0,
    );
    let rated = rate_lake(&lake, &[("c", "centron")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("c", "(os=linux): flavor"), vec![dec("0.06")]);
    assert_eq!(
        rated.amounts("c", "(os=windows): flavor"),
        vec![dec("0.02")]
    );
    assert_eq!(
        rated.amounts("c", "(os=windows): windows licence"),
        vec![dec("0.01")]
    );
    assert_eq!(rated.total("c"), dec("0.09"));
}

#[tokio::test]
async fn a_resource_hour_the_fold_sees_twice_is_summed_by_the_exact_plan() {
    // A file whose rows of one resource-hour are not next to each other (hour 00 as
    // linux, hour 01, hour 00 as windows): the fold cannot prove it sees hour 00 once,
    // says so, and `usage` takes the exact plan: two started hours, 90 minutes.
    use tally_model::rollup::rows_to_batch;
    use tally_rating::fold::is_split_hour;
    use tally_rating::month::BillingMonth;
    use tally_rating::usage::MonthRollups;

    let mut lake = Lake::default();
    let linux = with_os(server("n", "vps", "vps-s"), "linux");
    let windows = with_os(server("n", "vps", "vps-s"), "windows");
    lake.span(&linux, Running, "2026-10-01T00:00:00Z", 30, 0, 0)
        .span(&windows, Running, "2026-10-01T00:30:00Z", 60, 0, 0);
    // Sorted by key: 00 linux, 00 windows, 01 windows.
    let mut rows = lake.rows();
    assert_eq!(rows.len(), 3);
    rows.swap(1, 2);
    let root = tempfile::tempdir().expect("tempdir");
    let directory = root.path().join("rollups/hour=2026-10-01T00");
    std::fs::create_dir_all(&directory).expect("mkdir");
    let batch = rows_to_batch(&rows).expect("batch");
    let file = std::fs::File::create(directory.join("test-p000-g0000.parquet")).expect("create");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");

    let month = BillingMonth::new("2026-10", chrono_tz::Europe::Berlin).expect("month");
    let rollups = MonthRollups::open(&root.path().into(), &month)
        .await
        .expect("open");
    match rollups.folded_usage().await {
        Err(tally_rating::Error::DataFusion(error)) => assert!(is_split_hour(&error), "{error}"),
        other => panic!("the fold should report the split hour, not {other:?}"),
    }
    let usage = rollups.usage().await.expect("usage");
    assert_eq!(usage, rollups.grouped_usage().await.expect("exact"));
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].hour_buckets.len(), 1);
    assert_eq!(usage[0].hour_buckets[0].hours, 2);
    assert_eq!(usage[0].present_minutes, 90);
}

#[tokio::test]
async fn a_resize_within_an_hour_is_a_started_hour_of_each_plan() {
    // cx22 until 14:30, cx32 from then: hour 14 is a started hour of both plans, as the
    // exact plan (one group per resource, SKU and hour) counts it. The fold keeps one
    // fold per resource and SKU, so it must agree without a fallback.
    use tally_rating::month::BillingMonth;
    use tally_rating::usage::MonthRollups;

    let mut lake = Lake::default();
    lake.span(
        &server("h", "web", "cx22"),
        Running,
        "2026-10-17T12:00:00Z",
        150,
        0,
        0,
    )
    .span(
        &server("h", "web", "cx32"),
        Running,
        "2026-10-17T14:30:00Z",
        90,
        0,
        0,
    );
    let root = tempfile::tempdir().expect("tempdir");
    lake.write(root.path(), Layout::ONE_FILE);
    let month = BillingMonth::new("2026-10", chrono_tz::Europe::Berlin).expect("month");
    let rollups = MonthRollups::open(&root.path().into(), &month)
        .await
        .expect("open");
    let folded = rollups.folded_usage().await.expect("no split hour");
    assert_eq!(folded, rollups.grouped_usage().await.expect("exact"));
    let hours: Vec<(&str, i64)> = folded
        .iter()
        .map(|usage| {
            let hours = usage.hour_buckets.iter().map(|bucket| bucket.hours).sum();
            (usage.sku.as_str(), hours)
        })
        .collect();
    assert_eq!(hours, vec![("cx22", 3), ("cx32", 2)]);
}
