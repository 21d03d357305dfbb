//! A queue's depth as the open endpoints show it (`GET /status`, `GET /metrics`, the dashboard's
//! samples): read at most once per `MAX_AGE` however many clients ask. These endpoints need no
//! API key, and on AWS each read is an SQS GetQueueAttributes call, paid per request: without
//! this, any client polling them as fast as it can would turn its requests into SQS calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imgrec_domain::ports::{PortError, PortResult, QueueDepth, WorkQueue};
use tokio::sync::Mutex;

/// Live for a client polling ten times a second, and at most 20 SQS calls a second per web tier
/// (`/status` reads two queues) however many clients poll: ~$0.03 an hour at SQS's $0.40 per
/// million requests.
pub const MAX_AGE: Duration = Duration::from_millis(100);

pub struct DepthCache {
    queue: Arc<dyn WorkQueue>,
    /// The last read and when it was made; a failed read is kept as long, so that a queue that
    /// fails is not asked again by every request either.
    last: Mutex<Option<(Instant, Result<QueueDepth, String>)>>,
}

impl DepthCache {
    pub fn new(queue: Arc<dyn WorkQueue>) -> Self {
        Self {
            queue,
            last: Mutex::new(None),
        }
    }

    /// The depth read within `MAX_AGE`, or read now. Callers that come while a read is in flight
    /// wait for it and share it.
    pub async fn get(&self) -> PortResult<QueueDepth> {
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().filter(|(at, _)| at.elapsed() < MAX_AGE);
        let read = match fresh {
            Some((_, read)) => read.clone(),
            None => {
                let read = self.queue.depth().await.map_err(|e| format!("{e:#}"));
                *last = Some((Instant::now(), read.clone()));
                read
            }
        };
        read.map_err(|e| PortError::Transient(anyhow::anyhow!(e)))
    }
}
