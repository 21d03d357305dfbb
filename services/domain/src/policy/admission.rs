//! Admission control, as pure code: whether the pool, grown to its cap, can answer one more upload
//! within the response timeout. One it cannot is better refused at once (503 with `Retry-After`)
//! than accepted and answered 504 when the timeout runs out.
//!
//! Until the pool is saturated the estimate errs on the side of admitting: the pool's rate is the
//! faster of the configured service time and the observed one, and only a pool with nothing
//! running waits for a boot. Once every instance of a pool at its cap is busy, the rate it is seen
//! to complete at is the rate at its cap, and a configured service time that was too hopeful no
//! longer matters.

use std::time::Duration;

use super::PolicyConfig;

/// What the judgement reads: the scaler's settings and the response timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The pool's cap.
    pub max: usize,
    /// One request's time on one instance.
    pub service_time: Duration,
    /// From launch until an instance takes work.
    pub boot_time: Duration,
    /// How long an upload waits for its answer.
    pub response_timeout: Duration,
}

/// The load an upload would join.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// Requests ahead of it: waiting and in flight.
    pub backlog: u64,
    /// Instances taking work now.
    pub running: usize,
    /// Requests completed per second recently, and by how many busy instances, when counted.
    pub completion_rate: Option<f64>,
    pub busy: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Come back after `retry_after`, when the backlog should have shrunk enough.
    Refuse {
        retry_after: Duration,
    },
}

impl Admission {
    pub fn new(config: &PolicyConfig, response_timeout: Duration) -> Self {
        Self {
            max: config.max,
            service_time: config.service_time,
            boot_time: config.boot_time,
            response_timeout,
        }
    }

    /// Requests per second the pool clears at its cap. Once the pool is at its cap and every
    /// instance is busy, what it completes is that rate, measured; before, the faster of the
    /// configured and the observed rate per busy instance, times the cap.
    pub fn rate_at_cap(&self, load: &Load) -> f64 {
        let observed = load.completion_rate.filter(|r| r.is_finite() && *r > 0.0);
        if let Some(rate) = observed.filter(|_| self.max > 0 && load.running >= self.max && load.busy >= self.max) {
            return rate;
        }
        let configured = 1.0 / self.service_time.as_secs_f64().max(1e-6);
        let per_busy = match (observed, load.busy) {
            (Some(rate), busy) if busy > 0 => rate / busy as f64,
            _ => 0.0,
        };
        self.max as f64 * configured.max(per_busy)
    }

    pub fn judge(&self, load: &Load) -> Verdict {
        let rate = self.rate_at_cap(load);
        if rate <= 0.0 {
            // A pool capped at nothing never answers: that is a configuration to fix, not a load
            // to shed.
            return Verdict::Admit;
        }
        let ready_in = if load.running > 0 {
            0.0
        } else {
            self.boot_time.as_secs_f64()
        };
        let answered_in = ready_in + (load.backlog + 1) as f64 / rate;
        let over = answered_in - self.response_timeout.as_secs_f64();
        if over <= 0.0 {
            Verdict::Admit
        } else {
            Verdict::Refuse {
                retry_after: Duration::from_secs(over.ceil().max(1.0) as u64),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 instances at 0.5 s a request clear 40 a second: 120 s of timeout is 4 800 requests.
    fn admission() -> Admission {
        Admission {
            max: 20,
            service_time: Duration::from_millis(500),
            boot_time: Duration::from_secs(60),
            response_timeout: Duration::from_secs(120),
        }
    }

    fn load(backlog: u64, running: usize) -> Load {
        Load {
            backlog,
            running,
            ..Load::default()
        }
    }

    #[test]
    fn admits_what_the_pool_at_its_cap_answers_within_the_timeout() {
        let a = admission();
        assert_eq!(a.rate_at_cap(&load(0, 1)), 40.0);
        assert_eq!(a.judge(&load(100, 1)), Verdict::Admit, "the course's burst of 100");
        assert_eq!(a.judge(&load(4_799, 1)), Verdict::Admit);
        assert_eq!(
            a.judge(&load(4_800, 1)),
            Verdict::Refuse {
                retry_after: Duration::from_secs(1)
            }
        );
        assert_eq!(
            a.judge(&load(8_800, 1)),
            Verdict::Refuse {
                retry_after: Duration::from_secs(101)
            },
            "back when 4 000 more have cleared"
        );
    }

    #[test]
    fn a_pool_with_nothing_running_first_waits_for_a_boot() {
        let a = admission();
        assert_eq!(a.judge(&load(2_000, 1)), Verdict::Admit);
        // 60 s of boot leave 60 s: 2 400 requests.
        assert!(matches!(a.judge(&load(2_400, 0)), Verdict::Refuse { .. }));
        assert_eq!(a.judge(&load(2_398, 0)), Verdict::Admit);
    }

    #[test]
    fn an_observed_rate_faster_than_configured_raises_the_bar_a_slower_one_does_not() {
        let a = admission();
        let mut l = load(6_000, 5);
        assert!(matches!(a.judge(&l), Verdict::Refuse { .. }));
        // 5 busy instances completing 20 a second: 4 each, 80 a second at the cap.
        (l.completion_rate, l.busy) = (Some(20.0), 5);
        assert_eq!(a.rate_at_cap(&l), 80.0);
        assert_eq!(a.judge(&l), Verdict::Admit);
        // Slower than configured (a web tier counts only its own answers): the configured rate stands.
        (l.completion_rate, l.busy) = (Some(1.0), 5);
        assert_eq!(a.rate_at_cap(&l), 40.0);
        (l.completion_rate, l.busy) = (Some(f64::NAN), 5);
        assert_eq!(a.rate_at_cap(&l), 40.0);
    }

    #[test]
    fn a_saturated_pool_at_its_cap_is_judged_by_what_it_completes() {
        let a = admission();
        let saturated = Load {
            backlog: 1_000,
            running: 20,
            busy: 20,
            completion_rate: Some(5.0),
        };
        assert_eq!(a.rate_at_cap(&saturated), 5.0, "measured, not the hopeful 40");
        assert_eq!(
            a.judge(&saturated),
            Verdict::Refuse {
                retry_after: Duration::from_secs(81)
            }
        );
        let one_idle = Load { busy: 19, ..saturated };
        assert_eq!(a.rate_at_cap(&one_idle), 40.0, "not saturated: the hopeful estimate");
        let uncounted = Load {
            completion_rate: None,
            ..saturated
        };
        assert_eq!(a.rate_at_cap(&uncounted), 40.0);
    }

    #[test]
    fn a_pool_capped_at_nothing_is_not_judged() {
        let a = Admission { max: 0, ..admission() };
        assert_eq!(a.judge(&load(1_000_000, 0)), Verdict::Admit);
    }
}
