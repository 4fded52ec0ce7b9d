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
//! - `invoices`: one row per invoice file (`invoices/month=M/<account>.json`, and correction
//!   invoices under `corrections-NNN/`, named in the column `correction`).
//!
//! Samples are not archived in the lake, and dead letters go to the Kafka topic
//! `tally.deadletter` (not to the lake), so neither is a table here.
//!
//! `popcount(mask)` counts a minute mask's minutes. Identifiers keep their case (FOCUS
//! columns are CamelCase: `BilledCost`, no quotes needed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, col, lit};
use rust_decimal::Decimal;
use tally_model::line_item::{DECIMAL_PRECISION, DECIMAL_SCALE, decimal_to_i128};
use tally_model::rollup::{PARTITION_KEY, ROLLUPS_DIR, rollup_arrow_schema};

pub use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::usage::{current_generation, popcount_udf, table_url};

/// A session with the lake's tables registered and `popcount`.
pub async fn session(lake: &Path) -> Result<SessionContext> {
    let config =
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let context = SessionContext::new_with_config(config);
    context.register_udf(popcount_udf());
    let rollups = lake.join(ROLLUPS_DIR);
    if !rollups.is_dir() {
        return Err(Error::NoLake(lake.to_owned()));
    }
    register_rollups(&context, &rollups).await?;
    let line_items = lake.join("line_items");
    if line_items.is_dir() {
        let options = ParquetReadOptions::default()
            .table_partition_cols(vec![("month".to_owned(), DataType::Utf8)]);
        context
            .register_parquet("line_items", table_url(&line_items), options)
            .await?;
    }
    let invoices = lake.join("invoices");
    if invoices.is_dir() {
        let batch = invoices_batch(&invoices)?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        context.register_table("invoices", Arc::new(table))?;
    }
    Ok(context)
}

/// Runs one statement over the lake.
pub async fn query(lake: &Path, statement: &str) -> Result<Vec<RecordBatch>> {
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

async fn register_rollups(context: &SessionContext, rollups: &Path) -> Result<()> {
    let schema = rollup_arrow_schema();
    // Hours where a crash left a superseded generation next to its restatement, with the
    // files that count there.
    let mut repaired: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for path in list(rollups)? {
        let name = file_name(&path);
        let Some(hour) = name.strip_prefix(&format!("{PARTITION_KEY}=")) else {
            continue;
        };
        if !path.is_dir() {
            continue;
        }
        let found = current_generation(&path)?;
        if found.superseded > 0 {
            repaired.push((hour.to_owned(), found.files));
        }
    }
    let options = ParquetReadOptions::default()
        .schema(&schema)
        .table_partition_cols(vec![(PARTITION_KEY.to_owned(), DataType::Utf8)]);
    let mut table = context.read_parquet(table_url(rollups), options).await?;
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
            let paths: Vec<String> = files
                .iter()
                .map(|path| path.display().to_string())
                .collect();
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

/// One row per invoice file under `invoices/month=M/` (and its `corrections-NNN/`).
fn invoices_batch(directory: &Path) -> Result<RecordBatch> {
    let mut files: Vec<(String, Option<String>, PathBuf)> = Vec::new();
    for month_dir in list(directory)? {
        let Some(month) = file_name(&month_dir)
            .strip_prefix("month=")
            .map(str::to_owned)
        else {
            continue;
        };
        for path in list(&month_dir)? {
            let name = file_name(&path);
            if path.is_dir() && name.starts_with("corrections-") {
                for correction in list(&path)? {
                    files.push((month.clone(), Some(name.clone()), correction));
                }
            } else {
                files.push((month.clone(), None, path));
            }
        }
    }
    files.retain(|(_, _, path)| {
        let name = file_name(path);
        name.ends_with(".json") && !name.starts_with('_')
    });
    files.sort();
    let mut rows = InvoiceRows::default();
    for (month, correction, path) in files {
        rows.push(&month, correction, &path)?;
    }
    rows.batch()
}

fn list(directory: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(directory).map_err(|source| Error::Io {
        action: format!("list {}", directory.display()),
        source,
    })?;
    entries
        .map(|entry| {
            entry.map(|entry| entry.path()).map_err(|source| Error::Io {
                action: format!("list {}", directory.display()),
                source,
            })
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
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

    fn push(&mut self, month: &str, correction: Option<String>, path: &Path) -> Result<()> {
        let bad = |detail: String| Error::Invoice {
            account_id: file_name(path),
            detail: format!("{}: {detail}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let invoice: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
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
