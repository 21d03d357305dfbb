use std::time::SystemTime;

use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not yet taking work (booting, loading the model).
    Pending,
    Running,
    /// Retired: finishing what it holds, then gone.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `app-instanceK`.
    pub name: String,
    pub state: InstanceState,
    pub launched_at: SystemTime,
    /// Holds work right now (as the instance last reported).
    pub busy: bool,
}

/// The app-tier instances: OS processes locally, an Auto Scaling group on AWS.
#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    /// Every instance not yet gone, crashed ones already noticed and dropped.
    async fn instances(&self) -> anyhow::Result<Vec<Instance>>;
    async fn launch(&self, name: &str) -> anyhow::Result<()>;
    /// Asks the instance to finish what it holds and stop.
    async fn retire(&self, name: &str) -> anyhow::Result<()>;
    /// The most instances this fleet can hold, if it has its own bound (an Auto Scaling group's
    /// MaxSize); the scaler never asks for more.
    async fn max_size(&self) -> anyhow::Result<Option<usize>> {
        Ok(None)
    }
    /// Stops every instance (on shutdown of the stack).
    async fn shutdown(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How an app-tier instance tells the fleet it is ready or busy (so scale-in retires idle ones),
/// and that it is alive and making progress.
#[async_trait]
pub trait InstanceStatus: Send + Sync + 'static {
    async fn report(&self, state: InstanceState, busy: bool) -> anyhow::Result<()>;
    /// Called every `app_tier.heartbeat_ms` while the worker makes progress; a fleet that watches
    /// heartbeats replaces an instance that misses them. (On EC2 the systemd watchdog does, so
    /// there is nothing to send to the group.)
    async fn heartbeat(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
