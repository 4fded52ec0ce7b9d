//! SASL/SCRAM between the collector's shipper and a Tansu broker that requires it: the
//! right password ships, a wrong password and a client without SASL are refused with an
//! error that says so. (TLS: `tls.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tally_collector::{Fleet, FleetSpec, ShipConfig, Shipper};
use tally_tests::OwnBroker;

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

    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &brokers);
    for (key, value) in sasl("collector", "right-password") {
        admin_config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = admin_config.create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        result.map_err(|(name, error)| anyhow::anyhow!("creating {name}: {error}"))?;
    }

    let fleet = Fleet::generate(FleetSpec {
        seed: 9,
        start: "2026-10-22T00:00:00Z".parse()?,
        end: "2026-10-22T00:10:00Z".parse()?,
        scale: 1,
    });
    let samples: Vec<_> = fleet.chunks(10).flatten().collect();
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
