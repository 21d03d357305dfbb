//! `app-tier run --name app-instanceK`: the worker loop. Receive up to a batch of requests, fetch
//! the images, classify them in one model run, store each result, answer, and only then delete
//! the request, so a worker that dies mid-batch loses nothing.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use imgrec_core::backend::{self, Ports};
use imgrec_core::classifier::{Classifier, ClassifyError};
use imgrec_core::config::Settings;
use imgrec_core::messages::{result_object, ClassifyRequest, ClassifyResponse, Message, Outcome, VERSION};
use imgrec_core::ports::{InstanceState, InstanceStatus, ObjectKey, Receipt, Received};
use tokio::sync::watch;
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

/// A receiver of SIGTERM or SIGINT: stop receiving, finish the batch in hand, exit.
fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = tx.send(true);
    });
    Ok(rx)
}

struct Worker {
    name: String,
    settings: Settings,
    ports: Ports,
    classifier: Arc<Mutex<Classifier>>,
}

async fn worker(settings: Settings, name: String) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let status = backend::instance_status(&settings, &name).await?;
    status.report(InstanceState::Pending, false).await?;
    let ports = Ports::connect(&settings).await?;
    let (inference, limits) = (settings.inference.clone(), settings.image_limits);
    let classifier = tokio::task::spawn_blocking(move || Classifier::load(&inference, limits)).await??;
    let worker = Worker {
        name,
        settings,
        ports,
        classifier: Arc::new(Mutex::new(classifier)),
    };
    status.report(InstanceState::Running, false).await?;
    info!("ready");

    let (batch, wait) = (
        worker.settings.app_tier.batch_size,
        Duration::from_secs(worker.settings.app_tier.poll_wait_s),
    );
    let visibility = worker.settings.queues.visibility_timeout();
    let mut busy = false;
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        // Not cancelled by the shutdown signal: a receive cut short could leave messages taken
        // but unprocessed until their visibility timeout. It returns within `poll_wait_s`.
        let received = worker.ports.requests.receive(batch, visibility, wait).await;
        let messages = match received {
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
        let has_work = !messages.is_empty();
        if busy != has_work {
            busy = has_work;
            report(&*status, InstanceState::Running, busy).await;
        }
        if !messages.is_empty() {
            worker.process(messages).await;
        }
    }
    report(&*status, InstanceState::Stopping, false).await;
    info!("stopped");
    Ok(())
}

async fn report(status: &dyn InstanceStatus, state: InstanceState, busy: bool) {
    if let Err(e) = status.report(state, busy).await {
        warn!(error = %format!("{e:#}"), "cannot report instance status");
    }
}

/// One request of a batch on its way through.
struct Job {
    receipt: Receipt,
    request: ClassifyRequest,
    image: Result<Bytes, Fetch>,
}

/// Why an image is not in hand.
enum Fetch {
    /// It never will be (no such object, bad key): answer the client.
    Missing(String),
    /// The store failed this time: leave the request for a retry.
    Unavailable,
}

impl Worker {
    async fn process(&self, messages: Vec<Received>) {
        // Keep the batch hidden from other workers for as long as it takes.
        let receipts: Vec<Receipt> = messages.iter().map(|m| m.receipt.clone()).collect();
        let keeper = tokio::spawn(keep_invisible(
            self.ports.clone(),
            receipts,
            self.settings.queues.visibility_timeout(),
        ));

        let mut jobs = Vec::with_capacity(messages.len());
        for m in messages {
            match ClassifyRequest::decode(&m.body) {
                Ok(request) => jobs.push((m.receipt, request)),
                Err(e) => {
                    // Without a request id nobody can be answered; keeping it would only retry it.
                    error!(error = %e, "dropping a malformed request message");
                    self.delete(&m.receipt).await;
                }
            }
        }
        let fetches = jobs.iter().map(|(_, r)| self.fetch(r));
        let images = join_all(fetches).await;
        let jobs: Vec<Job> = jobs
            .into_iter()
            .zip(images)
            .map(|((receipt, request), image)| Job {
                receipt,
                request,
                image,
            })
            .collect();

        let inputs: Vec<Bytes> = jobs.iter().filter_map(|j| j.image.as_ref().ok().cloned()).collect();
        let classifier = self.classifier.clone();
        let results = tokio::task::spawn_blocking(move || {
            let views: Vec<&[u8]> = inputs.iter().map(|b| b.as_ref()).collect();
            let mut classifier = classifier.lock().unwrap_or_else(|p| p.into_inner());
            classifier.classify(&views)
        })
        .await;
        let mut results = match results {
            Ok(r) => r.into_iter(),
            Err(e) => {
                error!(error = %e, "classification task failed; the batch will be retried");
                keeper.abort();
                return;
            }
        };
        let answers = jobs.iter().map(|job| {
            let outcome = match &job.image {
                Err(Fetch::Missing(reason)) => Err(reason.clone()),
                Err(Fetch::Unavailable) => return None,
                Ok(_) => match results.next().expect("one result per fetched image") {
                    Ok(p) => Ok(p),
                    Err(ClassifyError::Image(e)) => Err(format!("not a usable image: {e}")),
                    Err(ClassifyError::Inference(e)) => {
                        error!(error = %format!("{e:#}"), key = %job.request.key, "inference failed; will retry");
                        return None;
                    }
                },
            };
            Some((job, outcome))
        });
        let answers: Vec<_> = answers.flatten().collect();
        join_all(answers.into_iter().map(|(job, outcome)| self.answer(job, outcome))).await;
        keeper.abort();
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

    /// Stores the result, sends the response, then deletes the request. A failure before the
    /// delete leaves the request to come back after its visibility timeout.
    async fn answer(&self, job: &Job, outcome: Result<imgrec_core::classifier::Prediction, String>) {
        let outcome = match outcome {
            Ok(prediction) => {
                let (key, value) = result_object(&job.request.key, &prediction.label);
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
                    warn!(error = %format!("{e:#}"), key = %job.request.key, "cannot store result; will retry");
                    return;
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
            request_id: job.request.request_id,
            key: job.request.key.clone(),
            outcome,
            instance: self.name.clone(),
        };
        if let Err(e) = self.ports.responses.send(&response.encode()).await {
            warn!(error = %format!("{e:#}"), key = %job.request.key, "cannot send response; will retry");
            return;
        }
        self.delete(&job.receipt).await;
    }

    async fn delete(&self, receipt: &Receipt) {
        if let Err(e) = self.ports.requests.delete(receipt).await {
            warn!(error = %format!("{e:#}"), "cannot delete request; it will be answered again");
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
