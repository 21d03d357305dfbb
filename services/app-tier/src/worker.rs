//! `app-tier run --name app-instanceK`: the worker loop. Receive up to a batch of requests, fetch
//! the images, classify them in one model run, store each result, answer, and only then delete
//! the request, so a worker that dies mid-batch loses nothing.
//!
//! Answering batch N (storing, sending, deleting: I/O) overlaps with classifying batch N+1, so the
//! core stays busy; at most one batch is being answered at a time.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::join_all;
use imgrec_classifier::{ClassifyError, Prediction};
use imgrec_domain::messages::{
    now_ms, result_object, ClassifyRequest, ClassifyResponse, Message, ModelId, Outcome, Scored, Timings, VERSION,
};
use imgrec_domain::ports::{
    metadata_problem, InferenceSlots, InstanceState, InstanceStatus, Kept, Metadata, ObjectKey, PortError, Receipt,
    Received, SlotGuard, UploadOrder,
};
use imgrec_domain::records;
use imgrec_runtime::backend::{self, Adapters, Connection};
use imgrec_runtime::consumer::Consumer;
use imgrec_runtime::settings::Settings;
use imgrec_runtime::shutdown::{Shutdown, Spawned, Stopper};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

use crate::inference::InferenceThread;
use crate::poison::{self, Job};

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

/// The longest wait between two tries of a failing receive (well under the stall timeout).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long past its long poll a receive in flight at the end of a drain is waited for (a wait
/// for the queue's lock).
const RECEIVE_GRACE: Duration = Duration::from_secs(1);

/// Where the worker loop is, for a drain that runs past its deadline.
#[derive(Default)]
struct Drain {
    /// A receive is in flight: it is let finish, so that what it took is given back at once
    /// rather than left hidden until its visibility timeout.
    receiving: AtomicBool,
    /// The drain ran out: the loop ends after its receive in flight, giving back what it took.
    abandoned: AtomicBool,
}

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
    status.report(InstanceState::Pending, false).await?;
    let progress = Progress::new(settings.app_tier.stall_timeout());
    // Beats until the end of this function: stopping (the last batch answered) is progress too.
    let heartbeats = tokio::spawn(heartbeat(
        status.clone(),
        progress.clone(),
        settings.app_tier.heartbeat(),
    ));
    let adapters = Adapters::connect_as(&settings, Some(&name), connection).await?;
    let (inference, limits) = (settings.inference.clone(), settings.image_limits);
    let slots = backend::inference_slots(&settings)?;
    let inference = InferenceThread::start(inference, limits).await?;
    let result_metadata = model_metadata(&inference.model.name, &inference.model.version);
    let worker = Arc::new(Worker {
        name,
        settings,
        adapters,
        inference,
        slots,
        progress: progress.clone(),
        result_metadata,
        held: Mutex::new(HashMap::new()),
    });
    while until_in_service(&*status, &progress, &mut shutdown).await? {
        if worker.clone().serve_stint(status.clone(), &shutdown).await? == Stint::Stopped {
            break;
        }
        // Drained: nothing is held while the group stops, hibernates or terminates it.
        report(&*status, InstanceState::Pending, false).await;
        info!("out of service: drained, waiting to be put back in service");
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
    /// A stop was asked (SIGTERM, the scaler, a Spot interruption notice): the process ends.
    Stopped,
    /// The group moved this instance on (to its warm pool, or toward termination).
    MovedOn,
}

impl Worker {
    /// Serves while the group counts this instance in service, until a stop or the group moving
    /// it on; drained either way.
    async fn serve_stint(
        self: Arc<Self>,
        status: Arc<dyn InstanceStatus>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Stint> {
        status.report(InstanceState::Running, false).await?;
        let (stint, stopper) = also_stopped_by_us(shutdown.clone());
        let drain = self.settings.app_tier.drain_deadline();
        let reclaim = tokio::spawn(drain_before_reclaim(status.clone(), stopper.clone(), drain));
        let moved_on = tokio::spawn(drain_when_out_of_service(status.clone(), stopper));
        self.progress.mark();
        info!("ready");
        self.work(&*status, stint).await;
        reclaim.abort();
        moved_on.abort();
        let moved = matches!(moved_on.await, Ok(()));
        Ok(if moved && !shutdown.is_requested() {
            Stint::MovedOn
        } else {
            Stint::Stopped
        })
    }

    /// Works until asked to stop, then drains: finishes and answers what it holds, or, past
    /// `app_tier.drain_deadline_ms` (or at a second stop request), gives back at once what is
    /// still unanswered, a receive in flight included, so that another worker takes it now rather
    /// than after its visibility timeout.
    async fn work(self: Arc<Self>, status: &dyn InstanceStatus, shutdown: Shutdown) {
        let mut watch = shutdown.clone();
        let deadline = self.settings.app_tier.drain_deadline();
        let drain = Drain::default();
        let drained = self.clone().work_until_stopped(status, shutdown, &drain);
        tokio::pin!(drained);
        let past_deadline = async {
            watch.requested().await;
            tokio::select! {
                _ = tokio::time::sleep(deadline) => {}
                _ = watch.insisted() => {}
            }
        };
        tokio::select! {
            _ = &mut drained => return,
            _ = past_deadline => {}
        }
        drain.abandoned.store(true, Ordering::SeqCst);
        if drain.receiving.load(Ordering::SeqCst) {
            // It returns within the long poll once it has the queue, and gives back what it took.
            let wait = Duration::from_millis(self.settings.app_tier.poll_wait_ms) + RECEIVE_GRACE;
            let _ = tokio::time::timeout(wait, &mut drained).await;
        }
        self.give_back_held().await;
    }

    /// Gives every request still held back to the queue (the work on them is abandoned).
    async fn give_back_held(&self) {
        let held: Vec<Job> = self.held().drain().map(|(_, job)| job).collect();
        if held.is_empty() {
            return;
        }
        warn!(
            requests = held.len(),
            "not drained by the deadline; giving the requests held back to the queue"
        );
        self.give_back(held).await;
    }

    /// Gives requests back unfinished because this worker is stopping: each as a new message with
    /// `given_back` one more, its receive count starting over (the receive failed nothing: three
    /// interruptions in a row must not send a request to the dead-letter queue), and the one
    /// received deleted. The others (`Job::may_go_back_uncounted`), and any whose send fails,
    /// are made visible again instead, and that receive counts.
    async fn give_back(&self, jobs: Vec<Job>) {
        let max = self.settings.queues.max_receives;
        let (fresh, mut counted): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.may_go_back_uncounted(max));
        if !fresh.is_empty() {
            let again = |r: &ClassifyRequest| ClassifyRequest {
                given_back: r.given_back + 1,
                ..r.clone()
            };
            if let Err((e, fresh)) = self.send_again(fresh, again).await {
                warn!(error = %format!("{e:#}"), "cannot give requests back as new messages; releasing them");
                counted.extend(fresh);
            }
        }
        self.release(counted.iter().map(|j| &j.receipt)).await;
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

/// When the worker loop last moved. A worker whose loop stalls (a hung model run, a deadlock)
/// stops heartbeating and stops extending its requests' visibility, so the fleet replaces it and
/// other workers take its requests.
#[derive(Clone)]
struct Progress {
    last: Arc<Mutex<Instant>>,
    stall: Duration,
}

impl Progress {
    fn new(stall: Duration) -> Self {
        Self {
            last: Arc::new(Mutex::new(Instant::now())),
            stall,
        }
    }

    fn mark(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn stalled(&self) -> bool {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > self.stall
    }
}

async fn heartbeat(status: Arc<dyn InstanceStatus>, progress: Progress, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        if progress.stalled() {
            if !warned {
                error!(
                    "the worker loop made no progress for {:?}; no more heartbeats",
                    progress.stall
                );
                warned = true;
            }
            continue;
        }
        if let Err(e) = status.heartbeat().await {
            warn!(error = %format!("{e:#}"), "cannot send a heartbeat");
        }
        imgrec_runtime::watchdog::notify();
    }
}

/// A `Shutdown` that `shutdown`'s requests reach, and the `Stopper` through which this worker
/// can ask itself to stop as well.
fn also_stopped_by_us(mut shutdown: Shutdown) -> (Shutdown, Arc<Stopper>) {
    let (stopper, ours) = Shutdown::new();
    let stopper = Arc::new(stopper);
    let forward = stopper.clone();
    tokio::spawn(async move {
        shutdown.requested().await;
        forward.stop();
        shutdown.insisted().await;
        forward.stop();
    });
    (ours, stopper)
}

/// How often a worker in service asks whether the group still counts it so.
const LIFECYCLE_POLL: Duration = Duration::from_secs(2);

/// Drains the worker once the group no longer counts this instance in service: moved back to
/// its warm pool on scale-in (to be stopped or hibernated there, which no process hears of) or
/// toward termination. Returns once it has asked for the drain.
async fn drain_when_out_of_service(status: Arc<dyn InstanceStatus>, stopper: Arc<Stopper>) {
    let mut tick = tokio::time::interval(LIFECYCLE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match status.in_service().await {
            Ok(true) => {}
            Ok(false) => {
                info!("the group took this instance out of service: draining");
                stopper.stop();
                return;
            }
            Err(e) => debug!(error = %format!("{e:#}"), "cannot read the lifecycle state"),
        }
    }
}

/// How often a worker looks for a Spot interruption notice, and how long before the instance is
/// reclaimed (beyond the drain deadline) it starts draining.
const RECLAIM_POLL: Duration = Duration::from_secs(5);
const RECLAIM_MARGIN: Duration = Duration::from_secs(5);

/// On a Spot interruption notice, works on while the notice lasts and starts draining in time
/// to be done (answered or given back) before EC2 reclaims the instance.
async fn drain_before_reclaim(status: Arc<dyn InstanceStatus>, stopper: Arc<Stopper>, drain: Duration) {
    let mut tick = tokio::time::interval(RECLAIM_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = match status.reclaim_at().await {
            Ok(Some(at)) => at,
            Ok(None) => continue,
            Err(e) => {
                debug!(error = %format!("{e:#}"), "cannot check for a Spot interruption notice");
                continue;
            }
        };
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        let work_on = left.saturating_sub(drain + RECLAIM_MARGIN);
        warn!(
            reclaimed_in_s = left.as_secs(),
            drain_in_s = work_on.as_secs(),
            "Spot interruption notice: draining before the instance is reclaimed"
        );
        tokio::time::sleep(work_on).await;
        stopper.stop();
        return;
    }
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
struct Classified {
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
    async fn decode(&self, messages: Vec<Received>) -> Vec<Job> {
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
    async fn requeue(&self, jobs: Vec<Job>) -> Vec<Job> {
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
    async fn send_again(
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
    async fn run_batch(&self, jobs: Vec<Job>) -> Vec<Classified> {
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
    async fn release(&self, receipts: impl Iterator<Item = &Receipt>) {
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
    async fn answer_all(&self, answers: Vec<Classified>) {
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

async fn keep_invisible(worker: Arc<Worker>, receipts: Vec<Receipt>, visibility: Duration) {
    // Three extensions per timeout: one lost or late call does not let the requests go.
    let mut tick = tokio::time::interval(visibility / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if worker.progress.stalled() {
            continue;
        }
        for r in &receipts {
            // Given back at a drain's deadline: no longer ours to hide.
            if !worker.held().contains_key(r) {
                continue;
            }
            if let Err(e) = worker.adapters.requests.change_visibility(r, visibility).await {
                warn!(error = %format!("{e:#}"), "cannot extend visibility");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use imgrec_domain::ports::PortResult;

    use super::*;

    /// An instance told it will be reclaimed at a fixed time.
    struct Noticed(SystemTime);

    #[async_trait]
    impl InstanceStatus for Noticed {
        async fn report(&self, _: InstanceState, _: bool) -> PortResult<()> {
            Ok(())
        }
        async fn reclaim_at(&self) -> PortResult<Option<SystemTime>> {
            Ok(Some(self.0))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spot_notice_lets_the_worker_work_on_then_drain_before_the_end() {
        // Reclaimed in 120 s; a 4 s drain deadline and the 5 s margin: drain from 111 s on.
        let notice = Arc::new(Noticed(SystemTime::now() + Duration::from_secs(120)));
        let (stopper, mut shutdown) = Shutdown::new();
        let watch = tokio::spawn(drain_before_reclaim(notice, Arc::new(stopper), Duration::from_secs(4)));
        tokio::time::sleep(Duration::from_secs(109)).await;
        assert!(!shutdown.is_requested(), "still working while the notice lasts");
        tokio::time::timeout(Duration::from_secs(3), shutdown.requested())
            .await
            .expect("draining before the instance is reclaimed");
        watch.await.unwrap();
    }
}
