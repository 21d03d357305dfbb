//! Leases in the shared database: a name held by one holder until it stops renewing. Locally they
//! pick the web tiers' names (`web-instanceK`) and the one web tier whose scaler acts on the fleet.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::Lease;

/// Takes `name` for `holder` for `ttl` if it is free, expired or already `holder`'s (a renewal).
pub fn try_hold(conn: &Connection, name: &str, holder: &str, ttl: Duration) -> rusqlite::Result<bool> {
    let now = now_ms() as i64;
    let changed = conn.execute(
        "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET holder = ?2, expires_at_ms = ?3
         WHERE leases.holder = ?2 OR leases.expires_at_ms <= ?4",
        params![name, holder, now + ttl.as_millis() as i64, now],
    )?;
    Ok(changed == 1)
}

/// Gives `name` up at once if `holder` has it.
pub fn release(conn: &Connection, name: &str, holder: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        params![name, holder],
    )?;
    Ok(())
}

/// Whether someone holds `name` now.
pub fn is_held(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let expires: Option<i64> = conn
        .query_row("SELECT expires_at_ms FROM leases WHERE name = ?1", params![name], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(expires.is_some_and(|t| t > now_ms() as i64))
}

/// Whether `holder` holds `name` now.
pub fn holds(conn: &Connection, name: &str, holder: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2 AND expires_at_ms > ?3)",
        params![name, holder, now_ms() as i64],
        |r| r.get(0),
    )
}

/// Whether `holder` holds any lease now: a web tier that is alive, whatever its name.
pub fn holds_any(conn: &Connection, holder: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM leases WHERE holder = ?1 AND expires_at_ms > ?2)",
        params![holder, now_ms() as i64],
        |r| r.get(0),
    )
}

/// The lowest `{prefix}K` nobody holds, taken for `holder`.
pub fn claim_lowest(conn: &mut Connection, prefix: &str, holder: &str, ttl: Duration) -> rusqlite::Result<String> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut k = 1;
    let name = loop {
        let name = format!("{prefix}{k}");
        if try_hold(&tx, &name, holder, ttl)? {
            break name;
        }
        k += 1;
    };
    tx.commit()?;
    Ok(name)
}

/// One lease as a `Lease` port for its holder.
pub struct SqliteLease {
    conn: Arc<Mutex<Connection>>,
    name: String,
    holder: String,
}

impl SqliteLease {
    pub fn open(db: &Path, name: &str, holder: &str) -> anyhow::Result<Self> {
        let conn = super::db::open(db)?;
        // A lease that does not survive a power loss is simply expired after it.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Fail fast rather than wait out a writer (one stopped mid-write holds the lock until the
        // fleet kills it): the holder keeps acting meanwhile, and nobody else can take it either.
        conn.busy_timeout(Duration::from_millis(250))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            name: name.to_owned(),
            holder: holder.to_owned(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (conn, name, holder) = (self.conn.clone(), self.name.clone(), self.holder.clone());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn, &name, &holder)
        })
        .await
        .context("lease task failed")?
        .with_context(|| format!("lease {}", self.name))
    }
}

#[async_trait]
impl Lease for SqliteLease {
    async fn hold(&self, ttl: Duration) -> anyhow::Result<bool> {
        self.blocking(move |conn, name, holder| try_hold(conn, name, holder, ttl))
            .await
    }

    async fn release(&self) -> anyhow::Result<()> {
        self.blocking(release).await
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn holder(&self) -> &str {
        &self.holder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::db::open(&dir.path().join("q.sqlite3")).unwrap();
        let ttl = Duration::from_millis(200);
        assert!(try_hold(&conn, "scaler", "a", ttl).unwrap());
        assert!(!try_hold(&conn, "scaler", "b", ttl).unwrap());
        assert!(try_hold(&conn, "scaler", "a", ttl).unwrap(), "renewal");
        assert!(is_held(&conn, "scaler").unwrap());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!is_held(&conn, "scaler").unwrap());
        assert!(try_hold(&conn, "scaler", "b", ttl).unwrap(), "taken over once expired");
        release(&conn, "scaler", "a").unwrap();
        assert!(is_held(&conn, "scaler").unwrap(), "only the holder releases");
        assert!(holds_any(&conn, "b").unwrap() && !holds_any(&conn, "a").unwrap());
        release(&conn, "scaler", "b").unwrap();
        assert!(!is_held(&conn, "scaler").unwrap());

        let long = Duration::from_secs(60);
        assert_eq!(
            claim_lowest(&mut conn, "web-instance", "x", long).unwrap(),
            "web-instance1"
        );
        assert_eq!(
            claim_lowest(&mut conn, "web-instance", "y", long).unwrap(),
            "web-instance2"
        );
        release(&conn, "web-instance1", "x").unwrap();
        assert_eq!(
            claim_lowest(&mut conn, "web-instance", "z", long).unwrap(),
            "web-instance1"
        );
    }
}
