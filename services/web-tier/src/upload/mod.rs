//! `POST /`: the upload, read within limits and checked before anything is stored or queued,
//! stored in the input bucket, queued, and answered with its label when the response comes back.

mod admit;
pub(crate) mod body;
mod budget;
pub(crate) mod check;
pub(crate) mod idempotency;

pub use budget::{Budget, Share, MEMORY_WAIT};

use std::sync::Arc;
use std::time::{Duration, Instant};

use imgrec_classifier::ImageLimits;
use imgrec_domain::config::WebSettings;
use imgrec_domain::messages::{
    now_ms, result_object, ClassifyRequest, ClassifyResponse, Message, ModelId, Outcome, Scored, TOP_K, VERSION,
};
use imgrec_domain::ports::PortError;
use serde_json::json;
use uuid::Uuid;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use crate::dispatch::{Answer, Waiting};
use crate::error::UploadError;
use crate::reply;
use crate::state::WebTier;

/// What an upload may be, and the budgets it draws on.
#[derive(Clone)]
pub struct UploadLimits {
    pub max_file_bytes: u64,
    pub body_timeout: Duration,
    pub image: ImageLimits,
    pub body_budget: Budget,
    pub decode_budget: Budget,
}

impl UploadLimits {
    pub fn new(web: &WebSettings, image: ImageLimits) -> Self {
        Self {
            max_file_bytes: web.max_upload_bytes,
            body_timeout: web.body_timeout(),
            image,
            body_budget: Budget::new(web.upload_buffer_bytes),
            decode_budget: Budget::new(web.decode_budget_bytes),
        }
    }
}

/// A `POST /` as it arrives: the headers the upload needs and the body, not yet read.
pub struct UploadRequest<S> {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub body: S,
    pub wants_json: bool,
    /// The raw query string (`k=5`).
    pub query: String,
    /// The API key it carries, if any.
    pub api_key: Option<String>,
    /// Its `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

/// What the query string asks of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerOptions {
    /// How many of the most likely classes a JSON answer lists.
    pub k: usize,
}

impl AnswerOptions {
    /// `k=N` (1 to `TOP_K`, default 1). Other parameters are ignored, as clients add their own
    /// (cache busters, tracing ids).
    pub fn parse(query: &str) -> Result<Self, UploadError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| UploadError::BadRequest("the query string is not form-encoded".into()))?;
        let mut k = None;
        for (_, value) in pairs.into_iter().filter(|(name, _)| name == "k") {
            let value = value
                .parse()
                .ok()
                .filter(|k| (1..=TOP_K).contains(k))
                .ok_or_else(|| UploadError::BadRequest(format!("k must be a whole number from 1 to {TOP_K}")))?;
            set_once("k", &mut k, value)?;
        }
        Ok(Self { k: k.unwrap_or(1) })
    }
}

/// Sets `slot` to `value` unless it holds another value already.
pub(crate) fn set_once<T: PartialEq>(name: &str, slot: &mut Option<T>, value: T) -> Result<(), UploadError> {
    match slot {
        Some(earlier) if *earlier != value => Err(UploadError::BadRequest(format!(
            "{name} is given twice with different values: send one"
        ))),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// An upload's label, as the worker answered.
struct Labelled {
    image: String,
    label: String,
    probability: f32,
    /// Most likely first; just the label from a worker that sends no ranking.
    top: Vec<Scored>,
    model: Option<ModelId>,
    request_id: Uuid,
    instance: String,
}

impl WebTier {
    /// `POST /`: the label, or why there is none; counted by outcome.
    pub async fn upload<S, B>(self: Arc<Self>, request: UploadRequest<S>) -> Response
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        let start = Instant::now();
        let wants_json = request.wants_json;
        let labelled = self.label(request).await;
        let took = start.elapsed();
        let outcome = labelled.as_ref().map_or_else(UploadError::label, |_| "ok");
        self.metrics.requests.with_label_values(&[outcome]).inc();
        self.metrics
            .latency
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        match labelled {
            Ok((labelled, options)) => {
                self.history.answered(Instant::now(), took);
                if wants_json {
                    let Labelled {
                        image,
                        label,
                        probability,
                        mut top,
                        model,
                        request_id,
                        instance,
                    } = labelled;
                    top.truncate(options.k);
                    reply::json(
                        StatusCode::OK,
                        &json!({ "image": image, "label": label, "probability": probability, "top": top,
                                 "model": model, "request_id": request_id, "instance": instance }),
                    )
                } else {
                    reply::text(StatusCode::OK, labelled.label)
                }
            }
            Err(e) => refusal(e, wants_json),
        }
    }

    /// Refuses what it must before reading the body (no key, a bad query, a stop, overload), then
    /// reads, checks, stores and queues the upload and waits for its label.
    async fn label<S, B>(&self, request: UploadRequest<S>) -> Result<(Labelled, AnswerOptions), UploadError>
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: bytes::Buf + Send + 'static,
    {
        let client = self.client(request.api_key.as_deref())?;
        let options = AnswerOptions::parse(&request.query)?;
        let once = (request.idempotency_key.as_deref())
            .map(|key| idempotency::digest("Idempotency-Key", &client, key))
            .transpose()?;
        if self.waiters.is_closed() {
            return Err(UploadError::ShuttingDown);
        }
        self.admit()?;
        let limits = &self.upload_limits;
        let upload = body::read(request.content_type, request.content_length, request.body, limits).await?;
        check::validate(upload.bytes.clone(), limits).await?;
        let labelled = match once {
            Some(digest) => self.label_once(upload, &digest).await?,
            None => {
                let (request, waiting) = self.store_and_queue(upload, Uuid::new_v4(), None).await?;
                self.await_answer(request, waiting).await?
            }
        };
        Ok((labelled, options))
    }

    /// Who is calling: the name of the API key presented when keys are configured (refused
    /// without a valid one), else "".
    pub(crate) fn client(&self, api_key: Option<&str>) -> Result<String, UploadError> {
        match &self.api_keys {
            Some(keys) => keys.check(api_key),
            None => Ok(String::new()),
        }
    }

    /// Stores the upload in the input bucket and queues its request, waiting for its answer
    /// before it is sent so that no answer can arrive unclaimed. `answer_record`: where the
    /// worker also keeps the answer.
    async fn store_and_queue(
        &self,
        upload: body::Upload,
        request_id: Uuid,
        answer_record: Option<String>,
    ) -> Result<(ClassifyRequest, Waiting), UploadError> {
        let request = self.store(upload, request_id, answer_record).await?;
        let waiting = self.waiters.register(request.request_id);
        self.metrics.waiting_requests.set(self.waiters.len() as i64);
        self.queue(std::slice::from_ref(&request)).await?;
        Ok((request, waiting))
    }

    /// Stores the upload in the input bucket: its request, not yet queued.
    pub(crate) async fn store(
        &self,
        upload: body::Upload,
        request_id: Uuid,
        answer_record: Option<String>,
    ) -> Result<ClassifyRequest, UploadError> {
        let input = &self.settings.buckets.input;
        let stored = match self.adapters.store.put(input, &upload.key, upload.bytes).await {
            Ok(stored) => stored,
            Err(PortError::Refused(reason)) => return Err(UploadError::UnstorableName { reason }),
            Err(PortError::Transient(source) | PortError::Permanent(source)) => {
                return Err(UploadError::Unavailable {
                    what: "cannot store the upload",
                    source,
                })
            }
        };
        drop(upload.reservation);
        Ok(ClassifyRequest {
            version: VERSION,
            request_id,
            key: upload.key.to_string(),
            object_version: stored.version,
            submitted_at_ms: now_ms(),
            requeued: 0,
            given_back: 0,
            reply_to: Some(self.reply_to.clone()),
            answer_record,
        })
    }

    /// Queues stored uploads' requests, in as few calls as the queue allows.
    pub(crate) async fn queue(&self, requests: &[ClassifyRequest]) -> Result<(), UploadError> {
        let bodies: Vec<Vec<u8>> = requests.iter().map(Message::encode).collect();
        let sent = match &bodies[..] {
            [one] => self.adapters.requests.send(one).await,
            many => self.adapters.requests.send_batch(many).await,
        };
        match sent {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                return Err(UploadError::Unavailable {
                    what: "cannot queue the request",
                    source: e.into(),
                })
            }
            Err(e) => {
                return Err(UploadError::QueueRefused {
                    key: requests.first().map(|r| r.key.clone()).unwrap_or_default(),
                    source: e.into(),
                })
            }
        }
        if let Some(scaler) = &self.scaler {
            scaler.nudge.notify_one();
        }
        Ok(())
    }

    async fn await_answer(&self, request: ClassifyRequest, mut waiting: Waiting) -> Result<Labelled, UploadError> {
        let timeout = self.settings.web.response_timeout();
        let answer = tokio::time::timeout(timeout, &mut waiting.answer).await;
        let (image, _) = result_object(&request.key, "");
        match answer {
            Ok(Ok(Answer::Response(response))) => self.labelled(*response, image),
            Ok(Ok(Answer::ShuttingDown)) => Err(UploadError::StoppedWaiting(image)),
            Ok(Err(_)) | Err(_) => Err(UploadError::Timeout {
                seconds: timeout.as_secs(),
                image,
            }),
        }
    }

    /// A worker's answer as the upload's label (or why there is none), its timings observed.
    fn labelled(&self, response: ClassifyResponse, image: String) -> Result<Labelled, UploadError> {
        if let Some(timings) = &response.timings {
            self.metrics.observe(timings);
        }
        match response.outcome {
            Outcome::Label {
                label,
                probability,
                top,
                model,
            } => Ok(Labelled {
                image,
                top: if top.is_empty() {
                    vec![Scored {
                        label: label.clone(),
                        probability,
                    }]
                } else {
                    top
                },
                model,
                label,
                probability,
                request_id: response.request_id,
                instance: response.instance,
            }),
            Outcome::Rejected { reason } => Err(UploadError::Rejected(reason)),
            Outcome::DeadLettered { receives } => Err(UploadError::DeadLettered(receives)),
        }
    }
}

/// An error's answer: its status and its one-line reason; `Retry-After` when coming back helps.
pub(crate) fn refusal(e: UploadError, wants_json: bool) -> Response {
    e.log();
    let status = e.status();
    let mut response = if wants_json {
        reply::json(status, &json!({ "error": e.to_string() }))
    } else {
        reply::text(status, e.to_string())
    };
    if let Some(after) = e.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(after.as_secs().max(1)));
    }
    if matches!(e, UploadError::Unauthorized) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_is_a_whole_number_from_1_to_top_k_and_other_parameters_are_ignored() {
        let k = |query: &str| AnswerOptions::parse(query).map(|o| o.k).map_err(|e| e.to_string());
        assert_eq!(k(""), Ok(1));
        assert_eq!(k("k=5"), Ok(5));
        assert_eq!(k("k=10&cache=123"), Ok(10));
        assert_eq!(k("k=%35"), Ok(5), "percent-encoded");
        for bad in ["k=0", "k=11", "k=", "k=five", "k=-1", "k=1.5", "k=99999999999999999999"] {
            assert!(k(bad).is_err_and(|e| e.contains("k must be")), "{bad}");
        }
        assert_eq!(k("k=3&k=3"), Ok(3));
        assert!(k("k=3&k=5").is_err_and(|e| e.contains("k is given twice")));
    }
}
