//! What the service did during a run, sampled from the web tier's `/status` every 250 ms: the
//! instances by state, the desired count and the backlog, for `--plot`. After the last answer the
//! sampling goes on until the pool is back at its minimum (or `tail` has passed), so the picture
//! shows the scale-in too.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

const EVERY: Duration = Duration::from_millis(250);

/// The service at one moment, `t` seconds after the first request.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub desired: Option<usize>,
    pub pending: usize,
    pub running: usize,
    pub stopping: usize,
    /// Waiting and in-flight requests.
    pub backlog: u64,
}

impl Sample {
    pub fn alive(&self) -> usize {
        self.pending + self.running + self.stopping
    }
}

/// The parts of `/status` the timeline reads.
#[derive(Debug, Deserialize)]
struct Status {
    queue: Queue,
    capacity: Capacity,
    instances: Vec<InstanceView>,
}

#[derive(Debug, Deserialize)]
struct Queue {
    pending: u64,
    in_flight: u64,
}

#[derive(Debug, Deserialize)]
struct Capacity {
    desired: Option<usize>,
    min: usize,
}

#[derive(Debug, Deserialize)]
struct InstanceView {
    state: String,
}

fn sample(t: f64, status: &Status) -> Sample {
    let count = |state: &str| status.instances.iter().filter(|i| i.state == state).count();
    Sample {
        t,
        desired: status.capacity.desired,
        pending: count("pending"),
        running: count("running"),
        stopping: count("stopping"),
        backlog: status.queue.pending + status.queue.in_flight,
    }
}

/// Samples `{url}status` from `start` until `done` turns true and then the pool is back at its
/// minimum, or `tail` more has passed. A failed poll is skipped (the plot shows a gap).
pub async fn record(
    client: reqwest::Client,
    url: String,
    start: Instant,
    mut done: watch::Receiver<bool>,
    tail: Duration,
) -> Vec<Sample> {
    let status_url = format!("{}/status", url.trim_end_matches('/'));
    let mut samples = Vec::new();
    let mut finished_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if finished_at.is_none() && *done.borrow_and_update() {
            finished_at = Some(Instant::now());
        }
        let status = match client.get(&status_url).timeout(EVERY * 4).send().await {
            Ok(r) => r.json::<Status>().await.ok(),
            Err(_) => None,
        };
        if let Some(status) = &status {
            samples.push(sample(start.elapsed().as_secs_f64(), status));
        }
        if let Some(at) = finished_at {
            let settled = status.as_ref().is_some_and(|s| {
                s.instances.len() <= s.capacity.min && s.capacity.desired.is_none_or(|d| d <= s.capacity.min)
            });
            if settled || at.elapsed() >= tail {
                return samples;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_counts_by_state() {
        let status: Status = serde_json::from_str(
            r#"{"queue": {"pending": 7, "in_flight": 3, "dead_letter": 0},
                "capacity": {"desired": 4, "min": 0, "max": 20},
                "instances": [{"name": "app-instance1", "state": "running", "busy": true},
                              {"name": "app-instance2", "state": "running", "busy": false},
                              {"name": "app-instance3", "state": "pending", "busy": false},
                              {"name": "app-instance4", "state": "stopping", "busy": false}],
                "waiting_requests": 10}"#,
        )
        .unwrap();
        let s = sample(1.5, &status);
        assert_eq!((s.pending, s.running, s.stopping, s.alive()), (1, 2, 1, 4));
        assert_eq!((s.desired, s.backlog, s.t), (Some(4), 10, 1.5));
    }
}
