//! App-tier instances that exit before they are ready (a model that does not load, a program that
//! cannot run), counted so that the fleet holds back its next launch, longer after each one in a
//! row, and says why: what systemd's restart limits and Kubernetes' CrashLoopBackOff do. Without
//! it a broken model made the local fleet start a worker every scaler tick (twice a second) for as
//! long as requests waited, and nothing but the log said why none was answered.

use std::time::{Duration, Instant, SystemTime};

use imgrec_domain::ports::LaunchFailure;

/// The hold after the first failure; it doubles with each one in a row, up to `MAX_HOLD`.
const FIRST_HOLD: Duration = Duration::from_secs(1);
const MAX_HOLD: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(crate) struct StartFailures {
    in_a_row: u32,
    hold_until: Option<Instant>,
    latest: Option<LaunchFailure>,
}

impl StartFailures {
    /// An instance exited (`how`: its exit status) before it reported ready, having said why
    /// (`said`) if it could.
    pub fn failed(&mut self, now: Instant, at: SystemTime, how: &str, said: Option<&str>) {
        self.in_a_row = self.in_a_row.saturating_add(1);
        let hold = FIRST_HOLD
            .saturating_mul(1 << (self.in_a_row - 1).min(16))
            .min(MAX_HOLD);
        self.hold_until = Some(now + hold);
        let at_s = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        // Its own words last: what a status line cuts short is their tail.
        let (see_log, words) = match said {
            Some(said) => ("", format!("; the last said: {said}")),
            None => ("; their error is in the log", String::new()),
        };
        self.latest = Some(LaunchFailure {
            at_s,
            reason: format!(
                "app-tier instances exit before they are ready ({} in a row, the last with {how}{see_log}); \
                 launches wait {} s{words}",
                self.in_a_row,
                hold.as_secs()
            ),
        });
    }

    /// An instance reported ready: launches work again.
    pub fn ready(&mut self) {
        *self = Self::default();
    }

    /// How long launches are still held back at `now`, if they are.
    pub fn held(&self, now: Instant) -> Option<Duration> {
        self.hold_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// The latest failure of the current run of them; none once an instance was ready since.
    pub fn latest(&self) -> Option<LaunchFailure> {
        self.latest.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_in_a_row_doubles_the_hold_up_to_its_cap_and_a_ready_instance_ends_it() {
        let mut failures = StartFailures::default();
        let t0 = Instant::now();
        assert_eq!(failures.held(t0), None);
        assert_eq!(failures.latest(), None);

        let holds: Vec<u64> = (0..8)
            .map(|_| {
                failures.failed(
                    t0,
                    SystemTime::UNIX_EPOCH + Duration::from_secs(7),
                    "exit status: 1",
                    None,
                );
                failures.held(t0).unwrap().as_secs()
            })
            .collect();
        assert_eq!(holds, [1, 2, 4, 8, 16, 30, 30, 30]);
        let latest = failures.latest().unwrap();
        assert_eq!(latest.at_s, 7);
        assert!(
            latest.reason.contains("8 in a row, the last with exit status: 1"),
            "{}",
            latest.reason
        );
        assert!(latest.reason.contains("launches wait 30 s"), "{}", latest.reason);
        assert!(latest.reason.contains("their error is in the log"), "{}", latest.reason);

        // The hold runs out on its own ...
        assert_eq!(failures.held(t0 + Duration::from_secs(30)), None);
        assert_eq!(
            failures.held(t0 + Duration::from_secs(29)),
            Some(Duration::from_secs(1))
        );
        // ... and a ready instance forgets the run: the next failure holds for the first hold again.
        failures.ready();
        assert_eq!((failures.held(t0), failures.latest()), (None, None));
        failures.failed(t0, SystemTime::UNIX_EPOCH, "signal: 9 (SIGKILL)", None);
        assert_eq!(failures.held(t0), Some(FIRST_HOLD));
    }

    #[test]
    fn what_the_instance_said_ends_the_reason() {
        let mut failures = StartFailures::default();
        let said = "cannot load models/x/model.onnx: Protobuf parsing failed.";
        failures.failed(Instant::now(), SystemTime::UNIX_EPOCH, "exit status: 1", Some(said));
        let reason = failures.latest().unwrap().reason;
        assert!(
            reason.starts_with("app-tier instances exit before they are ready (1 in a row"),
            "{reason}"
        );
        assert!(reason.ends_with(&format!("; the last said: {said}")), "{reason}");
    }
}
