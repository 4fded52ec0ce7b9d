//! SASL/SCRAM between the collector's shipper and a Tansu broker that requires it: the
//! right password ships, a wrong password and a client without SASL are refused with an
//! error that says so. (TLS: `tls.rs`.)

use std::collections::BTreeMap;

use tally_collector::{ShipConfig, Shipper};
use tally_tests::{OwnBroker, create_topic_with, ten_minutes_of_samples};

fn sasl(user: &str, password: &str) -> BTreeMap<String, String> {
    [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_are_required_and_checked() -> anyhow::Result<()> {
    let mut broker = OwnBroker::start()?;
    broker.create_user("collector", "right-password")?;
    broker.stop()?;
    broker.authentication = true;
    broker.restart()?;
    let brokers = broker.address();
    let topic = "tally.samples.sasl";

    create_topic_with(&brokers, topic, 1, &sasl("collector", "right-password")).await?;
    let samples = ten_minutes_of_samples(9);
    let mut config = ShipConfig::new(&brokers, topic);
    config.librdkafka = sasl("collector", "right-password");
    let shipper = Shipper::connect(&config)?;
    let report = shipper.ship(samples.clone()).await?;
    assert_eq!(report.samples, samples.len());
    drop(shipper);

    // A wrong password: refused at connect, and the error says it was the login. Without
    // SASL: refused too (Tansu closes the connection, so the client can only say that
    // the broker is unreachable).
    for (what, librdkafka, says) in [
        (
            "wrong password",
            sasl("collector", "wrong-password"),
            "SASL SCRAM authentication failed",
        ),
        ("no SASL", BTreeMap::new(), "brokers are down"),
    ] {
        let mut config = ShipConfig::new(&brokers, topic);
        config.librdkafka = librdkafka;
        let error = Shipper::connect(&config)
            .err()
            .ok_or_else(|| anyhow::anyhow!("{what}: connected"))?
            .to_string();
        assert!(
            error.contains(&brokers) && error.contains(topic) && error.contains(says),
            "{what}: {error}"
        );
    }
    Ok(())
}
