//! `tally demo` end to end on librdkafka's mock cluster.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_bills_every_reference_tariff_for_a_whole_month() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let mut config = tally_demo::DemoConfig::new(out.path());
    config.month = Some("2026-02".to_owned());
    config.scale = 1;
    let report = tally_demo::run(&config).await?;

    assert!(report.samples > 1_000_000, "{} samples", report.samples);
    assert_eq!(report.aggregate.accepted, report.samples);
    assert_eq!(report.aggregate.dead_lettered(), 0);
    let tariffs: std::collections::BTreeSet<_> = report
        .rating
        .invoices
        .iter()
        .map(|invoice| invoice.tariff_id.clone())
        .collect();
    assert_eq!(
        tariffs.len(),
        4,
        "every reference tariff billed: {tariffs:?}"
    );
    assert!(
        report
            .rating
            .invoices
            .iter()
            .all(|invoice| invoice.total > rust_decimal::Decimal::ZERO)
    );
    assert!(out.path().join("lake/line_items/month=2026-02").is_dir());
    // The query the summary suggests works as printed, one row per invoiced account.
    let batches = tally_rating::sql(
        &out.path().join("lake").into(),
        tally_demo::summary::COST_BY_ACCOUNT,
    )
    .await?;
    let rows: usize = batches.iter().map(|batch| batch.num_rows()).sum();
    assert_eq!(rows, report.rating.invoices.len());
    Ok(())
}
