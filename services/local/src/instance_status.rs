//! The `InstanceStatus` port of a local worker: its state and heartbeats, written to the shared
//! database's `instances` table, where its `ProcessFleet` reads them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection};

use crate::db::monotonic_ms;
use crate::errors::fleet_error;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::{InstanceState, InstanceStatus, PortResult};

/// A worker's side of the local fleet: it reports its state in the shared database.
pub struct SqliteInstanceStatus {
    name: String,
    db: Arc<Mutex<Connection>>,
}

impl SqliteInstanceStatus {
    pub fn open(db: &Path, name: &str) -> anyhow::Result<Self> {
        let conn = crate::db::open(db)?;
        // Status and heartbeats need not survive a power loss: no fsync per beat.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Self {
            name: name.to_owned(),
            db: Arc::new(Mutex::new(conn)),
        })
    }
}

impl SqliteInstanceStatus {
    /// Runs `update` on the shared database off the async threads, with this instance's name:
    /// how many rows it changed.
    async fn write(
        &self,
        update: impl FnOnce(&Connection, &str) -> rusqlite::Result<usize> + Send + 'static,
    ) -> anyhow::Result<usize> {
        let (db, name) = (self.db.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|p| p.into_inner());
            Ok(update(&conn, &name)?)
        })
        .await
        .context("status task failed")?
    }
}

#[async_trait]
impl InstanceStatus for SqliteInstanceStatus {
    async fn report(&self, state: InstanceState, busy: bool) -> PortResult<()> {
        let state = match state {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
        };
        self.write(move |conn, name| {
            conn.prepare_cached(
                "INSERT INTO instances (name, state, busy, updated_at_ms, pid, beat_mono_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET state = ?2, busy = ?3, updated_at_ms = ?4, pid = ?5, beat_mono_ms = ?6",
            )?
            .execute(params![name, state, busy, now_ms() as i64, std::process::id(), monotonic_ms() as i64])
        })
        .await
        .map(drop)
        .map_err(fleet_error)
    }

    async fn heartbeat(&self) -> PortResult<()> {
        let beaten = self
            .write(|conn, name| {
                conn.prepare_cached("UPDATE instances SET updated_at_ms = ?2, beat_mono_ms = ?3 WHERE name = ?1")?
                    .execute(params![name, now_ms() as i64, monotonic_ms() as i64])
            })
            .await
            .map_err(fleet_error)?;
        if beaten == 0 {
            // Its fleet sees no beat and stops it as silent: say why, where it can be read.
            tracing::warn!("this instance's row is gone from the fleet's table; its heartbeats reach nobody");
        }
        Ok(())
    }

    /// Kept in the instance's row, where its fleet reads it once the process has exited.
    async fn failed_to_start(&self, reason: &str) -> PortResult<()> {
        let reason = reason.to_owned();
        self.write(move |conn, name| {
            conn.prepare_cached("UPDATE instances SET start_failure = ?2 WHERE name = ?1")?
                .execute(params![name, reason])
        })
        .await
        .map(drop)
        .map_err(fleet_error)
    }
}
