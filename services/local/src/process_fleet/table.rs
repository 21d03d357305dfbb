//! The `instances` table every web tier's fleet shares: a name claimed there before its worker
//! starts, each worker's reports, other web tiers' workers (and their orphans once such a web
//! tier is gone), and the rows of gone workers forgotten with the requests they held.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use rusqlite::{params, Connection, TransactionBehavior};

use super::{Processes, Row, STOP_GRACE};
use crate::errors::fleet_error;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::{Instance, InstanceState, PortResult};

/// A claimed name's row gets its pid within this long (the spawn in between).
const LAUNCH_RECORD_MS: u64 = 5_000;

impl Processes {
    /// Every row of the table, by name.
    pub(super) fn rows(&self) -> anyhow::Result<HashMap<String, Row>> {
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
    pub(super) fn forget(&self, name: &str, gone: Gone) {
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

    /// Another web tier's worker, seen through its row: as it reports while that web tier is
    /// alive, as stopping (and made to stop) once it is gone; `None` once the process is gone.
    pub(super) fn foreign(&self, name: &str, row: &Row) -> Option<Instance> {
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
                crate::lease::holds_any(&conn, owner).unwrap_or(true)
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

    /// Claims the name in the shared table before the worker starts: another web tier's scaler
    /// acting at the same moment (a lease just taken over) cannot start a second worker of that
    /// name, and a scaler whose fence lease ran out cannot start one at all.
    pub(super) fn claim(&self, db: &Connection, name: &str) -> anyhow::Result<()> {
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
                if !crate::lease::holds(db, fence, &self.owner)? {
                    bail!("not launching {name}: this host no longer holds the {fence} lease");
                }
            }
            bail!("instance {name} belongs to another web tier");
        }
        Ok(())
    }

    pub(super) fn forget_own(&self) -> PortResult<()> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("DELETE FROM instances WHERE owner = ?1", params![self.owner])
            .map_err(|e| fleet_error(e.into()))?;
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
pub(super) enum Gone<'a> {
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
        crate::release_held_by(&tx, name)?
    };
    tx.commit()?;
    Ok(released)
}
