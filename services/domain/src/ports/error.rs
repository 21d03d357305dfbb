//! Why a port call failed, in one vocabulary for every port, told apart by what the caller does
//! about it. Adapters classify their own failures (an SDK's error code, SQLite's result code, the
//! OS error); callers match on the kind and report it at their edge.

/// A failed call to a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Throttled, timed out, connection lost, database busy, a race that settles: the same call
    /// may succeed later, so retry with back-off. An adapter's unclassified failure is transient.
    #[error("{0:#}")]
    Transient(#[from] anyhow::Error),
    /// Missing, forbidden or misconfigured (a queue or a group that is not there, access denied,
    /// a worker program that cannot start): retrying fails again until an operator acts, so say
    /// so loudly.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// This call's input is one the port never accepts (a bucket name or version it cannot hold):
    /// retrying fails again, though nothing is wrong with the port.
    #[error("{0}")]
    Refused(String),
}

impl PortError {
    /// Worth retrying: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

pub type PortResult<T> = Result<T, PortError>;
