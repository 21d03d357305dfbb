//! This fleet's own workers: started under a name claimed in the shared table, signalled to
//! stop (retired, silent, or the fleet shutting down), and killed when they do not.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use rusqlite::params;

use super::{Processes, WorkerProcess};
use crate::db::monotonic_ms;

/// How long a worker that missed its heartbeats gets between SIGTERM and SIGKILL.
const UNHEALTHY_GRACE: Duration = Duration::from_secs(2);

impl Processes {
    /// SIGTERM to a worker silent for longer than the heartbeat timeout (stopped, hung, stuck
    /// starting), SIGKILL once its grace has passed: it exits, is dropped, and the scaler
    /// replaces it. Its requests come back when their visibility lapses, no longer extended.
    pub(super) fn stop_silent(&self, name: &str, w: &mut WorkerProcess, last_beat_ms: u64, now_ms: u64) {
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

    fn signal(worker: &WorkerProcess, signal: libc::c_int) {
        let pid = worker.child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid cannot have been reused.
        unsafe { libc::kill(pid, signal) };
    }

    /// Starts `app-tier run --name {name}` (on the launcher thread).
    pub(super) fn launch(&self, name: &str) -> anyhow::Result<()> {
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

    /// Asks `name` to finish what it holds and stop (SIGTERM).
    pub(super) fn retire(&self, name: &str) -> anyhow::Result<()> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let worker = workers.get_mut(name).with_context(|| format!("no instance {name}"))?;
        if !worker.retiring {
            worker.retiring = true;
            Self::signal(worker, libc::SIGTERM);
            tracing::info!(instance = name, "retiring app-tier instance");
        }
        Ok(())
    }

    /// Asks every worker of this fleet to stop (SIGTERM): the fleet shuts down.
    pub(super) fn stop_all(&self) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for w in workers.values_mut() {
            w.retiring = true;
            Self::signal(w, libc::SIGTERM);
        }
    }

    /// Reaps the workers that exited (kills the rest past `deadline`); how many are left.
    pub(super) fn wait_for_exits(&self, deadline: Instant) -> usize {
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
}

impl Drop for Processes {
    fn drop(&mut self) {
        let workers = self.workers.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in workers.values_mut() {
            Self::signal(w, libc::SIGTERM);
        }
    }
}
