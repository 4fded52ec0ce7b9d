//! `tally sql` on the demo's lake: the README's example queries, run from the README,
//! answer what the lake's files say when read another way; every output format reads back;
//! a superseded rollup generation is not counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, Float64Type, Int64Type};
use rust_decimal::Decimal;
use tally_model::ResourceKind;
use tally_rating::sql::{self, Format};

/// The `sql` blocks of the README's analysts section, in order.
fn readme_queries() -> anyhow::Result<Vec<String>> {
    let readme = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../README.md");
    let text = std::fs::read_to_string(readme)?;
    let section = text
        .split("## Analysts")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .ok_or_else(|| anyhow::anyhow!("no analysts section in the README"))?;
    Ok(section
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|query| query.trim().trim_end_matches(';').to_owned())
        .collect())
}

/// Every rollup row of the lake, read with the aggregator's own reader.
fn rows(lake: &Path) -> anyhow::Result<Vec<tally_model::RollupRow>> {
    let mut rows = Vec::new();
    for hour in std::fs::read_dir(lake.join("rollups"))? {
        for file in std::fs::read_dir(hour?.path())? {
            rows.extend(tally_aggregator::write::read_rows(&file?.path())?);
        }
    }
    Ok(rows)
}

fn texts(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|batch| {
            let array = arrow::compute::cast(
                batch.column_by_name(column).expect("column"),
                &arrow::datatypes::DataType::Utf8,
            )
            .expect("cast");
            (0..array.len())
                .map(|row| array.as_string::<i32>().value(row).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A column's values, of Arrow primitive type `T`.
fn values<T: arrow::datatypes::ArrowPrimitiveType>(
    batches: &[RecordBatch],
    column: &str,
) -> Vec<T::Native> {
    batches
        .iter()
        .flat_map(|batch| {
            batch
                .column_by_name(column)
                .expect("column")
                .as_primitive::<T>()
                .values()
                .to_vec()
        })
        .collect()
}

fn floats(batches: &[RecordBatch], column: &str) -> Vec<f64> {
    values::<Float64Type>(batches, column)
}

fn ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    values::<Int64Type>(batches, column)
}

fn decimals(batches: &[RecordBatch], column: &str) -> Vec<Decimal> {
    batches
        .iter()
        .flat_map(|batch| {
            let array = batch
                .column_by_name(column)
                .expect("column")
                .as_primitive::<Decimal128Type>();
            (0..array.len())
                .map(|row| array.value_as_string(row).parse().expect("decimal"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_queries_answer_on_the_demo_lake() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let mut config = tally_demo::DemoConfig::new(out.path());
    config.month = Some("2026-02".to_owned());
    config.scale = 1;
    let demo = tally_demo::run(&config).await?;
    let lake = demo.lake.clone();
    let queries = readme_queries()?;
    assert_eq!(queries.len(), 5, "the README's five example queries");
    let all_rows = rows(&lake)?;

    // 1. GPU hours by account: running minutes × GPUs / 60 of the February hours.
    let mut gpu_minutes: BTreeMap<String, u64> = BTreeMap::new();
    for row in &all_rows {
        if row.key.kind == ResourceKind::GpuServer
            && row.key.hour.partition_value().as_str() >= "2026-02-01"
        {
            *gpu_minutes.entry(row.key.account_id.clone()).or_default() +=
                u64::from(row.meters.state_masks[0].count_ones()) * u64::from(row.key.gpus);
        }
    }
    let batches = sql::query(&lake.as_path().into(), &queries[0]).await?;
    let accounts = texts(&batches, "account_id");
    let hours = floats(&batches, "gpu_hours");
    assert_eq!(accounts.len(), gpu_minutes.len().min(10));
    let top = gpu_minutes
        .iter()
        .max_by_key(|(_, minutes)| **minutes)
        .expect("gpu accounts");
    assert_eq!(&accounts[0], top.0);
    for (account, hours) in accounts.iter().zip(&hours) {
        assert!(
            close(*hours, gpu_minutes[account] as f64 / 60.0),
            "{account}: {hours}"
        );
    }
    assert!(
        hours.windows(2).all(|pair| pair[0] >= pair[1]),
        "sorted: {hours:?}"
    );

    // 2. Egress by zone.
    let mut egress: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
    for row in &all_rows {
        let zone = egress.entry(row.key.zone.clone()).or_default();
        zone.0 += row.meters.out_external_bytes;
        zone.1.insert(row.key.resource_id.clone());
    }
    let batches = sql::query(&lake.as_path().into(), &queries[1]).await?;
    let zones = texts(&batches, "zone");
    assert_eq!(
        zones.iter().cloned().collect::<BTreeSet<_>>(),
        egress.keys().cloned().collect()
    );
    for ((zone, tb), resources) in zones
        .iter()
        .zip(floats(&batches, "egress_tb"))
        .zip(ints(&batches, "resources"))
    {
        assert!(close(tb, egress[zone].0 as f64 / 1e12), "{zone}: {tb}");
        assert_eq!(resources as usize, egress[zone].1.len(), "{zone}");
    }

    // 4. Cost by account = each invoice's subtotal; 5. the invoices as rated.
    let batches = sql::query(&lake.as_path().into(), &queries[3]).await?;
    let costs: BTreeMap<String, Decimal> = texts(&batches, "BillingAccountId")
        .into_iter()
        .zip(decimals(&batches, "cost"))
        .collect();
    assert_eq!(costs.len(), demo.rating.invoices.len());
    let batches = sql::query(&lake.as_path().into(), &queries[4]).await?;
    let due: BTreeMap<String, Decimal> = texts(&batches, "account_id")
        .into_iter()
        .zip(decimals(&batches, "amount_due"))
        .collect();
    let subtotals: BTreeMap<String, Decimal> = texts(&batches, "account_id")
        .into_iter()
        .zip(decimals(&batches, "subtotal"))
        .collect();
    for invoice in &demo.rating.invoices {
        assert_eq!(due[&invoice.account_id], invoice.amount_due);
        assert_eq!(costs[&invoice.account_id], subtotals[&invoice.account_id]);
    }

    // Every format reads back as the table it was written from.
    let written = out.path().join("result");
    let table = sql::query(&lake.as_path().into(), &queries[0]).await?;
    let count: usize = table.iter().map(RecordBatch::num_rows).sum();
    for format in [Format::Csv, Format::Json, Format::Parquet] {
        let mut file = std::fs::File::create(&written)?;
        sql::write(&table, format, &mut file)?;
        let read: Vec<String> = match format {
            Format::Csv => std::fs::read_to_string(&written)?
                .lines()
                .skip(1)
                .map(|line| line.split(',').next().unwrap_or_default().to_owned())
                .collect(),
            Format::Json => std::fs::read_to_string(&written)?
                .lines()
                .map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).expect("json");
                    value["account_id"].as_str().unwrap_or_default().to_owned()
                })
                .collect(),
            _ => {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        std::fs::File::open(&written)?,
                    )?
                    .build()?;
                let batches = reader.collect::<Result<Vec<_>, _>>()?;
                assert_eq!(floats(&batches, "gpu_hours"), floats(&table, "gpu_hours"));
                texts(&batches, "account_id")
            }
        };
        assert_eq!(read.len(), count, "{format:?}");
        assert_eq!(read, texts(&table, "account_id"), "{format:?}");
    }

    // A superseded generation left next to its restatement is not counted twice.
    let samples = "SELECT sum(sample_count) AS samples FROM rollups WHERE hour >= '2026-02-11'";
    let before = sql::query(&lake.as_path().into(), samples).await?;
    let hour = lake.join("rollups/hour=2026-02-11T12");
    let file = std::fs::read_dir(&hour)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no file in {}", hour.display()))??
        .path();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::copy(&file, hour.join(name.replace("-g0000.", "-g0001.")))?;
    let after = sql::query(&lake.as_path().into(), samples).await?;
    assert_eq!(texts(&after, "samples"), texts(&before, "samples"));

    // 3. Coverage gaps: none in the demo's lake; an hour file lost shows up.
    assert_eq!(
        sql::query(&lake.as_path().into(), &queries[2])
            .await?
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        0
    );
    let lost_hour = lake.join("rollups/hour=2026-02-10T12");
    let lost = std::fs::read_dir(&lost_hour)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no file in {}", lost_hour.display()))??
        .path();
    let lost_resources: BTreeSet<String> = tally_aggregator::write::read_rows(&lost)?
        .into_iter()
        .map(|row| row.key.resource_id)
        .collect();
    let mut lifetimes: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for row in &all_rows {
        let hour = row.key.hour.partition_value();
        let life = lifetimes
            .entry(&row.key.resource_id)
            .or_insert_with(|| (hour.clone(), hour.clone()));
        life.0 = life.0.clone().min(hour.clone());
        life.1 = life.1.clone().max(hour);
    }
    let expected: BTreeSet<String> = lost_resources
        .into_iter()
        .filter(|resource| {
            let (first, last) = &lifetimes[resource.as_str()];
            first.as_str() < "2026-02-10T12" && "2026-02-10T12" < last.as_str()
        })
        .collect();
    assert!(!expected.is_empty());
    std::fs::remove_file(&lost)?;
    let gaps = sql::query(&lake.as_path().into(), &queries[2]).await?;
    assert_eq!(
        texts(&gaps, "resource_id")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert!(
        ints(&gaps, "hours_missing")
            .iter()
            .all(|missing| *missing == 1)
    );
    Ok(())
}
