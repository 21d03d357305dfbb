//! The local stack's shared SQLite database: how every process opens it (WAL, busy timeout) and
//! reads its clock.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    -- The instance that received it last (local fleet: released at once if that instance dies).
    receiver TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at_ms, id);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    busy INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- The worker process, and the web tier whose fleet launched it.
    pid INTEGER,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
";

/// Milliseconds on the system-wide monotonic clock (CLOCK_MONOTONIC: the same in every process of
/// this machine, unmoved by NTP steps or date changes, paused while the machine sleeps). Durations
/// between processes (heartbeats) are measured with it; the wall clock only dates things.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Opens (creating if needed) the database that every process of the local stack shares.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            anyhow::ensure!(!dir.exists() || dir.is_dir(), "{} is not a folder", dir.display());
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SQLite reads the file first here: a file that is not a database fails now, and says which.
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        // Many processes write: wait for the lock instead of failing, and let readers run beside
        // a writer.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed send or delete survives power loss, not only a crash of the process.
        conn.pragma_update(None, "synchronous", "FULL")
    };
    setup(&conn).with_context(|| {
        format!(
            "cannot use {} as the stack's database (move it aside to start with an empty one)",
            path.display()
        )
    })?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("cannot create the schema in {}", path.display()))?;
    for (table, column, kind) in [
        ("messages", "receiver", "TEXT"),
        ("instances", "pid", "INTEGER"),
        ("instances", "owner", "TEXT"),
        ("instances", "beat_mono_ms", "INTEGER"),
        // Why the worker could not start, in its own words (`InstanceStatus::failed_to_start`).
        ("instances", "start_failure", "TEXT"),
    ] {
        add_column(&conn, table, column, kind)
            .with_context(|| format!("cannot upgrade the schema in {}", path.display()))?;
    }
    Ok(conn)
}

/// Columns that came after the first schema: databases made before them get them once.
fn add_column(conn: &Connection, table: &str, column: &str, kind: &str) -> rusqlite::Result<()> {
    let has = |conn: &Connection| -> rusqlite::Result<bool> {
        conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
            .exists([column])
    };
    if has(conn)? {
        return Ok(());
    }
    match conn.execute(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"), []) {
        Ok(_) => Ok(()),
        // Another process added it first.
        Err(_) if has(conn)? => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_database_and_a_data_folder_that_is_a_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("queue.sqlite3");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        let e = format!("{:#}", open(&junk).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot use {} as the stack's database", junk.display()))
                && e.contains("not a database"),
            "{e}"
        );

        let file = dir.path().join("data");
        std::fs::write(&file, b"").unwrap();
        let e = format!("{:#}", open(&file.join("queue.sqlite3")).unwrap_err());
        assert_eq!(e, format!("{} is not a folder", file.display()));
    }
}
