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
