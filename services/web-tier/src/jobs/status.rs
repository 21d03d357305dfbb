//! `GET /jobs/{id}`: the job's images in the order sent, each pending, done (label, the top `k`
//! with probabilities, the model) or failed (why), read from the job's records. Answers never
//! change once written, so a web tier keeps those it has read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use imgrec_domain::messages::{now_ms, result_object, ClassifyResponse, Outcome, Scored};
use imgrec_domain::ports::ObjectKey;
use imgrec_domain::records::{self, Job, JobId, JobImage};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::error::UploadError;
use crate::reply;
use crate::state::WebTier;
use crate::upload::{refusal, AnswerOptions};

/// Answers read at once.
const READS: usize = 32;

/// Answers read before, by record key; emptied when it grows past `CAPACITY`.
#[derive(Default)]
pub struct AnswerCache(Mutex<HashMap<ObjectKey, Arc<ClassifyResponse>>>);

impl AnswerCache {
    const CAPACITY: usize = 100_000;

    fn get(&self, key: &ObjectKey) -> Option<Arc<ClassifyResponse>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn put(&self, key: ObjectKey, answer: Arc<ClassifyResponse>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(key, answer);
    }
}

/// A job's progress: each image's answer, if it has one yet.
pub struct Progress {
    pub job: Job,
    pub answers: Vec<Option<Arc<ClassifyResponse>>>,
}

impl Progress {
    pub fn pending(&self) -> usize {
        self.answers.iter().filter(|a| a.is_none()).count()
    }

    /// The job's status as `GET /jobs/{id}` shows it, each image's top `k`.
    pub fn report(&self, k: usize) -> Value {
        let images: Vec<Value> = (self.job.images.iter().zip(&self.answers))
            .map(|(image, answer)| image_report(image, answer.as_deref(), k))
            .collect();
        let failed = images.iter().filter(|i| i["status"] == "failed").count();
        let pending = self.pending();
        json!({
            "job_id": self.job.id,
            "status": if pending == 0 { "completed" } else { "running" },
            "created_at_ms": self.job.created_at_ms,
            "counts": { "total": images.len(), "done": images.len() - pending - failed, "failed": failed, "pending": pending },
            "images": images,
        })
    }
}

fn image_report(image: &JobImage, answer: Option<&ClassifyResponse>, k: usize) -> Value {
    let (name, _) = result_object(&image.image, "");
    let Some(answer) = answer else {
        return json!({ "image": name, "file": image.image, "status": "pending" });
    };
    match &answer.outcome {
        Outcome::Label {
            label,
            probability,
            top,
            model,
        } => {
            let mut top = if top.is_empty() {
                vec![Scored {
                    label: label.clone(),
                    probability: *probability,
                }]
            } else {
                top.clone()
            };
            top.truncate(k);
            json!({ "image": name, "file": image.image, "status": "done", "label": label, "probability": probability,
                    "top": top, "model": model, "instance": answer.instance })
        }
        Outcome::Rejected { reason } => {
            json!({ "image": name, "file": image.image, "status": "failed", "error": reason })
        }
        Outcome::DeadLettered { receives } => json!({
            "image": name, "file": image.image, "status": "failed",
            "error": format!("the request failed {receives} times and was set aside"),
        }),
    }
}

impl WebTier {
    /// `GET /jobs/{id}`.
    pub async fn job_status(self: Arc<Self>, id: String, query: String, api_key: Option<String>) -> Response {
        let report = async {
            self.client(api_key.as_deref())?;
            let k = AnswerOptions::parse(&query)?.k;
            let retention = self.settings.jobs.retention_s;
            let not_found = || UploadError::NotFound(format!("no job {id:?} (jobs are kept {retention} s)"));
            // Not echoed: it may be anything up to the request line's limit.
            let id = JobId::parse(&id)
                .ok_or_else(|| UploadError::NotFound("no such job: a job id is 32 lowercase hex digits".into()))?;
            let job = self.job(&id).await?.ok_or_else(not_found)?;
            if now_ms().saturating_sub(job.created_at_ms) > retention * 1000 {
                return Err(not_found());
            }
            Ok(self.progress(job).await?.report(k))
        };
        match report.await {
            Ok(report) => reply::json(StatusCode::OK, &report),
            Err(e) => refusal(e, true),
        }
    }

    /// Which of the job's images have their answer: one listing, then the answers not read before.
    pub(super) async fn progress(&self, job: Job) -> Result<Progress, UploadError> {
        let output = &self.settings.buckets.output;
        let store = &self.adapters.store;
        let unavailable =
            || UploadError::unavailable::<imgrec_domain::ports::PortError>("cannot read the job's answers");
        let listed = (store.list(output, &records::job_answers(&job.id)).await).map_err(unavailable())?;
        let mut answers = vec![None; job.images.len()];
        let mut unread = Vec::new();
        for key in listed {
            match records::job_answer_index(&job.id, &key) {
                Some(i) if i < answers.len() => match self.answers.get(&key) {
                    Some(answer) => answers[i] = Some(answer),
                    None => unread.push((i, key)),
                },
                _ => {}
            }
        }
        let read: Vec<(usize, ObjectKey, Option<ClassifyResponse>)> = futures::stream::iter(unread)
            .map(|(i, key)| async move {
                let answer = records::answer(store.as_ref(), output, &key).await?;
                Ok::<_, imgrec_domain::ports::PortError>((i, key, answer))
            })
            .buffer_unordered(READS)
            .try_collect()
            .await
            .map_err(unavailable())?;
        for (i, key, answer) in read {
            if let Some(answer) = answer.map(Arc::new) {
                self.answers.put(key, answer.clone());
                answers[i] = Some(answer);
            }
        }
        Ok(Progress { job, answers })
    }
}
