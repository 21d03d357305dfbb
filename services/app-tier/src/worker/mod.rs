//! `app-tier run --name app-instanceK`: the worker loop. Receive up to a batch of requests, fetch
//! the images, classify them in one model run, store each result, answer, and only then delete
//! the request, so a worker that dies mid-batch loses nothing.
//!
//! Answering batch N (storing, sending, deleting: I/O) overlaps with classifying batch N+1, so the
//! core stays busy; at most one batch is being answered at a time.
//!
//! Here the loop and its stints in service; `batch` takes one receive from message to answer,
//! `drain` stops the worker without losing or hiding what it holds, `liveness` beats and keeps
//! held requests hidden only while the loop moves.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgrec_domain::ports::{
    metadata_problem, InferenceSlots, InstanceState, InstanceStatus, Metadata, Receipt, Received, SlotGuard,
};
use imgrec_runtime::backend::{self, Adapters, Connection};
use imgrec_runtime::consumer::Consumer;
use imgrec_runtime::settings::Settings;
use imgrec_runtime::shutdown::{Shutdown, Spawned};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use crate::inference::InferenceThread;
use crate::poison::{self, Job};

mod batch;
mod drain;
mod liveness;

use drain::{
    also_stopped_by_us, drain_before_reclaim, drain_when_out_of_service, reclaim_lead, reclaimed_within,
    until_notice_withdrawn, Drain, LIFECYCLE_POLL,
};
use liveness::{heartbeat, keep_invisible, Progress};

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
    runtime.block_on(
        async {
            let shutdown = Shutdown::on_signals()?;
            serve(settings, args.name, shutdown).await
        }
        .instrument(span),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the worker `name` in this process; stopping it is what SIGTERM does (it finishes what it
/// holds).
pub fn spawn(settings: Settings, name: &str) -> Spawned {
    let span = tracing::info_span!("app-tier", instance = %name);
    let name = name.to_owned();
    Spawned::spawn(|shutdown| serve(settings, name, shutdown).instrument(span))
}

struct Worker {
    name: String,
    settings: Settings,
    adapters: Adapters,
    inference: InferenceThread,
    /// This machine's cores, shared with the instances beside this one.
    slots: Arc<dyn InferenceSlots>,
    progress: Progress,
    /// Kept with each result in the output bucket: the model that answered.
    result_metadata: Metadata,
    /// Requests received and not yet answered or given back: what a drain past its deadline
    /// gives back.
    held: Mutex<HashMap<Receipt, Job>>,
}

impl Worker {
    /// Connects to the buckets and queues and loads the model: what a worker cannot serve
    /// without.
    async fn start(
        settings: Settings,
        name: String,
        connection: Connection,
        progress: Progress,
    ) -> anyhow::Result<Self> {
        let adapters = Adapters::connect_as(&settings, Some(&name), connection).await?;
        let (inference, limits) = (settings.inference.clone(), settings.image_limits);
        let slots = backend::inference_slots(&settings)?;
        let inference = InferenceThread::start(inference, limits).await?;
        let result_metadata = model_metadata(&inference.model.name, &inference.model.version);
        Ok(Self {
            name,
            settings,
            adapters,
            inference,
            slots,
            progress,
            result_metadata,
            held: Mutex::new(HashMap::new()),
        })
    }
}

/// Tells the fleet why this worker cannot start (on EC2 nothing else would), and passes on `e`.
async fn cannot_start(status: &dyn InstanceStatus, e: anyhow::Error) -> anyhow::Error {
    if let Err(told) = status.failed_to_start(&format!("{e:#}")).await {
        warn!(error = %told, "cannot tell the fleet why this worker cannot start");
    }
    e
}

/// The longest wait between two tries of a failing receive (well under the stall timeout).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Takes requests from the queue until a stop is asked, then finishes what it holds.
pub async fn serve(settings: Settings, name: String, shutdown: Shutdown) -> anyhow::Result<()> {
    let connection = Connection::default();
    let status = backend::instance_status(&settings, &name, &connection).await?;
    serve_as(settings, name, status, connection, shutdown).await
}

/// `serve`, with `status` telling the fleet about this instance and the fleet's moves to it.
pub async fn serve_as(
    settings: Settings,
    name: String,
    status: Arc<dyn InstanceStatus>,
    connection: Connection,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    if let Err(e) = status.report(InstanceState::Pending, false).await {
        return Err(cannot_start(&*status, e.into()).await);
    }
    let progress = Progress::new(settings.app_tier.stall_timeout());
    // Beats until the end of this function: stopping (the last batch answered) is progress too.
    let heartbeats = tokio::spawn(heartbeat(
        status.clone(),
        progress.clone(),
        settings.app_tier.heartbeat(),
    ));
    let worker = match Worker::start(settings, name, connection, progress.clone()).await {
        Ok(worker) => Arc::new(worker),
        Err(e) => {
            heartbeats.abort();
            return Err(cannot_start(&*status, e).await);
        }
    };
    if let Err(e) = status.started().await {
        warn!(error = %e, "cannot tell the fleet this worker started");
    }
    while until_in_service(&*status, &progress, &mut shutdown).await? {
        let stint = worker.clone().serve_stint(status.clone(), &shutdown).await?;
        if stint == Stint::Stopped {
            break;
        }
        // Drained: nothing is held while the group stops, hibernates or terminates it, or EC2
        // reclaims it.
        report(&*status, InstanceState::Pending, false).await;
        if stint == Stint::Reclaimed {
            warn!("drained for a Spot interruption: taking no more requests until the instance goes");
            if !until_notice_withdrawn(&*status, &progress, &mut shutdown).await {
                break;
            }
        } else {
            info!("out of service: drained, waiting to be put back in service");
        }
    }
    heartbeats.abort();
    report(&*status, InstanceState::Stopping, false).await;
    let calls = worker.adapters.connection.calls.snapshot();
    info!(api_calls = %serde_json::to_string(&calls).unwrap_or_default(), "stopped");
    Ok(())
}

/// Waits until the group puts this instance in service: one initialised for a warm pool waits
/// there (stopped or hibernated), model loaded, and again each time the group moves it back.
/// A wait by design, not a stall. `false` if a stop is asked meanwhile.
async fn until_in_service(
    status: &dyn InstanceStatus,
    progress: &Progress,
    shutdown: &mut Shutdown,
) -> anyhow::Result<bool> {
    let waiting = async {
        loop {
            progress.mark();
            tokio::time::sleep(LIFECYCLE_POLL).await;
        }
    };
    tokio::select! {
        waited = status.until_in_service() => waited?,
        _ = shutdown.requested() => return Ok(false),
        () = waiting => {}
    }
    Ok(true)
}

/// How a stint in service ended.
#[derive(Debug, PartialEq, Eq)]
enum Stint {
    /// A stop was asked (SIGTERM: the scaler, the instance shutting down): the process ends.
    Stopped,
    /// The group moved this instance on (to its warm pool, or toward termination).
    MovedOn,
    /// A Spot interruption notice: EC2 reclaims the instance too soon for any more work.
    Reclaimed,
}

impl Worker {
    /// Serves while the group counts this instance in service, until a stop, the group moving it
    /// on, or a Spot interruption notice's end drawing near; drained in each case. Under a notice
    /// already that near, it does not start.
    async fn serve_stint(
        self: Arc<Self>,
        status: Arc<dyn InstanceStatus>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Stint> {
        let lead = reclaim_lead(&self.settings.app_tier);
        if reclaimed_within(&*status, lead).await {
            return Ok(Stint::Reclaimed);
        }
        status.report(InstanceState::Running, false).await?;
        let (stint, stopper) = also_stopped_by_us(shutdown.clone());
        let reclaim = tokio::spawn(drain_before_reclaim(status.clone(), stopper.clone(), lead));
        let moved_on = tokio::spawn(drain_when_out_of_service(status.clone(), stopper));
        self.progress.mark();
        info!("ready");
        self.work(&*status, stint).await;
        reclaim.abort();
        moved_on.abort();
        let moved = matches!(moved_on.await, Ok(()));
        let reclaimed = matches!(reclaim.await, Ok(()));
        Ok(match (shutdown.is_requested(), reclaimed, moved) {
            (true, _, _) => Stint::Stopped,
            (false, true, _) => Stint::Reclaimed,
            (false, false, true) => Stint::MovedOn,
            (false, false, false) => Stint::Stopped,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Receipt, Job>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No longer this worker's to give back at a drain: answered, released, or left to return
    /// after their visibility timeout.
    fn forget(&self, receipts: &[Receipt]) {
        let mut held = self.held();
        for r in receipts {
            held.remove(r);
        }
    }

    /// The worker loop: receive, run the batch, answer it while the next one runs.
    async fn work_until_stopped(self: Arc<Self>, status: &dyn InstanceStatus, mut shutdown: Shutdown, drain: &Drain) {
        let app = &self.settings.app_tier;
        let mut requests = Consumer::new(
            self.adapters.requests.clone(),
            "requests",
            app.batch_size,
            self.settings.queues.visibility_timeout(),
            Duration::from_millis(app.poll_wait_ms),
        )
        .max_backoff(MAX_BACKOFF);
        let mut busy = false;
        let mut answering: Option<JoinHandle<()>> = None;
        // A slot first: an instance that could not run the model now takes no requests, and
        // leaves them to one that can.
        while let Some(slot) = self.slot(&mut shutdown).await {
            // Not interruptible: a receive cut short could leave messages taken but unprocessed
            // until their visibility timeout. It returns within `poll_wait_ms`.
            drain.receiving.store(true, Ordering::SeqCst);
            let received = requests.next(&mut shutdown).await;
            drain.receiving.store(false, Ordering::SeqCst);
            if drain.abandoned.load(Ordering::SeqCst) {
                // The drain ran out while this receive was in flight: what it took goes back now
                // (what cannot be read as it came, as for any reader).
                if let Some(messages) = received {
                    let receipts: Vec<Receipt> = messages.iter().map(|m| m.receipt.clone()).collect();
                    let jobs = self.decode(messages).await;
                    let unread = receipts.iter().filter(|r| !jobs.iter().any(|j| &j.receipt == *r));
                    self.release(unread).await;
                    self.give_back(jobs).await;
                }
                return;
            }
            let Some(messages) = received else {
                break;
            };
            self.progress.mark();
            let has_work = !messages.is_empty() || answering.as_ref().is_some_and(|h| !h.is_finished());
            if busy != has_work {
                busy = has_work;
                report(status, InstanceState::Running, busy).await;
            }
            answering = self.take_on(messages, answering, slot).await;
        }
        if let Some(last) = answering {
            let _ = last.await;
        }
    }

    /// A slot on this machine's cores for the next receive: at once if one is free, else waited
    /// for on a thread of its own (a wait cut short by a stop ends there, freeing the slot at
    /// once). Waiting for a core that other instances keep busy is progress, not a stall.
    /// `None` once a stop is asked.
    async fn slot(&self, shutdown: &mut Shutdown) -> Option<SlotGuard> {
        if shutdown.is_requested() {
            return None;
        }
        if let Some(slot) = self.slots.try_hold() {
            return Some(slot);
        }
        let (tx, mut rx) = oneshot::channel();
        let slots = self.slots.clone();
        let waiter = std::thread::Builder::new()
            .name("slot".into())
            .spawn(move || drop(tx.send(slots.hold())));
        if let Err(e) = waiter {
            warn!(error = %e, "cannot wait for an inference slot; running without one");
            return Some(Box::new(()));
        }
        let mut tick = tokio::time::interval(self.progress.stall / 4);
        loop {
            tokio::select! {
                slot = &mut rx => {
                    return Some(slot.unwrap_or_else(|_| {
                        warn!("the wait for an inference slot failed; running without one");
                        Box::new(())
                    }));
                }
                _ = shutdown.requested() => return None,
                _ = tick.tick() => self.progress.mark(),
            }
        }
    }

    /// Runs one receive's requests, holding `slot` until their model runs are done: first-time
    /// ones together, suspects each alone (`poison`). Each group's answering starts as the next
    /// group runs; returns the one still answering.
    async fn take_on(
        self: &Arc<Self>,
        messages: Vec<Received>,
        mut answering: Option<JoinHandle<()>>,
        slot: SlotGuard,
    ) -> Option<JoinHandle<()>> {
        let jobs = self.decode(messages).await;
        self.held().extend(jobs.iter().map(|j| (j.receipt.clone(), j.clone())));
        let split = poison::split(jobs, self.settings.queues.max_receives);
        let mut alone = split.alone;
        alone.extend(self.requeue(split.requeue).await);
        // Every request held stays hidden from other workers until answered, for as long as this
        // worker makes progress.
        let visibility = self.settings.queues.visibility_timeout();
        let groups: Vec<(bool, Vec<Job>)> = std::iter::once((false, split.batch))
            .filter(|(_, batch)| !batch.is_empty())
            .chain(alone.into_iter().map(|job| (true, vec![job])))
            .collect();
        let keepers: Vec<(Vec<Receipt>, JoinHandle<()>)> = groups
            .iter()
            .map(|(_, jobs)| {
                let receipts: Vec<Receipt> = jobs.iter().map(|j| j.receipt.clone()).collect();
                let keeper = tokio::spawn(keep_invisible(self.clone(), receipts.clone(), visibility));
                (receipts, keeper)
            })
            .collect();
        let mut slot = Some(slot);
        let last = groups.len().saturating_sub(1);
        for (k, ((suspect, jobs), (receipts, keeper))) in groups.into_iter().zip(keepers).enumerate() {
            if suspect {
                // What was classified before is answered before a suspect may bring this worker down.
                if let Some(previous) = answering.take() {
                    let _ = previous.await;
                }
                warn!(key = %jobs[0].request.key, receives = jobs[0].receive_count, "classifying a retried request alone");
            }
            let answers = self.run_batch(jobs).await;
            if k == last {
                // The model runs are done: another instance may take requests now.
                slot.take();
            }
            self.progress.mark();
            if let Some(previous) = answering.take() {
                let _ = previous.await;
            }
            let w = self.clone();
            answering = Some(tokio::spawn(
                async move {
                    w.answer_all(answers).await;
                    keeper.abort();
                    // Answered, or left to come back after its visibility timeout (a failed
                    // store or send): either way no longer this worker's to give back.
                    w.forget(&receipts);
                }
                .in_current_span(),
            ));
        }
        answering
    }
}

async fn report(status: &dyn InstanceStatus, state: InstanceState, busy: bool) {
    if let Err(e) = status.report(state, busy).await {
        warn!(error = %format!("{e:#}"), "cannot report instance status");
    }
}

/// `model` and `model-version` metadata for each result; without a name S3 could not carry.
fn model_metadata(name: &str, version: &str) -> Metadata {
    let metadata = Metadata::from([
        ("model".to_owned(), name.to_owned()),
        ("model-version".to_owned(), version.to_owned()),
    ]);
    match metadata_problem(&metadata) {
        None => metadata,
        Some(problem) => {
            warn!(%problem, "results are stored without the model's name");
            Metadata::from([("model-version".to_owned(), version.to_owned())])
        }
    }
}
