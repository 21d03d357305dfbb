//! The `Fleet` port on this machine's processes: each app-tier instance is an `app-tier run`
//! child, recorded with its heartbeats in the shared database (which each writes through
//! `SqliteInstanceStatus`). This file holds the fleet's state and its view of the instances;
//! `children` starts and stops this fleet's own workers, `table` keeps the `instances` table
//! that every web tier's fleet shares.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::Connection;

use crate::db::monotonic_ms;
use crate::errors::fleet_error;
use crate::start_failures::StartFailures;
use imgrec_domain::ports::fleet::{instance_number, plan};
use imgrec_domain::ports::{Fleet, FleetChange, Instance, InstanceState, LaunchFailure, PortResult};
use table::Gone;

mod children;
mod table;
#[cfg(test)]
mod tests;

/// How long a worker asked to stop (SIGTERM) gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start one app-tier worker; the scaler adds `--name app-instanceK`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// A worker's data segment at most (RLIMIT_DATA: heap and private mappings), the local form of
    /// systemd's `MemoryMax`: past it an allocation fails and the worker dies, its requests retried.
    pub memory_max_bytes: Option<u64>,
}

struct WorkerProcess {
    child: Child,
    launched_at: SystemTime,
    /// When it was started, on the monotonic clock its heartbeats use.
    launched_mono_ms: u64,
    retiring: bool,
    /// Set when the worker missed its heartbeats and was sent SIGTERM: SIGKILL after this.
    kill_at: Option<Instant>,
    /// Whether it has reported ready (running) since it was started.
    ready: bool,
}

impl WorkerProcess {
    /// Whether its exit, now, is a start that failed: it never became ready, and the scaler did
    /// not retire it (a worker stopped for missing its heartbeats while it started did fail).
    fn failed_to_start(&self) -> bool {
        !self.ready && (!self.retiring || self.kill_at.is_some())
    }
}

/// One row of the shared `instances` table.
struct Row {
    state: String,
    busy: bool,
    updated_at_ms: u64,
    /// The worker's last heartbeat on the monotonic clock (none from a worker of an older release).
    beat_mono_ms: Option<u64>,
    pid: Option<u32>,
    owner: Option<String>,
}

/// App-tier instances as child processes of this one. Workers report readiness and busyness in
/// the shared database (`SqliteInstanceStatus`); a worker that exits without being retired is
/// logged as crashed and dropped, so the scaler starts a replacement on its next tick.
///
/// Several web tiers share one database, and whichever holds the scaler's lease acts on the
/// fleet. Workers started by another web tier are listed too: as they report while that web tier
/// is alive, and as stopping once it is gone (they got SIGHUP when it died; they are killed if
/// they linger). So they count against the cap and keep their names until they have exited.
///
/// Nothing here blocks the caller's async runtime: the database and `/proc` are read on tokio's
/// blocking pool, and workers are started by a launcher thread of the fleet's own, since
/// `PR_SET_PDEATHSIG` fires when the *thread* that started a child exits (a blocking-pool thread
/// retires after 10 s idle, which would stop every worker it had started).
pub struct ProcessFleet {
    processes: Arc<Processes>,
    launcher: Mutex<std::sync::mpsc::Sender<Launch>>,
}

/// A launch for the launcher thread, and where its outcome goes.
type Launch = (Arc<Processes>, String, tokio::sync::oneshot::Sender<anyhow::Result<()>>);

/// The fleet's state and its blocking operations.
struct Processes {
    command: WorkerCommand,
    /// The process this fleet belongs to (a lease holder: a web tier, whatever its name), recorded
    /// on the workers it starts.
    owner: String,
    workers: Mutex<HashMap<String, WorkerProcess>>,
    /// Workers of a gone web tier, by name: the process seen orphaned, and since when. A name
    /// may be claimed again once its worker is gone: a new process under it is a new orphan.
    orphans: Mutex<HashMap<String, (u32, Instant)>>,
    db: Arc<Mutex<Connection>>,
    /// Rung for the requests given back from a gone instance.
    bells: crate::bells::Bells,
    heartbeat_timeout: Duration,
    /// The lease a launch must be made under (the scaler's), checked in the statement that
    /// claims the name: a scaler whose lease ran out cannot start a worker, however late its
    /// launch comes.
    fence: std::sync::OnceLock<String>,
    /// Workers that exited before they were ready, holding back the next launches.
    start_failures: Mutex<StartFailures>,
}

impl ProcessFleet {
    pub fn new(command: WorkerCommand, db: &Path, heartbeat_timeout: Duration, owner: &str) -> anyhow::Result<Self> {
        let processes = Arc::new(Processes {
            command,
            owner: owner.to_owned(),
            workers: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            fence: std::sync::OnceLock::new(),
            db: Arc::new(Mutex::new(crate::db::open(db)?)),
            bells: crate::bells::Bells::beside(db),
            heartbeat_timeout,
            start_failures: Mutex::new(StartFailures::default()),
        });
        let (launcher, launches) = std::sync::mpsc::channel::<Launch>();
        std::thread::Builder::new()
            .name("fleet-launcher".into())
            .spawn(move || {
                // Ends when the fleet is dropped; its children then get their SIGHUP.
                for (processes, name, done) in launches {
                    let _ = done.send(processes.launch(&name));
                }
            })
            .context("cannot start the fleet's launcher thread")?;
        Ok(Self {
            processes,
            launcher: Mutex::new(launcher),
        })
    }

    /// Launches only while the owner holds the lease `name` (the scaler's).
    pub fn fenced_by(self, lease: &str) -> Self {
        // Set once, as the fleet is built: a fence that could change would fence nothing.
        let _ = self.processes.fence.set(lease.to_owned());
        self
    }

    /// Starts `app-tier run --name {name}` on the launcher thread.
    pub async fn launch(&self, name: &str) -> anyhow::Result<()> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.launcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((self.processes.clone(), name.to_owned(), done))
            .map_err(|_| anyhow::anyhow!("the fleet's launcher thread is gone"))?;
        outcome.await.context("the fleet's launcher thread is gone")?
    }

    /// Asks `name` to finish what it holds and stop (SIGTERM).
    pub async fn retire(&self, name: &str) -> anyhow::Result<()> {
        self.processes.retire(name)
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Processes) -> T + Send + 'static) -> PortResult<T> {
        let processes = self.processes.clone();
        tokio::task::spawn_blocking(move || f(&processes))
            .await
            .map_err(|e| fleet_error(anyhow::anyhow!("fleet task failed: {e}")))
    }
}

#[async_trait]
impl Fleet for ProcessFleet {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        self.blocking(Processes::instances).await?
    }

    async fn scale_to(&self, desired: usize, max: usize) -> PortResult<FleetChange> {
        let mut resize = plan(desired, max, &self.instances().await?);
        if let Some(left) = self.processes.start_failures().held(Instant::now()) {
            if !resize.launch.is_empty() {
                tracing::debug!(
                    wait_ms = left.as_millis() as u64,
                    "launches held back: instances exit before they are ready"
                );
                resize.launch.clear();
            }
        }
        for name in &resize.launch {
            self.launch(name).await.map_err(fleet_error)?;
        }
        for name in &resize.retire {
            if self.retire(name).await.is_err() {
                // Another web tier's, still listed as serving: its own fleet stops it.
                tracing::debug!(instance = %name, "not this web tier's instance to retire");
            }
        }
        Ok(resize)
    }

    /// Workers that exit before they are ready, while they still do: once one is ready, none.
    async fn launch_failure(&self) -> PortResult<Option<LaunchFailure>> {
        Ok(self.processes.start_failures().latest())
    }

    async fn shutdown(&self) -> PortResult<()> {
        // A worker finishes its batch in well under a second; a stopped or stuck one is killed.
        let deadline = Instant::now() + STOP_GRACE;
        self.processes.stop_all();
        while self.processes.wait_for_exits(deadline) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.blocking(|p| p.forget_own()).await?
    }
}

impl Processes {
    /// A worker that reported running is ready, and its start ends any run of failed ones, even
    /// when it has exited again by the time the fleet looks.
    fn note_ready(&self, w: &mut WorkerProcess, report: Option<&Row>) {
        if !w.ready && report.is_some_and(|r| r.state == "running") {
            w.ready = true;
            self.start_failures().ready();
        }
    }

    /// Why `name` said it could not start, if it did.
    fn start_failure(&self, name: &str) -> Option<String> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let said = conn
            .prepare_cached("SELECT start_failure FROM instances WHERE name = ?1")
            .and_then(|mut s| s.query_row([name], |r| r.get::<_, Option<String>>(0)));
        said.unwrap_or_else(|e| {
            tracing::debug!(instance = name, error = %e, "cannot read why the instance could not start");
            None
        })
    }

    fn start_failures(&self) -> std::sync::MutexGuard<'_, StartFailures> {
        self.start_failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn instances(&self) -> PortResult<Vec<Instance>> {
        let rows = self.rows().map_err(fleet_error)?;
        // The worker's own report, if it is from this incarnation.
        let report = |name: &str, w: &WorkerProcess| {
            rows.get(name)
                .filter(|r| r.beat_mono_ms.is_some_and(|t| t >= w.launched_mono_ms))
        };
        let mut gone = Vec::new();
        let mut failed_starts = Vec::new();
        let mut instances = Vec::new();
        {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            workers.retain(|name, w| match w.child.try_wait() {
                Ok(Some(status)) => {
                    self.note_ready(w, report(name, w));
                    if w.failed_to_start() {
                        tracing::warn!(instance = %name, %status, "app-tier instance exited unexpectedly before it was ready; the next launch waits");
                        failed_starts.push((name.clone(), status.to_string()));
                    } else if !w.retiring {
                        tracing::warn!(instance = %name, %status, "app-tier instance exited unexpectedly; it will be replaced");
                    } else {
                        tracing::info!(instance = %name, %status, "app-tier instance stopped");
                    }
                    gone.push(name.clone());
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "cannot poll app-tier instance");
                    true
                }
            });
            // Monotonic: a machine resuming from sleep, or an NTP step, must not make every
            // worker look silent at once.
            let now = monotonic_ms();
            for (name, w) in workers.iter_mut() {
                let report = report(name, w);
                self.note_ready(w, report);
                let last_beat = report.and_then(|r| r.beat_mono_ms).unwrap_or(w.launched_mono_ms);
                self.stop_silent(name, w, last_beat, now);
                let (state, busy) = match (w.retiring, report) {
                    (true, r) => (InstanceState::Stopping, r.is_some_and(|r| r.busy)),
                    (false, Some(r)) if r.state == "running" => (InstanceState::Running, r.busy),
                    (false, _) => (InstanceState::Pending, false),
                };
                instances.push(Instance {
                    name: name.clone(),
                    state,
                    launched_at: w.launched_at,
                    busy,
                    purchase: None,
                });
            }
        }
        // Read once the process is gone (what it said came before its exit), before its row is.
        for (name, how) in failed_starts {
            let said = self.start_failure(&name);
            self.start_failures()
                .failed(Instant::now(), SystemTime::now(), &how, said.as_deref());
        }
        for name in gone {
            self.forget(&name, Gone::Own);
        }
        let own: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
        for (name, row) in &rows {
            if !own.contains(name) {
                instances.extend(self.foreign(name, row));
            }
        }
        instances.sort_by_key(|i| instance_number(&i.name));
        Ok(instances)
    }
}
