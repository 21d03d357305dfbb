//! One receive's requests from message to answer: read them, fetch their images, classify them
//! in one model run, store each result, send each answer, and only then delete the request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use imgrec_classifier::{ClassifyError, Prediction};
use imgrec_domain::messages::{
    now_ms, result_object, ClassifyRequest, ClassifyResponse, Message, ModelId, Outcome, Scored, Timings, VERSION,
};
use imgrec_domain::ports::{Kept, ObjectKey, PortError, Receipt, Received, UploadOrder};
use imgrec_domain::records;
use tracing::{debug, error, info, warn};

use super::Worker;
use crate::poison::Job;

/// Why an image is not in hand.
enum Fetch {
    /// It never will be (no such object, bad key): answer the client.
    Missing(String),
    /// The store failed this time: leave the request for a retry.
    Unavailable,
}

/// A request that is ready to be answered: its label or the reason it has none.
pub(super) struct Classified {
    receipt: Receipt,
    request: ClassifyRequest,
    outcome: Result<Prediction, String>,
    /// When the image went through a model run.
    timings: Option<Timings>,
}

impl Worker {
    /// Decodes received messages. One this release cannot read (a newer version, or not a
    /// request at all) is left alone: it comes back after its visibility timeout for another
    /// worker (a newer release may read it), and goes to the dead-letter queue after
    /// `queues.max_receives`, where an operator finds it. Never deleted unread.
    pub(super) async fn decode(&self, messages: Vec<Received>) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(messages.len());
        for m in messages {
            match ClassifyRequest::decode(&m.body) {
                Ok(request) => jobs.push(Job {
                    receipt: m.receipt,
                    request,
                    receive_count: m.receive_count,
                }),
                Err(e) => error!(
                    error = %e,
                    receives = m.receive_count,
                    max_receives = self.settings.queues.max_receives,
                    "cannot read a request message; leaving it for another worker or the dead-letter queue"
                ),
            }
        }
        jobs
    }

    /// Sends each job back as a new message (so that its receive count starts over) and deletes
    /// the one received. Returns the jobs that could not be requeued: they are classified alone.
    pub(super) async fn requeue(&self, jobs: Vec<Job>) -> Vec<Job> {
        if jobs.is_empty() {
            return jobs;
        }
        let requests = jobs.len();
        let again = |r: &ClassifyRequest| ClassifyRequest {
            requeued: r.requeued + 1,
            ..r.clone()
        };
        match self.send_again(jobs, again).await {
            Ok(()) => {
                info!(
                    requests,
                    "requeued retried requests so that this worker holds one at a time"
                );
                Vec::new()
            }
            Err((e, jobs)) => {
                warn!(error = %format!("{e:#}"), "cannot requeue suspect requests; classifying them alone");
                jobs
            }
        }
    }

    /// Sends each job's request again as a new message, as `again` makes it (its receive count
    /// starts over), and deletes the one received; the jobs back if the send failed.
    pub(super) async fn send_again(
        &self,
        jobs: Vec<Job>,
        again: impl Fn(&ClassifyRequest) -> ClassifyRequest,
    ) -> Result<(), (PortError, Vec<Job>)> {
        let bodies: Vec<Vec<u8>> = jobs.iter().map(|j| again(&j.request).encode()).collect();
        if let Err(e) = self.adapters.requests.send_batch(&bodies).await {
            return Err((e, jobs));
        }
        let receipts: Vec<Receipt> = jobs.into_iter().map(|j| j.receipt).collect();
        // A failed delete leaves a duplicate: both are answered, the client takes the first.
        self.delete(&receipts).await;
        Ok(())
    }

    /// Fetches a batch's images and classifies them in one model run. Requests that should be
    /// retried (transient failures) get no answer and stay in the queue.
    pub(super) async fn run_batch(&self, jobs: Vec<Job>) -> Vec<Classified> {
        let requests: Vec<(Receipt, ClassifyRequest)> = jobs.into_iter().map(|j| (j.receipt, j.request)).collect();
        let fetched_at = now_ms();
        let images = join_all(requests.iter().map(|(_, r)| self.fetch(r))).await;
        let inputs: Vec<Bytes> = images.iter().filter_map(|i| i.as_ref().ok().cloned()).collect();
        let batch_size = inputs.len();
        let started = Instant::now();
        let results = self
            .inference
            .classify(inputs, self.settings.app_tier.max_batch_pixels)
            .await;
        let inference_ms = started.elapsed().as_secs_f64() * 1e3 / batch_size.max(1) as f64;
        let mut results = match results {
            Ok(r) => r.into_iter(),
            Err(e) => {
                error!(error = %format!("{e:#}"), "classification failed; the batch will be retried one by one");
                self.release(requests.iter().map(|(r, _)| r)).await;
                return Vec::new();
            }
        };
        let mut failed = Vec::new();
        let mut answers = Vec::with_capacity(requests.len());
        for ((receipt, request), image) in requests.into_iter().zip(images) {
            let ran = image.is_ok();
            let outcome = match image {
                Err(Fetch::Missing(reason)) => Err(reason),
                Err(Fetch::Unavailable) => continue,
                Ok(_) => match results.next().expect("one result per fetched image") {
                    Ok(p) => Ok(p),
                    Err(ClassifyError::Image(e)) => Err(format!("not a usable image: {e}")),
                    Err(ClassifyError::Inference(e)) => {
                        error!(error = %format!("{e:#}"), key = %request.key, "inference failed; will retry alone");
                        failed.push(receipt);
                        continue;
                    }
                },
            };
            let timings = Timings {
                queue_wait_ms: fetched_at.saturating_sub(request.submitted_at_ms),
                inference_ms,
                batch_size: batch_size as u32,
            };
            answers.push(Classified {
                receipt,
                request,
                outcome,
                timings: ran.then_some(timings),
            });
        }
        self.release(failed.iter()).await;
        answers
    }

    /// Makes requests visible again at once, to be retried (alone: see `poison`).
    pub(super) async fn release(&self, receipts: impl Iterator<Item = &Receipt>) {
        for r in receipts {
            self.forget(std::slice::from_ref(r));
            if let Err(e) = self.adapters.requests.change_visibility(r, Duration::ZERO).await {
                warn!(error = %format!("{e:#}"), "cannot release a request; it returns after its visibility timeout");
            }
        }
    }

    async fn fetch(&self, request: &ClassifyRequest) -> Result<Bytes, Fetch> {
        let key = ObjectKey::new(request.key.as_str()).map_err(|e| Fetch::Missing(format!("bad input key: {e}")))?;
        let input = &self.settings.buckets.input;
        match self
            .adapters
            .store
            .get(input, &key, request.object_version.as_deref())
            .await
        {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Fetch::Missing(format!("input object {key} not found"))),
            Err(e) if !e.is_transient() => {
                // The store's words (a bucket, an ARN, a path) are for the log, not the client.
                warn!(error = %format!("{e:#}"), %key, "cannot fetch input, and retrying will not help");
                Err(Fetch::Missing(
                    "the uploaded file cannot be read back from storage".into(),
                ))
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), %key, "cannot fetch input; will retry");
                Err(Fetch::Unavailable)
            }
        }
    }

    /// Stores the results, sends the responses (each to the web tier that waits for it), then
    /// deletes the requests. A failure before the delete leaves a request to come back after its
    /// visibility timeout.
    pub(super) async fn answer_all(&self, answers: Vec<Classified>) {
        let stored = join_all(answers.into_iter().map(|a| self.store_result(a))).await;
        let mut by_queue: HashMap<String, Vec<(Receipt, ClassifyResponse)>> = HashMap::new();
        for (receipt, reply_to, response) in stored.into_iter().flatten() {
            by_queue.entry(reply_to).or_default().push((receipt, response));
        }
        let sent = join_all(by_queue.into_iter().map(|(queue, ready)| async move {
            let bodies: Vec<Vec<u8>> = ready.iter().map(|(_, r)| r.encode()).collect();
            let sent = match self.adapters.response_queues.open(&queue).await {
                Ok(q) => q.send_batch(&bodies).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => ready.into_iter().map(|(r, _)| r).collect(),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), %queue, "cannot send responses; the requests will be retried");
                    Vec::new()
                }
            }
        }))
        .await;
        let receipts: Vec<Receipt> = sent.into_iter().flatten().collect();
        if !receipts.is_empty() {
            self.delete(&receipts).await;
        }
    }

    /// The response queue a request's answer goes to: the one it names if that is a web tier's
    /// response queue, else the shared one.
    fn reply_queue(&self, request: &ClassifyRequest) -> String {
        let queues = &self.settings.queues;
        match &request.reply_to {
            Some(q) if queues.is_response_queue(q) => q.clone(),
            Some(q) => {
                warn!(reply_to = %q, request_id = %request.request_id, "request names no response queue; answering on the shared one");
                queues.responses.clone()
            }
            None => queues.responses.clone(),
        }
    }

    async fn store_result(&self, answer: Classified) -> Option<(Receipt, String, ClassifyResponse)> {
        let outcome = match answer.outcome {
            Ok(prediction) => {
                let (key, value) = result_object(&answer.request.key, &prediction.label);
                // Uploads that share a name (or a name but for its extension) share the output
                // key: the newest upload's result stays, whichever request finishes last.
                let order = UploadOrder::new(answer.request.submitted_at_ms, &answer.request.request_id.to_string());
                let stored = match ObjectKey::new(key) {
                    Ok(key) => {
                        self.adapters
                            .store
                            .put_newest(
                                &self.settings.buckets.output,
                                &key,
                                Bytes::from(value),
                                &order,
                                &self.result_metadata,
                            )
                            .await
                    }
                    Err(e) => Err(PortError::Refused(format!("bad output key: {e}"))),
                };
                match stored {
                    Ok(kept) => {
                        if kept == Kept::Superseded {
                            debug!(key = %answer.request.key, "a later upload's result is stored; this one only answers its client");
                        }
                        let model = &self.inference.model;
                        Outcome::Label {
                            label: prediction.label,
                            probability: prediction.probability,
                            top: (prediction.top.into_iter())
                                .map(|(label, probability)| Scored { label, probability })
                                .collect(),
                            model: Some(ModelId {
                                name: model.name.clone(),
                                version: model.version.clone(),
                            }),
                        }
                    }
                    // Retrying cannot store it: tell the client instead of cycling to the dead-letter queue.
                    Err(PortError::Refused(reason)) => {
                        warn!(%reason, key = %answer.request.key, "cannot store result");
                        Outcome::Rejected {
                            reason: "the result cannot be stored under this file name".into(),
                        }
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), key = %answer.request.key, "cannot store result; will retry");
                        return None;
                    }
                }
            }
            Err(reason) => Outcome::Rejected { reason },
        };
        let reply_to = self.reply_queue(&answer.request);
        let response = ClassifyResponse {
            version: VERSION,
            request_id: answer.request.request_id,
            key: answer.request.key,
            outcome,
            instance: self.name.clone(),
            timings: answer.timings,
        };
        if let Some(record) = &answer.request.answer_record {
            let output = &self.settings.buckets.output;
            match records::store_answer(self.adapters.store.as_ref(), output, record, &response).await {
                Ok(()) => {}
                // A request naming no record's key: its client still gets the answer.
                Err(PortError::Refused(reason)) => {
                    warn!(%reason, request_id = %response.request_id, "cannot keep the answer")
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), %record, "cannot keep the answer; will retry");
                    return None;
                }
            }
        }
        Some((answer.receipt, reply_to, response))
    }

    async fn delete(&self, receipts: &[Receipt]) {
        self.forget(receipts);
        if let Err(e) = self.adapters.requests.delete_batch(receipts).await {
            warn!(error = %format!("{e:#}"), "cannot delete requests; they will be answered again");
        }
    }
}
