//! The scaler: every tick, observe the request backlog and the fleet, ask the pure
//! `BacklogPolicy` what to do, apply it through `Fleet`, and publish what it saw.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use imgrec_core::policy::{BacklogPolicy, Decision, Observation, PolicyMemory};
use imgrec_core::ports::{Fleet, Instance, InstanceState, MetricsSink, QueueDepth, ScalingMetrics, WorkQueue};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// What the scaler last saw and decided; `/status` and `/metrics` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalerStatus {
    pub desired: usize,
    pub min: usize,
    pub max: usize,
    pub backlog: QueueDepth,
    #[serde(skip)]
    pub instances: Vec<Instance>,
    pub scaling_actions: u64,
    pub last_error: Option<String>,
}

pub type SharedStatus = Arc<RwLock<ScalerStatus>>;

pub struct Scaler {
    policy: BacklogPolicy,
    memory: PolicyMemory,
    requests: Arc<dyn WorkQueue>,
    fleet: Arc<dyn Fleet>,
    metrics: Option<Arc<dyn MetricsSink>>,
    status: SharedStatus,
    nudge: Arc<Notify>,
    started: Instant,
}

impl Scaler {
    pub fn new(policy: BacklogPolicy, requests: Arc<dyn WorkQueue>, fleet: Arc<dyn Fleet>) -> Self {
        let status = ScalerStatus {
            min: policy.min,
            max: policy.max,
            desired: policy.min,
            ..ScalerStatus::default()
        };
        Self {
            policy,
            memory: PolicyMemory::default(),
            requests,
            fleet,
            metrics: None,
            status: Arc::new(RwLock::new(status)),
            nudge: Arc::new(Notify::new()),
            started: Instant::now(),
        }
    }

    /// Publishes each tick's figures there too.
    pub fn with_metrics(mut self, sink: Option<Arc<dyn MetricsSink>>) -> Self {
        self.metrics = sink;
        self
    }

    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Notifying this runs a tick now instead of at the next interval: the web tier does so when it
    /// queues a request, so a burst from an idle pool does not wait for the tick.
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// One observe-decide-apply round.
    pub async fn tick(&mut self) -> anyhow::Result<Decision> {
        let backlog = self.requests.depth().await?;
        let instances = self.fleet.instances().await?;
        // The fleet's own bound (an Auto Scaling group's MaxSize) caps the configured maximum.
        let mut policy = self.policy.clone();
        if let Some(limit) = self.fleet.max_size().await? {
            policy.max = policy.max.min(limit);
            policy.min = policy.min.min(policy.max);
        }
        let obs = Observation {
            now: self.started.elapsed(),
            backlog,
            instances: &instances,
        };
        let decision = policy.decide(&mut self.memory, &obs);
        let mut actions = 0;
        for name in &decision.launch {
            self.fleet.launch(name).await?;
            actions += 1;
        }
        for name in &decision.retire {
            self.fleet.retire(name).await?;
            actions += 1;
        }
        if actions > 0 {
            info!(
                desired = decision.desired,
                visible = backlog.visible,
                in_flight = backlog.in_flight,
                launch = ?decision.launch,
                retire = ?decision.retire,
                "scaling"
            );
        }
        let instances = if actions > 0 {
            self.fleet.instances().await?
        } else {
            instances
        };
        if let Some(sink) = &self.metrics {
            let running = instances.iter().filter(|i| i.state == InstanceState::Running).count();
            let metrics = ScalingMetrics {
                backlog: backlog.total(),
                backlog_per_instance: backlog.total() as f64 / running.max(1) as f64,
                desired: decision.desired,
                running,
            };
            if let Err(e) = sink.publish(&metrics).await {
                warn!(error = %format!("{e:#}"), "cannot publish scaling metrics");
            }
        }
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.desired = decision.desired;
        status.max = policy.max;
        status.backlog = backlog;
        status.instances = instances;
        status.scaling_actions += actions;
        status.last_error = None;
        Ok(decision)
    }

    /// Ticks until `shutdown` turns true, then stops the fleet.
    pub async fn run(mut self, tick: Duration, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.nudge.notified() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(e) = self.tick().await {
                let message = format!("{e:#}");
                warn!(error = %message, "scaler tick failed");
                self.status.write().unwrap_or_else(|p| p.into_inner()).last_error = Some(message);
            }
        }
        info!("stopping the app tier");
        self.fleet.shutdown().await
    }
}
