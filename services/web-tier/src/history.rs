//! What the dashboard charts: the fleet and the backlog over the last 10 minutes (one sample a
//! second, from the hosted scaler's view and the request queue) and this web tier's answers over
//! the last minute (rate, p50 and p99 latency). In memory: a restarted web tier starts afresh.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imgrec_domain::ports::{Instance, InstanceState, QueueDepth};
use serde::Serialize;

const KEEP_SAMPLES: Duration = Duration::from_secs(600);
const ANSWER_WINDOW: Duration = Duration::from_secs(60);

/// The fleet and the queue at one second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub t_ms: u64,
    /// What the scaler asked for (absent when this web tier hosts no scaler).
    pub desired: Option<usize>,
    pub pending: usize,
    pub running: usize,
    pub stopping: usize,
    /// Waiting and in-flight requests.
    pub backlog: u64,
}

impl Sample {
    pub fn of(at: SystemTime, desired: Option<usize>, instances: &[Instance], depth: QueueDepth) -> Self {
        let count = |state| instances.iter().filter(|i| i.state == state).count();
        Self {
            t_ms: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            desired,
            pending: count(InstanceState::Pending),
            running: count(InstanceState::Running),
            stopping: count(InstanceState::Stopping),
            backlog: depth.total(),
        }
    }
}

/// This web tier's answers over the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recent {
    pub window_s: f64,
    pub completed: usize,
    pub completed_per_s: f64,
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    /// When each labelled answer went out, and how long it took.
    answers: Mutex<VecDeque<(Instant, f64)>>,
}

impl History {
    pub fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = sample.t_ms.saturating_sub(KEEP_SAMPLES.as_millis() as u64);
        while samples.front().is_some_and(|s| s.t_ms < oldest) {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub fn answered(&self, at: Instant, latency: Duration) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        forget_before(&mut answers, at);
        answers.push_back((at, latency.as_secs_f64()));
    }

    pub fn recent(&self, now: Instant) -> Recent {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        forget_before(&mut answers, now);
        let mut latencies: Vec<f64> = answers.iter().map(|(_, l)| *l).collect();
        latencies.sort_by(f64::total_cmp);
        let window = ANSWER_WINDOW.as_secs_f64();
        Recent {
            window_s: window,
            completed: latencies.len(),
            completed_per_s: latencies.len() as f64 / window,
            latency_p50_s: percentile(&latencies, 0.50),
            latency_p99_s: percentile(&latencies, 0.99),
        }
    }
}

fn forget_before(answers: &mut VecDeque<(Instant, f64)>, now: Instant) {
    while answers
        .front()
        .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ANSWER_WINDOW)
    {
        answers.pop_front();
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: u64, backlog: u64) -> Sample {
        Sample {
            t_ms: t_s * 1000,
            desired: Some(1),
            pending: 0,
            running: 1,
            stopping: 0,
            backlog,
        }
    }

    #[test]
    fn samples_older_than_ten_minutes_are_dropped() {
        let history = History::default();
        for t in 0..=700 {
            history.record(sample(t, t));
        }
        let kept = history.samples();
        assert_eq!(kept.first().map(|s| s.t_ms), Some(100_000));
        assert_eq!(kept.len(), 601);
    }

    #[test]
    fn the_last_minute_of_answers_gives_rate_and_percentiles() {
        let history = History::default();
        let start = Instant::now();
        // 100 answers long ago, then 100 in the last minute taking 0.01 .. 1.00 s.
        for i in 0..100 {
            history.answered(start, Duration::from_secs(9));
            let _ = i;
        }
        let now = start + Duration::from_secs(120);
        for i in 1..=100 {
            history.answered(now - Duration::from_secs(1), Duration::from_millis(10 * i));
        }
        let recent = history.recent(now);
        assert_eq!(recent.completed, 100);
        assert!((recent.completed_per_s - 100.0 / 60.0).abs() < 1e-9);
        assert_eq!(recent.latency_p50_s, Some(0.5));
        assert_eq!(recent.latency_p99_s, Some(0.99));
        let quiet = history.recent(now + Duration::from_secs(61));
        assert_eq!((quiet.completed, quiet.latency_p50_s), (0, None));
    }

    #[test]
    fn a_sample_counts_instances_by_state() {
        let at = UNIX_EPOCH + Duration::from_secs(5);
        let instance = |name: &str, state| Instance {
            name: name.into(),
            state,
            launched_at: at,
            busy: false,
            purchase: None,
        };
        let instances = [
            instance("app-instance1", InstanceState::Running),
            instance("app-instance2", InstanceState::Pending),
            instance("app-instance3", InstanceState::Stopping),
            instance("app-instance4", InstanceState::Running),
        ];
        let depth = QueueDepth {
            visible: 4,
            in_flight: 3,
        };
        let s = Sample::of(at, Some(3), &instances, depth);
        assert_eq!(
            (s.t_ms, s.desired, s.pending, s.running, s.stopping, s.backlog),
            (5000, Some(3), 1, 2, 1, 7)
        );
    }
}
