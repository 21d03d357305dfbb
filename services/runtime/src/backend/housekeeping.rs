//! Local retention: what SQS's retention periods and the buckets' lifecycle rules do on AWS, so
//! that a long-running local stack does not fill its disk with every version it ever stored and
//! every dead letter it ever set aside.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Backend, Settings};
use crate::shutdown::Shutdown;
use imgrec_domain::records;
use imgrec_local::FsObjectStore;
use tokio::task::JoinHandle;

/// What to expire, and how often to look.
#[derive(Debug, Clone)]
struct Retention {
    data_dir: PathBuf,
    db: PathBuf,
    versions: Duration,
    /// (bucket, retention) of the service's records (jobs, idempotency keys).
    records: (String, Duration),
    /// (queue, also its `-suffixed` queues, retention)
    queues: Vec<(String, bool, Duration)>,
}

impl Retention {
    fn of(settings: &Settings) -> Self {
        let q = &settings.queues;
        let secs = Duration::from_secs;
        Self {
            data_dir: settings.data_dir.clone(),
            db: settings.local_db(),
            versions: secs(settings.buckets.version_retention_s),
            records: (settings.buckets.output.clone(), settings.jobs.retention()),
            queues: vec![
                (q.requests.clone(), false, secs(q.request_retention_s)),
                (q.dead_letter.clone(), false, secs(q.dead_letter_retention_s)),
                (q.responses.clone(), true, secs(q.response_retention_s)),
            ],
        }
    }

    /// A quarter of the shortest retention, between a second and an hour: nothing outlives its
    /// retention by much, and a sweep of an idle stack costs nothing.
    fn every(&self) -> Duration {
        let shortest = (self.queues.iter().map(|(_, _, d)| *d))
            .chain([self.versions, self.records.1])
            .min();
        (shortest.unwrap_or(Duration::from_secs(3600)) / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    fn sweep(&self) -> anyhow::Result<(usize, usize)> {
        let store = FsObjectStore::new(&self.data_dir);
        let (bucket, age) = &self.records;
        let versions = store.sweep_versions(self.versions)? + store.sweep_prefix(bucket, records::PREFIX, *age)?;
        let conn = imgrec_local::open_db(&self.db)?;
        let mut messages = 0;
        for (queue, with_suffixes, age) in &self.queues {
            messages += imgrec_local::expire_messages(&conn, queue, *with_suffixes, *age)?;
        }
        Ok((versions, messages))
    }
}

/// Locally, sweeps expired versions and messages now and then until a stop; nothing on AWS, where
/// the buckets and queues expire their own.
pub fn housekeeping(settings: &Settings, mut shutdown: Shutdown) -> Option<JoinHandle<()>> {
    if settings.backend != Backend::Local {
        return None;
    }
    let retention = Retention::of(settings);
    Some(tokio::spawn(async move {
        let every = retention.every();
        loop {
            let sweeping = retention.clone();
            match tokio::task::spawn_blocking(move || sweeping.sweep()).await {
                Ok(Ok((0, 0))) => {}
                Ok(Ok((versions, messages))) => {
                    tracing::info!(
                        objects = versions,
                        messages,
                        "removed objects and messages past their retention"
                    )
                }
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot sweep expired versions and messages"),
                Err(e) => tracing::warn!(error = %e, "the retention sweep failed"),
            }
            if shutdown.pause(every).await {
                break;
            }
        }
    }))
}
