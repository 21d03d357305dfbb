//! The `Fleet` port on this machine's processes: each app-tier instance is an `app-tier run`
//! child, recorded with its heartbeats in the shared database (which each writes through
//! `SqliteInstanceStatus`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use async_trait::async_trait;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::db::monotonic_ms;
use crate::errors::fleet_error;
use crate::start_failures::StartFailures;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::fleet::{instance_number, plan};
use imgrec_domain::ports::{Fleet, FleetChange, Instance, InstanceState, LaunchFailure, PortResult};

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

/// A claimed name's row gets its pid within this long (the spawn in between).
const LAUNCH_RECORD_MS: u64 = 5_000;

/// How long a worker that missed its heartbeats gets between SIGTERM and SIGKILL.
const UNHEALTHY_GRACE: Duration = Duration::from_secs(2);

impl ProcessFleet {
    pub fn new(command: WorkerCommand, db: &Path, heartbeat_timeout: Duration, owner: &str) -> anyhow::Result<Self> {
        let processes = Arc::new(Processes {
            command,
            owner: owner.to_owned(),
            workers: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            fence: std::sync::OnceLock::new(),
            db: Arc::new(Mutex::new(super::db::open(db)?)),
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

impl Processes {
    /// SIGTERM to a worker silent for longer than the heartbeat timeout (stopped, hung, stuck
    /// starting), SIGKILL once its grace has passed: it exits, is dropped, and the scaler
    /// replaces it. Its requests come back when their visibility lapses, no longer extended.
    fn stop_silent(&self, name: &str, w: &mut WorkerProcess, last_beat_ms: u64, now_ms: u64) {
        if let Some(kill_at) = w.kill_at {
            if Instant::now() >= kill_at {
                tracing::warn!(
                    instance = name,
                    "app-tier instance still alive after SIGTERM; killing it"
                );
                Self::signal(w, libc::SIGKILL);
                w.kill_at = Some(Instant::now() + UNHEALTHY_GRACE);
            }
            return;
        }
        let silent = Duration::from_millis(now_ms.saturating_sub(last_beat_ms));
        if silent > self.heartbeat_timeout {
            tracing::warn!(
                instance = name,
                silent_ms = silent.as_millis() as u64,
                "app-tier instance missed its heartbeats; stopping it"
            );
            w.retiring = true;
            w.kill_at = Some(Instant::now() + UNHEALTHY_GRACE);
            Self::signal(w, libc::SIGTERM);
        }
    }

    fn rows(&self) -> anyhow::Result<HashMap<String, Row>> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt =
            conn.prepare_cached("SELECT name, state, busy, updated_at_ms, pid, owner, beat_mono_ms FROM instances")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    state: r.get(1)?,
                    busy: r.get(2)?,
                    updated_at_ms: r.get::<_, i64>(3)? as u64,
                    pid: r.get(4)?,
                    owner: r.get(5)?,
                    beat_mono_ms: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drops a gone instance's row and gives back at once the requests it still held (a worker
    /// that stopped cleanly holds none), before its name can be reused. Only the incarnation that
    /// is gone: a row another fleet saw may be stale by the time it acts on it, its name since
    /// forgotten, claimed again and a new worker holding requests under it.
    fn forget(&self, name: &str, gone: Gone) {
        let mut conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        match forget_incarnation(&mut conn, name, gone, &self.owner) {
            Ok(queues) if queues.is_empty() => {}
            Ok(queues) => {
                tracing::info!(
                    instance = name,
                    requests = queues.len(),
                    "released the requests a gone instance held"
                );
                self.bells.ring_each(queues.iter().map(String::as_str));
            }
            Err(e) => tracing::warn!(instance = name, error = %e, "cannot forget a gone instance"),
        }
    }

    fn signal(worker: &WorkerProcess, signal: libc::c_int) {
        let pid = worker.child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid cannot have been reused.
        unsafe { libc::kill(pid, signal) };
    }

    /// Another web tier's worker, seen through its row: as it reports while that web tier is
    /// alive, as stopping (and made to stop) once it is gone; `None` once the process is gone.
    fn foreign(&self, name: &str, row: &Row) -> Option<Instance> {
        // Another fleet's launch time is not recorded: the row's last update stands in for it.
        let launched_at = SystemTime::UNIX_EPOCH + Duration::from_millis(row.updated_at_ms);
        if row.pid.is_none() && now_ms().saturating_sub(row.updated_at_ms) < LAUNCH_RECORD_MS {
            // Claimed by another fleet that is starting it this moment.
            return Some(Instance {
                name: name.to_owned(),
                state: InstanceState::Pending,
                launched_at,
                busy: false,
                purchase: None,
            });
        }
        let pid = row.pid.filter(|&pid| is_worker(pid, name));
        let Some(pid) = pid else {
            self.orphans.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            self.forget(name, Gone::AsSeen(row));
            return None;
        };
        let owner_alive = row.owner.as_deref().is_some_and(|owner| {
            owner != self.owner && {
                let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
                super::lease::holds_any(&conn, owner).unwrap_or(true)
            }
        });
        if owner_alive {
            self.orphans.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            let state = match row.state.as_str() {
                "running" => InstanceState::Running,
                "stopping" => InstanceState::Stopping,
                _ => InstanceState::Pending,
            };
            return Some(Instance {
                name: name.to_owned(),
                state,
                launched_at,
                busy: row.busy,
                purchase: None,
            });
        }
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        let since = match orphans.get(name) {
            Some(&(seen, since)) if seen == pid => since,
            _ => {
                tracing::info!(instance = name, pid, "stopping a worker whose web tier is gone");
                kill_pid(pid, libc::SIGTERM);
                let now = Instant::now();
                orphans.insert(name.to_owned(), (pid, now));
                now
            }
        };
        if since.elapsed() > STOP_GRACE {
            tracing::warn!(instance = name, pid, "orphaned worker did not stop; killing it");
            kill_pid(pid, libc::SIGKILL);
        }
        Some(Instance {
            name: name.to_owned(),
            state: InstanceState::Stopping,
            launched_at,
            busy: row.busy,
            purchase: None,
        })
    }

    /// Starts `app-tier run --name {name}` (on the launcher thread).
    fn launch(&self, name: &str) -> anyhow::Result<()> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.contains_key(name) {
            bail!("instance {name} already exists");
        }
        let mut cmd = self.worker_command(name);
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        self.claim(&db, name)?;
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                db.execute(
                    "DELETE FROM instances WHERE name = ?1 AND owner = ?2 AND pid IS NULL",
                    params![name, self.owner],
                )?;
                return Err(e).with_context(|| format!("cannot start {}", self.command.program.display()));
            }
        };
        tracing::info!(instance = name, pid = child.id(), "launched app-tier instance");
        if let Err(e) = db.execute(
            "UPDATE instances SET pid = ?2 WHERE name = ?1 AND pid IS NULL",
            params![name, child.id()],
        ) {
            tracing::warn!(instance = name, error = %e, "cannot record the instance's pid");
        }
        drop(db);
        workers.insert(
            name.to_owned(),
            WorkerProcess {
                child,
                launched_at: SystemTime::now(),
                launched_mono_ms: monotonic_ms(),
                retiring: false,
                kill_at: None,
                ready: false,
            },
        );
        Ok(())
    }

    /// The worker's command line, and what the child sets up before it runs.
    fn worker_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .arg("--name")
            .arg(name)
            .envs(self.command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let memory_max = self.command.memory_max_bytes;
        // SAFETY: prctl, setpgid and setrlimit are async-signal-safe. A worker gets SIGHUP when
        // the process that started it dies, so none outlives the stack even after a SIGKILL of the
        // parent: it drains (one stop request however many times the kernel sends it; SIGTERM
        // would count each, and the second would abandon the batch in hand). Its own process
        // group keeps a terminal's Ctrl-C to the web tier, which drains the waiting requests
        // (workers still answering them) before it stops the workers.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) != 0 || libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(bytes) = memory_max {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Claims the name in the shared table before the worker starts: another web tier's scaler
    /// acting at the same moment (a lease just taken over) cannot start a second worker of that
    /// name, and a scaler whose fence lease ran out cannot start one at all.
    fn claim(&self, db: &Connection, name: &str) -> anyhow::Result<()> {
        let claimed = db.execute(
            "INSERT INTO instances (name, state, busy, updated_at_ms, pid, owner)
             SELECT ?1, 'pending', 0, ?2, NULL, ?3
             WHERE ?4 IS NULL
                OR EXISTS (SELECT 1 FROM leases WHERE name = ?4 AND holder = ?3 AND expires_at_ms > ?2)
             ON CONFLICT (name) DO UPDATE SET state = 'pending', busy = 0, updated_at_ms = ?2, pid = NULL, owner = ?3,
                 beat_mono_ms = NULL, start_failure = NULL
             WHERE instances.owner = ?3 OR instances.owner IS NULL",
            params![name, now_ms() as i64, self.owner, self.fence.get()],
        )?;
        if claimed == 0 {
            if let Some(fence) = self.fence.get() {
                if !super::lease::holds(db, fence, &self.owner)? {
                    bail!("not launching {name}: this host no longer holds the {fence} lease");
                }
            }
            bail!("instance {name} belongs to another web tier");
        }
        Ok(())
    }

    /// Asks `name` to finish what it holds and stop (SIGTERM).
    fn retire(&self, name: &str) -> anyhow::Result<()> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let worker = workers.get_mut(name).with_context(|| format!("no instance {name}"))?;
        if !worker.retiring {
            worker.retiring = true;
            Self::signal(worker, libc::SIGTERM);
            tracing::info!(instance = name, "retiring app-tier instance");
        }
        Ok(())
    }
}

/// Whether `pid` is still the worker `name` (and not a process that reused its pid).
fn is_worker(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|w| w[0] == b"--name" && w[1] == name.as_bytes())
}

fn kill_pid(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; `is_worker` checked the pid just before.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Which incarnation of a name is gone.
enum Gone<'a> {
    /// A worker this fleet started, reaped: its row is this fleet's (no other fleet can claim a
    /// name while this fleet's row holds it).
    Own,
    /// Another fleet's worker, as its row read: gone if that row is still there unchanged.
    AsSeen(&'a Row),
}

/// Deletes the gone incarnation's row and, unless a row still holds the name (changed since it
/// was seen, or claimed again), makes what it held visible again, in one transaction (requests
/// are held by name, so a new incarnation's cannot be told apart: they wait for their visibility
/// timeout instead). The queues of those released.
fn forget_incarnation(conn: &mut Connection, name: &str, gone: Gone, owner: &str) -> rusqlite::Result<Vec<String>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match gone {
        Gone::Own => tx.execute(
            "DELETE FROM instances WHERE name = ?1 AND owner = ?2",
            params![name, owner],
        )?,
        Gone::AsSeen(row) => tx.execute(
            "DELETE FROM instances WHERE name = ?1 AND pid IS ?2 AND updated_at_ms = ?3",
            params![name, row.pid, row.updated_at_ms as i64],
        )?,
    };
    let name_held: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM instances WHERE name = ?1)",
        params![name],
        |r| r.get(0),
    )?;
    let released = if name_held {
        Vec::new()
    } else {
        super::release_held_by(&tx, name)?
    };
    tx.commit()?;
    Ok(released)
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

    fn stop_all(&self) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for w in workers.values_mut() {
            w.retiring = true;
            Self::signal(w, libc::SIGTERM);
        }
    }

    /// Reaps the workers that exited (kills the rest past `deadline`); how many are left.
    fn wait_for_exits(&self, deadline: Instant) -> usize {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|_, w| !matches!(w.child.try_wait(), Ok(Some(_))));
        if Instant::now() >= deadline {
            for w in workers.values_mut() {
                tracing::warn!(pid = w.child.id(), "app-tier instance did not stop in time; killing it");
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
            workers.clear();
        }
        workers.len()
    }

    fn forget_own(&self) -> PortResult<()> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("DELETE FROM instances WHERE owner = ?1", params![self.owner])
            .map_err(|e| fleet_error(e.into()))?;
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let workers = self.workers.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in workers.values_mut() {
            Self::signal(w, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use imgrec_domain::ports::{InstanceStatus, WorkQueue};

    use super::*;
    use crate::{SqliteInstanceStatus, SqliteQueue};

    const NAME: &str = "app-instance1";

    /// A worker that stays a shell (no exec), so that its command line keeps `--name`; it writes
    /// `ready` beside `signalled` once it listens for SIGTERM, and `term` in `signalled` if it
    /// gets one.
    fn worker(signalled: &Path) -> WorkerCommand {
        let script = format!(
            "trap 'echo term > {0}; exit 0' TERM; echo ready > {0}.ready; while :; do sleep 0.05; done",
            signalled.display()
        );
        shell(script)
    }

    /// A worker that is `script`, run by /bin/sh.
    fn shell(script: String) -> WorkerCommand {
        WorkerCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "w".into()],
            env: vec![],
            memory_max_bytes: None,
        }
    }

    /// What the worker `NAME` says once it is ready.
    async fn report_ready(db: &Path) {
        let status = SqliteInstanceStatus::open(db, NAME).unwrap();
        status.report(InstanceState::Running, false).await.unwrap();
    }

    /// Waits until the fleet has seen its last worker exit.
    async fn until_none_left(fleet: &ProcessFleet) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fleet.instances().await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the worker's exit was not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn fleet(db: &Path, owner: &str, signalled: &Path) -> ProcessFleet {
        ProcessFleet::new(worker(signalled), db, Duration::from_secs(3600), owner).unwrap()
    }

    /// A pid no process has now.
    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    /// Web tier C read the fleet's rows while app-instance1 was a gone web tier's dead worker;
    /// before C acts on what it read, the acting scaler (B) forgets that worker, starts a new
    /// app-instance1, and the new worker receives a request. C must forget only the incarnation
    /// it saw: B's row and the request the new worker holds stay as they are.
    #[tokio::test]
    async fn a_stale_view_of_a_gone_worker_forgets_only_that_worker() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let b = fleet(&db, "web-b", &dir.path().join("b.term"));
        let c = fleet(&db, "web-c", &dir.path().join("c.term"));
        let conn = crate::db::open(&db).unwrap();
        assert!(crate::lease::try_hold(&conn, "web-instance2", "web-b", Duration::from_secs(60)).unwrap());
        conn.execute(
            "INSERT INTO instances (name, state, busy, updated_at_ms, pid, owner) VALUES (?1, 'running', 1, ?2, ?3, 'web-a')",
            params![NAME, now_ms() as i64 - 1_000, dead_pid()],
        )
        .unwrap();
        let requests = SqliteQueue::open(&db, "requests", None).unwrap();
        let long = Duration::from_secs(600);
        requests.send(b"old").await.unwrap();
        let old_worker = requests.clone().received_by(NAME);
        assert_eq!(old_worker.receive(1, long, Duration::ZERO).await.unwrap().len(), 1);

        let stale = c.processes.rows().unwrap().remove(NAME).unwrap();
        assert!(b.instances().await.unwrap().is_empty(), "the dead worker is forgotten");
        let other = requests.clone().received_by("app-instance2");
        let released = other.receive(10, long, Duration::ZERO).await.unwrap();
        assert_eq!(released.len(), 1, "the dead worker's request is given back at once");
        other.delete(&released[0].receipt).await.unwrap();
        b.launch(NAME).await.unwrap();
        requests.send(b"new").await.unwrap();
        let new_worker = requests.clone().received_by(NAME);
        assert_eq!(new_worker.receive(1, long, Duration::ZERO).await.unwrap().len(), 1);

        assert!(c.processes.foreign(NAME, &stale).is_none());
        let owner: Option<String> = conn
            .query_row("SELECT owner FROM instances WHERE name = ?1", params![NAME], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            owner.as_deref(),
            Some("web-b"),
            "B's row was forgotten with the dead worker's"
        );
        assert!(
            other.receive(10, long, Duration::ZERO).await.unwrap().is_empty(),
            "the new worker's request was given back"
        );
        let seen_by_c = c.instances().await.unwrap();
        assert_eq!(seen_by_c.len(), 1);
        assert_ne!(
            seen_by_c[0].state,
            InstanceState::Stopping,
            "B's worker taken for an orphan"
        );
        b.shutdown().await.unwrap();
    }

    /// A name's new worker that looks orphaned is asked to stop (SIGTERM) and given its grace,
    /// even where the fleet had given up on an earlier worker of that name long ago.
    #[tokio::test]
    async fn a_new_orphan_under_an_old_orphans_name_is_asked_to_stop_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let signalled = dir.path().join("b.term");
        // B holds no lease: to C, its workers are a gone web tier's.
        let b = fleet(&db, "web-b", &signalled);
        let c = fleet(&db, "web-c", &dir.path().join("c.term"));
        let long_ago = Instant::now().checked_sub(STOP_GRACE * 2).unwrap();
        c.processes
            .orphans
            .lock()
            .unwrap()
            .insert(NAME.into(), (dead_pid(), long_ago));
        b.launch(NAME).await.unwrap();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&signalled.with_extension("term.ready")).trim() != "ready" {
            assert!(Instant::now() < deadline, "the worker did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while read(&signalled).trim() != "term" {
            assert!(Instant::now() < deadline, "the new worker got no SIGTERM");
            let seen = c.instances().await.unwrap();
            assert!(seen.iter().all(|i| i.state != InstanceState::Running));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A worker that exits at once unless `ok` exists beside it (a model that does not load,
    /// until it is fixed); once it exists, the worker stays up.
    fn worker_until_fixed(ok: &Path) -> WorkerCommand {
        shell(format!(
            "[ -e {} ] || exit 3; while :; do sleep 0.05; done",
            ok.display()
        ))
    }

    #[tokio::test]
    async fn workers_that_exit_before_they_are_ready_hold_back_launches_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let ok = dir.path().join("ok");
        let fleet = ProcessFleet::new(worker_until_fixed(&ok), &db, Duration::from_secs(3600), "web-a").unwrap();

        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        until_none_left(&fleet).await;
        let failure = fleet
            .launch_failure()
            .await
            .unwrap()
            .expect("the failed start is reported");
        assert!(
            failure
                .reason
                .contains("exit before they are ready (1 in a row, the last with exit status: 3"),
            "{}",
            failure.reason
        );
        assert_eq!(
            fleet.scale_to(1, 4).await.unwrap(),
            FleetChange::default(),
            "launched while held back"
        );

        // The hold after one failure is 1 s; the next launch fails too and doubles it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        until_none_left(&fleet).await;
        let failure = fleet.launch_failure().await.unwrap().unwrap();
        assert!(
            failure.reason.contains("(2 in a row,") && failure.reason.contains("wait 2 s"),
            "{}",
            failure.reason
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            fleet.scale_to(1, 4).await.unwrap().launch.is_empty(),
            "launched within the doubled hold"
        );

        // Fixed: the next worker stays up and reports ready, which ends the run of failures.
        std::fs::write(&ok, b"").unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        report_ready(&db).await;
        let instances = fleet.instances().await.unwrap();
        assert_eq!(
            instances.iter().map(|i| i.state).collect::<Vec<_>>(),
            [InstanceState::Running]
        );
        assert_eq!(fleet.launch_failure().await.unwrap(), None);
        fleet.shutdown().await.unwrap();
    }

    /// A worker that says why it cannot start (`InstanceStatus::failed_to_start`, as the app tier
    /// does) before it exits: its words end the fleet's launch failure, for this start only.
    #[tokio::test]
    async fn what_a_worker_said_of_its_failed_start_is_the_fleets_reason() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let go = dir.path().join("go");
        let exits_on_go = shell(format!(
            "while [ ! -e {0} ]; do sleep 0.02; done; rm -f {0}; exit 1",
            go.display()
        ));
        let fleet = ProcessFleet::new(exits_on_go, &db, Duration::from_secs(3600), "web-a").unwrap();
        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        let said = "cannot load models/x/model.onnx: Protobuf parsing failed.";
        let status = SqliteInstanceStatus::open(&db, NAME).unwrap();
        status.failed_to_start(said).await.unwrap();
        std::fs::write(&go, b"").unwrap();
        until_none_left(&fleet).await;
        let failure = fleet.launch_failure().await.unwrap().expect("reported");
        assert!(
            failure.reason.ends_with(&format!("the last said: {said}")),
            "{}",
            failure.reason
        );

        // The next start under the name says nothing: the earlier words are not its.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        std::fs::write(&go, b"").unwrap();
        until_none_left(&fleet).await;
        let failure = fleet.launch_failure().await.unwrap().expect("reported");
        assert!(failure.reason.contains("(2 in a row"), "{}", failure.reason);
        assert!(
            failure.reason.contains("their error is in the log"),
            "{}",
            failure.reason
        );
    }

    /// A worker that reports ready and exits before the fleet's next look was still a start that
    /// worked: the run of failures before it ends, and its exit is a crash to replace, not a hold.
    #[tokio::test]
    async fn a_worker_ready_and_gone_between_two_looks_ends_the_run_of_failed_starts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let (ok, stop, pid) = (dir.path().join("ok"), dir.path().join("stop"), dir.path().join("pid"));
        let script = format!(
            "[ -e {} ] || exit 3; echo $$ > {}; while [ ! -e {} ]; do sleep 0.02; done; exit 4",
            ok.display(),
            pid.display(),
            stop.display()
        );
        let fleet = ProcessFleet::new(shell(script), &db, Duration::from_secs(3600), "web-a").unwrap();

        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        until_none_left(&fleet).await;
        assert!(fleet.launch_failure().await.unwrap().is_some());

        std::fs::write(&ok, b"").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
        // Ready, then gone, with no look by the fleet in between.
        report_ready(&db).await;
        std::fs::write(&stop, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = || {
            let pid = std::fs::read_to_string(&pid).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            // A zombie until the fleet reaps it: exited, and not yet seen to.
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        };
        while !exited() {
            assert!(Instant::now() < deadline, "the worker did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until_none_left(&fleet).await;

        assert_eq!(fleet.launch_failure().await.unwrap(), None);
        assert_eq!(
            fleet.scale_to(1, 4).await.unwrap().launch,
            [NAME],
            "held back after a start that worked"
        );
        fleet.shutdown().await.unwrap();
    }
}
