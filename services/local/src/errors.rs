//! The local adapters' failures as the ports' typed errors: what tells whether trying again may
//! help is the cause at the bottom (SQLite's result code, the OS error).

use std::io::ErrorKind;

use imgrec_domain::ports::PortError;
use rusqlite::ErrorCode;

/// `Some(true)` when a cause says the same call may succeed later (another process holds the
/// database lock, an I/O error, a full disk), `Some(false)` when it says it will not (a corrupt or
/// unreadable database, a missing or forbidden program), `None` when no cause tells.
fn transient_cause(e: &anyhow::Error) -> Option<bool> {
    e.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<rusqlite::Error>() {
            return Some(matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::DiskFull
                )
            ));
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return Some(!matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::InvalidInput | ErrorKind::Unsupported
            ));
        }
        cause.is::<tokio::task::JoinError>().then_some(true)
    })
}

/// A queue call whose cause does not tell is permanent: those are stale or malformed receipts.
pub(crate) fn queue_error(e: anyhow::Error) -> PortError {
    match transient_cause(&e) {
        Some(true) => PortError::Transient(e),
        _ => PortError::Permanent(e),
    }
}

/// A fleet call whose cause does not tell is transient: those are races with another web tier's
/// fleet over a name, which settle.
pub(crate) fn fleet_error(e: anyhow::Error) -> PortError {
    match transient_cause(&e) {
        Some(false) => PortError::Permanent(e),
        _ => PortError::Transient(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn sqlite(code: i32) -> anyhow::Error {
        anyhow::Error::new(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
            .context("queue requests")
    }

    #[test]
    fn a_busy_database_is_transient_a_corrupt_one_permanent() {
        assert!(queue_error(sqlite(rusqlite::ffi::SQLITE_BUSY)).is_transient());
        assert!(queue_error(sqlite(rusqlite::ffi::SQLITE_LOCKED)).is_transient());
        assert!(!queue_error(sqlite(rusqlite::ffi::SQLITE_CORRUPT)).is_transient());
        assert!(!queue_error(sqlite(rusqlite::ffi::SQLITE_NOTADB)).is_transient());
        assert!(!queue_error(anyhow::anyhow!("malformed receipt")).is_transient());
    }

    #[test]
    fn a_missing_worker_program_is_permanent_a_race_transient() {
        let missing = Err::<(), _>(std::io::Error::from(ErrorKind::NotFound)).context("cannot start app-tier");
        assert!(!fleet_error(missing.unwrap_err()).is_transient());
        let busy = Err::<(), _>(std::io::Error::from(ErrorKind::WouldBlock)).context("cannot start app-tier");
        assert!(fleet_error(busy.unwrap_err()).is_transient());
        assert!(fleet_error(anyhow::anyhow!("instance app-instance1 belongs to another web tier")).is_transient());
        assert!(!fleet_error(sqlite(rusqlite::ffi::SQLITE_READONLY)).is_transient());
    }
}
