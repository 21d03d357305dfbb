//! `MetricsSink`: where the scaler publishes its metrics; `ApiCalls`: the cloud API calls a
//! process's adapters make.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

/// What the scaler publishes each tick.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ScalingMetrics {
    /// Visible + in-flight requests.
    pub backlog: u64,
    /// Backlog divided by the instances running (the backlog itself when none run).
    pub backlog_per_instance: f64,
    pub desired: usize,
    pub running: usize,
}

/// Where scaling metrics go: CloudWatch on AWS; locally `/status` and `/metrics` already show them.
#[async_trait]
pub trait MetricsSink: Send + Sync + 'static {
    async fn publish(&self, metrics: &ScalingMetrics) -> anyhow::Result<()>;
}

/// Cloud API calls made by one process's adapters, by operation: shown on `/metrics` and logged by
/// workers at exit, so that calls per classified image can be measured. The wiring makes one per
/// process and hands it to every adapter it builds; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl ApiCalls {
    pub fn count(&self, operation: &'static str) {
        *self.lock().entry(operation).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
