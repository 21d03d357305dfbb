//! Ours, the default: size the pool so that the backlog drains within the target latency,
//! counting what instances already booting will do; keep steady load at a utilization it can
//! absorb; scale in only after a stabilization window, and retire idle instances at once when the
//! next request is expected later than a reboot would take (rent-or-buy).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::{serving, since, toward, Decision, Observation, PolicyConfig, ScalingPolicy};
use crate::ports::InstanceState;

/// Steady load is sized to keep instances this busy: headroom for Poisson bursts.
const TARGET_UTILIZATION: f64 = 0.8;
/// Idle gaps remembered to predict the next one.
const GAPS_REMEMBERED: usize = 3;
/// The backlog's growth is measured over this long (Poisson noise averages out).
const GROWTH_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct BacklogPolicy {
    config: PolicyConfig,
    /// Recent recommendations, for the scale-in window.
    recommendations: VecDeque<(SystemTime, usize)>,
    last_scale_out: Option<SystemTime>,
    /// Since when the backlog has been empty, if it is.
    idle_since: Option<SystemTime>,
    /// Lengths of the last few empty-backlog spells.
    gaps: VecDeque<Duration>,
    /// Recent backlog sizes, for its growth rate.
    backlogs: VecDeque<(SystemTime, u64)>,
}

impl BacklogPolicy {
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            recommendations: VecDeque::new(),
            last_scale_out: None,
            idle_since: None,
            gaps: VecDeque::new(),
            backlogs: VecDeque::new(),
        }
    }

    /// Instances the observation calls for, before the scale-in window and the bounds.
    pub fn recommend(&self, obs: &Observation<'_>) -> usize {
        let backlog = obs.backlog.total();
        if backlog == 0 {
            return 0;
        }
        let c = &self.config;
        let service = c.service_time.as_secs_f64();
        let boot = c.boot_time.as_secs_f64();
        // Drain by the target latency, or, when a new instance cannot boot that soon, as soon as
        // one can: otherwise a short target would ask for nothing new at all.
        let deadline = c.target_latency.as_secs_f64().max(boot + service);
        let work = backlog as f64 * service;

        let mut supply = 0.0;
        let mut counted = 0;
        for i in serving(obs.instances) {
            let ready_in = match i.state {
                InstanceState::Pending => (boot - since(obs.now, i.launched_at).as_secs_f64()).max(0.0),
                _ => 0.0,
            };
            supply += (deadline - ready_in).max(0.0);
            counted += 1;
        }
        let for_backlog = if work <= supply {
            (work / deadline).ceil() as usize
        } else {
            counted + ((work - supply) / (deadline - boot)).ceil() as usize
        };
        // What keeps up with the arrival rate at a sustainable utilization: arrivals are what
        // completes plus what the backlog grows by. Without a count of completions, busy instances
        // tell the rate: each completes one request per service time.
        let busy = obs.instances.iter().filter(|i| i.busy).count() as f64;
        let completions = obs.completion_rate.unwrap_or(busy / service);
        let arrivals = (completions + self.backlog_growth(obs)).max(0.0);
        let for_rate = (arrivals * service / TARGET_UTILIZATION).ceil() as usize;
        for_backlog.max(for_rate).max(1)
    }

    /// Requests per second the backlog grew by, averaged over at least the growth window
    /// (negative when draining). A sudden burst is the backlog term's to size: spread over the
    /// window it does not read as a lasting rate.
    fn backlog_growth(&self, obs: &Observation<'_>) -> f64 {
        let Some(&(then, before)) = self.backlogs.front() else {
            return 0.0;
        };
        let elapsed = since(obs.now, then).max(GROWTH_WINDOW).as_secs_f64();
        (obs.backlog.total() as f64 - before as f64) / elapsed
    }

    fn remember_backlog(&mut self, obs: &Observation<'_>) {
        self.backlogs.push_back((obs.now, obs.backlog.total()));
        while self.backlogs.len() > 2
            && self
                .backlogs
                .front()
                .is_some_and(|(t, _)| since(obs.now, *t) > GROWTH_WINDOW)
        {
            self.backlogs.pop_front();
        }
    }

    /// Whether the next request is expected later than a new instance would take to boot: then an
    /// idle instance costs more waiting than a relaunch (rent-or-buy with a predicted gap; with
    /// memoryless arrivals keeping one idle pays off exactly when the mean gap is shorter). The
    /// gaps seen between ticks say so, and so does the completion rate when it is counted (a tick
    /// longer than a boot cannot see gaps that short).
    fn next_request_is_far(&self, obs: &Observation<'_>) -> bool {
        let boot = self.config.boot_time;
        let by_gaps = self.gaps.is_empty() || self.gaps.iter().sum::<Duration>() / self.gaps.len() as u32 > boot;
        let by_rate = obs.completion_rate.is_none_or(|rate| rate * boot.as_secs_f64() < 1.0);
        by_gaps && by_rate
    }

    fn remember_gaps(&mut self, obs: &Observation<'_>) {
        let empty = obs.backlog.total() == 0;
        match (empty, self.idle_since) {
            (true, None) => self.idle_since = Some(obs.now),
            (false, Some(start)) => {
                self.idle_since = None;
                self.gaps.push_back(since(obs.now, start));
                if self.gaps.len() > GAPS_REMEMBERED {
                    self.gaps.pop_front();
                }
            }
            _ => {}
        }
    }
}

impl ScalingPolicy for BacklogPolicy {
    fn decide(&mut self, obs: &Observation<'_>) -> Decision {
        self.remember_gaps(obs);
        let recommendation = self.recommend(obs).clamp(self.config.min, self.config.max);
        self.remember_backlog(obs);
        let c = &self.config;
        let window = c.scale_in_after;
        self.recommendations.push_back((obs.now, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| since(obs.now, *t) > window)
        {
            self.recommendations.pop_front();
        }
        let current = serving(obs.instances).len();
        let peak = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommendation);

        let desired = if recommendation > current {
            self.last_scale_out = Some(obs.now);
            recommendation
        } else if obs.backlog.total() == 0 && self.next_request_is_far(obs) {
            c.min
        } else if (peak <= c.min || peak + 1 < current)
            && self.last_scale_out.is_none_or(|t| since(obs.now, t) >= window)
        {
            // Down only once the whole window agrees, not within a window of going up, and not by
            // a single instance while work remains: a noisy rate would otherwise flap around it.
            peak
        } else {
            current
        };
        toward(desired, &self.config)
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
    use crate::ports::Instance;

    fn policy() -> BacklogPolicy {
        BacklogPolicy::new(config())
    }

    #[test]
    fn recommendation_is_monotone_in_backlog_and_within_bounds() {
        let p = BacklogPolicy::new(PolicyConfig { min: 2, ..config() });
        let mut last = 0;
        for backlog in 0..2000 {
            let r = p.recommend(&observe(0.0, depth(backlog, 0), &[])).clamp(2, 20);
            assert!(r >= last && (2..=20).contains(&r));
            last = r;
        }
        assert_eq!(last, 20);
        // In flight counts like waiting: 25 requests of 0.1 s within a deadline of 2.1 s (1 s
        // target, but a boot takes 2 s) from an empty pool.
        assert_eq!(p.recommend(&observe(0.0, depth(5, 20), &[])), 25);
    }

    #[test]
    fn instances_already_booting_count_toward_the_backlog() {
        let p = BacklogPolicy::new(PolicyConfig {
            target_latency: Duration::from_secs(10),
            ..config()
        });
        // 100 requests x 0.1 s = 10 s of work; deadline 10 s; a new instance gives 8 s.
        assert_eq!(p.recommend(&observe(0.0, depth(100, 0), &[])), 2);
        let mut booting = instance(1, false, 0.0);
        booting.state = InstanceState::Pending;
        let running = [instance(1, false, 0.0)];
        // One running gives 10 s: enough. One booting since t=0, seen at t=1, gives 9 s: one more.
        assert_eq!(p.recommend(&observe(1.0, depth(100, 0), &running)), 1);
        assert_eq!(p.recommend(&observe(1.0, depth(100, 0), &[booting])), 2);
    }

    #[test]
    fn steady_rate_is_sized_by_completion_rate() {
        let p = policy();
        let fleet: Vec<Instance> = (1..=3).map(|k| instance(k, true, 0.0)).collect();
        let mut obs = observe(5.0, depth(2, 3), &fleet);
        obs.completion_rate = Some(40.0);
        // 40/s x 0.1 s = 4 instances of work, at 80 % utilization: 5.
        assert_eq!(p.recommend(&obs), 5);
    }

    #[test]
    fn a_sudden_burst_is_sized_by_its_backlog_not_read_as_a_rate() {
        // The web tier nudges the scaler on every upload: ticks 10 ms apart while a burst lands.
        let mut p = BacklogPolicy::new(PolicyConfig {
            target_latency: Duration::from_secs(10),
            ..config()
        });
        let mut desired = 0;
        for (k, backlog) in (0..=100).step_by(10).enumerate() {
            let mut obs = observe(k as f64 * 0.01, depth(backlog, 0), &[]);
            obs.completion_rate = Some(0.0);
            desired = desired.max(p.decide(&obs).desired);
        }
        // 100 x 0.1 s within 10 s on instances booting in 2 s: 2, not the cap.
        assert_eq!(desired, 2);
    }

    #[test]
    fn scales_out_at_once_and_in_after_the_window() {
        let mut p = BacklogPolicy::new(PolicyConfig {
            target_latency: Duration::from_secs(10),
            ..config()
        });
        // Idle gaps of 0.5 s (below the 2 s boot) teach it that requests come back soon.
        for (t, backlog) in [(0.0, 0), (0.5, 3), (1.0, 0), (1.5, 3), (2.0, 0), (2.5, 3)] {
            p.decide(&observe(t, depth(backlog, 0), &[]));
        }
        let mut fleet = Vec::new();
        let d = p.decide(&observe(30.0, depth(100, 0), &fleet));
        assert_eq!(apply(&mut fleet, &d, 30.0).launch, ["app-instance1", "app-instance2"]);
        for t in 31..=40 {
            let d = p.decide(&observe(t as f64, depth(0, 0), &fleet));
            assert_eq!(d.desired, 2, "scaled in at {t}s");
        }
        let d = p.decide(&observe(40.5, depth(0, 0), &fleet));
        assert_eq!(d.desired, 0);
    }

    #[test]
    fn retires_idle_pool_at_once_when_requests_are_far_apart() {
        let mut p = policy();
        let fleet = [instance(1, false, 0.0)];
        // Requests minutes apart (gaps far beyond the 2 s boot).
        for t in [0.0, 300.0, 600.0] {
            p.decide(&observe(t, depth(1, 0), &fleet));
            p.decide(&observe(t + 1.0, depth(0, 0), &fleet));
        }
        let d = p.decide(&observe(601.5, depth(0, 0), &fleet));
        assert_eq!(d.desired, 0);
    }

    #[test]
    fn scales_in_below_the_busy_count_when_the_work_is_small() {
        let mut p = BacklogPolicy::new(PolicyConfig {
            scale_in_after: Duration::ZERO,
            ..config()
        });
        let fleet = [
            instance(1, true, 50.0),
            instance(2, false, 40.0),
            instance(3, true, 30.0),
            instance(4, false, 20.0),
        ];
        // 2 requests in flight, 0.2 s of work, 1 completion a second: one instance would do.
        let mut obs = observe(100.0, depth(0, 2), &fleet);
        obs.completion_rate = Some(1.0);
        assert_eq!(p.decide(&obs).desired, 1);
    }

    #[test]
    fn no_flapping_under_steady_load() {
        let mut p = policy();
        let mut fleet: Vec<Instance> = Vec::new();
        let mut sizes = Vec::new();
        for tick in 0..600u64 {
            let t = tick as f64 * 0.5;
            // Backlog swinging between 40 and 90 every second, around a steady rate.
            let backlog = if tick % 4 < 2 { 40 } else { 90 };
            let mut obs = observe(t, depth(backlog, 0), &fleet);
            obs.completion_rate = Some(30.0 + (tick % 7) as f64);
            let d = p.decide(&obs);
            apply(&mut fleet, &d, t);
            sizes.push((t, fleet.len()));
        }
        // Direction changes, each at most once per stabilization window.
        let mut changes: Vec<(f64, i8)> = Vec::new();
        for w in sizes.windows(2) {
            let direction = (w[1].1 as i64 - w[0].1 as i64).signum() as i8;
            if direction != 0 && changes.last().is_none_or(|c| c.1 != direction) {
                changes.push((w[1].0, direction));
            }
        }
        for pair in changes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 10.0, "flapping: {changes:?}");
        }
        // Up from nothing, down once the window has passed, then steady.
        assert!(changes.len() <= 2, "{changes:?}");
        assert!(sizes[100..].windows(2).all(|w| w[0].1 == w[1].1), "steady load settles");
    }
}
