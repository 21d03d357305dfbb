//! `app-tier run --name app-instanceK`: the worker loop. Receive up to a batch of requests, fetch
//! the images, classify them in one model run, store each result, answer, and only then delete
//! the request, so a worker that dies mid-batch loses nothing.
//!
//! Answering batch N (storing, sending, deleting: I/O) overlaps with classifying batch N+1, so the
//! core stays busy; at most one batch is being answered at a time.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use imgrec_core::backend::{self, Ports};
use imgrec_core::classifier::{Classifier, ClassifyError, Prediction};
use imgrec_core::config::Settings;
use imgrec_core::messages::{result_object, ClassifyRequest, ClassifyResponse, Message, Outcome, VERSION};
use imgrec_core::ports::{InstanceState, InstanceStatus, ObjectKey, Receipt, Received};
use tokio::task::JoinHandle;
use tracing::{error, info, warn, Instrument};

#[derive(clap::Args)]
pub struct Args {
    /// This instance's name (`app-instanceK`), given by the scaler.
    #[arg(long)]
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let span = tracing::info_span!("app-tier", instance = %args.name);
    runtime.block_on(worker(settings, args.name).instrument(span))?;
    Ok(ExitCode::SUCCESS)
}

struct Worker {
    name: String,
    settings: Settings,
    ports: Ports,
    classifier: Arc<Mutex<Classifier>>,
}

async fn worker(settings: Settings, name: String) -> anyhow::Result<()> {
    let shutdown = imgrec_core::shutdown::on_signal()?;
    let status = backend::instance_status(&settings, &name).await?;
    status.report(InstanceState::Pending, false).await?;
    let ports = Ports::connect(&settings).await?;
    let (inference, limits) = (settings.inference.clone(), settings.image_limits);
    let classifier = tokio::task::spawn_blocking(move || Classifier::load(&inference, limits)).await??;
    let worker = Arc::new(Worker {
        name,
        settings,
        ports,
        classifier: Arc::new(Mutex::new(classifier)),
    });
    status.report(InstanceState::Running, false).await?;
    info!("ready");

    let app = &worker.settings.app_tier;
    let (batch, wait) = (app.batch_size, Duration::from_millis(app.poll_wait_ms));
    let visibility = worker.settings.queues.visibility_timeout();
    let mut busy = false;
    let mut backoff = Duration::from_millis(100);
    let mut answering: Option<JoinHandle<()>> = None;
    while !*shutdown.borrow() {
        // Not cancelled by the shutdown signal: a receive cut short could leave messages taken
        // but unprocessed until their visibility timeout. It returns within `poll_wait_ms`.
        let messages = match worker.ports.requests.receive(batch, visibility, wait).await {
            Ok(m) => {
                backoff = Duration::from_millis(100);
                m
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot receive requests; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let has_work = !messages.is_empty() || answering.as_ref().is_some_and(|h| !h.is_finished());
        if busy != has_work {
            busy = has_work;
            report(&*status, InstanceState::Running, busy).await;
        }
        if messages.is_empty() {
            continue;
        }
        let receipts: Vec<Receipt> = messages.iter().map(|m| m.receipt.clone()).collect();
        // Keep the batch hidden from other workers until it is answered.
        let keeper = tokio::spawn(keep_invisible(worker.ports.clone(), receipts, visibility));
        let answers = worker.classify(messages).await;
        if let Some(previous) = answering.take() {
            let _ = previous.await;
        }
        let w = worker.clone();
        answering = Some(tokio::spawn(
            async move {
                w.answer_all(answers).await;
                keeper.abort();
            }
            .in_current_span(),
        ));
    }
    if let Some(last) = answering {
        let _ = last.await;
    }
    report(&*status, InstanceState::Stopping, false).await;
    let calls = imgrec_core::aws::calls();
    info!(aws_calls = %serde_json::to_string(&calls).unwrap_or_default(), "stopped");
    Ok(())
}

async fn report(status: &dyn InstanceStatus, state: InstanceState, busy: bool) {
    if let Err(e) = status.report(state, busy).await {
        warn!(error = %format!("{e:#}"), "cannot report instance status");
    }
}

/// Why an image is not in hand.
enum Fetch {
    /// It never will be (no such object, bad key): answer the client.
    Missing(String),
    /// The store failed this time: leave the request for a retry.
    Unavailable,
}

/// A request that is ready to be answered: its label or the reason it has none.
struct Answer {
    receipt: Receipt,
    request: ClassifyRequest,
    outcome: Result<Prediction, String>,
}

impl Worker {
    /// Fetches and classifies a batch. Requests that should be retried (transient failures) get
    /// no answer and stay in the queue.
    async fn classify(&self, messages: Vec<Received>) -> Vec<Answer> {
        let mut requests = Vec::with_capacity(messages.len());
        let mut malformed = Vec::new();
        for m in messages {
            match ClassifyRequest::decode(&m.body) {
                Ok(request) => requests.push((m.receipt, request)),
                Err(e) => {
                    // Without a request id nobody can be answered; keeping it would only retry it.
                    error!(error = %e, "dropping a malformed request message");
                    malformed.push(m.receipt);
                }
            }
        }
        if !malformed.is_empty() {
            self.delete(&malformed).await;
        }
        let images = join_all(requests.iter().map(|(_, r)| self.fetch(r))).await;
        let inputs: Vec<Bytes> = images.iter().filter_map(|i| i.as_ref().ok().cloned()).collect();
        let classifier = self.classifier.clone();
        let results = tokio::task::spawn_blocking(move || {
            let views: Vec<&[u8]> = inputs.iter().map(|b| b.as_ref()).collect();
            classifier.lock().unwrap_or_else(|p| p.into_inner()).classify(&views)
        })
        .await;
        let mut results = match results {
            Ok(r) => r.into_iter(),
            Err(e) => {
                error!(error = %e, "classification task failed; the batch will be retried");
                return Vec::new();
            }
        };
        let mut answers = Vec::with_capacity(requests.len());
        for ((receipt, request), image) in requests.into_iter().zip(images) {
            let outcome = match image {
                Err(Fetch::Missing(reason)) => Err(reason),
                Err(Fetch::Unavailable) => continue,
                Ok(_) => match results.next().expect("one result per fetched image") {
                    Ok(p) => Ok(p),
                    Err(ClassifyError::Image(e)) => Err(format!("not a usable image: {e}")),
                    Err(ClassifyError::Inference(e)) => {
                        error!(error = %format!("{e:#}"), key = %request.key, "inference failed; will retry");
                        continue;
                    }
                },
            };
            answers.push(Answer {
                receipt,
                request,
                outcome,
            });
        }
        answers
    }

    async fn fetch(&self, request: &ClassifyRequest) -> Result<Bytes, Fetch> {
        let key = ObjectKey::new(request.key.as_str()).map_err(|e| Fetch::Missing(format!("bad input key: {e}")))?;
        let input = &self.settings.buckets.input;
        match self
            .ports
            .store
            .get(input, &key, request.object_version.as_deref())
            .await
        {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Fetch::Missing(format!("input object {key} not found"))),
            Err(e) => {
                warn!(error = %format!("{e:#}"), %key, "cannot fetch input; will retry");
                Err(Fetch::Unavailable)
            }
        }
    }

    /// Stores the results, sends the responses, then deletes the requests. A failure before the
    /// delete leaves a request to come back after its visibility timeout.
    async fn answer_all(&self, answers: Vec<Answer>) {
        let stored = join_all(answers.into_iter().map(|a| self.store_result(a))).await;
        let ready: Vec<(Receipt, ClassifyResponse)> = stored.into_iter().flatten().collect();
        if ready.is_empty() {
            return;
        }
        let bodies: Vec<Vec<u8>> = ready.iter().map(|(_, r)| r.encode()).collect();
        if let Err(e) = self.ports.responses.send_batch(&bodies).await {
            warn!(error = %format!("{e:#}"), "cannot send responses; the requests will be retried");
            return;
        }
        let receipts: Vec<Receipt> = ready.into_iter().map(|(r, _)| r).collect();
        self.delete(&receipts).await;
    }

    async fn store_result(&self, answer: Answer) -> Option<(Receipt, ClassifyResponse)> {
        let outcome = match answer.outcome {
            Ok(prediction) => {
                let (key, value) = result_object(&answer.request.key, &prediction.label);
                let stored = match ObjectKey::new(key) {
                    Ok(key) => {
                        self.ports
                            .store
                            .put(&self.settings.buckets.output, &key, Bytes::from(value))
                            .await
                    }
                    Err(e) => Err(anyhow::anyhow!("bad output key: {e}")),
                };
                if let Err(e) = stored {
                    warn!(error = %format!("{e:#}"), key = %answer.request.key, "cannot store result; will retry");
                    return None;
                }
                Outcome::Label {
                    label: prediction.label,
                    probability: prediction.probability,
                }
            }
            Err(reason) => Outcome::Rejected { reason },
        };
        let response = ClassifyResponse {
            version: VERSION,
            request_id: answer.request.request_id,
            key: answer.request.key,
            outcome,
            instance: self.name.clone(),
        };
        Some((answer.receipt, response))
    }

    async fn delete(&self, receipts: &[Receipt]) {
        if let Err(e) = self.ports.requests.delete_batch(receipts).await {
            warn!(error = %format!("{e:#}"), "cannot delete requests; they will be answered again");
        }
    }
}

async fn keep_invisible(ports: Ports, receipts: Vec<Receipt>, visibility: Duration) {
    let mut tick = tokio::time::interval(visibility / 2);
    tick.tick().await;
    loop {
        tick.tick().await;
        for r in &receipts {
            if let Err(e) = ports.requests.change_visibility(r, visibility).await {
                warn!(error = %format!("{e:#}"), "cannot extend visibility");
            }
        }
    }
}
