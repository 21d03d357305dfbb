//! Whether the worker loop moves: heartbeats to the fleet and its requests kept hidden from
//! other workers, both only while it does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgrec_domain::ports::{InstanceStatus, Receipt};
use tracing::{error, warn};

use super::Worker;

/// When the worker loop last moved. A worker whose loop stalls (a hung model run, a deadlock)
/// stops heartbeating and stops extending its requests' visibility, so the fleet replaces it and
/// other workers take its requests.
#[derive(Clone)]
pub(super) struct Progress {
    last: Arc<Mutex<Instant>>,
    pub(super) stall: Duration,
}

impl Progress {
    pub(super) fn new(stall: Duration) -> Self {
        Self {
            last: Arc::new(Mutex::new(Instant::now())),
            stall,
        }
    }

    pub(super) fn mark(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn stalled(&self) -> bool {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > self.stall
    }
}

/// Beats every `every` while the loop moves (and tells systemd's watchdog on EC2); a stalled
/// loop falls silent, so its fleet replaces it.
pub(super) async fn heartbeat(status: Arc<dyn InstanceStatus>, progress: Progress, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        if progress.stalled() {
            if !warned {
                error!(
                    "the worker loop made no progress for {:?}; no more heartbeats",
                    progress.stall
                );
                warned = true;
            }
            continue;
        }
        if let Err(e) = status.heartbeat().await {
            warn!(error = %format!("{e:#}"), "cannot send a heartbeat");
        }
        imgrec_runtime::watchdog::notify();
    }
}

/// Keeps `receipts` hidden from other workers while the loop moves and the worker still holds
/// them; a stalled loop lets them return after their visibility timeout.
pub(super) async fn keep_invisible(worker: Arc<Worker>, receipts: Vec<Receipt>, visibility: Duration) {
    // Three extensions per timeout: one lost or late call does not let the requests go.
    let mut tick = tokio::time::interval(visibility / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if worker.progress.stalled() {
            continue;
        }
        for r in &receipts {
            // Given back at a drain's deadline: no longer ours to hide.
            if !worker.held().contains_key(r) {
                continue;
            }
            if let Err(e) = worker.adapters.requests.change_visibility(r, visibility).await {
                warn!(error = %format!("{e:#}"), "cannot extend visibility");
            }
        }
    }
}
