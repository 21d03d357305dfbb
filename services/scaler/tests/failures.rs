//! What the scaler does when its fleet fails: a transient failure is retried at the next tick; a
//! permanent one (a missing group, denied access) is reported and retried only after a pause, so
//! a broken deployment is not hammered twice a second. Launches the fleet could not make (a vCPU
//! quota, no capacity) are shown and logged, though every call succeeds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgrec_domain::policy::{PolicyConfig, PolicyKind};
use imgrec_domain::ports::{Fleet, FleetChange, Instance, LaunchFailure, PortError, PortResult, QueueDepth};
use scaler::{Backlog, Scaler, PERMANENT_FAILURE_PAUSE};

struct Waiting;

#[async_trait]
impl Backlog for Waiting {
    async fn backlog(&self) -> PortResult<QueueDepth> {
        Ok(QueueDepth {
            visible: 5,
            in_flight: 0,
        })
    }
}

/// A fleet whose every listing fails, transiently or not; counts the tries.
struct Failing {
    transient: bool,
    tries: AtomicU32,
}

#[async_trait]
impl Fleet for Failing {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        self.tries.fetch_add(1, Ordering::SeqCst);
        let e = anyhow::anyhow!("Auto Scaling group \"app-tier\" does not exist");
        Err(if self.transient {
            PortError::Transient(e)
        } else {
            PortError::Permanent(e)
        })
    }

    async fn scale_to(&self, _: usize, _: usize) -> PortResult<FleetChange> {
        unreachable!("never listed")
    }
}

fn config() -> PolicyConfig {
    PolicyConfig {
        min: 0,
        max: 4,
        target_latency: Duration::from_secs(2),
        service_time: Duration::from_millis(50),
        boot_time: Duration::from_secs(1),
        scale_in_after: Duration::from_secs(5),
    }
}

/// An Auto Scaling group over its vCPU quota: every call succeeds, no instance ever appears, and
/// its history says why. Counts the resizes asked of it.
struct OverQuota {
    resizes: AtomicU32,
}

const QUOTA: &str = "You have requested more vCPU capacity than your current vCPU limit of 32 allows";

#[async_trait]
impl Fleet for OverQuota {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        Ok(Vec::new())
    }

    async fn scale_to(&self, _: usize, _: usize) -> PortResult<FleetChange> {
        self.resizes.fetch_add(1, Ordering::SeqCst);
        Ok(FleetChange::default())
    }

    async fn launch_failure(&self) -> PortResult<Option<LaunchFailure>> {
        Ok(Some(LaunchFailure {
            at_s: 1_796_284_000,
            reason: QUOTA.into(),
        }))
    }
}

#[tokio::test]
async fn launches_the_fleet_could_not_make_are_shown_though_no_call_failed() {
    let fleet = Arc::new(OverQuota {
        resizes: AtomicU32::new(0),
    });
    let mut scaler = Scaler::observing(PolicyKind::Default.build(config()), Arc::new(Waiting), fleet.clone());
    let status = scaler.status();
    scaler.tick().await.expect("tick");
    let s = status.read().unwrap().clone();
    assert_eq!(s.last_error, None);
    assert!(s.desired > 0);
    assert_eq!(s.launch_failure.expect("shown").reason, QUOTA);
}

#[tokio::test]
async fn a_watching_scaler_shows_the_fleet_and_never_acts_on_it() {
    let fleet = Arc::new(OverQuota {
        resizes: AtomicU32::new(0),
    });
    let scaler = Scaler::observing(PolicyKind::Default.build(config()), Arc::new(Waiting), fleet.clone()).watching();
    let status = scaler.status();
    let (stop, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let run = tokio::spawn(scaler.run(Duration::from_millis(20), shutdown));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.stop();
    run.await.unwrap().unwrap();
    assert_eq!(fleet.resizes.load(Ordering::SeqCst), 0);
    let s = status.read().unwrap().clone();
    assert!(!s.acting);
    assert_eq!(s.launch_failure.expect("shown to watchers too").reason, QUOTA);
}

async fn tries_in_half_a_second(transient: bool) -> (u32, Option<String>) {
    let fleet = Arc::new(Failing {
        transient,
        tries: AtomicU32::new(0),
    });
    let scaler = Scaler::observing(PolicyKind::Default.build(config()), Arc::new(Waiting), fleet.clone());
    let status = scaler.status();
    let (stop, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let run = tokio::spawn(scaler.run(Duration::from_millis(20), shutdown));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.stop();
    // The pause ends at shutdown rather than when it runs out.
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("stops at once")
        .unwrap()
        .unwrap();
    let last_error = status.read().unwrap().last_error.clone();
    (fleet.tries.load(Ordering::SeqCst), last_error)
}

#[tokio::test]
async fn a_transient_fleet_failure_is_retried_every_tick_a_permanent_one_after_a_pause() {
    assert!(PERMANENT_FAILURE_PAUSE >= Duration::from_secs(5));
    let (transient, error) = tries_in_half_a_second(true).await;
    assert!(transient >= 5, "{transient} tries");
    assert!(error.is_some_and(|e| e.contains("does not exist")));
    let (permanent, error) = tries_in_half_a_second(false).await;
    assert_eq!(permanent, 1, "retried during the pause");
    assert!(error.is_some_and(|e| e.contains("does not exist")));
}

/// A fleet that counts how often it is listed: once per tick.
struct Counting {
    ticks: AtomicU32,
}

#[async_trait]
impl Fleet for Counting {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        self.ticks.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    async fn scale_to(&self, _: usize, _: usize) -> PortResult<FleetChange> {
        Ok(FleetChange::default())
    }
}

/// Under load every upload nudges the scaler; the nudges coalesce into at most one tick per
/// `MIN_TICK_GAP` instead of back-to-back ticks.
#[tokio::test(start_paused = true)]
async fn nudges_coalesce_into_ticks_at_least_the_minimum_gap_apart() {
    let fleet = Arc::new(Counting {
        ticks: AtomicU32::new(0),
    });
    let scaler = Scaler::observing(PolicyKind::Default.build(config()), Arc::new(Waiting), fleet.clone());
    let nudge = scaler.handle().nudge;
    let (stop, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let run = tokio::spawn(scaler.run(Duration::from_secs(3600), shutdown));
    let window = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    while started.elapsed() < window {
        nudge.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.stop();
    run.await.unwrap().unwrap();
    let ticks = fleet.ticks.load(Ordering::SeqCst);
    let most = 2 + (window.as_millis() / scaler::MIN_TICK_GAP.as_millis()) as u32;
    assert!(ticks <= most, "{ticks} ticks in {window:?} of nudges (at most {most})");
    assert!(ticks >= 5, "nudges did not make it tick: {ticks}");
}
