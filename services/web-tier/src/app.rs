//! The web tier's handlers: upload -> store -> queue -> await the answer; status and metrics.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use imgrec_domain::config::Settings;
use imgrec_domain::messages::{now_ms, result_object, ClassifyRequest, Message, Outcome, VERSION};
use imgrec_domain::ports::{InstanceState, StoreError};
use imgrec_domain::public::redact;
use imgrec_runtime::backend::Ports;
use scaler::ScalerHandle;
use serde_json::json;
use tracing::{error, warn};
use uuid::Uuid;
use warp::http::{header, StatusCode};
use warp::reply::{self, Reply as _, Response};

use crate::dispatch::{Answer, Waiters};
use crate::history::{History, Sample};
use crate::metrics::Metrics;
use crate::upload::{self, Refusal, UploadLimits};

pub struct App {
    pub settings: Settings,
    pub ports: Ports,
    /// This web tier's name (`web-instanceK`; another one if it loses this one while paused) and
    /// the response queue its answers come back on (this process's own).
    pub name: tokio::sync::watch::Receiver<String>,
    pub reply_to: String,
    pub waiters: Waiters,
    pub metrics: Metrics,
    pub upload_limits: UploadLimits,
    /// The hosted scaler, when this process runs one.
    pub scaler: Option<ScalerHandle>,
    /// What the dashboard charts.
    pub history: History,
}

/// A `POST /` as it arrives: the headers the upload needs and the body, not yet read.
pub struct UploadRequest<S> {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub body: S,
    pub wants_json: bool,
}

type Reply = Response;

/// A plain-text answer: the label, or a one-line reason.
pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    reply::with_status(
        reply::with_header(body, header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        status,
    )
    .into_response()
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply::with_status(reply::json(value), status).into_response()
}

impl App {
    pub fn new(
        settings: Settings,
        ports: Ports,
        name: tokio::sync::watch::Receiver<String>,
        reply_to: String,
        scaler: Option<ScalerHandle>,
    ) -> Arc<Self> {
        let web = &settings.web;
        let upload_limits = UploadLimits {
            max_file_bytes: web.max_upload_bytes,
            body_timeout: web.body_timeout(),
            image: settings.image_limits,
            body_budget: upload::Budget::new(web.upload_buffer_bytes),
            decode_budget: upload::Budget::new(web.decode_budget_bytes),
        };
        Arc::new(Self {
            settings,
            ports,
            name,
            reply_to,
            waiters: Waiters::default(),
            metrics: Metrics::new(),
            upload_limits,
            scaler,
            history: History::default(),
        })
    }

    /// `POST /`.
    pub async fn classify<S, B>(self: Arc<Self>, request: UploadRequest<S>) -> Reply
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        let start = Instant::now();
        let wants_json = request.wants_json;
        let (outcome, reply) = match self.handle_upload(request).await {
            Ok(reply) => ("ok", reply),
            Err((outcome, r)) => {
                let mut reply = if wants_json {
                    json_reply(r.status, &json!({ "error": r.reason }))
                } else {
                    text(r.status, r.reason)
                };
                if r.status == StatusCode::SERVICE_UNAVAILABLE {
                    // Busy or draining: worth retrying, after a pause.
                    reply
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                }
                (outcome, reply)
            }
        };
        let took = start.elapsed();
        self.metrics.requests.with_label_values(&[outcome]).inc();
        self.metrics
            .latency
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        if outcome == "ok" {
            self.history.answered(Instant::now(), took);
        }
        reply
    }

    async fn handle_upload<S, B>(&self, request: UploadRequest<S>) -> Result<Reply, (&'static str, Refusal)>
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        if self.waiters.is_closed() {
            return Err((
                "unavailable",
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the service is shutting down; try again",
                ),
            ));
        }
        // A refused upload is the client's fault, except when the server is short of memory.
        let bad = |r: Refusal| match r.status {
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", r),
            _ => ("bad_request", r),
        };
        let limits = &self.upload_limits;
        let up = upload::read(request.content_type, request.content_length, request.body, limits)
            .await
            .map_err(bad)?;
        upload::validate(up.bytes.clone(), limits).await.map_err(bad)?;

        let unavailable = |what: &str, e: anyhow::Error| {
            warn!(error = %format!("{e:#}"), "{what}");
            (
                "unavailable",
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what}; try again later")),
            )
        };
        let stored = match self
            .ports
            .store
            .put(&self.settings.buckets.input, &up.key, up.bytes)
            .await
        {
            Ok(stored) => stored,
            Err(StoreError::Invalid(reason)) => {
                warn!(%reason, key = %up.key, "cannot store an upload");
                return Err(bad(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "cannot store a file of this name; rename it and try again",
                )));
            }
            Err(StoreError::Unavailable(e)) => return Err(unavailable("cannot store the upload", e)),
        };
        drop(up.reservation);
        let wants_json = request.wants_json;
        let request = ClassifyRequest {
            version: VERSION,
            request_id: Uuid::new_v4(),
            key: up.key.to_string(),
            object_version: stored.version,
            submitted_at_ms: now_ms(),
            requeued: 0,
            reply_to: Some(self.reply_to.clone()),
        };
        let mut waiting = self.waiters.register(request.request_id);
        self.metrics.waiting_requests.set(self.waiters.len() as i64);
        match self.ports.requests.send(&request.encode()).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(unavailable("cannot queue the request", e.into())),
            // The queue is gone or forbidden: a fault of this deployment, not a busy moment.
            Err(e) => {
                error!(error = %e, "cannot queue the request, and retrying will not help");
                return Err((
                    "failed",
                    Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot queue the request (the upload is stored as {})", up.key),
                    ),
                ));
            }
        }
        if let Some(scaler) = &self.scaler {
            scaler.nudge.notify_one();
        }

        let timeout = self.settings.web.response_timeout();
        let answer = tokio::time::timeout(timeout, &mut waiting.answer).await;
        let (image, _) = result_object(&request.key, "");
        match answer {
            Ok(Ok(Answer::Response(response))) => match response.outcome {
                Outcome::Label { label, probability } => Ok(if wants_json {
                    json_reply(
                        StatusCode::OK,
                        &json!({
                            "image": image, "label": label, "probability": probability,
                            "request_id": request.request_id, "instance": response.instance,
                        }),
                    )
                } else {
                    text(StatusCode::OK, label)
                }),
                Outcome::Rejected { reason } => {
                    Err(("rejected", Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, reason)))
                }
                Outcome::DeadLettered { receives } => Err((
                    "failed",
                    Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the request failed {receives} times and was set aside"),
                    ),
                )),
            },
            Ok(Ok(Answer::ShuttingDown)) => Err((
                "unavailable",
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the service is shutting down; the result will still be stored as {image}"),
                ),
            )),
            Ok(Err(_)) | Err(_) => Err((
                "timeout",
                Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no label within {}s; the result will still be stored as {image}",
                        timeout.as_secs()
                    ),
                ),
            )),
        }
    }

    /// `GET /status/history`: the last 10 minutes, one sample a second.
    pub async fn history(self: Arc<Self>) -> Reply {
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
            None => match self.ports.requests.depth().await {
                Ok(depth) => depth,
                Err(_) => return,
            },
        };
        self.history
            .record(Sample::of(SystemTime::now(), desired, &instances, backlog));
    }

    /// `GET /status`.
    pub async fn status(self: Arc<Self>) -> Reply {
        let depth = match self.ports.requests.depth().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the queue depth");
                return json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": "queue unavailable" }),
                );
            }
        };
        let dead = self.ports.dead_letter.depth().await.map(|d| d.total()).ok();
        let (min, mut max) = (self.settings.scaler.min, self.settings.scaler.max);
        let (desired, instances, error, acting, launch_failure) = match &self.scaler {
            Some(scaler) => {
                let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
                max = s.max;
                let now = SystemTime::now();
                let instances: Vec<_> = s
                    .instances
                    .iter()
                    .map(|i| {
                        let up = now.duration_since(i.launched_at).unwrap_or_default();
                        json!({ "name": i.name, "state": state_name(i.state), "busy": i.busy, "up_s": up.as_secs_f64() })
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
                )
            }
            None => (None, Vec::new(), None, false, None),
        };
        json_reply(
            StatusCode::OK,
            &json!({
                "queue": { "pending": depth.visible, "in_flight": depth.in_flight, "dead_letter": dead },
                "capacity": { "desired": desired, "min": min, "max": max, "launch_failure": launch_failure },
                "instances": instances,
                "waiting_requests": self.waiters.len(),
                "recent": self.history.recent(Instant::now()),
                "scaler_error": error,
                "web_tier": { "name": *self.name.borrow(), "response_queue": self.reply_to, "scaler_acting": acting },
            }),
        )
    }

    /// `GET /metrics`.
    pub async fn metrics(self: Arc<Self>) -> Reply {
        let m = &self.metrics;
        if let Ok(depth) = self.ports.requests.depth().await {
            m.queue_pending.set(depth.visible as i64);
            m.queue_in_flight.set(depth.in_flight as i64);
        }
        m.waiting_requests.set(self.waiters.len() as i64);
        if let Some(scaler) = &self.scaler {
            let s = scaler.status.read().unwrap_or_else(|p| p.into_inner());
            m.desired_capacity.set(s.desired as i64);
            for state in [InstanceState::Pending, InstanceState::Running, InstanceState::Stopping] {
                let n = s.instances.iter().filter(|i| i.state == state).count();
                m.instances.with_label_values(&[state_name(state)]).set(n as i64);
            }
        }
        reply::with_header(
            m.render(&self.ports.calls),
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
