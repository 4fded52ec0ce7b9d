//! Signed batches on the real broker: an aggregator with a keyring rolls up what a listed
//! host signed for itself and dead-letters every forgery with its reason (unsigned, another
//! host's key, a changed payload, an unknown host, samples outside the signer's inventory
//! or in another host's name).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_aggregator::AggregateConfig;
use tally_collector::{Fleet, FleetSpec, GroundTruth, ShipConfig, Shipper};
use tally_model::Sample;
use tally_model::clock::FixedClock;
use tally_model::signing::{HOST_HEADER, HostKey, Keyring, SIGNATURE_HEADER};
use tally_model::wire::{CONTENT_TYPE_HEADER, Encoding};
use tally_tests::{aggregate_drained, broker, create_topic, read_dead_letters, unique_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_samples_a_listed_host_signed_for_itself_are_counted() -> anyhow::Result<()> {
    let brokers = broker();
    let topic = unique_topic("signed-samples");
    let dead_letters = unique_topic("signed-deadletter");
    create_topic(&brokers, &topic, 2).await?;
    create_topic(&brokers, &dead_letters, 1).await?;
    let spec = FleetSpec {
        seed: 5,
        start: "2026-10-22T00:00:00Z".parse()?,
        end: "2026-10-22T03:00:00Z".parse()?,
        scale: 1,
    };
    let fleet = Fleet::generate(spec.clone());
    let host_a = Arc::new(HostKey::from_seed("hv-a", [1; 32]));
    let host_b = HostKey::from_seed("hv-b", [2; 32]);
    let keyring = Keyring::parse(&format!(
        "[[hosts]]\nhost = \"hv-a\"\npublic_key = \"{}\"\n\
         [[hosts]]\nhost = \"hv-b\"\npublic_key = \"{}\"\naccounts = [\"b-only\"]\n",
        host_a.public_hex(),
        host_b.public_hex()
    ))
    .map_err(anyhow::Error::msg)?;

    // hv-a ships the whole fleet as its own, signed.
    let mut config = ShipConfig::new(&brokers, &topic);
    config.signing = Some(host_a.clone());
    let shipper = Shipper::connect(&config)?;
    let mut truth = GroundTruth::default();
    for mut chunk in fleet.chunks(60) {
        for sample in &mut chunk {
            sample.host = "hv-a".to_owned();
            truth.record(sample);
        }
        shipper.ship(chunk).await?;
    }
    drop(shipper);

    // Forgeries, each of samples that would show in the lake if counted.
    let forged = |host: &str, account: &str, n: usize| -> Vec<Sample> {
        (0..n)
            .map(|index| {
                let mut sample = fleet.resources[0]
                    .sample_at(spec.start)
                    .expect("a sample at the start");
                sample.host = host.to_owned();
                sample.account_id = account.to_owned();
                sample.resource_id = format!("forged-{host}-{account}-{index}");
                sample
            })
            .collect()
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let send = |payload: Vec<u8>, host: Option<&str>, signature: Option<[u8; 64]>| {
        let producer = producer.clone();
        let topic = topic.clone();
        let host = host.map(str::to_owned);
        async move {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(Encoding::Arrow.content_type()),
            });
            if let Some(host) = &host {
                headers = headers.insert(Header {
                    key: HOST_HEADER,
                    value: Some(host.as_str()),
                });
            }
            if let Some(signature) = &signature {
                headers = headers.insert(Header {
                    key: SIGNATURE_HEADER,
                    value: Some(&signature[..]),
                });
            }
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(0)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        }
    };
    let account = fleet.resources[0].account_id.clone();
    let batch =
        |host: &str, account: &str, n: usize| Encoding::Arrow.encode(&forged(host, account, n));
    // Unsigned.
    send(batch("hv-a", &account, 2)?, None, None).await?;
    // Signed with hv-b's key but claiming to be hv-a.
    let payload = batch("hv-a", &account, 2)?;
    send(payload.clone(), Some("hv-a"), Some(host_b.sign(&payload))).await?;
    // hv-a's signature over another payload.
    let signed = batch("hv-a", &account, 2)?;
    let changed = batch("hv-a", &account, 3)?;
    send(changed, Some("hv-a"), Some(host_a.sign(&signed))).await?;
    // A host the keyring does not know.
    let stranger = HostKey::from_seed("hv-z", [3; 32]);
    let payload = batch("hv-z", &account, 2)?;
    send(payload.clone(), Some("hv-z"), Some(stranger.sign(&payload))).await?;
    // hv-b, properly signed: 3 samples of an account outside its inventory, 2 in hv-a's name.
    let payload = batch("hv-b", &account, 3)?;
    send(payload.clone(), Some("hv-b"), Some(host_b.sign(&payload))).await?;
    let payload = batch("hv-a", "b-only", 2)?;
    send(payload.clone(), Some("hv-b"), Some(host_b.sign(&payload))).await?;

    let lake = tempfile::tempdir()?;
    let mut config = AggregateConfig::new(lake.path());
    config.clock = Arc::new(FixedClock(spec.end.to_datetime()));
    config.keyring = Some(Arc::new(keyring));
    let report = aggregate_drained(config, &brokers, &topic, &dead_letters).await?;

    // The lake is exactly what hv-a signed for itself.
    tally_demo::check_against_truth(lake.path(), &truth)?;
    let mut reasons: Vec<String> = read_dead_letters(&brokers, &dead_letters)?
        .into_iter()
        .map(|letter| letter.reason)
        .collect();
    reasons.sort_unstable();
    let mut expected = vec!["unsigned"];
    expected.extend(["bad_signature"; 3]);
    expected.extend(["not_permitted"; 5]);
    expected.sort_unstable();
    assert_eq!(reasons, expected, "{report:#?}");
    Ok(())
}
