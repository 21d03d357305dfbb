//! Wiring: builds the adapters that back the ports from the configuration. The tiers only see
//! the traits.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Backend, Settings};
use crate::local::{DeadLetter, FsObjectStore, ProcessFleet, SqliteInstanceStatus, SqliteQueue, WorkerCommand};
use crate::ports::{Fleet, InstanceStatus, ObjectStore, WorkQueue};

/// The storage and queues every tier uses.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn ObjectStore>,
    pub requests: Arc<dyn WorkQueue>,
    pub responses: Arc<dyn WorkQueue>,
    pub dead_letter: Arc<dyn WorkQueue>,
}

impl Ports {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        match settings.backend {
            Backend::Local => {
                let db = settings.queue_db();
                let q = &settings.queues;
                let dead_letter = DeadLetter {
                    queue: q.dead_letter.clone(),
                    max_receives: q.max_receives,
                };
                Ok(Self {
                    store: Arc::new(FsObjectStore::new(&settings.data_dir)),
                    requests: Arc::new(SqliteQueue::open(&db, &q.requests, Some(dead_letter))?),
                    responses: Arc::new(SqliteQueue::open(&db, &q.responses, None)?),
                    dead_letter: Arc::new(SqliteQueue::open(&db, &q.dead_letter, None)?),
                })
            }
        }
    }
}

/// The app-tier fleet the scaler drives. Locally, workers are `worker_program run --name ...`.
pub async fn fleet(settings: &Settings, worker_program: PathBuf) -> anyhow::Result<Arc<dyn Fleet>> {
    match settings.backend {
        Backend::Local => {
            let command = WorkerCommand {
                program: worker_program,
                args: vec!["run".into()],
                env: Vec::new(),
            };
            Ok(Arc::new(ProcessFleet::new(command, &settings.queue_db())?))
        }
    }
}

/// How the app-tier instance `name` reports its state to the fleet.
pub async fn instance_status(settings: &Settings, name: &str) -> anyhow::Result<Arc<dyn InstanceStatus>> {
    match settings.backend {
        Backend::Local => Ok(Arc::new(SqliteInstanceStatus::open(&settings.queue_db(), name)?)),
    }
}
