//! The scaling decision as pure code: a function of the observed backlog and fleet, the config and
//! the policy's own memory. No I/O, no clock: the caller passes `now`, so it can be unit-tested and
//! simulated.

use std::collections::VecDeque;
use std::time::Duration;

use crate::ports::{Instance, InstanceState, QueueDepth};

#[derive(Debug, Clone, PartialEq)]
pub struct BacklogPolicy {
    /// Instances kept when idle.
    pub min: usize,
    /// The cap: requests wait in the queue beyond it.
    pub max: usize,
    /// Backlog (visible + in-flight requests) one instance is sized for.
    pub backlog_per_instance: f64,
    /// Scale-in waits until the backlog has called for fewer instances for this long
    /// (scale-out is immediate).
    pub scale_in_after: Duration,
}

/// What the policy saw at one tick.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// Time since an arbitrary origin, monotonic.
    pub now: Duration,
    pub backlog: QueueDepth,
    pub instances: &'a [Instance],
}

/// The policy's memory between ticks: recent recommendations, for the scale-in window.
#[derive(Debug, Clone, Default)]
pub struct PolicyMemory {
    recommendations: VecDeque<(Duration, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub desired: usize,
    pub launch: Vec<String>,
    pub retire: Vec<String>,
}

pub const INSTANCE_PREFIX: &str = "app-instance";

impl BacklogPolicy {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.min <= self.max, "scaler min {} exceeds max {}", self.min, self.max);
        anyhow::ensure!(self.backlog_per_instance > 0.0, "backlog_per_instance must be positive");
        Ok(())
    }

    /// Instances the backlog alone calls for, within min and max.
    pub fn recommend(&self, backlog: QueueDepth) -> usize {
        let raw = (backlog.total() as f64 / self.backlog_per_instance).ceil() as usize;
        raw.clamp(self.min, self.max)
    }

    pub fn decide(&self, memory: &mut PolicyMemory, obs: &Observation<'_>) -> Decision {
        let recommendation = self.recommend(obs.backlog);
        memory.recommendations.push_back((obs.now, recommendation));
        while memory
            .recommendations
            .front()
            .is_some_and(|(t, _)| obs.now.saturating_sub(*t) > self.scale_in_after)
        {
            memory.recommendations.pop_front();
        }
        // The highest recommendation within the window: up at once, down only once the whole
        // window agrees (Kubernetes' scale-down stabilization).
        let desired = memory
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommendation)
            .clamp(self.min, self.max);

        let active: Vec<&Instance> = obs
            .instances
            .iter()
            .filter(|i| i.state != InstanceState::Stopping)
            .collect();
        let mut decision = Decision {
            desired,
            ..Decision::default()
        };
        if desired > active.len() {
            decision.launch = free_names(obs.instances, desired - active.len());
        } else if desired < active.len() {
            decision.retire = retire_order(&active)
                .into_iter()
                .take(active.len() - desired)
                .map(|i| i.name.clone())
                .collect();
        }
        decision
    }
}

/// Idle before busy; among those, not-yet-running before running; newest first.
fn retire_order<'a>(active: &[&'a Instance]) -> Vec<&'a Instance> {
    let mut order = active.to_vec();
    order.sort_by_key(|i| {
        (
            i.busy,
            i.state == InstanceState::Running,
            std::cmp::Reverse(i.launched_at),
        )
    });
    order
}

/// `K` of `app-instanceK` (names sort by it: app-instance2 before app-instance10).
pub fn instance_number(name: &str) -> (u64, String) {
    let k = name
        .strip_prefix(INSTANCE_PREFIX)
        .and_then(|k| k.parse().ok())
        .unwrap_or(u64::MAX);
    (k, name.to_owned())
}

/// The `count` lowest `app-instanceK` names not held by any instance (stopping ones included).
pub fn free_names(instances: &[Instance], count: usize) -> Vec<String> {
    let taken: std::collections::HashSet<&str> = instances.iter().map(|i| i.name.as_str()).collect();
    (1..)
        .map(|k| format!("{INSTANCE_PREFIX}{k}"))
        .filter(|name| !taken.contains(name.as_str()))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn policy() -> BacklogPolicy {
        BacklogPolicy {
            min: 0,
            max: 20,
            backlog_per_instance: 10.0,
            scale_in_after: Duration::from_secs(10),
        }
    }

    fn instance(k: usize, busy: bool, age_s: u64) -> Instance {
        Instance {
            name: format!("app-instance{k}"),
            state: InstanceState::Running,
            launched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age_s),
            busy,
        }
    }

    fn depth(visible: u64, in_flight: u64) -> QueueDepth {
        QueueDepth { visible, in_flight }
    }

    #[test]
    fn recommendation_is_monotone_in_backlog_and_within_bounds() {
        let p = BacklogPolicy { min: 2, ..policy() };
        let mut last = 0;
        for backlog in 0..1000 {
            let r = p.recommend(depth(backlog, 0));
            assert!(r >= last && (2..=20).contains(&r));
            last = r;
        }
        assert_eq!(p.recommend(depth(0, 0)), 2);
        assert_eq!(p.recommend(depth(5, 16)), 3);
        assert_eq!(p.recommend(depth(100_000, 0)), 20);
    }

    #[test]
    fn scales_out_at_once_and_in_after_the_window() {
        let p = policy();
        let mut m = PolicyMemory::default();
        let d = p.decide(
            &mut m,
            &Observation {
                now: Duration::ZERO,
                backlog: depth(35, 0),
                instances: &[],
            },
        );
        assert_eq!(d.desired, 4);
        assert_eq!(
            d.launch,
            ["app-instance1", "app-instance2", "app-instance3", "app-instance4"]
        );
        let fleet: Vec<Instance> = (1..=4).map(|k| instance(k, false, k as u64)).collect();
        for s in 1..=10 {
            let d = p.decide(
                &mut m,
                &Observation {
                    now: Duration::from_secs(s),
                    backlog: depth(0, 0),
                    instances: &fleet,
                },
            );
            assert_eq!(d.desired, 4, "scaled in after {s}s");
            assert!(d.retire.is_empty());
        }
        let d = p.decide(
            &mut m,
            &Observation {
                now: Duration::from_secs(11),
                backlog: depth(0, 0),
                instances: &fleet,
            },
        );
        assert_eq!(d.desired, 0);
        assert_eq!(d.retire.len(), 4);
    }

    #[test]
    fn retires_idle_instances_before_busy_ones() {
        let p = BacklogPolicy {
            scale_in_after: Duration::ZERO,
            ..policy()
        };
        let fleet = [
            instance(1, true, 50),
            instance(2, false, 40),
            instance(3, true, 30),
            instance(4, false, 20),
        ];
        let d = p.decide(
            &mut PolicyMemory::default(),
            &Observation {
                now: Duration::ZERO,
                backlog: depth(0, 20),
                instances: &fleet,
            },
        );
        assert_eq!(d.desired, 2);
        assert_eq!(d.retire, ["app-instance4", "app-instance2"]);
    }

    #[test]
    fn names_fill_the_lowest_free_numbers() {
        let mut fleet = vec![instance(1, false, 1), instance(3, false, 1)];
        fleet[1].state = InstanceState::Stopping;
        assert_eq!(
            free_names(&fleet, 3),
            ["app-instance2", "app-instance4", "app-instance5"]
        );
    }

    #[test]
    fn no_flapping_under_steady_load() {
        let p = policy();
        let mut m = PolicyMemory::default();
        let mut fleet: Vec<Instance> = Vec::new();
        let mut changes = Vec::new();
        for s in 0..120u64 {
            // Backlog oscillating between 25 and 45: 3 to 5 instances recommended.
            let backlog = if s % 4 < 2 { 25 } else { 45 };
            let d = p.decide(
                &mut m,
                &Observation {
                    now: Duration::from_secs(s),
                    backlog: depth(backlog, 0),
                    instances: &fleet,
                },
            );
            let before = fleet.len();
            fleet.retain(|i| !d.retire.contains(&i.name));
            fleet.extend(d.launch.iter().map(|n| Instance {
                name: n.clone(),
                ..instance(0, false, 0)
            }));
            if fleet.len() != before {
                changes.push((s, fleet.len()));
            }
        }
        assert_eq!(changes, [(0, 3), (2, 5)], "the pool should settle at the peak");
    }
}
