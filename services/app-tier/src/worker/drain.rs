//! Stopping well: a drain that finishes what the worker holds or gives it back at its deadline,
//! and the group's moves (out of service, a Spot interruption notice) that start one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use imgrec_domain::config::AppTierSettings;
use imgrec_domain::messages::ClassifyRequest;
use imgrec_domain::ports::InstanceStatus;
use imgrec_runtime::shutdown::{Shutdown, Stopper};
use tracing::{debug, info, warn};

use super::liveness::Progress;
use super::Worker;
use crate::poison::Job;

/// How long past its long poll a receive in flight at the end of a drain is waited for (a wait
/// for the queue's lock).
const RECEIVE_GRACE: Duration = Duration::from_secs(1);

/// Where the worker loop is, for a drain that runs past its deadline.
#[derive(Default)]
pub(super) struct Drain {
    /// A receive is in flight: it is let finish, so that what it took is given back at once
    /// rather than left hidden until its visibility timeout.
    pub(super) receiving: AtomicBool,
    /// The drain ran out: the loop ends after its receive in flight, giving back what it took.
    pub(super) abandoned: AtomicBool,
}

impl Worker {
    /// Works until asked to stop, then drains: finishes and answers what it holds, or, past
    /// `app_tier.drain_deadline_ms` (or at a second stop request), gives back at once what is
    /// still unanswered, a receive in flight included, so that another worker takes it now rather
    /// than after its visibility timeout.
    pub(super) async fn work(self: Arc<Self>, status: &dyn InstanceStatus, shutdown: Shutdown) {
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
    pub(super) async fn give_back(&self, jobs: Vec<Job>) {
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
}

/// A `Shutdown` that `shutdown`'s requests reach, and the `Stopper` through which this worker
/// can ask itself to stop as well.
pub(super) fn also_stopped_by_us(mut shutdown: Shutdown) -> (Shutdown, Arc<Stopper>) {
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
pub(super) const LIFECYCLE_POLL: Duration = Duration::from_secs(2);

/// Drains the worker once the group no longer counts this instance in service: moved back to
/// its warm pool on scale-in (to be stopped or hibernated there, which no process hears of) or
/// toward termination. Returns once it has asked for the drain.
pub(super) async fn drain_when_out_of_service(status: Arc<dyn InstanceStatus>, stopper: Arc<Stopper>) {
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

/// How often a worker looks for a Spot interruption notice (or, drained, for its withdrawal),
/// and how long before the instance is reclaimed, beyond its drain and a long poll, it starts
/// draining.
const RECLAIM_POLL: Duration = Duration::from_secs(5);
const RECLAIM_MARGIN: Duration = Duration::from_secs(5);

/// How long before a Spot instance is reclaimed its worker starts draining: its drain deadline,
/// then a whole long poll (a receive in flight is let finish, and what it took given back: one
/// that ran past the reclaim would strand what SQS hands it until its visibility timeout), and a
/// margin. On EC2: 4 + 20 + 5 s of the two-minute notice.
pub(super) fn reclaim_lead(app_tier: &AppTierSettings) -> Duration {
    app_tier.drain_deadline() + Duration::from_millis(app_tier.poll_wait_ms) + RECLAIM_MARGIN
}

/// Whether a Spot interruption notice leaves `lead` or less before the instance is reclaimed: too
/// late to take any work (a worker started again late in a notice, or back from a drain).
pub(super) async fn reclaimed_within(status: &dyn InstanceStatus, lead: Duration) -> bool {
    matches!(notice(status).await, Some(Some(left)) if left <= lead)
}

/// How long until EC2 reclaims the instance, if it has sent a Spot interruption notice; `None`
/// when the instance cannot tell (logged).
async fn notice(status: &dyn InstanceStatus) -> Option<Option<Duration>> {
    match status.reclaim_at().await {
        Ok(at) => Some(at.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())),
        Err(e) => {
            debug!(error = %format!("{e:#}"), "cannot check for a Spot interruption notice");
            None
        }
    }
}

/// After a drain for a Spot interruption notice: takes nothing more until the instance goes (the
/// stop its shutdown sends) or the notice is withdrawn. A worker that ended its process here would
/// be started again by systemd, and take requests that the reclaim then strands until their
/// visibility timeout. Waiting by design, not a stall. `false` once a stop is asked.
pub(super) async fn until_notice_withdrawn(
    status: &dyn InstanceStatus,
    progress: &Progress,
    shutdown: &mut Shutdown,
) -> bool {
    loop {
        progress.mark();
        if shutdown.pause(RECLAIM_POLL).await {
            return false;
        }
        if notice(status).await == Some(None) {
            info!("the Spot interruption notice is withdrawn: serving again");
            return true;
        }
    }
}

/// On a Spot interruption notice, works on while the notice lasts and starts draining `lead`
/// before EC2 reclaims the instance, in time to be done (answered or given back) by then.
pub(super) async fn drain_before_reclaim(status: Arc<dyn InstanceStatus>, stopper: Arc<Stopper>, lead: Duration) {
    let mut tick = tokio::time::interval(RECLAIM_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(Some(left)) = notice(&*status).await else {
            continue;
        };
        let work_on = left.saturating_sub(lead);
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

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use imgrec_domain::ports::{InstanceState, PortResult};

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
        // Reclaimed in 120 s; EC2's settings (a 4 s drain deadline, 20 s long polls) and the 5 s
        // margin: drain from 91 s on.
        let mut app_tier = imgrec_runtime::settings::Settings::defaults().unwrap().app_tier;
        app_tier.drain_deadline_ms = 4_000;
        app_tier.poll_wait_ms = 20_000;
        let lead = reclaim_lead(&app_tier);
        assert_eq!(lead, Duration::from_secs(29));
        let notice = Arc::new(Noticed(SystemTime::now() + Duration::from_secs(120)));
        assert!(!reclaimed_within(&*notice, lead).await);
        assert!(reclaimed_within(&*notice, Duration::from_secs(121)).await);
        let (stopper, mut shutdown) = Shutdown::new();
        let watch = tokio::spawn(drain_before_reclaim(notice, Arc::new(stopper), lead));
        tokio::time::sleep(Duration::from_secs(89)).await;
        assert!(!shutdown.is_requested(), "still working while the notice lasts");
        tokio::time::timeout(Duration::from_secs(3), shutdown.requested())
            .await
            .expect("draining before the instance is reclaimed");
        watch.await.unwrap();
    }
}
