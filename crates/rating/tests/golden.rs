//! Golden tests: small hand-made lakes rated with the reference tariffs, against amounts
//! computed by hand from BILLING.md (each test names its rule and shows the arithmetic).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use parquet::arrow::ArrowWriter;
use rust_decimal::Decimal;
use serde_json::Value;
use tally_model::rollup::rows_to_batch;
use tally_model::{Hour, Minute, ResourceKind, ResourceState, RollupKey, RollupMeters, RollupRow};
use tally_rating::{RateRequest, rate};

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("decimal")
}

/// A resource whose rows the tests build minute by minute.
#[derive(Clone)]
struct Resource {
    account: &'static str,
    id: &'static str,
    kind: ResourceKind,
    sku: &'static str,
    gpus: u16,
    labels: &'static str,
}

fn server(account: &'static str, id: &'static str, sku: &'static str) -> Resource {
    Resource {
        account,
        id,
        kind: ResourceKind::Server,
        sku,
        gpus: 0,
        labels: "",
    }
}

/// Rows of a lake under construction, merged per (resource, hour).
#[derive(Default)]
struct Lake {
    rows: BTreeMap<RollupKey, RollupMeters>,
}

impl Lake {
    /// `resource` was in `state` for `minutes` minutes from `start`, sending `bytes_per_minute`.
    fn span(
        &mut self,
        resource: &Resource,
        state: ResourceState,
        start: &str,
        minutes: i64,
        bytes_per_minute: u64,
        size: u64,
    ) -> &mut Self {
        let start: Minute = start.parse().expect("minute");
        for offset in 0..minutes {
            let minute = start.plus(offset);
            let key = RollupKey {
                account_id: resource.account.into(),
                resource_id: resource.id.into(),
                hour: minute.hour(),
                kind: resource.kind,
                sku: resource.sku.into(),
                zone: "z1".into(),
                gpus: resource.gpus,
                labels: resource.labels.into(),
            };
            let meters = self.rows.entry(key).or_default();
            let bit = 1u64 << minute.minute_of_hour();
            assert_eq!(
                meters.all_minutes() & bit,
                0,
                "{} {minute} twice",
                resource.id
            );
            meters.state_masks[state.index()] |= bit;
            meters.out_external_bytes += bytes_per_minute;
            meters.size_byte_minutes += size;
            meters.max_size_bytes = meters.max_size_bytes.max(size);
            meters.sample_count += 1;
        }
        self
    }

    fn rows(&self) -> Vec<RollupRow> {
        self.rows
            .iter()
            .map(|(key, meters)| RollupRow {
                key: key.clone(),
                meters: *meters,
            })
            .collect()
    }

    /// Writes the rows, each hour's rows dealt round-robin over `files_per_hour` files.
    fn write(&self, root: &Path, files_per_hour: usize) {
        let mut by_hour: BTreeMap<Hour, Vec<RollupRow>> = BTreeMap::new();
        for row in self.rows() {
            by_hour.entry(row.key.hour).or_default().push(row);
        }
        for (hour, rows) in by_hour {
            let directory = root
                .join("rollups")
                .join(format!("hour={}", hour.partition_value()));
            std::fs::create_dir_all(&directory).expect("mkdir");
            for file in 0..files_per_hour {
                let part: Vec<RollupRow> = rows
                    .iter()
                    .skip(file)
                    .step_by(files_per_hour)
                    .cloned()
                    .collect();
                if part.is_empty() {
                    continue;
                }
                let batch = rows_to_batch(&part).expect("batch");
                let handle =
                    std::fs::File::create(directory.join(format!("test-p{file:03}-g0000.parquet")))
                        .expect("create");
                let mut writer =
                    ArrowWriter::try_new(handle, batch.schema(), None).expect("writer");
                writer.write(&batch).expect("write");
                writer.close().expect("close");
            }
        }
    }
}

struct Rated {
    root: tempfile::TempDir,
    invoices: BTreeMap<String, Value>,
}

impl Rated {
    fn invoice(&self, account: &str) -> &Value {
        self.invoices
            .get(account)
            .unwrap_or_else(|| panic!("no invoice for {account}: {:?}", self.invoices.keys()))
    }

    fn total(&self, account: &str) -> Decimal {
        dec(self.invoice(account)["total"].as_str().expect("total"))
    }

    /// The full-precision amounts of an account's lines whose description contains `text`.
    fn amounts(&self, account: &str, text: &str) -> Vec<Decimal> {
        self.invoice(account)["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .filter(|line| {
                line["description"]
                    .as_str()
                    .is_some_and(|d| d.contains(text))
            })
            .map(|line| dec(line["amount"].as_str().expect("amount")))
            .collect()
    }

    fn line_items_bytes(&self, month: &str) -> Vec<u8> {
        std::fs::read(
            self.root
                .path()
                .join(format!("line_items/month={month}/line_items.parquet")),
        )
        .expect("line items")
    }
}

async fn rate_lake(
    lake: &Lake,
    contracts: &[(&str, &str)],
    month: &str,
    files_per_hour: usize,
) -> tally_rating::Result<Rated> {
    let root = tempfile::tempdir().expect("tempdir");
    lake.write(root.path(), files_per_hour);
    let tariff_dir = root.path().join("tariffs");
    std::fs::create_dir_all(&tariff_dir).expect("mkdir");
    let mut tariffs = Vec::new();
    for (name, text) in tally_rating::reference_tariffs() {
        std::fs::write(tariff_dir.join(name), text).expect("tariff");
        tariffs.push(tariff_dir.join(name));
    }
    let accounts: Vec<Value> = contracts
        .iter()
        .map(|(account, tariff)| serde_json::json!({ "account_id": account, "tariff_id": tariff }))
        .collect();
    let contracts_path = root.path().join("contracts.json");
    std::fs::write(
        &contracts_path,
        serde_json::json!({ "accounts": accounts }).to_string(),
    )
    .expect("contracts");
    let report = rate(&RateRequest {
        lake: root.path().to_owned(),
        month: month.to_owned(),
        tariffs,
        contracts: contracts_path,
        out: root.path().to_owned(),
    })
    .await?;
    let mut invoices = BTreeMap::new();
    for summary in &report.invoices {
        let path: PathBuf = report
            .invoices_dir
            .join(format!("{}.json", summary.account_id));
        let text = std::fs::read_to_string(&path).expect("invoice");
        invoices.insert(
            summary.account_id.clone(),
            serde_json::from_str(&text).expect("json"),
        );
    }
    Ok(Rated { root, invoices })
}

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
    let rated = rate_lake(&lake, &[("c", "centron")], "2026-10", 1)
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
    let rated = rate_lake(&lake, &[("g", "centron")], "2026-10", 1)
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
    let rated = rate_lake(&lake, &[("n", "vps-672"), ("m", "vps-672")], "2026-10", 1)
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
    let rated = rate_lake(&lake, &[("s", "vps-672")], "2026-02", 1)
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
    let rated = rate_lake(&lake, &[("h", "hetzner-cloud")], "2026-10", 1)
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
    let rated = rate_lake(&lake, &[("t", "hetzner-cloud")], "2026-10", 1)
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
    let rated = rate_lake(&lake, &[("f", "hetzner-cloud")], "2026-02", 1)
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
    let rated = rate_lake(&lake, &[("p", "trooper-ai")], "2026-10", 1)
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
    let october = rate_lake(&lake, &[("d", "centron")], "2026-10", 1)
        .await
        .expect("rate");
    assert_eq!(october.total("d"), dec("59.60")); // 745 × 0.08
    let march = rate_lake(&lake, &[("d", "centron")], "2026-03", 1)
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
        1,
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
    let error = rate_lake(&lake, &[("known", "hetzner-cloud")], "2026-10", 1)
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
    let error = rate_lake(&lake, &[("u", "hetzner-cloud")], "2026-10", 1)
        .await
        .err()
        .expect("unknown sku");
    assert!(error.to_string().contains("cx99"), "{error}");
}

#[tokio::test]
async fn rating_ignores_file_split_and_is_byte_identical() {
    let mut lake = Lake::default();
    for (index, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        lake.span(
            &server("x", id, "cx22"),
            Running,
            "2026-10-01T00:00:00Z",
            300 + 97 * index as i64,
            1_000_000,
            0,
        );
        let linux = Resource {
            labels: r#"{"os":"linux"}"#,
            ..server("y", id, "c2m4")
        };
        lake.span(
            &linux,
            Running,
            "2026-10-03T00:07:00Z",
            200 + 31 * index as i64,
            0,
            0,
        );
    }
    let contracts = [("x", "hetzner-cloud"), ("y", "centron")];
    let one = rate_lake(&lake, &contracts, "2026-10", 1)
        .await
        .expect("rate");
    let again = rate_lake(&lake, &contracts, "2026-10", 1)
        .await
        .expect("rate");
    let split = rate_lake(&lake, &contracts, "2026-10", 3)
        .await
        .expect("rate");
    assert_eq!(
        one.line_items_bytes("2026-10"),
        again.line_items_bytes("2026-10")
    );
    assert_eq!(
        one.line_items_bytes("2026-10"),
        split.line_items_bytes("2026-10")
    );
    assert_eq!(one.invoices, split.invoices);
}
