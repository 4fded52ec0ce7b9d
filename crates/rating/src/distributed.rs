//! Rating's DataFusion plans on a DataFusion Ballista cluster (`tally rate --ballista`).
//!
//! The client plans the month's usage queries as in process; Ballista's scheduler splits
//! each into stages and its executors run them, reading the lake themselves. Pricing,
//! the invoices and every write stay in the client: what the cluster computes is the
//! usage per resource, the part that grows with the fleet.
//!
//! Tally's functions travel with the plans. `resource_usage` folds one month, whose
//! first hour and length are part of the function, not of its arguments: the codecs
//! here write them next to the function's name, so the scheduler and the executors
//! rebuild exactly the fold the client planned (a registry by name could only hold one
//! month). The scheduler and executor processes are Tally's own (`tally ballista
//! scheduler|executor`) because only they know these codecs; everything else (plan
//! nodes, shuffles, file formats) goes to Ballista's codecs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use tally_lake::Lake;

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
pub async fn remote_session(
    scheduler: &str,
    config: SessionConfig,
    lake: &Lake,
) -> Result<SessionContext> {
    // The executors open the files by the paths the client plans with.
    if lake.local_root().is_none() {
        return Err(Error::Ballista {
            scheduler: scheduler.to_owned(),
            detail: format!(
                "the lake {lake} is on an object store; Tally's executors read a lake in a \
                 directory they share with the client (an object-store lake on Ballista \
                 is not supported yet)"
            ),
        });
    }
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

/// A Ballista scheduler that knows Tally's functions, serving on `bind` until the
/// process ends.
pub async fn run_scheduler(bind: SocketAddr) -> Result<()> {
    let config = ballista_scheduler::config::SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
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
        override_logical_codec: Some(Arc::new(TallyLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(TallyPhysicalCodec::default())),
        ..Default::default()
    };
    ballista_executor::executor_process::start_executor_process(Arc::new(config))
        .await
        .map_err(|error| cluster_error("executor", options.bind, error))
}

fn cluster_error(role: &str, bind: SocketAddr, error: impl std::fmt::Display) -> Error {
    Error::Ballista {
        scheduler: format!("{role} on {bind}"),
        detail: error.to_string(),
    }
}
