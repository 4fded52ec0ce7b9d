//! `tally watch` on the demo's month: budgets settled into the ledger agree with the
//! invoices, and every notice reaches a Kafka topic on the real broker exactly once.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::message::Message;
use rust_decimal::Decimal;
use tally_model::Hour;
use tally_rating::deliver::{KafkaTopic, Sink};
use tally_rating::ledger::{EntryKind, Ledger};
use tally_rating::notice::{Notice, NoticeKind};
use tally_rating::watch::{self, WatchRequest};
use tally_tests::{broker, create_topic, read_messages, unique_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_settles_the_demo_budgets_and_sends_each_notice_to_kafka_once() -> anyhow::Result<()>
{
    let out = tempfile::tempdir()?;
    let mut config = tally_demo::DemoConfig::new(out.path());
    config.month = Some("2026-02".to_owned());
    config.scale = 1;
    let demo = tally_demo::run(&config).await?;
    let mut tariffs: Vec<_> = std::fs::read_dir(out.path().join("tariffs"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    tariffs.sort();
    let ledger_path = out.path().join(tally_demo::LEDGER_FILE);
    let request = WatchRequest {
        lake: demo.lake.clone(),
        tariffs,
        contracts: out.path().join("contracts.json"),
        ledger: Some(ledger_path.clone()),
        since: "2026-02".to_owned(),
        until: Hour::parse_partition_value(&demo.end_hour)?,
        state_dir: out.path().join(tally_demo::WATCH_STATE_DIR),
    };
    let brokers = broker();
    let topic = unique_topic("tally.notices");
    create_topic(&brokers, &topic, 1).await?;
    let sinks = [Sink::Kafka(KafkaTopic::connect(&brokers, &topic)?)];

    let report = watch::run(&request, &sinks).await?;
    let log: Vec<Notice> = std::fs::read_to_string(request.state_dir.join("notices.ndjson"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(report.notices_sent, log.len());
    let kinds: BTreeSet<NoticeKind> = log.iter().map(|notice| notice.kind).collect();
    // The demo's first prepaid account gets 50.00: its budget runs out (T5); Hetzner
    // accounts have cost alerts at 5 and 20 (H10).
    for kind in [
        NoticeKind::BudgetExhausted,
        NoticeKind::ServerStateChanged,
        NoticeKind::CostThresholdExceeded,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} among {kinds:?}");
    }
    // Every notice on the topic once, keyed by its id.
    let messages = read_messages(&brokers, &topic)?;
    let keys: Vec<String> = messages
        .iter()
        .map(|message| String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned())
        .collect();
    let ids: Vec<String> = log.iter().map(|notice| notice.id.clone()).collect();
    assert_eq!(keys, ids);
    let first: Notice = serde_json::from_slice(messages[0].payload().unwrap_or_default())?;
    assert_eq!(first, log[0]);

    // Again: nothing new to send or settle.
    let again = watch::run(&request, &sinks).await?;
    assert_eq!((again.notices_sent, again.ledger_entries_written), (0, 0));
    assert_eq!(read_messages(&brokers, &topic)?.len(), messages.len());

    // The ledger's charges of each prepaid account, paid or not, add up to the month's
    // invoice lines at full precision: budgets and invoices price alike.
    let ledger = Ledger::load(&ledger_path)?;
    let mut charged: BTreeMap<&str, Decimal> = BTreeMap::new();
    for entry in &ledger.entries {
        if matches!(entry.entry, EntryKind::Charge | EntryKind::Unpaid) {
            *charged.entry(entry.account_id.as_str()).or_default() += entry.amount;
        }
    }
    assert!(!charged.is_empty());
    let invoices =
        tally_rating::write::read_invoices(std::path::Path::new(&demo.rating.invoices_dir))?;
    for (account, amount) in charged {
        let invoice = invoices
            .get(account)
            .ok_or_else(|| anyhow::anyhow!("no invoice for {account}"))?;
        let lines: Decimal = invoice["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|line| line["amount"].as_str().unwrap_or("0").parse::<Decimal>())
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .sum();
        assert_eq!(amount, lines, "account {account}");
    }
    Ok(())
}
