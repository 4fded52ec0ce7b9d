//! Small hand-made lakes: resources spelled out minute by minute, written as rollup
//! Parquet files (optionally split over files and rows), then rated with the reference
//! tariffs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use parquet::arrow::ArrowWriter;
use rust_decimal::Decimal;
use serde_json::Value;
use tally_model::rollup::{rows_to_batch, to_file_batch};
use tally_model::{Hour, Minute, ResourceKind, ResourceState, RollupKey, RollupMeters, RollupRow};
use tally_rating::{RateReport, RateRequest, rate};

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("decimal")
}

pub const GIB: u64 = 1 << 30;
pub const TB: u64 = 1_000_000_000_000;

/// A resource whose rows the tests build minute by minute.
#[derive(Clone, Debug)]
pub struct Resource {
    pub account: &'static str,
    pub id: &'static str,
    pub kind: ResourceKind,
    pub sku: &'static str,
    pub zone: &'static str,
    pub gpus: u16,
    pub labels: &'static str,
}

pub fn server(account: &'static str, id: &'static str, sku: &'static str) -> Resource {
    Resource {
        account,
        id,
        kind: ResourceKind::Server,
        sku,
        zone: "z1",
        gpus: 0,
        labels: "",
    }
}

pub fn of_kind(
    kind: ResourceKind,
    account: &'static str,
    id: &'static str,
    sku: &'static str,
) -> Resource {
    Resource {
        kind,
        ..server(account, id, sku)
    }
}

pub fn gpu_server(
    account: &'static str,
    id: &'static str,
    sku: &'static str,
    gpus: u16,
) -> Resource {
    Resource {
        kind: ResourceKind::GpuServer,
        gpus,
        ..server(account, id, sku)
    }
}

pub fn with_os(resource: Resource, os: &'static str) -> Resource {
    let labels = match os {
        "linux" => r#"{"os":"linux"}"#,
        "windows" => r#"{"os":"windows"}"#,
        other => panic!("no label text for os {other}"),
    };
    Resource { labels, ..resource }
}

/// How rows are laid out in files.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Each hour's rows are dealt round-robin over this many files.
    pub files_per_hour: usize,
    /// Each row is split into two rows of the same key (minutes dealt alternately,
    /// counters split in proportion), as restated late data would be.
    pub split_rows: bool,
    /// Each file is also left behind as the generation before it (`-g0000` next to the
    /// current `-g0001`), as a crash between a restatement's manifest update and the old
    /// file's removal leaves it.
    pub superseded: bool,
}

impl Layout {
    pub const ONE_FILE: Layout = Layout {
        files_per_hour: 1,
        split_rows: false,
        superseded: false,
    };
}

/// Rows of a lake under construction, merged per rollup key.
#[derive(Clone, Debug, Default)]
pub struct Lake {
    rows: BTreeMap<RollupKey, RollupMeters>,
    /// Minutes taken per (resource, hour), over all of its rows.
    taken: BTreeMap<(String, Hour), u64>,
}

impl Lake {
    /// `resource` was in `state` for `minutes` minutes from `start` (UTC), sending
    /// `bytes_per_minute` out externally and occupying `size` bytes.
    pub fn span(
        &mut self,
        resource: &Resource,
        state: ResourceState,
        start: &str,
        minutes: i64,
        bytes_per_minute: u64,
        size: u64,
    ) -> &mut Self {
        let start: Minute = start.parse().expect("minute");
        self.span_at(resource, state, start, minutes, bytes_per_minute, size)
    }

    /// [`Lake::span`] from a [`Minute`].
    pub fn span_at(
        &mut self,
        resource: &Resource,
        state: ResourceState,
        start: Minute,
        minutes: i64,
        bytes_per_minute: u64,
        size: u64,
    ) -> &mut Self {
        for offset in 0..minutes {
            let minute = start.plus(offset);
            let key = RollupKey {
                account_id: resource.account.into(),
                resource_id: resource.id.into(),
                hour: minute.hour(),
                kind: resource.kind,
                sku: resource.sku.into(),
                zone: resource.zone.into(),
                gpus: resource.gpus,
                labels: resource.labels.into(),
            };
            let bit = 1u64 << minute.minute_of_hour();
            let taken = self
                .taken
                .entry((key.resource_id.clone(), key.hour))
                .or_default();
            assert_eq!(*taken & bit, 0, "{} {minute} twice", resource.id);
            *taken |= bit;
            let meters = self.rows.entry(key).or_default();
            meters.state_masks[state.index()] |= bit;
            meters.out_external_bytes += bytes_per_minute;
            meters.out_internal_bytes += bytes_per_minute / 2;
            meters.in_bytes += bytes_per_minute * 3;
            meters.size_byte_minutes += size;
            meters.max_size_bytes = meters.max_size_bytes.max(size);
            meters.sample_count += 1;
        }
        self
    }

    pub fn rows(&self) -> Vec<RollupRow> {
        self.rows
            .iter()
            .map(|(key, meters)| RollupRow {
                key: key.clone(),
                meters: *meters,
            })
            .collect()
    }

    /// Writes `rollups/hour=…/*.parquet` under `root`.
    pub fn write(&self, root: &Path, layout: Layout) {
        let mut by_hour: BTreeMap<Hour, Vec<RollupRow>> = BTreeMap::new();
        for row in self.rows() {
            let parts = if layout.split_rows {
                split(&row)
            } else {
                vec![row]
            };
            for part in parts {
                by_hour.entry(part.key.hour).or_default().push(part);
            }
        }
        let directory = root.join("rollups");
        std::fs::create_dir_all(&directory).expect("mkdir rollups");
        for (hour, rows) in by_hour {
            let directory = directory.join(format!("hour={}", hour.partition_value()));
            std::fs::create_dir_all(&directory).expect("mkdir");
            for file in 0..layout.files_per_hour {
                let part: Vec<RollupRow> = rows
                    .iter()
                    .skip(file)
                    .step_by(layout.files_per_hour)
                    .cloned()
                    .collect();
                if part.is_empty() {
                    continue;
                }
                // Every other hour as the aggregator writes files (the few-valued texts
                // declared as dictionaries), the others as files written before it did:
                // every month rated here mixes both.
                let batch = rows_to_batch(&part).expect("batch");
                let batch = if hour.unix_hours() % 2 == 0 {
                    to_file_batch(&batch).expect("file batch")
                } else {
                    batch
                };
                let generations: &[u32] = if layout.superseded { &[0, 1] } else { &[0] };
                for generation in generations {
                    let name = format!("test-p{file:03}-g{generation:04}.parquet");
                    let handle = std::fs::File::create(directory.join(name)).expect("create");
                    let mut writer =
                        ArrowWriter::try_new(handle, batch.schema(), None).expect("writer");
                    writer.write(&batch).expect("write");
                    writer.close().expect("close");
                }
            }
        }
    }
}

/// A row as two rows of the same key: minutes dealt alternately, counters in proportion.
fn split(row: &RollupRow) -> Vec<RollupRow> {
    let all = row.meters.all_minutes();
    let count = all.count_ones();
    if count < 2 {
        return vec![row.clone()];
    }
    let mut first_mask = 0u64;
    for (position, bit) in (0..60).filter(|bit| all & (1 << bit) != 0).enumerate() {
        if position % 2 == 0 {
            first_mask |= 1 << bit;
        }
    }
    let first_count = u64::from(first_mask.count_ones());
    let share = |total: u64| total / u64::from(count) * first_count;
    let mut first = row.meters;
    let mut second = row.meters;
    for state in ResourceState::ALL {
        first.state_masks[state.index()] &= first_mask;
        second.state_masks[state.index()] &= !first_mask;
    }
    for (a, b, total) in [
        (
            &mut first.out_external_bytes,
            &mut second.out_external_bytes,
            row.meters.out_external_bytes,
        ),
        (
            &mut first.out_internal_bytes,
            &mut second.out_internal_bytes,
            row.meters.out_internal_bytes,
        ),
        (
            &mut first.in_bytes,
            &mut second.in_bytes,
            row.meters.in_bytes,
        ),
        (
            &mut first.size_byte_minutes,
            &mut second.size_byte_minutes,
            row.meters.size_byte_minutes,
        ),
    ] {
        *a = share(total);
        *b = total - *a;
    }
    first.sample_count = first_mask.count_ones();
    second.sample_count = row.meters.sample_count - first.sample_count;
    vec![
        RollupRow {
            key: row.key.clone(),
            meters: first,
        },
        RollupRow {
            key: row.key.clone(),
            meters: second,
        },
    ]
}

/// A rated lake: its directory, the report and the invoices as JSON.
pub struct Rated {
    pub root: tempfile::TempDir,
    pub report: RateReport,
    pub invoices: BTreeMap<String, Value>,
}

impl Rated {
    pub fn invoice(&self, account: &str) -> &Value {
        self.invoices
            .get(account)
            .unwrap_or_else(|| panic!("no invoice for {account}: {:?}", self.invoices.keys()))
    }

    pub fn total(&self, account: &str) -> Decimal {
        dec(self.invoice(account)["total"].as_str().expect("total"))
    }

    pub fn lines(&self, account: &str) -> Vec<Value> {
        self.invoice(account)["lines"]
            .as_array()
            .expect("lines")
            .clone()
    }

    /// The lines of an account whose description contains `text`.
    pub fn lines_with(&self, account: &str, text: &str) -> Vec<Value> {
        self.lines(account)
            .into_iter()
            .filter(|line| {
                line["description"]
                    .as_str()
                    .is_some_and(|description| description.contains(text))
            })
            .collect()
    }

    /// The full-precision amounts of an account's lines whose description contains `text`.
    pub fn amounts(&self, account: &str, text: &str) -> Vec<Decimal> {
        self.lines_with(account, text)
            .iter()
            .map(|line| dec(line["amount"].as_str().expect("amount")))
            .collect()
    }

    pub fn line_items_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.report.line_items_file).expect("line items")
    }

    /// Every file the run wrote, with its bytes.
    pub fn written(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.report
            .written
            .iter()
            .map(|path| {
                let relative = Path::new(path)
                    .strip_prefix(self.root.path())
                    .expect("under root");
                (
                    relative.to_owned(),
                    std::fs::read(path).expect("written file"),
                )
            })
            .collect()
    }
}

/// Writes the reference tariffs under `root/tariffs`.
pub fn reference_tariff_files(root: &Path) -> Vec<PathBuf> {
    let directory = root.join("tariffs");
    std::fs::create_dir_all(&directory).expect("mkdir");
    tally_rating::reference_tariffs()
        .into_iter()
        .map(|(name, text)| {
            let path = directory.join(name);
            std::fs::write(&path, text).expect("tariff");
            path
        })
        .collect()
}

/// Rates `lake` for `month` with the reference tariffs and `(account, tariff)` contracts.
pub async fn rate_lake(
    lake: &Lake,
    contracts: &[(&str, &str)],
    month: &str,
    layout: Layout,
) -> tally_rating::Result<Rated> {
    let accounts: Vec<Value> = contracts
        .iter()
        .map(|(account, tariff)| serde_json::json!({ "account_id": account, "tariff_id": tariff }))
        .collect();
    rate_with_contracts(
        lake,
        serde_json::json!({ "accounts": accounts }),
        month,
        layout,
    )
    .await
}

/// Rates `lake` for `month` with the reference tariffs and a contracts document.
pub async fn rate_with_contracts(
    lake: &Lake,
    contracts: Value,
    month: &str,
    layout: Layout,
) -> tally_rating::Result<Rated> {
    let root = tempfile::tempdir().expect("tempdir");
    lake.write(root.path(), layout);
    let tariffs = reference_tariff_files(root.path());
    let contracts_path = root.path().join("contracts.json");
    std::fs::write(&contracts_path, contracts.to_string()).expect("contracts");
    let report = rate(&RateRequest {
        lake: root.path().into(),
        month: month.to_owned(),
        tariffs,
        contracts: contracts_path,
        out: root.path().into(),
        issue: false,
        explain: None,
        engine: tally_rating::Engine::InProcess,
    })
    .await?;
    let invoices = tally_rating::write::read_invoices(Path::new(&report.invoices_dir))?;
    assert_eq!(
        invoices.keys().collect::<Vec<_>>(),
        report
            .invoices
            .iter()
            .map(|summary| &summary.account_id)
            .collect::<Vec<_>>(),
        "one invoice per account with a summary, by account id"
    );
    Ok(Rated {
        root,
        report,
        invoices,
    })
}
