//! Scaling policies as pure code: a decision is a function of the observed state, the config and
//! the policy's own memory of earlier observations. No I/O, no clock: the caller passes `now`, so
//! the scaler and the simulator (`scaler simulate`) run the very same code.
//!
//! `BacklogPolicy` is ours and the default; `Naive`, `TargetTracking` and `Keda` model the usual
//! alternatives so that the simulator can compare them on the same scenarios.

pub mod admission;
mod backlog;
mod baselines;

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::ports::{Instance, QueueDepth};

pub use backlog::BacklogPolicy;
pub use baselines::{Keda, Naive, TargetTracking};

/// What the scaler saw at one tick.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub now: SystemTime,
    /// Visible (waiting) and in-flight (being worked on) requests.
    pub backlog: QueueDepth,
    /// Every instance not yet gone, with its state, launch time and busy flag.
    pub instances: &'a [Instance],
    /// Requests completed per second recently, when the scaler can count them.
    pub completion_rate: Option<f64>,
}

/// How many app-tier instances should serve; the fleet picks which (`ports::fleet::plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub desired: usize,
}

/// The product's cap on app-tier instances: requests wait in the queue beyond it.
pub const INSTANCE_CAP: usize = 20;

/// Settings every policy reads (each uses the ones its model has).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Instances kept when idle.
    pub min: usize,
    /// The cap: requests wait in the queue beyond it.
    pub max: usize,
    /// Acceptable time from upload to answer.
    pub target_latency: Duration,
    /// One instance's work per request (per image at the batch size it runs).
    pub service_time: Duration,
    /// From launch until an instance takes work.
    pub boot_time: Duration,
    /// How long the backlog must call for fewer instances before ours scales in.
    pub scale_in_after: Duration,
}

impl PolicyConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.min <= self.max, "scaler min {} exceeds max {}", self.min, self.max);
        anyhow::ensure!(
            self.max <= INSTANCE_CAP,
            "scaler.max ({}) is above the cap of {INSTANCE_CAP} app-tier instances",
            self.max
        );
        anyhow::ensure!(!self.service_time.is_zero(), "scaler service_time_s must be positive");
        anyhow::ensure!(
            !self.target_latency.is_zero(),
            "scaler target_latency_s must be positive"
        );
        Ok(())
    }

    /// Backlog one instance can clear within the target latency (target tracking's and KEDA's
    /// per-instance target).
    pub fn backlog_per_instance(&self) -> f64 {
        self.target_latency.as_secs_f64() / self.service_time.as_secs_f64()
    }
}

/// A scaling policy: called every scaler tick with what was observed.
pub trait ScalingPolicy: Send + Sync {
    fn decide(&mut self, obs: &Observation<'_>) -> Decision;
    fn config(&self) -> &PolicyConfig;
    fn config_mut(&mut self) -> &mut PolicyConfig;

    /// Lowers the cap (an Auto Scaling group's MaxSize may be below the configured max).
    fn cap(&mut self, max: usize) {
        let config = self.config_mut();
        config.max = config.max.min(max);
        config.min = config.min.min(config.max);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Default,
    Naive,
    TargetTracking,
    Keda,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [Self::Naive, Self::TargetTracking, Self::Keda, Self::Default];

    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Naive => "naive",
            Self::TargetTracking => "target_tracking",
            Self::Keda => "keda",
        }
    }

    pub fn build(self, config: PolicyConfig) -> Box<dyn ScalingPolicy> {
        match self {
            Self::Default => Box::new(BacklogPolicy::new(config)),
            Self::Naive => Box::new(Naive::new(config)),
            Self::TargetTracking => Box::new(TargetTracking::new(config)),
            Self::Keda => Box::new(Keda::new(config)),
        }
    }
}

/// Instances that serve (or soon will): all but those already stopping.
pub fn serving(instances: &[Instance]) -> Vec<&Instance> {
    instances.iter().filter(|i| i.serves()).collect()
}

/// `desired` within the configured bounds.
pub fn toward(desired: usize, config: &PolicyConfig) -> Decision {
    Decision {
        desired: desired.clamp(config.min, config.max),
    }
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::ports::fleet::{plan, FleetChange};
    use crate::ports::InstanceState;

    pub fn config() -> PolicyConfig {
        PolicyConfig {
            min: 0,
            max: 20,
            target_latency: Duration::from_secs(1),
            service_time: Duration::from_millis(100),
            boot_time: Duration::from_secs(2),
            scale_in_after: Duration::from_secs(10),
        }
    }

    pub fn at(s: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_secs_f64(s)
    }

    pub fn instance(k: usize, busy: bool, launched_s: f64) -> Instance {
        Instance {
            name: format!("app-instance{k}"),
            state: InstanceState::Running,
            launched_at: at(launched_s),
            busy,
            purchase: None,
        }
    }

    pub fn depth(visible: u64, in_flight: u64) -> QueueDepth {
        QueueDepth { visible, in_flight }
    }

    pub fn observe(now: f64, backlog: QueueDepth, instances: &[Instance]) -> Observation<'_> {
        Observation {
            now: at(now),
            backlog,
            instances,
            completion_rate: None,
        }
    }

    /// Applies a decision to a simulated pool through the fleets' plan: launches run at once,
    /// retirements leave at once. Returns what changed.
    pub fn apply(fleet: &mut Vec<Instance>, d: &Decision, now: f64) -> FleetChange {
        let resize = plan(d.desired, 20, fleet);
        fleet.retain(|i| !resize.retire.contains(&i.name));
        fleet.extend(resize.launch.iter().map(|n| Instance {
            name: n.clone(),
            ..instance(0, false, now)
        }));
        resize
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn every_policy_stays_within_min_and_max() {
        for kind in PolicyKind::ALL {
            let mut policy = kind.build(PolicyConfig {
                min: 2,
                max: 5,
                ..config()
            });
            let mut fleet = Vec::new();
            for t in 0..400 {
                let backlog = if t < 200 { 10_000 } else { 0 };
                let d = policy.decide(&observe(t as f64, depth(backlog, 0), &fleet));
                assert!((2..=5).contains(&d.desired), "{} desired {}", kind.name(), d.desired);
                apply(&mut fleet, &d, t as f64);
                assert!((2..=5).contains(&fleet.len()), "{} has {}", kind.name(), fleet.len());
            }
        }
    }
}
