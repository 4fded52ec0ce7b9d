//! Each BILLING.md rule this level covers, on a small hand-made lake, against amounts
//! computed by hand (each test names its rule and shows the arithmetic).

use rust_decimal::Decimal;
use tally_model::{ResourceKind, ResourceState};

use crate::lake::{Lake, Layout, Resource, dec, rate_lake, server};

use ResourceState::{Active, Frozen, Running, Stopped};

#[tokio::test]
async fn c1_c3_minutes_summed_into_one_line_per_flavor_and_os() {
    // 2:30 + 1:30 + 2 × 0:45 + 12:15 = 17.75 h of c2m4 linux; 17.75 × 0.04 = 0.71.
    let linux = |id| Resource {
        labels: r#"{"os":"linux"}"#,
        ..server("c", id, "c2m4")
    };
    let mut lake = Lake::default();
    lake.span(&linux("a"), Running, "2026-10-05T10:10:00Z", 150, 0, 0)
        .span(&linux("a"), Stopped, "2026-10-05T12:40:00Z", 600, 0, 0) // stopped: not billed (C2)
        .span(&linux("b"), Running, "2026-10-06T08:00:00Z", 90, 0, 0)
        .span(&linux("c"), Running, "2026-10-07T23:30:00Z", 45, 0, 0)
        .span(&linux("d"), Running, "2026-10-08T00:15:00Z", 45, 0, 0)
        .span(&linux("e"), Running, "2026-10-09T01:00:00Z", 735, 0, 0);
    // One hour of windows: flavor 0.04 plus licence 0.02 (C3 line per OS).
    let windows = Resource {
        labels: r#"{"os":"windows"}"#,
        ..server("c", "w", "c2m4")
    };
    lake.span(&windows, Running, "2026-10-10T10:30:00Z", 60, 0, 0);
    let rated = rate_lake(&lake, &[("c", "centron")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("c", "(os=linux): flavor"), vec![dec("0.71")]);
    let lines = rated.invoice("c")["lines"]
        .as_array()
        .expect("lines")
        .clone();
    let linux_line = lines
        .iter()
        .find(|l| l["description"].as_str().unwrap_or("").contains("os=linux"))
        .expect("linux line");
    assert_eq!(linux_line["quantity"], "17.75");
    assert_eq!(
        rated.amounts("c", "(os=windows): flavor"),
        vec![dec("0.04")]
    );
    assert_eq!(
        rated.amounts("c", "(os=windows): windows licence"),
        vec![dec("0.02")]
    );
    assert_eq!(rated.total("c"), dec("0.77"));
}

#[tokio::test]
async fn c2_gpu_class_is_billed_while_stopped() {
    let gpu = Resource {
        kind: ResourceKind::GpuServer,
        gpus: 1,
        labels: r#"{"os":"linux"}"#,
        ..server("g", "gpu", "gpu-a100")
    };
    let mut lake = Lake::default();
    lake.span(&gpu, Running, "2026-10-01T00:00:00Z", 60, 0, 0)
        .span(&gpu, Stopped, "2026-10-01T01:00:00Z", 30, 0, 0);
    let rated = rate_lake(&lake, &[("g", "centron")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.total("g"), dec("3.75")); // 1.5 h × 2.50
}

#[tokio::test]
async fn n2_672_hour_cap_and_n4_prorated_allowance() {
    let mut lake = Lake::default();
    // A whole October (745 hours), partly stopped: N3 bills any power state; N2 caps at 672 h.
    lake.span(
        &server("n", "full", "vps-s"),
        Running,
        "2026-09-30T22:00:00Z",
        400 * 60,
        0,
        0,
    )
    .span(
        &server("n", "full", "vps-s"),
        Stopped,
        "2026-10-17T14:00:00Z",
        345 * 60,
        0,
        0,
    );
    // 336 hours with 600 GiB out: 1 TiB × 336/672 = 512 GiB included (N4), 88 GiB × 0.01 = 0.88.
    let gib = 1u64 << 30;
    lake.span(
        &server("m", "half", "vps-s"),
        Running,
        "2026-10-01T00:00:00Z",
        336 * 60,
        600 * gib / (336 * 60),
        0,
    );
    let rated = rate_lake(
        &lake,
        &[("n", "vps-672"), ("m", "vps-672")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.total("n"), dec("6.72")); // 672 × 0.01
    assert_eq!(rated.amounts("m", "server"), vec![dec("3.36")]);
    let traffic = rated.amounts("m", "traffic");
    let used = Decimal::from(600 * gib / (336 * 60) * 336 * 60);
    let expected = (used - Decimal::from(512 * gib)) * dec("0.01") / Decimal::from(gib);
    assert_eq!(traffic, vec![expected]);
    assert_eq!(expected.round_dp(2), dec("0.88"));
}

#[tokio::test]
async fn n5_snapshots_in_gib_hours_with_a_monthly_minimum() {
    let gib = 1u64 << 30;
    let snapshot = |id| Resource {
        kind: ResourceKind::Snapshot,
        ..server("s", id, "snapshot")
    };
    let mut lake = Lake::default();
    lake.span(
        &snapshot("small"),
        Active,
        "2026-02-03T00:00:00Z",
        10 * 60,
        0,
        gib,
    ) // 10 GiB-h: 0.00045 → 0.01
    .span(
        &snapshot("big"),
        Active,
        "2026-01-31T23:00:00Z",
        672 * 60,
        0,
        100 * gib,
    ); // 100 GiB × 672 h → 3.00
    let rated = rate_lake(&lake, &[("s", "vps-672")], "2026-02", Layout::ONE_FILE)
        .await
        .expect("rate");
    let mut amounts = rated.amounts("s", "storage");
    amounts.sort();
    assert_eq!(amounts, vec![dec("0.01"), dec("3.00")]);
}

#[tokio::test]
async fn h1_cap_rounding_up_and_h7_ips() {
    let mut lake = Lake::default();
    lake.span(
        &server("h", "full", "cx22"),
        Running,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    ) // 745 × 0.006 = 4.47 → cap 3.79
    .span(
        &server("h", "hour", "cx22"),
        Stopped,
        "2026-10-02T10:00:00Z",
        60,
        0,
        0,
    ) // 1 h, even stopped (H2)
    .span(
        &server("h", "ninety", "cx22"),
        Running,
        "2026-10-03T10:20:00Z",
        90,
        0,
        0,
    ) // 1.5 h → 2 h
    .span(
        &server("h", "minute", "cx22"),
        Running,
        "2026-10-04T10:20:00Z",
        1,
        0,
        0,
    ); // 1 minute → 1 h
    let ip = |id, sku| Resource {
        kind: ResourceKind::Ip,
        ..server("h", id, sku)
    };
    lake.span(
        &ip("v4", "primary-ipv4"),
        Active,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    ) // 0.596 → cap 0.50
    .span(
        &ip("v6", "primary-ipv6"),
        Active,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    ); // free: no line
    let rated = rate_lake(
        &lake,
        &[("h", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    let mut servers = rated.amounts("h", "CX22");
    servers.sort();
    assert_eq!(
        servers,
        vec![dec("0.006"), dec("0.006"), dec("0.012"), dec("3.79")]
    );
    assert_eq!(rated.amounts("h", "Primary IPv4"), vec![dec("0.50")]);
    assert!(
        rated.amounts("h", "IPv6").is_empty(),
        "IPv6 never appears on the invoice"
    );
    assert_eq!(rated.total("h"), dec("4.31")); // 3.79 + 0.024 + 0.50 = 4.314
}

#[tokio::test]
async fn h4_every_started_tb_beyond_the_allowance() {
    // 20.8 TB out with 20 TB included → 1 TB charged at 1.00.
    let minutes = 745 * 60;
    let mut lake = Lake::default();
    lake.span(
        &server("t", "busy", "cx32"),
        Running,
        "2026-09-30T22:00:00Z",
        minutes,
        20_800_000_000_000 / minutes as u64,
        0,
    );
    let rated = rate_lake(
        &lake,
        &[("t", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("t", "traffic"), vec![dec("1.00")]);
    assert_eq!(rated.total("t"), dec("7.80")); // 6.80 cap + 1.00
}

#[tokio::test]
async fn h3_floating_ip_and_h5_snapshot_for_half_a_month() {
    let mut lake = Lake::default();
    let ip = Resource {
        kind: ResourceKind::Ip,
        ..server("f", "fip", "floating-ipv4")
    };
    lake.span(&ip, Active, "2026-02-14T23:00:00Z", 336 * 60, 0, 0); // 336/672 × 3.00 = 1.50
    let snapshot = Resource {
        kind: ResourceKind::Snapshot,
        ..server("f", "snap", "snapshot")
    };
    lake.span(
        &snapshot,
        Active,
        "2026-02-14T23:00:00Z",
        336 * 60,
        0,
        50_000_000_000,
    ); // 50 GB × 0.0119 × 1/2
    let rated = rate_lake(
        &lake,
        &[("f", "hetzner-cloud")],
        "2026-02",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert_eq!(rated.amounts("f", "Floating"), vec![dec("1.5")]);
    assert_eq!(rated.amounts("f", "storage"), vec![dec("0.2975")]);
}

#[tokio::test]
async fn t1_t3_t4_started_hours_at_state_factors_per_gpu() {
    let power = Resource {
        kind: ResourceKind::GpuServer,
        gpus: 4,
        ..server("p", "power", "powerai-4090")
    };
    let mut lake = Lake::default();
    // Hour 1 running; hour 2 stopped then running (running counts); hour 3 stopped (35 %);
    // hour 4 stopped 20 min then frozen (stopped counts, 35 %); hour 5 frozen (10 %).
    lake.span(&power, Running, "2026-10-01T00:00:00Z", 60, 0, 0)
        .span(&power, Stopped, "2026-10-01T01:00:00Z", 30, 0, 0)
        .span(&power, Running, "2026-10-01T01:30:00Z", 30, 0, 0)
        .span(&power, Stopped, "2026-10-01T02:00:00Z", 80, 0, 0)
        .span(&power, Frozen, "2026-10-01T03:20:00Z", 100, 0, 0);
    // 1 + 1 + 0.35 + 0.35 + 0.10 = 2.80 h × 4 GPUs × 0.65 = 7.28
    let big = Resource {
        kind: ResourceKind::GpuServer,
        gpus: 8,
        ..server("p", "big", "infinityai-a100")
    };
    // 96 h × 7.67 (explicit 8-GPU price), and 41.5 TB out with 8 × 5 TB included: 1.5 TB × 7.
    let minutes = 96 * 60;
    lake.span(
        &big,
        Running,
        "2026-10-10T00:00:00Z",
        minutes,
        41_500_000_000_000 / minutes as u64,
        0,
    );
    let rated = rate_lake(&lake, &[("p", "trooper-ai")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("p", "powerai"), vec![dec("7.28")]);
    assert_eq!(
        rated.amounts("p", "infinityai A100 GPU server: gpu"),
        vec![dec("736.32")]
    );
    let traffic = rated.amounts("p", "traffic");
    let used = Decimal::from(41_500_000_000_000 / minutes as u64 * minutes as u64);
    assert_eq!(
        traffic,
        vec![(used - dec("40000000000000")) * dec("7") / dec("1000000000000")]
    );
}

#[tokio::test]
async fn dst_months_have_745_and_743_hours() {
    let mut lake = Lake::default();
    lake.span(
        &server("d", "oct", "c4m8"),
        Running,
        "2026-09-30T22:00:00Z",
        745 * 60,
        0,
        0,
    )
    .span(
        &server("d", "mar", "c4m8"),
        Running,
        "2026-02-28T23:00:00Z",
        743 * 60,
        0,
        0,
    );
    let october = rate_lake(&lake, &[("d", "centron")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(october.total("d"), dec("59.60")); // 745 × 0.08
    let march = rate_lake(&lake, &[("d", "centron")], "2026-03", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(march.total("d"), dec("59.44")); // 743 × 0.08
}

#[tokio::test]
async fn zero_usage_gives_no_invoice_and_usage_without_contract_is_an_error() {
    let mut lake = Lake::default();
    lake.span(
        &server("known", "a", "cx22"),
        Running,
        "2026-10-02T00:00:00Z",
        60,
        0,
        0,
    );
    let rated = rate_lake(
        &lake,
        &[("known", "hetzner-cloud"), ("idle", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .expect("rate");
    assert!(rated.invoices.contains_key("known") && !rated.invoices.contains_key("idle"));
    lake.span(
        &server("stranger", "b", "cx22"),
        Running,
        "2026-10-02T00:00:00Z",
        60,
        0,
        0,
    );
    let error = rate_lake(
        &lake,
        &[("known", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .err()
    .expect("no contract");
    assert!(error.to_string().contains("stranger"), "{error}");
}

#[tokio::test]
async fn an_unknown_sku_is_an_error_not_a_free_resource() {
    let mut lake = Lake::default();
    lake.span(
        &server("u", "a", "cx99"),
        Running,
        "2026-10-02T00:00:00Z",
        60,
        0,
        0,
    );
    let error = rate_lake(
        &lake,
        &[("u", "hetzner-cloud")],
        "2026-10",
        Layout::ONE_FILE,
    )
    .await
    .err()
    .expect("unknown sku");
    assert!(error.to_string().contains("cx99"), "{error}");
}

#[tokio::test]
async fn c2_connected_services_bill_while_their_vm_is_stopped_and_c7_add_ons_monthly() {
    // A c2m4 VM runs 2 h, then is stopped for 10 h: only the 2 running hours are billed
    // (2 × 0.04 = 0.08). Its HA feature and cProtect are connected services, active all
    // 12 h: 12 × 0.005 = 0.06 and 12 × 0.01 = 0.12. An extra IPv4 that exists for one
    // minute is a monthly add-on: 2.00 in full. 0.08 + 0.06 + 0.12 + 2.00 = 2.26.
    let vm = Resource {
        labels: r#"{"os":"linux"}"#,
        ..server("c", "vm", "c2m4")
    };
    let mut lake = Lake::default();
    lake.span(&vm, Running, "2026-10-05T08:00:00Z", 120, 0, 0)
        .span(&vm, Stopped, "2026-10-05T10:00:00Z", 600, 0, 0);
    for (id, sku) in [("ha", "ha-feature"), ("protect", "cprotect")] {
        lake.span(
            &crate::lake::of_kind(ResourceKind::Addon, "c", id, sku),
            Active,
            "2026-10-05T08:00:00Z",
            720,
            0,
            0,
        );
    }
    lake.span(
        &crate::lake::of_kind(ResourceKind::Ip, "c", "ip", "extra-ipv4"),
        Active,
        "2026-10-20T12:00:00Z",
        1,
        0,
        0,
    );
    let rated = rate_lake(&lake, &[("c", "centron")], "2026-10", Layout::ONE_FILE)
        .await
        .expect("rate");
    assert_eq!(rated.amounts("c", "flavor"), vec![dec("0.08")]);
    assert_eq!(rated.amounts("c", "HA feature"), vec![dec("0.06")]);
    assert_eq!(rated.amounts("c", "cProtect"), vec![dec("0.12")]);
    assert_eq!(rated.amounts("c", "Extra IPv4"), vec![dec("2")]);
    assert_eq!(rated.total("c"), dec("2.26"));
}

#[tokio::test]
async fn a_plan_change_within_the_month_prices_each_plan_with_its_own_cap() {
    // cx22 for 400 h, then resized to cx32 for the rest of October (345 h): 400 × 0.006 =
    // 2.40 (under the 3.79 cap) and 345 × 0.0109 = 3.7605 (under 6.80): 6.1605 → 6.16.
    let mut lake = Lake::default();
    lake.span(
        &server("h", "web", "cx22"),
        Running,
        "2026-09-30T22:00:00Z",
        400 * 60,
        0,
        0,
    )
    .span(
        &server("h", "web", "cx32"),
        Running,
        "2026-10-17T14:00:00Z",
        345 * 60,
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
    assert_eq!(rated.amounts("h", "CX22"), vec![dec("2.4")]);
    assert_eq!(rated.amounts("h", "CX32"), vec![dec("3.7605")]);
    assert_eq!(rated.total("h"), dec("6.16"));
}
