//! The scaler: every tick, observe the request backlog and the fleet, ask the pure scaling
//! policy what to do, apply it through `Fleet`, and publish what it saw. Its inputs are ports:
//! the backlog, the fleet, a clock and (optionally) a completion count, so `sim` drives this very
//! `Scaler` through a simulated queue, fleet and clock.

pub mod sim;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use async_trait::async_trait;

use imgrec_domain::policy::{Decision, Observation, ScalingPolicy};
use imgrec_domain::ports::{
    Fleet, FleetChange, Instance, InstanceState, LaunchFailure, Lease, MetricsSink, PortError, PortResult, QueueDepth,
    ScalingMetrics, WarmPool, WorkQueue,
};
use imgrec_runtime::shutdown::Shutdown;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// What the scaler last saw and decided; `/status` and `/metrics` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalerStatus {
    pub desired: usize,
    pub min: usize,
    pub max: usize,
    pub backlog: QueueDepth,
    #[serde(skip)]
    pub instances: Vec<Instance>,
    pub scaling_actions: u64,
    pub last_error: Option<String>,
    /// The fleet's latest failed launch (a quota, no capacity): why it may stay below `desired`.
    pub launch_failure: Option<LaunchFailure>,
    /// The warm pool beside the fleet (EC2), as last read.
    pub warm_pool: Option<WarmPool>,
    /// Whether this scaler acts on the fleet (holds the lease); others only watch.
    pub acting: bool,
    /// Requests completed per second recently, as the acting scaler counts them.
    pub completion_rate: Option<f64>,
}

pub type SharedStatus = Arc<RwLock<ScalerStatus>>;

/// What the host of a scaler keeps: the scaler's last status, and a way to make it tick now.
#[derive(Clone)]
pub struct ScalerHandle {
    pub status: SharedStatus,
    pub nudge: Arc<Notify>,
}

const PUBLISH_EVERY: Duration = Duration::from_secs(60);
/// How long the scaler waits after a failure that retrying cannot fix (a missing group or queue,
/// denied access, a missing worker program), instead of hammering the API every tick.
pub const PERMANENT_FAILURE_PAUSE: Duration = Duration::from_secs(10);
/// How often the fleet's launch history is read (an API call on AWS).
pub const LAUNCH_CHECK_EVERY: Duration = Duration::from_secs(30);

/// Where the scaler reads the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// What the scaler observes of the request queue: waiting and in-flight requests.
#[async_trait]
pub trait Backlog: Send + Sync + 'static {
    async fn backlog(&self) -> PortResult<QueueDepth>;
}

/// The request queue itself.
struct QueueBacklog(Arc<dyn WorkQueue>);

#[async_trait]
impl Backlog for QueueBacklog {
    async fn backlog(&self) -> PortResult<QueueDepth> {
        self.0.depth().await
    }
}

/// Requests completed per second recently, when the host can count them.
pub trait Completions: Send + Sync + 'static {
    fn rate(&mut self, now: SystemTime) -> Option<f64>;
}

pub struct Scaler {
    policy: Box<dyn ScalingPolicy>,
    requests: Arc<dyn Backlog>,
    fleet: Arc<dyn Fleet>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<dyn MetricsSink>>,
    last_published: Option<SystemTime>,
    completions: Option<Box<dyn Completions>>,
    status: SharedStatus,
    nudge: Arc<Notify>,
    /// Held while this scaler acts on the fleet; without one it always acts.
    lease: Option<ScalerLease>,
    acting: bool,
    /// Never acts: shows the fleet where the acting scaler is another process.
    watch_only: bool,
    launches_checked_at: Option<SystemTime>,
}

/// The lease a scaler acts under: another host takes the scaler over `ttl` after the holder
/// stops renewing it; the holder renews it every third of that.
///
/// The holder cannot know when the store's copy expires, only that it expires no sooner than
/// `ttl` after its last successful renewal *started* (the write landed later). So it acts only
/// while that bound is at least `act_margin` away, cuts every fleet change off at the bound, and
/// a renewal that fails (or takes longer than the lease, as one call with the SDK's retries can)
/// just lets the bound run out: it never "carries on as before".
struct ScalerLease {
    lease: Arc<dyn Lease>,
    ttl: Duration,
    /// Until when this scaler surely holds the lease, on the monotonic clock.
    valid_until: Option<Instant>,
}

impl ScalerLease {
    /// Validity a tick must have left to change the fleet: the renewal interval.
    fn act_margin(&self) -> Duration {
        self.ttl / 3
    }

    fn left(&self) -> Duration {
        self.valid_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()))
    }

    /// Whether enough validity is left to change the fleet now.
    fn may_act(&self) -> bool {
        self.left() >= self.act_margin()
    }
}

/// Whether this scaler may change the fleet this tick, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Watching,
    /// Acting; with a lease, only until the instant it may have expired.
    Acting {
        until: Option<Instant>,
    },
}

/// Ticks a nudge may cause come at least this far apart: under load every upload nudges.
pub const MIN_TICK_GAP: Duration = Duration::from_millis(100);

/// Requests completed per second over the last minute, from a counter the web tier advances.
struct CountedCompletions {
    counter: Arc<AtomicU64>,
    samples: VecDeque<(SystemTime, u64)>,
}

impl CountedCompletions {
    const WINDOW: Duration = Duration::from_secs(60);
}

impl Completions for CountedCompletions {
    fn rate(&mut self, now: SystemTime) -> Option<f64> {
        self.samples.push_back((now, self.counter.load(Ordering::Relaxed)));
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        while self.samples.len() > 2 && age(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let elapsed = last.0.duration_since(first.0).unwrap_or_default().as_secs_f64();
        (elapsed > 0.0).then(|| (last.1 - first.1) as f64 / elapsed)
    }
}

impl Scaler {
    /// A scaler of `fleet` by the depth of the request queue `requests`.
    pub fn new(policy: Box<dyn ScalingPolicy>, requests: Arc<dyn WorkQueue>, fleet: Arc<dyn Fleet>) -> Self {
        Self::observing(policy, Arc::new(QueueBacklog(requests)), fleet)
    }

    /// A scaler of `fleet` by any backlog (the simulator's).
    pub fn observing(policy: Box<dyn ScalingPolicy>, requests: Arc<dyn Backlog>, fleet: Arc<dyn Fleet>) -> Self {
        let config = policy.config();
        let status = ScalerStatus {
            min: config.min,
            max: config.max,
            desired: config.min,
            ..ScalerStatus::default()
        };
        Self {
            policy,
            requests,
            fleet,
            clock: Arc::new(SystemClock),
            metrics: None,
            last_published: None,
            completions: None,
            status: Arc::new(RwLock::new(status)),
            nudge: Arc::new(Notify::new()),
            lease: None,
            acting: true,
            watch_only: false,
            launches_checked_at: None,
        }
    }

    /// Only observes the fleet, never acts on it (nor stops it): for a host that shows the fleet
    /// while the scaler runs elsewhere (on AWS, its own service beside the web tier).
    pub fn watching(mut self) -> Self {
        self.watch_only = true;
        self.acting = false;
        self
    }

    /// Acts on the fleet only while holding `lease`, so that of several hosts running a scaler
    /// one acts at a time; the others watch and take over when the holder stops renewing it.
    pub fn with_lease(mut self, lease: Arc<dyn Lease>, ttl: Duration) -> Self {
        self.lease = Some(ScalerLease {
            lease,
            ttl,
            valid_until: None,
        });
        self.acting = false;
        self
    }

    /// A count of completed requests (the web tier counts delivered answers): the policy then
    /// also sees the completion rate.
    pub fn with_completions(self, counter: Arc<AtomicU64>) -> Self {
        self.with_completion_rate(Box::new(CountedCompletions {
            counter,
            samples: VecDeque::new(),
        }))
    }

    /// The completion rate from elsewhere (the simulator knows it exactly).
    pub fn with_completion_rate(mut self, completions: Box<dyn Completions>) -> Self {
        self.completions = Some(completions);
        self
    }

    /// Reads the time from `clock` instead of the system's (the simulator's clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Publishes the figures there too: once a minute (CloudWatch's standard resolution; each
    /// PutMetricData is billed) and whenever the pool changes.
    pub fn with_metrics(mut self, sink: Option<Arc<dyn MetricsSink>>) -> Self {
        self.metrics = sink;
        self
    }

    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Its status and nudge. Notifying the nudge runs a tick now instead of at the next interval:
    /// the web tier does so when it queues a request, so a burst from an idle pool does not wait.
    pub fn handle(&self) -> ScalerHandle {
        ScalerHandle {
            status: self.status.clone(),
            nudge: self.nudge.clone(),
        }
    }

    /// Takes or renews the lease (every third of its time to live); on losing it to another, stops
    /// the instances this host started.
    async fn hold_lease(&mut self) -> PortResult<Role> {
        if self.watch_only {
            return Ok(Role::Watching);
        }
        let Some(held) = &mut self.lease else {
            return Ok(Role::Acting { until: None });
        };
        if !self.acting || held.left() <= held.ttl - held.act_margin() {
            let started = Instant::now();
            // Bounded: a call that outlives the lease is worthless anyway.
            match tokio::time::timeout(held.ttl, held.lease.hold(held.ttl)).await {
                Ok(Ok(true)) => held.valid_until = Some(started + held.ttl),
                Ok(Ok(false)) => {
                    held.valid_until = None;
                    if self.acting {
                        warn!(
                            holder = held.lease.holder(),
                            "lost the scaler lease; stopping this host's instances"
                        );
                        self.acting = false;
                        self.fleet.shutdown().await?;
                    }
                    return Ok(Role::Watching);
                }
                Ok(Err(e)) => {
                    warn!(error = %format!("{e:#}"), left_ms = held.left().as_millis() as u64, "cannot renew the scaler lease; acting only while it surely holds");
                }
                Err(_) => {
                    warn!(
                        left_ms = held.left().as_millis() as u64,
                        "renewing the scaler lease took longer than the lease; acting only while it surely holds"
                    );
                }
            }
        }
        let acting = held.may_act();
        if acting && !self.acting {
            info!(holder = held.lease.holder(), "acting as the scaler");
        } else if !acting && self.acting {
            warn!(
                holder = held.lease.holder(),
                "not acting: the scaler lease may expire before this tick's changes are made"
            );
        }
        self.acting = acting;
        Ok(if acting {
            Role::Acting {
                until: held.valid_until,
            }
        } else {
            Role::Watching
        })
    }

    /// One observe-decide-apply round (only observe while another scaler acts).
    pub async fn tick(&mut self) -> PortResult<Decision> {
        let mut role = self.hold_lease().await?;
        let backlog = self.requests.backlog().await?;
        let instances = self.fleet.instances().await?;
        self.check_launches().await;
        // Observing took time: act only with the margin still left.
        if self.lease.as_ref().is_some_and(|held| !held.may_act()) {
            role = Role::Watching;
        }
        let Role::Acting { until } = role else {
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            status.desired = instances.iter().filter(|i| i.serves()).count();
            status.backlog = backlog;
            status.instances = instances;
            status.acting = false;
            // Only the acting scaler counts completions: a rate from when this one acted is stale.
            status.completion_rate = None;
            return Ok(Decision {
                desired: status.desired,
            });
        };
        // The fleet's own bound (an Auto Scaling group's MaxSize) caps the configured maximum.
        if let Some(limit) = self.fleet.max_size().await? {
            self.policy.cap(limit);
        }
        let now = self.clock.now();
        let completion_rate = self.completions.as_mut().and_then(|c| c.rate(now));
        let obs = Observation {
            now,
            backlog,
            instances: &instances,
            completion_rate,
        };
        let decision = self.policy.decide(&obs);
        let max = self.policy.config().max;
        let resize = self.apply(decision.desired, max, until, backlog).await?;
        let actions = (resize.launch.len() + resize.retire.len()) as u64;
        let instances = if actions > 0 {
            self.fleet.instances().await?
        } else {
            instances
        };
        self.publish(now, backlog, decision.desired, &instances, actions > 0)
            .await;
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.desired = decision.desired;
        status.max = max;
        status.backlog = backlog;
        status.instances = instances;
        status.scaling_actions += actions;
        status.last_error = None;
        status.acting = true;
        status.completion_rate = completion_rate;
        Ok(decision)
    }

    /// Resizes the fleet, cut off at `until` where the lease may run out: another scaler may act
    /// from then on.
    async fn apply(
        &self,
        desired: usize,
        max: usize,
        until: Option<Instant>,
        backlog: QueueDepth,
    ) -> PortResult<FleetChange> {
        let resize = match until {
            Some(until) => tokio::time::timeout_at(until, self.fleet.scale_to(desired, max))
                .await
                .map_err(|_| {
                    PortError::Transient(anyhow::anyhow!(
                        "stopped scaling where the scaler lease may have expired"
                    ))
                })??,
            None => self.fleet.scale_to(desired, max).await?,
        };
        if !resize.is_empty() {
            info!(
                desired,
                visible = backlog.visible,
                in_flight = backlog.in_flight,
                launch = ?resize.launch,
                retire = ?resize.retire,
                "scaling"
            );
        }
        Ok(resize)
    }

    /// Publishes the metrics every `PUBLISH_EVERY`, and at once after a change.
    async fn publish(
        &mut self,
        now: SystemTime,
        backlog: QueueDepth,
        desired: usize,
        instances: &[Instance],
        changed: bool,
    ) {
        let due = changed
            || self
                .last_published
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= PUBLISH_EVERY);
        let Some(sink) = self.metrics.as_ref().filter(|_| due) else {
            return;
        };
        self.last_published = Some(now);
        let running = instances.iter().filter(|i| i.state == InstanceState::Running).count();
        let metrics = ScalingMetrics {
            backlog: backlog.total(),
            backlog_per_instance: backlog.total() as f64 / running.max(1) as f64,
            desired,
            running,
        };
        if let Err(e) = sink.publish(&metrics).await {
            warn!(error = %format!("{e:#}"), "cannot publish scaling metrics");
        }
    }

    /// Every `LAUNCH_CHECK_EVERY`, reads the fleet's failed launches (a vCPU quota or a capacity
    /// shortage shows nowhere else, and the service would just stay slow) and its warm pool.
    async fn check_launches(&mut self) {
        let now = self.clock.now();
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        if self.launches_checked_at.is_some_and(|t| since(t) < LAUNCH_CHECK_EVERY) {
            return;
        }
        self.launches_checked_at = Some(now);
        let failure = match self.fleet.launch_failure().await {
            Ok(failure) => failure,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the fleet's launch history");
                return;
            }
        };
        let warm_pool = self.fleet.warm_pool().await.unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "cannot read the warm pool");
            None
        });
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.warm_pool = warm_pool;
        if let Some(f) = failure.as_ref().filter(|f| status.launch_failure.as_ref() != Some(*f)) {
            warn!(reason = %f.reason, at_s = f.at_s, "the fleet cannot launch instances");
        }
        status.launch_failure = failure;
    }

    /// Ticks until a stop is asked, then stops the fleet.
    pub async fn run(mut self, tick: Duration, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick: Option<Instant> = None;
        while !shutdown.is_requested() {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.nudge.notified() => {
                    // Nudges coalesce: at most one tick per MIN_TICK_GAP however many uploads.
                    if let Some(at) = last_tick {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at + MIN_TICK_GAP) => {}
                            _ = shutdown.requested() => break,
                        }
                    }
                }
                _ = shutdown.requested() => break,
            }
            last_tick = Some(Instant::now());
            if let Err(e) = self.tick().await {
                let message = format!("{e:#}");
                let permanent = !e.is_transient();
                self.status.write().unwrap_or_else(|p| p.into_inner()).last_error = Some(message.clone());
                if !permanent {
                    warn!(error = %message, "scaler tick failed; retrying next tick");
                    continue;
                }
                error!(
                    error = %message,
                    "scaler tick failed and retrying will not help until this is fixed; next try in {}s",
                    PERMANENT_FAILURE_PAUSE.as_secs()
                );
                if shutdown.pause(PERMANENT_FAILURE_PAUSE).await {
                    break;
                }
            }
        }
        if self.watch_only {
            return Ok(());
        }
        info!("stopping the app tier");
        let stopped = self.fleet.shutdown().await;
        if let Some(held) = self.lease.as_ref().filter(|_| self.acting) {
            // Another host takes over now rather than when the lease expires.
            if let Err(e) = held.lease.release().await {
                warn!(error = %format!("{e:#}"), "cannot release the scaler lease");
            }
        }
        Ok(stopped?)
    }
}
