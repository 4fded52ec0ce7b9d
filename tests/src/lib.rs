//! Shared helpers of the integration tests: the real broker started by `tests/run`,
//! topics of their own for each test, and reading the dead-letter topic back. And the
//! [`chaos`] runner, which uses them.

pub mod chaos;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};

/// The broker `tests/run` started. Tests that need it fail, never skip, without it.
pub fn broker() -> String {
    std::env::var("TALLY_TEST_BROKER").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_BROKER is not set: run the suite with `tests/run`, which installs and \
             starts Tansu on 127.0.0.1 and sets it"
        )
    })
}

/// A lake in the bucket of the S3 server `tests/run` started (moto, on 127.0.0.1), below
/// a prefix no other test uses. Tests that need it fail, never skip, without it.
pub fn s3_lake(prefix: &str) -> tally_lake::Lake {
    let endpoint = std::env::var("TALLY_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_S3 is not set: run the suite with `tests/run`, which installs and \
             starts moto's S3 server on 127.0.0.1 and sets it"
        )
    });
    let bucket = std::env::var("TALLY_TEST_S3_BUCKET").unwrap_or_else(|_| "tally-tests".into());
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(&bucket)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap_or_else(|error| panic!("an S3 client for {endpoint}: {error}"));
    let base = format!("s3://{bucket}/")
        .parse()
        .unwrap_or_else(|error| panic!("bucket URL: {error}"));
    tally_lake::Lake::store(
        std::sync::Arc::new(store),
        base,
        object_store::path::Path::from(unique_topic(prefix)),
    )
}

/// The settings `tally` reads from the environment for the S3 server of [`s3_lake`] (a
/// child process's `--lake s3://…`).
pub fn s3_environment() -> Vec<(&'static str, String)> {
    vec![
        (
            "AWS_ENDPOINT",
            std::env::var("TALLY_TEST_S3").unwrap_or_default(),
        ),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ]
}

/// Every file below `prefix` of `lake`, with its bytes, by key.
pub fn lake_files(lake: &tally_lake::Lake, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    lake.list(prefix)?
        .into_iter()
        .map(|key| {
            let bytes = lake
                .get(&key)?
                .ok_or_else(|| anyhow::anyhow!("{key} listed but gone"))?;
            Ok((key, bytes))
        })
        .collect()
}

/// The demo's October 2026 (scale 1, one partition: 745 hourly files) in a directory of
/// its own (`lake/`, `tariffs/`, `contracts.json`), rated in process: the reference of
/// the tests that rate the same month elsewhere.
pub async fn demo_month() -> anyhow::Result<(tempfile::TempDir, tally_demo::DemoReport)> {
    let out = tempfile::tempdir()?;
    let mut demo = tally_demo::DemoConfig::new(out.path());
    demo.month = Some("2026-10".to_owned());
    demo.scale = 1;
    demo.partitions = 1;
    let report = tally_demo::run(&demo).await?;
    Ok((out, report))
}

/// The tariff files of a [`demo_month`] directory.
pub fn demo_tariffs(out: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_dir(out.join("tariffs"))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Fails unless `found` holds the line items and invoices of `expected`, byte for byte
/// under the same keys; `how` says how `found`'s were made.
pub fn assert_same_ratings(
    expected: &tally_lake::Lake,
    found: &tally_lake::Lake,
    how: &str,
) -> anyhow::Result<()> {
    for output in ["line_items", "invoices"] {
        let expected = lake_files(expected, output)?;
        anyhow::ensure!(!expected.is_empty(), "the reference has no {output}");
        let found = lake_files(found, output)?;
        let keys = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            files.iter().map(|(key, _)| key.clone()).collect()
        };
        anyhow::ensure!(
            keys(&found) == keys(&expected),
            "{output} {how}: other files than the reference's: {:?} against {:?}",
            keys(&found),
            keys(&expected)
        );
        anyhow::ensure!(
            found == expected,
            "{output} {how} differ from the reference's"
        );
    }
    Ok(())
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// Creates `topic` and ships ten minutes of the base fleet's samples (seed `seed`) to it,
/// both by clients with `librdkafka` settings (SASL, TLS); every sample must be taken.
pub async fn ships_with(
    brokers: &str,
    topic: &str,
    librdkafka: &BTreeMap<String, String>,
    seed: u64,
) -> anyhow::Result<()> {
    create_topic_with(brokers, topic, 1, librdkafka).await?;
    let samples = ten_minutes_of_samples(seed);
    let mut config = tally_collector::ShipConfig::new(brokers, topic);
    config.librdkafka = librdkafka.clone();
    let report = tally_collector::Shipper::connect(&config)?
        .ship(samples.clone())
        .await?;
    anyhow::ensure!(
        report.samples == samples.len(),
        "shipped {} of {} samples",
        report.samples,
        samples.len()
    );
    Ok(())
}

/// The error a shipper with `librdkafka` settings gets connecting to `brokers` (an error
/// of its own if it connected: `what` names the case).
pub fn connect_error(
    brokers: &str,
    topic: &str,
    librdkafka: BTreeMap<String, String>,
    what: &str,
) -> anyhow::Result<String> {
    let mut config = tally_collector::ShipConfig::new(brokers, topic);
    config.librdkafka = librdkafka;
    Ok(tally_collector::Shipper::connect(&config)
        .err()
        .ok_or_else(|| anyhow::anyhow!("{what}: connected"))?
        .to_string())
}

/// Ten minutes of the base fleet's samples (seed `seed`).
fn ten_minutes_of_samples(seed: u64) -> Vec<tally_model::Sample> {
    let start: tally_model::Minute = "2026-10-22T00:00:00Z".parse().expect("minute");
    tally_collector::Fleet::generate(tally_collector::FleetSpec {
        seed,
        start,
        end: start.plus(10),
        scale: 1,
    })
    .chunks(10)
    .flatten()
    .collect()
}

/// Creates `topic` with `partitions` partitions on `brokers`.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with(brokers, topic, partitions, &BTreeMap::new()).await
}

/// [`create_topic`] by a client with `librdkafka` settings (SASL, TLS).
pub async fn create_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    librdkafka: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in librdkafka {
        config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        if let Err((name, error)) = result {
            anyhow::bail!("creating topic {name}: {error}");
        }
    }
    Ok(())
}

/// Runs one aggregator with `config` over every partition of `topic` alone until it is
/// drained, dead letters to `dead_letters`.
pub async fn aggregate_drained(
    config: tally_aggregator::AggregateConfig,
    brokers: &str,
    topic: &str,
    dead_letters: &str,
) -> anyhow::Result<tally_aggregator::AggregateReport> {
    let mut input = tally_aggregator::KafkaInput::new(brokers, topic);
    input.ownership = tally_aggregator::Ownership::AllPartitions;
    input.dead_letter_topic = dead_letters.to_owned();
    input.until_drained = true;
    Ok(tokio::task::spawn_blocking(move || tally_aggregator::run_kafka(&config, &input)).await??)
}

/// A message read back from the dead-letter topic.
#[derive(Debug, Clone)]
pub struct ReadDeadLetter {
    pub reason: String,
    pub detail: String,
    /// Where the rejected item came from: `topic/partition/offset/item`. A dead letter
    /// sent again after a restart has the same origin.
    pub origin: String,
    pub payload: Vec<u8>,
}

/// A consumer of a group of its own that reads from the start and says where each
/// partition ends.
fn reader(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_topic("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?)
}

/// Reads every message of a one-partition `topic` from the start until it is drained.
pub fn read_messages(brokers: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer = reader(brokers)?;
    consumer.subscribe(&[topic])?;
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => messages.push(message.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(messages),
            Some(Err(error)) => anyhow::bail!("reading {topic}: {error}"),
            None => {}
        }
    }
    anyhow::bail!("reading {topic} did not reach its end within 60 s")
}

/// Every dead letter of a one-partition `topic`, with its reason headers.
pub fn read_dead_letters(brokers: &str, topic: &str) -> anyhow::Result<Vec<ReadDeadLetter>> {
    Ok(read_messages(brokers, topic)?
        .into_iter()
        .map(|message| {
            let header = |key: &str| {
                message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == key))
                    .and_then(|h| h.value)
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default()
            };
            ReadDeadLetter {
                reason: header("tally-reason"),
                detail: header("tally-detail"),
                origin: ["topic", "partition", "offset"]
                    .map(|part| header(&format!("tally-source-{part}")))
                    .join("/")
                    + "/"
                    + &header("tally-item"),
                payload: message.payload().unwrap_or_default().to_vec(),
            }
        })
        .collect())
}

/// Every sample on `topic` (all partitions, from the start), decoded by its
/// content-type header; waits until each partition reached its end.
pub fn read_samples(brokers: &str, topic: &str) -> anyhow::Result<Vec<tally_model::Sample>> {
    use tally_model::wire::{CONTENT_TYPE_HEADER, Encoding};
    let consumer = reader(brokers)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |topic| topic.partitions().len());
    consumer.subscribe(&[topic])?;
    let mut samples = Vec::new();
    let mut ended = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ended.len() < partitions {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic}: only {} of {partitions} partitions reached their end within 120 s",
            ended.len()
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let content_type = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == CONTENT_TYPE_HEADER))
                    .and_then(|h| h.value)
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                let encoding = Encoding::from_content_type(&content_type)
                    .ok_or_else(|| anyhow::anyhow!("unknown content type '{content_type}'"))?;
                for decoded in encoding.decode(message.payload().unwrap_or_default())? {
                    samples.push(decoded?);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => anyhow::bail!("reading {topic}: {error}"),
            None => {}
        }
    }
    Ok(samples)
}

/// A Tansu broker of a test's own, on a free 127.0.0.1 port, storing in SQLite so that
/// what it acknowledged survives a stop and start (the suite's shared broker keeps its
/// data in memory). `tests/run` names the binary in `TALLY_TANSU`.
#[derive(Debug)]
pub struct OwnBroker {
    tansu: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    process: Option<std::process::Child>,
    /// Started with `--authentication`: clients must log in (SASL/SCRAM).
    pub authentication: bool,
    /// The port clients are told to connect to: the broker's own, or a proxy's in front.
    advertised_port: u16,
    /// While the broker is stopped, its port, bound but not listening: clients are refused
    /// as by a stopped broker, and no other test's server can take the port meanwhile (one
    /// did once: an agent meant to spool through an outage shipped to another broker).
    port_hold: Option<socket2::Socket>,
}

impl OwnBroker {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_advertising(None)
    }

    /// Starts a broker that tells clients to connect to `advertised_port` on 127.0.0.1
    /// (a proxy that forwards to [`Self::address`]) instead of its own port.
    pub fn start_advertising(advertised_port: Option<u16>) -> anyhow::Result<Self> {
        let tansu = std::env::var("TALLY_TANSU").map_err(|_| {
            anyhow::anyhow!("TALLY_TANSU is not set: run the suite with `tests/run`")
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut broker = Self {
            tansu: tansu.into(),
            dir: tempfile::tempdir()?,
            port,
            process: None,
            authentication: false,
            advertised_port: advertised_port.unwrap_or(port),
            port_hold: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Adds a SCRAM-SHA-512 user, kept in the broker's SQLite storage. Tansu 0.6 takes
    /// the request only from a client it need not authenticate: create users before
    /// restarting with [`Self::authentication`].
    pub fn create_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        let output = std::process::Command::new(&self.tansu)
            .args(["user", "create", name, password, "--mechanism", "scram512"])
            .args(["--broker", &format!("tcp://{}", self.address())])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "tansu user create {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again), on the same port and data, and waits until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "the broker is running");
        self.port_hold = None;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log"))?;
        let child = std::process::Command::new(&self.tansu)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.address()).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {} within 30 s",
                self.address()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
            process.wait()?;
            self.port_hold = Some(hold_port(self.port)?);
        }
        Ok(())
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it is still there after 10 s. (The
    /// agent is what is under test, not how the broker survives being killed.)
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        std::process::Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                process.kill()?;
                process.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.port_hold = Some(hold_port(self.port)?);
        Ok(())
    }
}

/// `port` on 127.0.0.1, bound and not listening.
fn hold_port(port: u16) -> anyhow::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // The stopped broker's closed connections may linger in TIME_WAIT on the port.
    socket.set_reuse_address(true)?;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket
        .bind(&address.into())
        .map_err(|error| anyhow::anyhow!("holding the stopped broker's port {port}: {error}"))?;
    Ok(socket)
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
