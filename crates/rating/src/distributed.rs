//! Rating's DataFusion plans on a DataFusion Ballista cluster (`tally rate --ballista`).
//!
//! The client plans the month's usage queries as in process; Ballista's scheduler splits
//! each into stages and its executors run them, reading the lake themselves (a shared
//! directory, or an object store each node opens from its own environment:
//! [`StoresFromEnvironment`]). Pricing, the invoices and every write stay in the client:
//! what the cluster computes is the usage per resource, the part that grows with the
//! fleet.
//!
//! Tally's functions travel with the plans. `resource_usage` folds one month, whose
//! first hour and length are part of the function, not of its arguments: the codecs
//! here write them next to the function's name, so the scheduler and the executors
//! rebuild exactly the fold the client planned (a registry by name could only hold one
//! month). The scheduler and executor processes are Tally's own (`tally ballista
//! scheduler|executor`) because only they know these codecs; everything else (plan
//! nodes, shuffles, file formats) goes to Ballista's codecs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use tally_lake::Lake;
use tally_lake::object_store::ObjectStore;
use tally_lake::url::Url;

use crate::error::{Error, Result};
use crate::fold;
use crate::usage::popcount_udf;

/// Where rating's DataFusion plans run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process.
    #[default]
    InProcess,
    /// On a Ballista cluster, through its scheduler: `df://host:port` (any scheme; the
    /// host and port are what count).
    Ballista { scheduler: String },
}

/// A session whose plans run on the Ballista cluster of `scheduler`, with `config`'s
/// settings and Tally's codecs. Functions are registered on it afterwards (Ballista's
/// upgrade of a session replaces its function lists).
///
/// The scheduler and the executors open the lake's files by the paths or URLs the client
/// plans with: a lake in a directory must be one they all see (a shared mount), and a lake
/// on an object store is opened by each of them from its own environment
/// ([`StoresFromEnvironment`]).
pub async fn remote_session(scheduler: &str, config: SessionConfig) -> Result<SessionContext> {
    let config = config
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(TallyLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(TallyPhysicalCodec::default()));
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .build();
    SessionContext::remote_with_state(scheduler, state)
        .await
        .map_err(|error| Error::Ballista {
            scheduler: scheduler.to_owned(),
            detail: error.to_string(),
        })
}

/// How often a query still running on the cluster is reported.
const STILL_RUNNING_EVERY: Duration = Duration::from_secs(60);

/// `frame`'s result from the cluster. A query that has not finished after a minute is
/// reported each minute: a scheduler with no executor queues a job without a word, and
/// the client would otherwise wait in silence.
pub async fn collect_on_cluster(frame: DataFrame, scheduler: &str) -> Result<Vec<RecordBatch>> {
    let started = Instant::now();
    let collect = frame.collect();
    tokio::pin!(collect);
    let first = tokio::time::Instant::now() + STILL_RUNNING_EVERY;
    let mut ticks = tokio::time::interval_at(first, STILL_RUNNING_EVERY);
    loop {
        tokio::select! {
            batches = &mut collect => return Ok(batches?),
            _ = ticks.tick() => tracing::warn!(
                scheduler,
                minutes = started.elapsed().as_secs() / 60,
                "the query is still running on the Ballista cluster (a scheduler with no \
                 executor holds it until one registers: `tally ballista executor \
                 --scheduler …`)"
            ),
        }
    }
}

/// `resource_usage`'s month as bytes: its first hour and its length in hours.
fn encode_month(udaf: &AggregateUDF, buf: &mut Vec<u8>) {
    if let Some((first_hour, hours)) = fold::resource_usage_month(udaf) {
        buf.extend_from_slice(&first_hour.to_le_bytes());
        buf.extend_from_slice(&(hours as u64).to_le_bytes());
    }
}

/// The fold of the month in `buf`, or `name` is not Tally's.
fn decode_udaf(name: &str, buf: &[u8]) -> DataFusionResult<Arc<AggregateUDF>> {
    if name != fold::NAME {
        return Err(DataFusionError::Plan(format!(
            "aggregate function '{name}' is unknown to Tally's executors"
        )));
    }
    let month = <[u8; 16]>::try_from(buf).map_err(|_| {
        DataFusionError::Plan(format!(
            "'{name}' arrived with {} bytes of month, not 16: client and cluster run different Tally versions?",
            buf.len()
        ))
    })?;
    let (first_hour, hours) = month.split_at(8);
    let first_hour = i64::from_le_bytes(first_hour.try_into().unwrap_or_default());
    let hours = u64::from_le_bytes(hours.try_into().unwrap_or_default());
    let hours = usize::try_from(hours)
        .map_err(|_| DataFusionError::Plan(format!("'{name}' arrived with {hours} hours")))?;
    Ok(Arc::new(fold::resource_usage_udaf(first_hour, hours)))
}

fn decode_udf(name: &str) -> DataFusionResult<Arc<ScalarUDF>> {
    let popcount = popcount_udf();
    if name == popcount.name() {
        Ok(Arc::new(popcount))
    } else {
        Err(DataFusionError::Plan(format!(
            "scalar function '{name}' is unknown to Tally's executors"
        )))
    }
}

/// Ballista's logical codec, plus Tally's functions: client → scheduler.
#[derive(Debug, Default)]
pub struct TallyLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for TallyLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DataFusionResult<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DataFusionResult<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DataFusionResult<Arc<dyn TableProvider>> {
        self.ballista
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DataFusionResult<()> {
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DataFusionResult<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DataFusionResult<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> DataFusionResult<Arc<ScalarUDF>> {
        decode_udf(name)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DataFusionResult<Arc<AggregateUDF>> {
        decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DataFusionResult<()> {
        encode_month(node, buf);
        Ok(())
    }
}

/// Ballista's physical codec, plus Tally's functions: scheduler → executors.
#[derive(Debug, Default)]
pub struct TallyPhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for TallyPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DataFusionResult<()> {
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> DataFusionResult<Arc<ScalarUDF>> {
        decode_udf(name)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DataFusionResult<Arc<AggregateUDF>> {
        decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DataFusionResult<()> {
        encode_month(node, buf);
        Ok(())
    }
}

/// The object stores a scheduler or an executor reads lakes from: a store the plans name
/// (`s3://bucket/`, `gs://…`, `az://…`) is opened the first time it is named, from this
/// process's environment as `--lake` opens it (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …), and
/// kept for the process's life. Credentials stay with the nodes; the plans carry only
/// URLs. Each node of the cluster needs the settings of the stores its lakes are on.
#[derive(Debug, Default)]
pub struct StoresFromEnvironment {
    opened: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for StoresFromEnvironment {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.opened.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DataFusionResult<Arc<dyn ObjectStore>> {
        self.opened.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DataFusionResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.opened.get_store(url) {
            return Ok(store);
        }
        // Two tasks may open the same store at once; either copy serves.
        let lake = Lake::open(url.as_str()).map_err(|error| {
            DataFusionError::External(
                format!("{error} (the store's settings come from this node's environment)").into(),
            )
        })?;
        match lake.object_store() {
            Some((base, store)) => {
                self.opened.register_store(&base, Arc::clone(&store));
                Ok(store)
            }
            // A local path: the default registry's answer (`file://` or an error).
            None => self.opened.get_store(url),
        }
    }
}

/// A Ballista scheduler that knows Tally's functions, serving on `bind` until the
/// process ends.
pub async fn run_scheduler(bind: SocketAddr) -> Result<()> {
    // The scheduler lists the lake's files when it plans a query's stages.
    let stores: Arc<dyn ObjectStoreRegistry> = Arc::new(StoresFromEnvironment::default());
    let session_builder =
        move |config: SessionConfig| -> DataFusionResult<SessionState> {
            let runtime = RuntimeEnvBuilder::new()
                .with_object_store_registry(Arc::clone(&stores))
                .build_arc()?;
            Ok(SessionStateBuilder::new_from_existing(
                ballista_core::utils::default_session_builder(config)?,
            )
            .with_runtime_env(runtime)
            .build())
        };
    let config = ballista_scheduler::config::SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        override_session_builder: Some(Arc::new(session_builder)),
        override_logical_codec: Some(Arc::new(TallyLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(TallyPhysicalCodec::default())),
        ..Default::default()
    };
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config)
        .await
        .map_err(|error| cluster_error("scheduler", bind, error))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|error| cluster_error("scheduler", bind, error))
}

/// Where an executor serves and whom it works for.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// Arrow Flight (results and shuffles) on this address; gRPC on the next port.
    pub bind: SocketAddr,
    pub scheduler: SocketAddr,
    /// Shuffle files.
    pub work_dir: PathBuf,
    /// Tasks at a time.
    pub concurrent_tasks: usize,
}

/// A Ballista executor that knows Tally's functions, working until the process ends.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    let host = options.bind.ip().to_string();
    let stores: Arc<dyn ObjectStoreRegistry> = Arc::new(StoresFromEnvironment::default());
    let spill_dir = options.work_dir.clone();
    let runtime = move |_: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_temp_file_path(spill_dir.clone())
            .with_object_store_registry(Arc::clone(&stores))
            .build_arc()
    };
    let config = ballista_executor::executor_process::ExecutorProcessConfig {
        bind_host: host.clone(),
        external_host: Some(host),
        port: options.bind.port(),
        grpc_port: options.bind.port().saturating_add(1),
        scheduler_host: options.scheduler.ip().to_string(),
        scheduler_port: options.scheduler.port(),
        // The scheduler may still be starting.
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrent_tasks.max(1),
        work_dir: Some(options.work_dir.display().to_string()),
        override_runtime_producer: Some(Arc::new(runtime)),
        override_logical_codec: Some(Arc::new(TallyLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(TallyPhysicalCodec::default())),
        ..Default::default()
    };
    ballista_executor::executor_process::start_executor_process(Arc::new(config))
        .await
        .map_err(|error| cluster_error("executor", options.bind, error))
}

/// An address on 127.0.0.1 for a node started on this machine: a free port whose next
/// port is free too (an executor serves Arrow Flight on the one and gRPC on the next).
pub fn free_loopback_address() -> std::io::Result<SocketAddr> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if first.port() < u16::MAX && TcpListener::bind(("127.0.0.1", first.port() + 1)).is_ok() {
            return Ok(first);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no two adjacent free ports on 127.0.0.1",
    ))
}

/// Waits until a node listens on `address`, for at most `within`.
pub fn wait_until_listening(address: SocketAddr, within: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listens on {address} after {within:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn cluster_error(role: &str, bind: SocketAddr, error: impl std::fmt::Display) -> Error {
    Error::Ballista {
        scheduler: format!("{role} on {bind}"),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("a URL")
    }

    #[test]
    fn a_store_a_plan_names_is_opened_once_and_kept() {
        let stores = StoresFromEnvironment::default();
        let first = stores
            .get_store(&url(
                "s3://tally-lake/rollups/hour=2026-10-01T00/p000.parquet",
            ))
            .expect("an S3 store from the environment");
        let again = stores
            .get_store(&url("s3://tally-lake/line_items/"))
            .expect("the same store");
        assert!(Arc::ptr_eq(&first, &again), "the bucket was opened twice");
        let other = stores
            .get_store(&url("s3://another-lake/rollups/"))
            .expect("another bucket's store");
        assert!(!Arc::ptr_eq(&first, &other), "two buckets share a store");
        stores
            .get_store(&url("file:///srv/lake/rollups/"))
            .expect("a directory lake's files");
        let unknown = stores
            .get_store(&url("ftp://example/lake/"))
            .expect_err("no store speaks ftp")
            .to_string();
        assert!(
            unknown.contains("ftp://example/lake/") && unknown.contains("environment"),
            "{unknown}"
        );
    }
}
