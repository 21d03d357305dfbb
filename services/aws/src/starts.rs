//! Whether each app-tier instance's worker could start, for the fleet's `launch_failure`. Auto
//! Scaling only knows whether the instance launched: a worker whose model does not load leaves
//! its instance running, in service and idle, with systemd restarting it, and nothing in the
//! group's activities says why. So the worker says it itself, in a record both tiers' roles reach
//! (the app tier writes results to the output bucket, the web tier and its scaler read and list
//! `_imgrec/` there): `_imgrec/starts/<instance id>`, overwritten at each start, expired by the
//! bucket's lifecycle rule for records.
//!
//! As with local processes, the newest start decides: a failure shows until a worker starts.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{Aws, S3ObjectStore};
use imgrec_domain::ports::fleet::LAUNCH_FAILURE_WINDOW;
use imgrec_domain::ports::{LaunchFailure, ObjectKey, ObjectStore, PortError, PortResult};

/// Under the output bucket's records.
pub const PREFIX: &str = "_imgrec/starts/";

/// Reasons carry the error chain, outermost context first; the dashboard shows a line of it.
const MAX_REASON: usize = 400;

/// What one start of an instance's worker came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Start {
    /// Why it could not start; none: it started (model loaded, buckets and queues found).
    failure: Option<String>,
}

/// The start records in one bucket.
#[derive(Clone)]
pub struct StartRecords {
    store: S3ObjectStore,
    bucket: String,
}

impl StartRecords {
    pub fn new(aws: &Aws, bucket: &str) -> Self {
        Self {
            store: S3ObjectStore::new(aws),
            bucket: bucket.to_owned(),
        }
    }

    /// Records that `instance_id`'s worker started, or why it could not.
    pub async fn record(&self, instance_id: &str, failure: Option<&str>) -> PortResult<()> {
        let start = Start {
            failure: failure.map(|f| f.chars().take(MAX_REASON).collect()),
        };
        let body = serde_json::to_vec(&start).map_err(anyhow::Error::from)?;
        let key = ObjectKey::new(format!("{PREFIX}{instance_id}"))
            .map_err(|e| PortError::Refused(format!("instance id {instance_id:?}: {e}")))?;
        self.store.put(&self.bucket, &key, body.into()).await?;
        Ok(())
    }

    /// The newest start of any instance, if it failed within `LAUNCH_FAILURE_WINDOW` of `now`.
    /// S3 keeps times to the second: of starts in the same second, a failure wins.
    pub async fn latest_failure(&self, now: SystemTime) -> PortResult<Option<LaunchFailure>> {
        let Some((at, keys)) = self.newest().await? else {
            return Ok(None);
        };
        if at < now.checked_sub(LAUNCH_FAILURE_WINDOW).unwrap_or(SystemTime::UNIX_EPOCH) {
            return Ok(None);
        }
        for key in keys {
            // None: expired between the listing and now.
            let Some(body) = self.store.get(&self.bucket, &key, None).await? else {
                continue;
            };
            let failure = match serde_json::from_slice::<Start>(&body) {
                Ok(start) => start.failure,
                Err(e) => Some(format!("its start record is unreadable ({e})")),
            };
            if let Some(reason) = failure {
                let instance = key.as_str().strip_prefix(PREFIX).unwrap_or(key.as_str());
                return Ok(Some(LaunchFailure {
                    at_s: at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    reason: format!("the worker on {instance} cannot start: {reason}"),
                }));
            }
        }
        Ok(None)
    }

    /// When the newest records were written, and their keys.
    async fn newest(&self) -> PortResult<Option<(SystemTime, Vec<ObjectKey>)>> {
        let mut newest: Option<(SystemTime, Vec<ObjectKey>)> = None;
        for (key, written) in self.store.list_written(&self.bucket, PREFIX).await? {
            let (Some(at), Ok(key)) = (written, ObjectKey::new(key)) else {
                continue;
            };
            match &mut newest {
                Some((t, keys)) if at == *t => keys.push(key),
                Some((t, _)) if at < *t => {}
                _ => newest = Some((at, vec![key])),
            }
        }
        Ok(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgrec_domain::records;

    #[test]
    fn start_records_are_records() {
        // Under the records' prefix, no upload can take their keys, and the bucket's lifecycle
        // rule for records expires them.
        assert!(PREFIX.starts_with(records::PREFIX));
    }
}
