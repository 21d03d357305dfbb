//! The usual alternatives, modelled as documented, for the simulator to compare ours against.
//! Each is evaluated on its own period however often the scaler calls it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::{serving, since, toward, Decision, Observation, PolicyConfig, ScalingPolicy};
use crate::ports::InstanceState;

/// Acts only when its period has passed since the last evaluation.
#[derive(Debug, Clone)]
struct Period {
    every: Duration,
    last: Option<SystemTime>,
}

impl Period {
    fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    fn due(&mut self, now: SystemTime) -> bool {
        let due = self.last.is_none_or(|t| since(now, t) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// The typical course implementation: every few seconds, one new instance per queued message up
/// to the cap; everything terminated once the queue is empty.
#[derive(Debug, Clone)]
pub struct Naive {
    config: PolicyConfig,
    period: Period,
    desired: usize,
}

impl Naive {
    pub const PERIOD: Duration = Duration::from_secs(5);

    pub fn new(config: PolicyConfig) -> Self {
        Self {
            desired: config.min,
            config,
            period: Period::new(Self::PERIOD),
        }
    }
}

impl ScalingPolicy for Naive {
    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        if self.period.due(obs.now) {
            let running = serving(obs.instances).len();
            self.desired = if obs.backlog.total() == 0 {
                self.config.min
            } else {
                running.max(obs.backlog.visible as usize)
            };
        }
        toward(self.desired, &self.config)
    }

    fn config(&self) -> &PolicyConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PolicyConfig {
        &mut self.config
    }
}

/// AWS target tracking on backlog per instance, as AWS documents it for SQS: the metric is
/// visible messages / in-service instances, one datapoint a minute; target = acceptable latency /
/// service time; proportional scale-out; scale-in, gradually, after 15 datapoints below target;
/// instances still warming up are not counted. With no instance in service the metric has no
/// value, so scaling from 0 takes a separate step policy on a "backlog without capacity" alarm.
#[derive(Debug, Clone)]
pub struct TargetTracking {
    config: PolicyConfig,
    period: Period,
    desired: usize,
    below_target: u32,
}

impl TargetTracking {
    pub const PERIOD: Duration = Duration::from_secs(60);
    pub const SCALE_IN_DATAPOINTS: u32 = 15;

    pub fn new(config: PolicyConfig) -> Self {
        Self {
            desired: config.min,
            config,
            period: Period::new(Self::PERIOD),
            below_target: 0,
        }
    }
}

impl ScalingPolicy for TargetTracking {
    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        if self.period.due(obs.now) {
            let target = self.config.backlog_per_instance();
            let visible = obs.backlog.visible as f64;
            let in_service = obs
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .count();
            let capacity = serving(obs.instances).len();
            if in_service == 0 {
                // The step policy: backlog and no capacity at all -> one instance.
                if visible > 0.0 && capacity == 0 {
                    self.desired = self.desired.max(1);
                }
                self.below_target = 0;
            } else {
                let metric = visible / in_service as f64;
                let proportional = (visible / target).ceil() as usize;
                if metric > target {
                    self.desired = self.desired.max(proportional);
                    self.below_target = 0;
                } else if metric < 0.9 * target {
                    self.below_target += 1;
                    if self.below_target >= Self::SCALE_IN_DATAPOINTS {
                        // Gradual: one instance per datapoint while the metric stays low.
                        self.desired = proportional.max(self.desired.saturating_sub(1));
                    }
                } else {
                    self.below_target = 0;
                }
            }
            self.desired = self.desired.clamp(self.config.min, self.config.max);
        }
        toward(self.desired, &self.config)
    }

    fn config(&self) -> &PolicyConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PolicyConfig {
        &mut self.config
    }
}

/// KEDA's SQS scaler under the Kubernetes HPA: every 30 s, desired = ceil((visible + in-flight) /
/// queueLength); scale-down takes the highest recommendation of the last 5 minutes; to zero after
/// a 300 s cooldown without messages.
#[derive(Debug, Clone)]
pub struct Keda {
    config: PolicyConfig,
    period: Period,
    desired: usize,
    last_active: Option<SystemTime>,
    recommendations: VecDeque<(SystemTime, usize)>,
}

impl Keda {
    pub const POLLING_INTERVAL: Duration = Duration::from_secs(30);
    pub const COOLDOWN: Duration = Duration::from_secs(300);
    pub const STABILIZATION: Duration = Duration::from_secs(300);

    pub fn new(config: PolicyConfig) -> Self {
        Self {
            desired: config.min,
            config,
            period: Period::new(Self::POLLING_INTERVAL),
            last_active: None,
            recommendations: VecDeque::new(),
        }
    }
}

impl ScalingPolicy for Keda {
    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        if self.period.due(obs.now) {
            let total = obs.backlog.total();
            if total > 0 {
                self.last_active = Some(obs.now);
            }
            let queue_length = self.config.backlog_per_instance();
            let recommendation = ((total as f64 / queue_length).ceil() as usize).max(1);
            self.recommendations.push_back((obs.now, recommendation));
            while self
                .recommendations
                .front()
                .is_some_and(|(t, _)| since(obs.now, *t) > Self::STABILIZATION)
            {
                self.recommendations.pop_front();
            }
            let cooled = self.last_active.is_none_or(|t| since(obs.now, t) >= Self::COOLDOWN);
            self.desired = if total == 0 && cooled {
                self.config.min
            } else if recommendation > self.desired {
                recommendation
            } else {
                self.recommendations
                    .iter()
                    .map(|(_, r)| *r)
                    .max()
                    .unwrap_or(recommendation)
            };
        }
        toward(self.desired, &self.config)
    }

    fn config(&self) -> &PolicyConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PolicyConfig {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn naive_launches_one_per_queued_message_and_drops_all_when_empty() {
        let mut p = Naive::new(config());
        let mut fleet = Vec::new();
        let d = p.decide(&observe(0.0, depth(7, 0), &fleet));
        assert_eq!(apply(&mut fleet, &d, 0.0).launch.len(), 7);
        // Not due again before its period.
        assert_eq!(p.decide(&observe(1.0, depth(0, 0), &fleet)).desired, 7);
        let d = p.decide(&observe(5.0, depth(0, 0), &fleet));
        assert_eq!(apply(&mut fleet, &d, 5.0).retire.len(), 7);
    }

    #[test]
    fn target_tracking_needs_its_step_policy_from_zero_and_scales_in_slowly() {
        let mut p = TargetTracking::new(config());
        let mut fleet = Vec::new();
        // Target: 1 s / 0.1 s = 10 per instance. From zero: one instance (step policy).
        let d = p.decide(&observe(0.0, depth(100, 0), &fleet));
        assert_eq!(d.desired, 1);
        apply(&mut fleet, &d, 0.0);
        // A minute later, in service: proportional, 100 / 10.
        assert_eq!(p.decide(&observe(60.0, depth(100, 0), &fleet)).desired, 10);
        let mut fleet: Vec<_> = (1..=10).map(|k| instance(k, false, 0.0)).collect();
        for minute in 2..=15 {
            let d = p.decide(&observe(minute as f64 * 60.0, depth(0, 0), &fleet));
            assert_eq!(d.desired, 10, "minute {minute}");
        }
        let d = p.decide(&observe(16.0 * 60.0, depth(0, 0), &fleet));
        assert_eq!(d.desired, 9);
        fleet.truncate(9);
        assert_eq!(p.decide(&observe(17.0 * 60.0, depth(0, 0), &fleet)).desired, 8);
    }

    #[test]
    fn keda_counts_in_flight_and_cools_down_to_zero() {
        let mut p = Keda::new(config());
        let mut fleet = Vec::new();
        let d = p.decide(&observe(0.0, depth(15, 20), &fleet));
        assert_eq!(d.desired, 4);
        apply(&mut fleet, &d, 0.0);
        for t in (30..300).step_by(30) {
            assert_eq!(p.decide(&observe(t as f64, depth(0, 0), &fleet)).desired, 4, "{t}s");
        }
        assert_eq!(p.decide(&observe(300.0, depth(0, 0), &fleet)).desired, 0);
    }
}
