//! Wiring: builds the adapters that back the ports from the configuration. The tiers only see
//! the traits.

// The AWS adapters' wiring, or, in a build without them, the same functions refusing clearly.
#[cfg_attr(not(feature = "aws"), path = "without_aws.rs")]
mod aws;
mod housekeeping;
mod web_tier_name;

pub use housekeeping::housekeeping;
pub use web_tier_name::{web_tier_name, WebTierName};

use std::sync::Arc;

use crate::settings::{Backend, Settings};
use anyhow::Context;
use imgrec_domain::ports::{
    ApiCalls, Fleet, InferenceSlots, InstanceStatus, Lease, MetricsSink, ObjectStore, ResponseQueues, Unlimited,
    WorkQueue,
};
use imgrec_local::{
    DeadLetter, FileSlots, FsObjectStore, ProcessFleet, SqliteInstanceStatus, SqliteLease, SqliteQueue,
    SqliteResponseQueues, WorkerCommand,
};

/// One process's link to its backend, shared by every adapter the wiring builds for it: the
/// cloud API calls they make, by operation (none locally), and on AWS one SDK configuration,
/// loaded once. Clones share both.
#[derive(Clone, Default)]
pub struct Connection {
    pub calls: ApiCalls,
    // Read by the AWS wiring only; a build without it has none to share.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    clients: Arc<aws::Clients>,
}

/// The storage and queues every tier uses: the adapters behind its ports.
#[derive(Clone)]
pub struct Adapters {
    pub store: Arc<dyn ObjectStore>,
    pub requests: Arc<dyn WorkQueue>,
    /// Each web tier's own response queue, by name.
    pub response_queues: Arc<dyn ResponseQueues>,
    pub dead_letter: Arc<dyn WorkQueue>,
    /// Pass it to the other wiring functions, so that they share its clients and its counts.
    pub connection: Connection,
}

impl Adapters {
    /// Connects, checking that every bucket and queue exists and is accessible.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        Self::connect_as(settings, None, Connection::default()).await
    }

    /// Connects as the app-tier instance `instance`: locally, requests it receives are marked as
    /// held by it, so that the fleet gives them back at once if it dies.
    pub async fn connect_as(
        settings: &Settings,
        instance: Option<&str>,
        connection: Connection,
    ) -> anyhow::Result<Self> {
        let q = &settings.queues;
        match settings.backend {
            Backend::Local => {
                let db = settings.local_db();
                let dead_letter = DeadLetter {
                    queue: q.dead_letter.clone(),
                    max_receives: q.max_receives,
                };
                Ok(Self {
                    store: Arc::new(local_store(settings)),
                    requests: Arc::new({
                        let requests = SqliteQueue::open(&db, &q.requests, Some(dead_letter))?;
                        match instance {
                            Some(name) => requests.received_by(name),
                            None => requests,
                        }
                    }),
                    response_queues: Arc::new(SqliteResponseQueues::open(&db)?),
                    dead_letter: Arc::new(SqliteQueue::open(&db, &q.dead_letter, None)?),
                    connection,
                })
            }
            Backend::Aws => aws::adapters(settings, connection).await,
        }
    }
}

/// The folder store, rid of temp files that a process killed mid-write left (younger ones may be
/// another process's writes in progress).
fn local_store(settings: &Settings) -> FsObjectStore {
    let store = FsObjectStore::new(&settings.data_dir);
    match store.sweep_temp_files(std::time::Duration::from_secs(600)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed temp files left by interrupted writes"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot sweep temp files"),
    }
    store
}

/// The app-tier fleet a scaler drives. Locally its workers are processes of the `app-tier`
/// binary beside this one (`app-tier run --name app-instanceK`), owned by `owner` (the process
/// holding the scaler lease).
pub async fn fleet(settings: &Settings, owner: &str, connection: &Connection) -> anyhow::Result<Arc<dyn Fleet>> {
    match settings.fleet.backend {
        Backend::Local => {
            let program = std::env::current_exe()
                .context("cannot find this program, to start the app tier beside it")?
                .with_file_name(WORKER_PROGRAM);
            let command = WorkerCommand {
                program,
                args: vec!["run".into()],
                env: Vec::new(),
                memory_max_bytes: Some(settings.fleet.worker_memory_max_bytes).filter(|&b| b > 0),
            };
            Ok(Arc::new(
                ProcessFleet::new(command, &settings.local_db(), settings.fleet.heartbeat_timeout(), owner)?
                    .fenced_by(SCALER_LEASE),
            ))
        }
        Backend::Aws => aws::fleet(settings, connection).await,
    }
}

/// The cores an app-tier instance shares with the others on its machine: the local fleet's
/// workers share this machine's (a slot per core unless `fleet.inference_slots` says otherwise);
/// an EC2 instance has its own.
pub fn inference_slots(settings: &Settings) -> anyhow::Result<Arc<dyn InferenceSlots>> {
    let cores = || std::thread::available_parallelism().map_or(1, |n| n.get());
    match (settings.fleet.backend, settings.fleet.inference_slots) {
        (Backend::Local, Some(0)) | (Backend::Aws, _) => Ok(Arc::new(Unlimited)),
        (Backend::Local, slots) => {
            let dir = settings.data_dir.join("slots");
            Ok(Arc::new(FileSlots::open(&dir, slots.unwrap_or_else(cores))?))
        }
    }
}

/// The app tier's binary, installed beside the web tier's and the scaler's.
const WORKER_PROGRAM: &str = "app-tier";

/// What a scaler must hold to act, as several may run: locally every web tier hosts one (a lease in
/// the shared database, which also fences the local fleet's launches); on AWS every web instance
/// runs one (a lease object in the input bucket, written with conditional puts). `holder` names
/// this process uniquely; locally it must be the fleet's owner.
pub async fn scaler_lease(
    settings: &Settings,
    holder: &str,
    connection: &Connection,
) -> anyhow::Result<Arc<dyn Lease>> {
    match settings.fleet.backend {
        Backend::Local => lease(settings, SCALER_LEASE, holder),
        Backend::Aws => aws::scaler_lease(settings, holder, connection).await,
    }
}

/// A lease among the local stack's processes, in their shared database.
fn lease(settings: &Settings, name: &str, holder: &str) -> anyhow::Result<Arc<dyn Lease>> {
    Ok(Arc::new(SqliteLease::open(&settings.local_db(), name, holder)?))
}

/// The local lease the acting scaler holds.
const SCALER_LEASE: &str = "scaler";

/// A name for this process that no other shares: `{host} (pid N, <id>)`.
pub fn unique_holder(host: &str) -> String {
    format!(
        "{host} (pid {}, {})",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Where the scaler publishes its metrics: CloudWatch for an AWS fleet; none locally (`/status`
/// and `/metrics` show them).
pub async fn metrics_sink(settings: &Settings, connection: &Connection) -> Option<Arc<dyn MetricsSink>> {
    match settings.fleet.backend {
        Backend::Local => None,
        Backend::Aws => aws::metrics_sink(settings, connection).await,
    }
}

/// More API keys for the web tier, from the SSM parameter `web.api_keys_parameter` when it is set
/// (read through AWS whatever the backend: the parameter is the deployment's).
pub async fn api_keys_parameter(settings: &Settings, connection: &Connection) -> anyhow::Result<Option<String>> {
    let Some(name) = settings.web.api_keys_parameter.as_deref().filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    aws::secure_parameter(settings, name, connection)
        .await
        .map(Some)
        .context("web.api_keys_parameter")
}

/// How the app-tier instance `name` reports its state to the fleet.
pub async fn instance_status(
    settings: &Settings,
    name: &str,
    connection: &Connection,
) -> anyhow::Result<Arc<dyn InstanceStatus>> {
    match settings.fleet.backend {
        Backend::Local => Ok(Arc::new(SqliteInstanceStatus::open(&settings.local_db(), name)?)),
        Backend::Aws => aws::instance_status(settings, name, connection).await,
    }
}
