//! SASL/SCRAM between the collector's shipper and a Tansu broker that requires it: the
//! right password ships, a wrong password and a client without SASL are refused with an
//! error that says so. (TLS: `tls.rs`.)

use std::collections::BTreeMap;

use tally_tests::{OwnBroker, connect_error, ships_with};

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

    ships_with(&brokers, topic, &sasl("collector", "right-password"), 9).await?;

    // A wrong password: refused at connect, and the error says it was the login. Without
    // SASL: refused too (Tansu closes the connection, so the client can only say that
    // the broker did not answer, and the error suggests setting security.protocol).
    for (what, librdkafka, says) in [
        (
            "wrong password",
            sasl("collector", "wrong-password"),
            "SASL SCRAM authentication failed",
        ),
        ("no SASL", BTreeMap::new(), "no security.protocol is set"),
    ] {
        let error = connect_error(&brokers, topic, librdkafka, what)?;
        assert!(
            error.contains(&brokers) && error.contains(topic) && error.contains(says),
            "{what}: {error}"
        );
    }
    Ok(())
}
