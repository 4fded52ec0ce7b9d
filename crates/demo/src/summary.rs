//! The demo's closing text: what was billed, where the files are, how to look at them.

use std::fmt::Write;
use std::time::Duration;

use crate::DemoReport;

/// The query the summary suggests; the demo's test runs it, so it keeps working.
pub const COST_BY_ACCOUNT: &str =
    "SELECT BillingAccountId, SUM(BilledCost) AS cost FROM line_items GROUP BY 1 ORDER BY 2 DESC";

pub fn render(report: &DemoReport, wall_time: Duration) -> String {
    let mut text = String::new();
    let aggregate = &report.aggregate;
    let _ = writeln!(
        text,
        "Tally demo: billing month {} (Europe/Berlin), {} resources, {} samples in {} Kafka messages",
        report.month, report.resources, report.samples, report.messages
    );
    let _ = writeln!(
        text,
        "aggregated: {} accepted, {} duplicates, {} dead letters; {} hours sealed into {} rollup rows ({} bytes of Parquet)",
        aggregate.accepted,
        aggregate.duplicates,
        aggregate.dead_lettered(),
        aggregate.hours_sealed,
        aggregate.rows_written,
        aggregate.bytes_written
    );
    let _ = writeln!(
        text,
        "check: the lake equals the simulator's ground truth, resource-hour by resource-hour\n"
    );
    let _ = writeln!(
        text,
        "{:<18} {:<15} {:>6} {:>12} {:>12}",
        "account", "tariff", "lines", "total", "amount due"
    );
    for invoice in &report.rating.invoices {
        let _ = writeln!(
            text,
            "{:<18} {:<15} {:>6} {:>8} {} {:>8} {}",
            invoice.account_id,
            invoice.tariff_id,
            invoice.lines,
            invoice.total,
            invoice.currency,
            invoice.amount_due,
            invoice.currency
        );
    }
    let _ = writeln!(text);
    for (stage, duration) in &report.timings {
        let _ = writeln!(text, "{stage:<28} {:>8.2} s", duration.as_secs_f64());
    }
    let _ = writeln!(
        text,
        "{:<28} {:>8.2} s\n",
        "wall time",
        wall_time.as_secs_f64()
    );
    let lake = report.lake.display();
    let _ = writeln!(
        text,
        "lake:       {lake}/rollups/hour=YYYY-MM-DDTHH/*.parquet"
    );
    let _ = writeln!(
        text,
        "line items: {lake}/line_items/month={}/",
        report.month
    );
    let _ = writeln!(
        text,
        "invoices:   {lake}/invoices/month={}/invoices.jsonl and .csv\n",
        report.month
    );
    let _ = writeln!(text, "look at them:");
    let _ = writeln!(text, "  tally sql --lake {lake} \"{COST_BY_ACCOUNT}\"");
    let _ = writeln!(
        text,
        "  duckdb -c \"SELECT kind, count(*) AS rows, sum(sample_count) AS samples FROM read_parquet('{lake}/rollups/*/*.parquet', hive_partitioning = true) GROUP BY kind\""
    );
    let out = report
        .lake
        .parent()
        .map_or_else(|| ".".into(), |out| out.display().to_string());
    let _ = writeln!(
        text,
        "budgets and notices (prepaid Trooper.ai accounts, Hetzner cost alerts):\n  tally watch --lake {lake} --tariff {out}/tariffs/*.toml --contracts {out}/contracts.json --ledger {out}/{} --since {} --until {} --state {out}/{}",
        crate::LEDGER_FILE,
        report.month,
        report.end_hour,
        crate::WATCH_STATE_DIR
    );
    text
}
