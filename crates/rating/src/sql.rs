//! `tally sql`: the lake's tables for analysts, on DataFusion.
//!
//! Tables (each registered only when the lake has it):
//! - `rollups`: the hourly rollups, hive column `hour` (`YYYY-MM-DDTHH`, UTC): a filter on it
//!   reads only those hour directories. Of each source partition's files only the current
//!   generation counts, as in rating: an hour where a crash left a superseded generation
//!   next to its restatement is read from its current files (a warning says so), so
//!   nothing is counted twice.
//! - `line_items`: FOCUS line items, hive column `month`; correction rounds (H8) are rows
//!   with `ChargeClass = 'Correction'`.
//! - `invoices`: one row per invoice (`invoices/month=M/invoices.jsonl`, and correction
//!   invoices under `corrections-NNN/`, named in the column `correction`).
//!
//! Samples are not archived in the lake, and dead letters go to the Kafka topic
//! `tally.deadletter` (not to the lake), so neither is a table here.
//!
//! `popcount(mask)` counts a minute mask's minutes. Identifiers keep their case (FOCUS
//! columns are CamelCase: `BilledCost`, no quotes needed).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, col, lit};
use rust_decimal::Decimal;
use tally_lake::Lake;
use tally_model::line_item::{DECIMAL_PRECISION, DECIMAL_SCALE, decimal_to_i128};
use tally_model::rollup::{PARTITION_KEY, ROLLUPS_DIR, rollup_arrow_schema};

pub use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::usage::{current_generation, popcount_udf, register_lake};
use crate::write::{INVOICES_JSONL, parse_invoices};

/// A session with the lake's tables registered and `popcount`.
pub async fn session(lake: &Lake) -> Result<SessionContext> {
    let config =
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let context = SessionContext::new_with_config(config);
    register_lake(&context, lake);
    context.register_udf(popcount_udf());
    if !lake.has_any(ROLLUPS_DIR)? {
        return Err(Error::NoLake(lake.to_string()));
    }
    register_rollups(&context, lake).await?;
    if lake.has_any("line_items")? {
        let options = ParquetReadOptions::default()
            .table_partition_cols(vec![("month".to_owned(), DataType::Utf8)]);
        context
            .register_parquet("line_items", lake.table_path("line_items/"), options)
            .await?;
    }
    if lake.has_any("invoices")? {
        let batch = invoices_batch(lake)?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        context.register_table("invoices", Arc::new(table))?;
    }
    Ok(context)
}

/// Runs one statement over the lake.
pub async fn query(lake: &Lake, statement: &str) -> Result<Vec<RecordBatch>> {
    let context = session(lake).await?;
    run(&context, statement).await
}

/// Runs one statement in a session.
pub async fn run(context: &SessionContext, statement: &str) -> Result<Vec<RecordBatch>> {
    let frame = context.sql(statement).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut batches = frame.collect().await?;
    // An empty result still has its columns: a table shows them, a CSV its header.
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// The tables of a session, sorted.
pub fn table_names(context: &SessionContext) -> Vec<String> {
    let mut names = context
        .catalog("datafusion")
        .and_then(|catalog| catalog.schema("public"))
        .map(|schema| schema.table_names())
        .unwrap_or_default();
    names.sort();
    names
}

async fn register_rollups(context: &SessionContext, lake: &Lake) -> Result<()> {
    let schema = rollup_arrow_schema();
    // The files of each hour directory, to find the hours where a crash left a superseded
    // generation next to its restatement.
    let mut hours: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for file in lake.list(ROLLUPS_DIR)? {
        let mut parts = file.split('/').skip(1);
        let (Some(directory), Some(_name), None) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(hour) = directory.strip_prefix(&format!("{PARTITION_KEY}=")) {
            hours.entry(hour.to_owned()).or_default().push(file.clone());
        }
    }
    // Those hours, with the files that count there.
    let repaired: Vec<(String, Vec<String>)> = hours
        .into_iter()
        .filter_map(|(hour, files)| {
            let found = current_generation(files);
            (found.superseded > 0).then_some((hour, found.files))
        })
        .collect();
    let options = ParquetReadOptions::default()
        .schema(&schema)
        .table_partition_cols(vec![(PARTITION_KEY.to_owned(), DataType::Utf8)]);
    let mut table = context
        .read_parquet(lake.table_path(&format!("{ROLLUPS_DIR}/")), options)
        .await?;
    if !repaired.is_empty() {
        tracing::warn!(
            hours = repaired.len(),
            "superseded rollup generations (a crash between a restatement and the old file's removal): those hours read their current files only"
        );
        // The directory as usual without those hours (still pruned by `hour`), plus each
        // of them from its current files.
        let hours = repaired.iter().map(|(hour, _)| lit(hour.clone())).collect();
        table = table.filter(col(PARTITION_KEY).in_list(hours, true))?;
        for (hour, files) in repaired {
            let paths: Vec<String> = files.iter().map(|file| lake.table_path(file)).collect();
            let current = context
                .read_parquet(paths, ParquetReadOptions::default().schema(&schema))
                .await?
                .with_column(PARTITION_KEY, lit(hour))?;
            table = table.union(current)?;
        }
    }
    context.register_table("rollups", table.into_view())?;
    Ok(())
}

/// One row per invoice in `invoices/month=M/invoices.jsonl` (and its `corrections-NNN/`).
fn invoices_batch(lake: &Lake) -> Result<RecordBatch> {
    let mut files: Vec<(String, Option<String>, String)> = Vec::new();
    for file in lake.list("invoices")? {
        let parts: Vec<&str> = file.split('/').skip(1).collect();
        let (month, correction, name) = match parts.as_slice() {
            [month, name] => (*month, None, *name),
            [month, round, name] if round.starts_with("corrections-") => {
                (*month, Some((*round).to_owned()), *name)
            }
            _ => continue,
        };
        let Some(month) = month.strip_prefix("month=") else {
            continue;
        };
        if name == INVOICES_JSONL {
            files.push((month.to_owned(), correction, file.clone()));
        }
    }
    files.sort();
    let mut rows = InvoiceRows::default();
    for (month, correction, file) in files {
        let location = lake.location(&file);
        let bytes = lake.get(&file)?.unwrap_or_default();
        for invoice in parse_invoices(&location, &bytes)? {
            rows.push(&month, correction.clone(), &location, &invoice)?;
        }
    }
    rows.batch()
}

/// The invoice columns, filled file by file.
#[derive(Default)]
struct InvoiceRows {
    month: Vec<String>,
    correction: Vec<Option<String>>,
    texts: [Vec<String>; 4],
    lines: Vec<i64>,
    amounts: [Vec<i128>; 6],
}

impl InvoiceRows {
    const TEXTS: [&'static str; 4] = ["account_id", "tariff_id", "tariff_version", "currency"];
    const AMOUNTS: [&'static str; 6] = [
        "subtotal",
        "total",
        "displayed_lines_sum",
        "rounding_difference",
        "credit_applied",
        "amount_due",
    ];

    fn push(
        &mut self,
        month: &str,
        correction: Option<String>,
        location: &str,
        invoice: &serde_json::Value,
    ) -> Result<()> {
        let bad = |detail: String| Error::Invoice {
            account_id: invoice["account_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            detail: format!("{location}: {detail}"),
        };
        for (values, name) in self.texts.iter_mut().zip(Self::TEXTS) {
            let value = invoice[name]
                .as_str()
                .ok_or_else(|| bad(format!("no text field {name}")))?;
            values.push(value.to_owned());
        }
        for (values, name) in self.amounts.iter_mut().zip(Self::AMOUNTS) {
            let amount: Decimal = invoice[name]
                .as_str()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(format!("no decimal field {name}")))?;
            values.push(decimal_to_i128(amount).map_err(|e| bad(e.to_string()))?);
        }
        let lines = invoice["lines"].as_array().map_or(0, Vec::len);
        self.lines.push(i64::try_from(lines).unwrap_or(i64::MAX));
        self.month.push(month.to_owned());
        self.correction.push(correction);
        Ok(())
    }

    fn batch(self) -> Result<RecordBatch> {
        let money = DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE);
        let mut fields = vec![
            Field::new("month", DataType::Utf8, false),
            Field::new("correction", DataType::Utf8, true),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.month)),
            Arc::new(StringArray::from(self.correction)),
        ];
        for (values, name) in self.texts.into_iter().zip(Self::TEXTS) {
            fields.push(Field::new(name, DataType::Utf8, false));
            columns.push(Arc::new(StringArray::from(values)));
        }
        fields.push(Field::new("lines", DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from(self.lines)));
        for (values, name) in self.amounts.into_iter().zip(Self::AMOUNTS) {
            fields.push(Field::new(name, money.clone(), false));
            columns.push(Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)?,
            ));
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

/// How query results are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A text table for people.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row and line.
    Json,
    /// A Parquet file (needs a file, not a terminal).
    Parquet,
}

/// Writes `batches` to `out` in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut (dyn Write + Send)) -> Result<()> {
    let io = |source| Error::Io {
        action: "write the query's result".to_owned(),
        source,
    };
    match format {
        Format::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{table}").map_err(io)?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Parquet => {
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut *out, schema_of(batches), None).map_err(
                    |source| Error::Parquet {
                        path: PathBuf::from("<output>"),
                        source,
                    },
                )?;
            for batch in batches {
                writer.write(batch).map_err(|source| Error::Parquet {
                    path: PathBuf::from("<output>"),
                    source,
                })?;
            }
            writer.close().map_err(|source| Error::Parquet {
                path: PathBuf::from("<output>"),
                source,
            })?;
        }
    }
    out.flush().map_err(io)
}

fn schema_of(batches: &[RecordBatch]) -> datafusion::arrow::datatypes::SchemaRef {
    batches
        .first()
        .map_or_else(|| Arc::new(Schema::empty()), RecordBatch::schema)
}

/// Splits SQL text into statements at semicolons outside quotes and comments; the text
/// after the last semicolon is returned apart (an unfinished statement).
pub fn split_statements(text: &str) -> (Vec<String>, String) {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(open) => {
                current.push(c);
                if c == open {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                current.push(c);
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                // A line comment: up to the end of the line.
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            None if c == ';' => {
                if !current.trim().is_empty() {
                    statements.push(current.trim().to_owned());
                }
                current.clear();
            }
            None => current.push(c),
        }
    }
    (statements, current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let (statements, rest) = split_statements(
            "SELECT ';' AS a; -- a comment; not a statement\nSELECT \"x;y\" FROM t;\nSELECT 1",
        );
        assert_eq!(statements, vec!["SELECT ';' AS a", "SELECT \"x;y\" FROM t"]);
        assert_eq!(rest.trim(), "SELECT 1");
        assert_eq!(split_statements("  ;  ;").0, Vec::<String>::new());
    }
}
