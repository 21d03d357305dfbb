//! `GET /status`, `GET /status/history` and `GET /metrics`: the queue, the fleet as the scaler
//! last saw it, and this web tier's own counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use imgrec_domain::ports::InstanceState;
use imgrec_domain::public::redact;
use serde_json::json;
use tracing::warn;
use warp::http::{header, StatusCode};
use warp::reply::{self, Reply as _, Response};

use crate::history::Sample;
use crate::reply::json as json_reply;
use crate::state::WebTier;

impl WebTier {
    /// `GET /status/history`: the last 10 minutes, one sample a second.
    pub async fn history(self: Arc<Self>) -> Response {
        json_reply(StatusCode::OK, &json!({ "samples": self.history.samples() }))
    }

    /// Records the fleet and the backlog as the scaler last saw them (the queue itself when no
    /// scaler runs here), for the dashboard's chart.
    pub async fn sample(&self) {
        let (desired, instances, backlog) = match &self.scaler {
            Some(scaler) => {
                let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
                (Some(s.desired), s.instances.clone(), Some(s.backlog))
            }
            None => (None, Vec::new(), None),
        };
        let backlog = match backlog {
            Some(b) => b,
            None => match self.request_depth.get().await {
                Ok(depth) => depth,
                Err(_) => return,
            },
        };
        self.history
            .record(Sample::of(SystemTime::now(), desired, &instances, backlog));
    }

    /// `GET /status`.
    pub async fn status(self: Arc<Self>) -> Response {
        let depth = match self.request_depth.get().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the queue depth");
                return json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": "queue unavailable" }),
                );
            }
        };
        let dead = self.dead_letter_depth.get().await.map(|d| d.total()).ok();
        let (min, mut max) = (self.settings.scaler.min, self.settings.scaler.max);
        let (desired, instances, error, acting, launch_failure, warm_pool) = match &self.scaler {
            Some(scaler) => {
                let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
                max = s.max;
                let now = SystemTime::now();
                let instances: Vec<_> = s
                    .instances
                    .iter()
                    .map(|i| {
                        let up = now.duration_since(i.launched_at).unwrap_or_default();
                        json!({
                            "name": i.name,
                            "state": state_name(i.state),
                            "busy": i.busy,
                            "up_s": up.as_secs_f64(),
                            "purchase": i.purchase,
                        })
                    })
                    .collect();
                // What the cloud says carries account ids and ARNs, locally paths: the gist only.
                let launch_failure = s.launch_failure.clone().map(|mut f| {
                    f.reason = redact(&f.reason);
                    f
                });
                (
                    Some(s.desired),
                    instances,
                    s.last_error.as_deref().map(redact),
                    s.acting,
                    launch_failure,
                    s.warm_pool.clone(),
                )
            }
            None => (None, Vec::new(), None, false, None, None),
        };
        // Instances not on their way out, by how they are paid for (EC2 only).
        let mut by_purchase = serde_json::Map::new();
        for i in instances.iter().filter(|i| i["state"] != "stopping") {
            if let Some(p) = i["purchase"].as_str() {
                let n = by_purchase.get(p).and_then(|v| v.as_u64()).unwrap_or(0);
                by_purchase.insert(p.to_owned(), json!(n + 1));
            }
        }
        json_reply(
            StatusCode::OK,
            &json!({
                "queue": { "pending": depth.visible, "in_flight": depth.in_flight, "dead_letter": dead },
                "capacity": {
                    "desired": desired, "min": min, "max": max, "launch_failure": launch_failure,
                    "by_purchase": by_purchase, "warm_pool": warm_pool,
                },
                "instances": instances,
                "waiting_requests": self.waiters.len(),
                "recent": self.history.recent(Instant::now()),
                "scaler_error": error,
                "web_tier": { "name": *self.name.borrow(), "response_queue": self.reply_to, "scaler_acting": acting },
                "admission": {
                    "enabled": self.admission.is_some(),
                    "refused": self.refused.load(Ordering::Relaxed),
                    "rate_at_cap": self.admission.as_ref().map(|a| a.rate_at_cap(&self.load())),
                },
            }),
        )
    }

    /// `GET /metrics`.
    pub async fn metrics(self: Arc<Self>) -> Response {
        let m = &self.metrics;
        if let Ok(depth) = self.request_depth.get().await {
            m.queue_pending.set(depth.visible as i64);
            m.queue_in_flight.set(depth.in_flight as i64);
        }
        m.waiting_requests.set(self.waiters.len() as i64);
        m.oldest_waiting
            .set(self.waiters.oldest().unwrap_or_default().as_secs_f64());
        if let Some(scaler) = &self.scaler {
            let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
            m.desired_capacity.set(s.desired as i64);
            for state in [InstanceState::Pending, InstanceState::Running, InstanceState::Stopping] {
                let n = s.instances.iter().filter(|i| i.state == state).count();
                m.instances.with_label_values(&[state_name(state)]).set(n as i64);
            }
        }
        reply::with_header(
            m.render(&self.adapters.connection.calls),
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )
        .into_response()
    }
}

fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Pending => "pending",
        InstanceState::Running => "running",
        InstanceState::Stopping => "stopping",
    }
}
