//! The `tally` command. Each subcommand parses its arguments and calls one library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tally_model::wire::Encoding;
use tally_model::{Hour, Minute};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Usage metering and rating for hosting providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline for one month on an in-process Kafka: no broker needed.
    Demo {
        /// Where the lake, line items and invoices go.
        #[arg(long, default_value = "tally-demo-out")]
        out: PathBuf,
        /// Billing month `YYYY-MM` (Europe/Berlin); default: the last complete month.
        #[arg(long)]
        month: Option<String>,
        /// Copies of the base fleet (about 60 resources of every kind each).
        #[arg(long, default_value_t = 2)]
        scale: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// The collector agent: sample this host's resources every minute, spool them to
    /// disk and ship them to Kafka (runs until SIGTERM / Ctrl-C, then flushes).
    Collect {
        /// The agent's configuration (TOML; see docker/collect.sample.toml).
        #[arg(long)]
        config: PathBuf,
        /// Seconds a shutdown waits for the spool to drain to the broker; what is left
        /// is sent after the next start.
        #[arg(long, default_value_t = 10)]
        flush_seconds: u64,
        /// Validate the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Ship a simulated fleet's samples for a span of minutes to Kafka.
    Simulate {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "tally.samples")]
        topic: String,
        /// First minute, e.g. 2026-10-01T00:00:00Z.
        #[arg(long)]
        from: Minute,
        /// First minute after the simulation.
        #[arg(long)]
        to: Minute,
        #[arg(long, default_value_t = 1)]
        scale: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = WireFormat::Arrow)]
        encoding: WireFormat,
        /// Wait this long after each simulated hour: a steady stream instead of one burst
        /// (fault runs keep the producer busy while faults hit).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Roll samples up into the hourly Parquet lake, from Kafka or from an NDJSON file.
    Aggregate {
        /// The lake: a directory, or an object store URL (`s3://bucket/prefix`, `gs://…`,
        /// `az://…`) configured by the environment (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …).
        #[arg(long, value_parser = parse_lake)]
        lake: tally_rating::Lake,
        #[arg(long, required_unless_present = "from_file")]
        brokers: Option<String>,
        #[arg(long, default_value = "tally.samples")]
        topic: String,
        #[arg(long, default_value = "tally.deadletter")]
        dead_letter_topic: String,
        /// The consumer group: its instances share the topic's partitions, which move
        /// between them through the lake as instances come and go.
        #[arg(long, default_value = "tally-aggregator")]
        group: String,
        /// Read every partition without joining a group: a single instance, which a
        /// restart puts back to work at once (no wait for the group's session timeout).
        #[arg(long)]
        all_partitions: bool,
        /// Stop once every partition is read to its end and seal all open hours.
        #[arg(long)]
        until_drained: bool,
        /// Backfill from an NDJSON sample file instead of Kafka.
        #[arg(long, conflicts_with = "brokers")]
        from_file: Option<PathBuf>,
        #[arg(long, default_value_t = tally_aggregator::ingest::default_lateness_minutes())]
        lateness_minutes: i64,
        /// How often each partition's open hours are saved to the lake (and at a
        /// graceful stop): what a restart reads again is at most this much.
        #[arg(long, default_value_t = 60)]
        checkpoint_seconds: u64,
        /// Keep the metrics in this file, in the Prometheus text format (rewritten every
        /// checkpoint interval and at exit; for node_exporter's textfile collector).
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// Accept only messages signed by a host of this keyring (TOML), and of each only
        /// the samples that host may report; the rest are dead-lettered.
        #[arg(long)]
        keyring: Option<PathBuf>,
    },
    /// Make a host's signing key: writes its seed to --out (readable by its owner only)
    /// and prints the keyring entry for the aggregators.
    Keygen {
        /// The host name the collector stamps on its samples.
        #[arg(long)]
        host: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rate a month of rollups into line items and invoices.
    Rate {
        /// The lake: a directory, or an object store URL (`s3://bucket/prefix`, `gs://…`,
        /// `az://…`) configured by the environment (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …).
        #[arg(long, value_parser = parse_lake)]
        lake: tally_rating::Lake,
        /// Billing month `YYYY-MM`.
        #[arg(long)]
        month: String,
        /// Tariff files (TOML): `--tariff a.toml --tariff b.toml` or `--tariff tariffs/*.toml`.
        #[arg(long = "tariff", required = true, num_args = 1..)]
        tariffs: Vec<PathBuf>,
        /// The accounts' contracts (JSON).
        #[arg(long)]
        contracts: PathBuf,
        /// Where line_items/ and invoices/ go (a directory or an object store URL);
        /// default: the lake.
        #[arg(long, value_parser = parse_lake)]
        out: Option<tally_rating::Lake>,
        /// Freeze the month once written: later runs write correction lines against it
        /// instead of rewriting its invoices (H8).
        #[arg(long)]
        issue: bool,
        /// Print, for each line of ACCOUNT's invoice, the rule applied and the usage
        /// behind it; writes nothing.
        #[arg(long, value_name = "ACCOUNT")]
        explain: Option<String>,
        /// What-if: a tariff file that replaces the loaded tariff of the same id for this
        /// run (repeatable); with --compare.
        #[arg(long = "tariff-override", value_name = "FILE", requires = "compare")]
        tariff_overrides: Vec<PathBuf>,
        /// Rate the month as configured and with --tariff-override, and print per account
        /// and in total the old and new amounts and the lines that changed; writes nothing.
        #[arg(long, conflicts_with_all = ["issue", "explain"])]
        compare: bool,
        /// Run the usage queries on a Ballista cluster, through its scheduler at URL
        /// (`df://HOST:PORT`, started by `tally ballista scheduler`); the lake must be a
        /// directory the scheduler and executors see too, or an object store whose settings
        /// they have in their environment.
        #[arg(long, value_name = "URL")]
        ballista: Option<String>,
    },
    /// A Ballista scheduler or executor that runs `tally rate --ballista`'s queries.
    Ballista {
        #[command(subcommand)]
        command: BallistaCommand,
    },
    /// Prepaid budgets (T5): balance and start decisions, computed from the lake.
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
    },
    /// Settle prepaid budgets into the ledger and send each notice once (budget
    /// exhausted, server state changes, stopped servers, traffic and cost alerts) to
    /// stdout as JSON lines, and to a webhook and/or Kafka topic.
    Watch {
        #[command(flatten)]
        inputs: WatchInputs,
        /// Holds `notices.ndjson`, the notices delivered: keep it across runs.
        #[arg(long)]
        state: PathBuf,
        /// POST each notice as JSON here, with an `Idempotency-Key` header.
        #[arg(long)]
        webhook: Option<String>,
        /// Tries per notice before the run fails (the next run tries again).
        #[arg(long, default_value_t = 5)]
        webhook_attempts: u32,
        /// Produce each notice to --topic on these brokers, keyed by its id.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value = "tally.notices")]
        topic: String,
        /// Run again every N seconds (with --until following the clock) until
        /// SIGTERM / Ctrl-C.
        #[arg(long, value_name = "SECONDS", conflicts_with = "until")]
        follow: Option<u64>,
    },
    /// Tariff tools.
    Tariff {
        #[command(subcommand)]
        command: TariffCommand,
    },
    /// SQL over the lake: tables `rollups`, `line_items`, `invoices`, function `popcount`.
    /// Without a query: statements (ending in `;`) from the terminal, with line editing,
    /// history and `.tables` / `.quit`, or from stdin (SQL only).
    Sql {
        /// The lake: a directory, or an object store URL (`s3://bucket/prefix`, `gs://…`,
        /// `az://…`) configured by the environment (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …).
        #[arg(long, value_parser = parse_lake)]
        lake: tally_rating::Lake,
        query: Option<String>,
        #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
        /// Write the result here instead of stdout (needed for parquet); each statement
        /// of a session rewrites it.
        #[arg(long)]
        output: Option<PathBuf>,
        /// The interactive mode's history file; default `~/.tally_sql_history`.
        #[arg(long)]
        history: Option<PathBuf>,
    },
}

/// What budgets and notices are computed from (`tally budget`, `tally watch`).
#[derive(clap::Args)]
struct WatchInputs {
    #[arg(long)]
    lake: PathBuf,
    /// Tariff files (TOML): `--tariff a.toml --tariff b.toml` or `--tariff tariffs/*.toml`.
    #[arg(long = "tariff", required = true, num_args = 1..)]
    tariffs: Vec<PathBuf>,
    /// The accounts' contracts (JSON).
    #[arg(long)]
    contracts: PathBuf,
    /// The prepaid ledger (NDJSON: top-ups in, settled charges appended by `watch`).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The first month replayed, `YYYY-MM`: budgets start from zero in it (default: the
    /// month of --until).
    #[arg(long)]
    since: Option<String>,
    /// The first hour not replayed (`2026-10-05T14` or `2026-10-05T14:00:00Z`); default:
    /// the current hour, so every hour replayed is over.
    #[arg(long, value_parser = parse_hour)]
    until: Option<Hour>,
}

impl WatchInputs {
    fn request(self, state_dir: PathBuf) -> tally_rating::watch::WatchRequest {
        let until = self
            .until
            .unwrap_or_else(|| Hour::containing(chrono::Utc::now()));
        let since = self
            .since
            .unwrap_or_else(|| until.previous().to_datetime().format("%Y-%m").to_string());
        tally_rating::watch::WatchRequest {
            lake: self.lake,
            tariffs: self.tariffs,
            contracts: self.contracts,
            ledger: self.ledger,
            since,
            until,
            state_dir,
        }
    }
}

fn parse_lake(text: &str) -> Result<tally_rating::Lake, String> {
    tally_rating::Lake::open(text).map_err(|error| error.to_string())
}

fn parse_hour(text: &str) -> Result<Hour, String> {
    Hour::parse_partition_value(text)
        .or_else(|_| {
            text.parse::<Minute>()
                .map(|minute| Hour::containing(minute.to_datetime()))
        })
        .map_err(|_| {
            format!("'{text}' is not an hour such as 2026-10-05T14 or 2026-10-05T14:00:00Z")
        })
}

#[derive(Subcommand)]
enum BallistaCommand {
    /// The cluster's scheduler: plans each query's stages and hands them to executors.
    Scheduler {
        /// gRPC for clients and executors.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
    },
    /// An executor: runs the stages the scheduler hands it and serves their results.
    Executor {
        /// Arrow Flight on this address, gRPC on the next port.
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: SocketAddr,
        /// Where shuffle files go.
        #[arg(long)]
        work_dir: PathBuf,
        /// Tasks at a time (default: the machine's cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// A prepaid account's balance, unpaid charges and when the balance runs out.
    Status {
        account: String,
        /// Also print every settled hour: charge, unpaid, retroactive charge, write-off,
        /// with the balance after it.
        #[arg(long)]
        hours: bool,
        #[command(flatten)]
        inputs: WatchInputs,
    },
    /// May these servers start (T5: 24 h of each covered, minimum starting budgets)?
    /// Exits 0 when allowed, 3 when refused.
    Check {
        account: String,
        /// Servers to start: `TEMPLATE[/GPUS][×N]`, e.g. `infinityai-a100/8` or
        /// `powerai-4090×2` (or `*2`); repeatable.
        #[arg(long = "start", required = true)]
        start: Vec<tally_rating::budget::StartRequest>,
        #[command(flatten)]
        inputs: WatchInputs,
    },
}

#[derive(Subcommand)]
enum TariffCommand {
    /// Validate a tariff file; errors name the line and field.
    Check { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Csv,
    /// JSON lines: one object per row.
    Json,
    Parquet,
}

#[derive(Clone, Copy, ValueEnum)]
enum WireFormat {
    Json,
    Arrow,
}

fn main() -> Result<()> {
    // `RUST_LOG` chooses what is logged (default: warnings); `TALLY_LOG_FORMAT=json` writes
    // one JSON object a line, with every field, for log shippers.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TALLY_LOG_FORMAT").is_ok_and(|format| format == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Demo {
            out,
            month,
            scale,
            seed,
        } => {
            let mut config = tally_demo::DemoConfig::new(out);
            config.month = month;
            config.scale = scale;
            config.seed = seed;
            let started = Instant::now();
            let report = runtime.block_on(tally_demo::run(&config))?;
            print!(
                "{}",
                tally_demo::summary::render(&report, started.elapsed())
            );
        }
        Command::Collect {
            config,
            flush_seconds,
            check,
        } => {
            let path = config;
            let config = tally_collector::config::AgentConfig::load(&path)?;
            if check {
                println!(
                    "{}: valid (host {}, spool {}, brokers {})",
                    path.display(),
                    config.host,
                    config.spool.dir.display(),
                    config.ship.brokers
                );
                return Ok(());
            }
            let metrics = std::sync::Arc::new(tally_collector::metrics::AgentMetrics::default());
            let report = runtime.block_on(tally_collector::agent::run(
                config,
                metrics,
                shutdown_signal(),
                std::time::Duration::from_secs(flush_seconds),
            ))?;
            println!(
                "sampled {} minutes, {} samples taken, {} sent; {}",
                report.minutes_sampled,
                report.samples_taken,
                report.samples_sent,
                match report.stopped {
                    tally_collector::forward::Stopped::Drained => "spool drained",
                    tally_collector::forward::Stopped::Pending =>
                        "samples left in the spool for the next start",
                }
            );
        }
        Command::Simulate {
            brokers,
            topic,
            from,
            to,
            scale,
            seed,
            encoding,
            pause_ms,
        } => {
            if to <= from {
                bail!("--to ({to}) must come after --from ({from})");
            }
            let fleet = tally_collector::Fleet::generate(tally_collector::FleetSpec {
                seed,
                start: from,
                end: to,
                scale,
            });
            let mut config = tally_collector::ShipConfig::new(brokers, topic);
            config.encoding = match encoding {
                WireFormat::Json => Encoding::Json,
                WireFormat::Arrow => Encoding::Arrow,
            };
            let shipper = tally_collector::Shipper::connect(&config)?;
            let mut samples = 0;
            runtime.block_on(async {
                for chunk in fleet.chunks(60) {
                    samples += shipper.ship(chunk).await?.samples;
                    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                }
                anyhow::Ok(())
            })?;
            println!(
                "shipped {samples} samples of {} resources",
                fleet.resources.len()
            );
        }
        Command::Aggregate {
            lake,
            brokers,
            topic,
            dead_letter_topic,
            group,
            all_partitions,
            until_drained,
            from_file,
            lateness_minutes,
            checkpoint_seconds,
            metrics_file,
            keyring,
        } => {
            let mut config = tally_aggregator::AggregateConfig::new(lake);
            if let Some(path) = keyring {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the keyring {}", path.display()))?;
                let keyring = tally_model::signing::Keyring::parse(&text)
                    .map_err(|error| anyhow::anyhow!("keyring {}: {error}", path.display()))?;
                config.keyring = Some(Arc::new(keyring));
            }
            config.lateness_minutes = lateness_minutes;
            config.checkpoint_interval = std::time::Duration::from_secs(checkpoint_seconds);
            let report = if let Some(path) = from_file {
                let (report, dead_letters) = tally_aggregator::run_file(&config, &path)?;
                for letter in &dead_letters {
                    eprintln!(
                        "{}: line {}: {} ({})",
                        path.display(),
                        letter.item.unwrap_or_default(),
                        letter.detail,
                        letter.reason
                    );
                }
                report
            } else {
                let brokers = brokers.context("--brokers is required without --from-file")?;
                let mut input = tally_aggregator::KafkaInput::new(brokers, topic);
                input.dead_letter_topic = dead_letter_topic;
                input.group_id = group;
                input.metrics_file = metrics_file;
                if all_partitions {
                    input.ownership = tally_aggregator::Ownership::AllPartitions;
                }
                input.until_drained = until_drained;
                // As a service, SIGINT/SIGTERM stop it gracefully: it seals what the
                // watermark allows and writes its manifests; a later start resumes there.
                // (A drained run that is killed resumes from its manifests just the same.)
                let stop = Arc::new(AtomicBool::new(false));
                if !until_drained {
                    input.stop = Some(stop.clone());
                }
                runtime.spawn(async move {
                    let mut terminate =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                    stop.store(true, Ordering::Release);
                    std::io::Result::Ok(())
                });
                tally_aggregator::run_kafka(&config, &input)?
            };
            println!("{report:#?}");
        }
        Command::Rate {
            lake,
            month,
            tariffs,
            contracts,
            out,
            issue,
            explain,
            tariff_overrides,
            compare,
            ballista,
        } => {
            let request = tally_rating::RateRequest {
                out: out.unwrap_or_else(|| lake.clone()),
                lake,
                month,
                tariffs,
                contracts,
                issue,
                explain,
                engine: match ballista {
                    Some(scheduler) => tally_rating::Engine::Ballista { scheduler },
                    None => tally_rating::Engine::InProcess,
                },
            };
            if compare {
                let comparison = runtime
                    .block_on(tally_rating::compare::compare(&request, &tariff_overrides))?;
                print!("{}", comparison.render());
                return Ok(());
            }
            let report = runtime.block_on(tally_rating::rate(&request))?;
            match &report.explanation {
                Some(explanation) => print!("{explanation}"),
                None => print_rate_report(&report),
            }
        }
        Command::Ballista { command } => match command {
            BallistaCommand::Scheduler { bind } => {
                runtime.block_on(tally_rating::distributed::run_scheduler(bind))?;
            }
            BallistaCommand::Executor {
                bind,
                scheduler,
                work_dir,
                concurrent_tasks,
            } => {
                std::fs::create_dir_all(&work_dir)
                    .with_context(|| format!("creating {}", work_dir.display()))?;
                let concurrent_tasks = concurrent_tasks.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |cores| cores.get())
                });
                runtime.block_on(tally_rating::distributed::run_executor(
                    tally_rating::distributed::ExecutorOptions {
                        bind,
                        scheduler,
                        work_dir,
                        concurrent_tasks,
                    },
                ))?;
            }
        },
        Command::Budget {
            command:
                BudgetCommand::Status {
                    account,
                    hours,
                    inputs,
                },
        } => {
            let request = inputs.request(std::env::temp_dir());
            let timeline = runtime.block_on(budget_timeline(&request, &account))?;
            print_budget(&timeline);
            if hours {
                for entry in &timeline.entries {
                    println!(
                        "  {} {:<18} {:>14} balance {}",
                        entry.hour.as_deref().unwrap_or(""),
                        entry.entry.as_str(),
                        entry.amount.normalize(),
                        entry.balance.unwrap_or_default().normalize()
                    );
                }
            }
        }
        Command::Budget {
            command:
                BudgetCommand::Check {
                    account,
                    start,
                    inputs,
                },
        } => {
            let request = inputs.request(std::env::temp_dir());
            let timeline = runtime.block_on(budget_timeline(&request, &account))?;
            let tariff = runtime.block_on(account_tariff(&request, &account))?;
            let decision = tally_rating::budget::check_start(&tariff, &timeline, &start)?;
            println!("{}", decision.reason);
            if !decision.allowed {
                std::process::exit(3);
            }
        }
        Command::Watch {
            inputs,
            state,
            webhook,
            webhook_attempts,
            brokers,
            topic,
            follow,
        } => {
            use tally_rating::deliver::{KafkaTopic, Sink, Webhook};
            let mut sinks = vec![Sink::Stdout];
            if let Some(url) = webhook {
                sinks.push(Sink::Webhook(Webhook::new(
                    &url,
                    webhook_attempts,
                    std::time::Duration::from_millis(500),
                )?));
            }
            if let Some(brokers) = brokers {
                sinks.push(Sink::Kafka(KafkaTopic::connect(&brokers, &topic)?));
            }
            let request = inputs.request(state);
            let stop = Arc::new(AtomicBool::new(false));
            if follow.is_some() {
                let stop = stop.clone();
                runtime.spawn(async move {
                    shutdown_signal().await;
                    stop.store(true, Ordering::Release);
                });
            }
            loop {
                let mut request = request.clone();
                if follow.is_some() {
                    request.until = Hour::containing(chrono::Utc::now());
                }
                let report = runtime.block_on(tally_rating::watch::run(&request, &sinks))?;
                eprintln!(
                    "watch up to {}: {} notices found, {} sent; {} ledger entries written; {} prepaid accounts",
                    request.until.partition_value(),
                    report.notices_found,
                    report.notices_sent,
                    report.ledger_entries_written,
                    report.accounts
                );
                let Some(seconds) = follow else { break };
                let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
                while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
        }
        Command::Keygen { host, out } => {
            use std::io::{Read, Write};
            use std::os::unix::fs::OpenOptionsExt;
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut seed))
                .context("reading /dev/urandom")?;
            let key = tally_model::signing::HostKey::from_seed(&host, seed);
            // Never overwrite a key: a host's old key may still be in keyrings.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (an existing key is kept)", out.display()))?;
            writeln!(file, "{}", key.seed_hex())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "[[hosts]]\nhost = \"{host}\"\npublic_key = \"{}\"",
                key.public_hex()
            );
        }
        Command::Tariff {
            command: TariffCommand::Check { file },
        } => {
            let tariff = tally_rating::check_tariff(&file)?;
            println!(
                "{}: tariff {} version {} is valid",
                file.display(),
                tariff.id,
                tariff.version
            );
        }
        Command::Sql {
            lake,
            query,
            format,
            output,
            history,
        } => {
            let format = match format {
                SqlFormat::Table => tally_rating::sql::Format::Table,
                SqlFormat::Csv => tally_rating::sql::Format::Csv,
                SqlFormat::Json => tally_rating::sql::Format::Json,
                SqlFormat::Parquet => tally_rating::sql::Format::Parquet,
            };
            if format == tally_rating::sql::Format::Parquet && output.is_none() {
                bail!("--format parquet writes a file: give it with --output FILE");
            }
            let context = runtime.block_on(tally_rating::sql::session(&lake))?;
            let answer = |statement: &str| -> Result<()> {
                let batches = runtime.block_on(tally_rating::sql::run(&context, statement))?;
                match &output {
                    Some(path) => {
                        let mut file = std::fs::File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        tally_rating::sql::write(&batches, format, &mut file)?;
                    }
                    None => tally_rating::sql::write(&batches, format, &mut std::io::stdout())?,
                }
                Ok(())
            };
            match query {
                Some(query) => answer(&query)?,
                None => sql_session(&context, history, answer)?,
            }
        }
    }
    Ok(())
}

/// `tally sql` without a query: statements from the terminal, with line editing and a
/// history file, or from stdin when it is not a terminal. A failed statement prints its
/// error and the session goes on (from stdin, the exit status is then 1).
fn sql_session(
    context: &tally_rating::sql::SessionContext,
    history: Option<PathBuf>,
    answer: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    use std::io::{IsTerminal, Read};
    let tables = || {
        println!("{}", tally_rating::sql::table_names(context).join("\n"));
    };
    if !std::io::stdin().is_terminal() {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading statements from stdin")?;
        let (mut statements, rest) = tally_rating::sql::split_statements(&text);
        if !rest.trim().is_empty() {
            statements.push(rest.trim().to_owned());
        }
        let mut failed = false;
        for statement in statements {
            if let Err(error) = answer(&statement) {
                eprintln!("error: {error:#}");
                failed = true;
            }
        }
        if failed {
            std::process::exit(1);
        }
        return Ok(());
    }
    let history = history.or_else(|| {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".tally_sql_history"))
    });
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    if let Some(path) = &history {
        // A first session has no history yet.
        let _ = editor.load_history(path);
    }
    println!(
        "tables: {}; statements end with ';'; .tables, .quit",
        tally_rating::sql::table_names(context).join(", ")
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "tally> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let command = line.trim();
                if pending.is_empty() && command.starts_with('.') {
                    let _ = editor.add_history_entry(command);
                    match command {
                        ".quit" | ".exit" => break,
                        ".tables" => tables(),
                        other => eprintln!("unknown command {other}: .tables, .quit"),
                    }
                    continue;
                }
                pending.push_str(&line);
                pending.push('\n');
                let (statements, rest) = tally_rating::sql::split_statements(&pending);
                if statements.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(pending.trim());
                for statement in statements {
                    if let Err(error) = answer(&statement) {
                        eprintln!("error: {error:#}");
                    }
                }
                pending = rest.trim_start().to_owned();
            }
            Err(rustyline::error::ReadlineError::Interrupted) => pending.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(error) => return Err(error).context("reading a statement"),
        }
    }
    if let Some(path) = &history
        && let Err(error) = editor.save_history(path)
    {
        eprintln!("cannot save the history to {}: {error}", path.display());
    }
    Ok(())
}

/// One prepaid account's budget, replayed.
async fn budget_timeline(
    request: &tally_rating::watch::WatchRequest,
    account: &str,
) -> Result<tally_rating::budget::Timeline> {
    if request.ledger.is_none() {
        bail!("--ledger is needed: the balance is the ledger's top-ups less the charges");
    }
    let findings = tally_rating::watch::find(request).await?;
    findings.timelines.get(account).cloned().with_context(|| {
        format!(
            "account '{account}' has no budget: no contract, or its tariff has no [prepaid] section"
        )
    })
}

/// The tariff version `account` is on in the month of `--until`.
async fn account_tariff(
    request: &tally_rating::watch::WatchRequest,
    account: &str,
) -> Result<tally_model::tariff::Tariff> {
    let tariffs = tally_rating::tariff::load_tariffs(&request.tariffs)?;
    let contracts = tally_rating::contracts::load_contracts(&request.contracts)?;
    let contract = contracts
        .get(account)
        .with_context(|| format!("account '{account}' has no contract"))?;
    let day = request.until.previous().to_datetime().date_naive();
    tally_rating::tariff::version_for(&tariffs, &contract.tariff_id, day)
        .cloned()
        .with_context(|| {
            format!(
                "no version of tariff '{}' in force on {day}",
                contract.tariff_id
            )
        })
}

fn print_budget(timeline: &tally_rating::budget::Timeline) {
    println!("account {}", timeline.account_id);
    println!("  balance           {}", timeline.balance.normalize());
    match timeline.exhausted_since {
        Some(hour) => println!(
            "  exhausted since   hour {}: {} unpaid, of which a top-up now would charge {}",
            hour.partition_value(),
            timeline.unpaid.normalize(),
            timeline.retroactive_due.normalize()
        ),
        None => println!("  exhausted         no"),
    }
    if let Some(hour) = timeline.last_hour {
        println!(
            "  last hour         {} charged {}",
            hour.partition_value(),
            timeline.last_charge.normalize()
        );
    }
    match timeline.runs_out() {
        Some(hour) => println!(
            "  runs out          hour {} at the last hour's rate",
            hour.partition_value()
        ),
        None => println!("  runs out          not at the last hour's rate"),
    }
}

/// What a `tally rate` run did, for people.
fn print_rate_report(report: &tally_rating::RateReport) {
    match (report.issued, report.correction_round) {
        (true, Some(round)) => println!(
            "{}: issued earlier; correction round {round}: {} correction lines",
            report.month, report.line_items
        ),
        (true, None) if report.written.is_empty() => println!(
            "{}: issued earlier; nothing changed, no corrections written",
            report.month
        ),
        (issued, _) => println!(
            "{}: {} line items{}",
            report.month,
            report.line_items,
            if issued { ", month issued" } else { "" }
        ),
    }
    for invoice in &report.invoices {
        println!(
            "  {:<24} {:<14} {:>4} lines  total {:>12} {}  due {:>12}",
            invoice.account_id,
            invoice.tariff_id,
            invoice.lines,
            invoice.total,
            invoice.currency,
            invoice.amount_due
        );
    }
    println!("line items: {}", report.line_items_file);
    println!("invoices:   {}", report.invoices_dir);
}

/// Completes at SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
