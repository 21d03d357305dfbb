//! `Fleet`: the app-tier instances the scaler sizes, how a resize is planned, and how an
//! instance reports its state (`InstanceStatus`).

use std::collections::HashSet;
use std::time::SystemTime;

use async_trait::async_trait;

use super::error::PortResult;

/// App-tier instances are `app-instance1`, `app-instance2`, ...
pub const INSTANCE_PREFIX: &str = "app-instance";

/// How far back a failed launch still counts as the fleet's current trouble.
pub const LAUNCH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not yet taking work (booting, loading the model).
    Pending,
    Running,
    /// Retired: finishing what it holds, then gone.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `app-instanceK`.
    pub name: String,
    pub state: InstanceState,
    pub launched_at: SystemTime,
    /// Holds work right now (as the instance last reported).
    pub busy: bool,
    /// How it is paid for, where that means anything (EC2); `None` for local processes.
    pub purchase: Option<Purchase>,
}

/// The warm pool beside a fleet (EC2 Auto Scaling): instances initialised and waiting to serve.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmPool {
    /// What its instances wait in: "Stopped", "Hibernated" or "Running".
    pub state: String,
    /// Instances it keeps.
    pub size: usize,
    /// Instances in it now, by lifecycle state ("Warmed:Hibernated", "Warmed:Pending", ...).
    pub instances: std::collections::BTreeMap<String, usize>,
}

/// How an EC2 instance is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purchase {
    OnDemand,
    Spot,
}

impl Purchase {
    pub fn name(self) -> &'static str {
        match self {
            Self::OnDemand => "on-demand",
            Self::Spot => "spot",
        }
    }
}

impl Instance {
    /// Takes work or soon will: not on its way out.
    pub fn serves(&self) -> bool {
        self.state != InstanceState::Stopping
    }
}

/// A launch the fleet tried and could not make (a vCPU quota, no capacity of the instance type, a
/// bad launch template), as the fleet's own history tells it: the scaler shows it, since the
/// service then just stays slow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaunchFailure {
    /// When the failed launch began, in seconds since the Unix epoch.
    pub at_s: u64,
    /// The fleet's own words (an Auto Scaling activity's status message).
    pub reason: String,
}

/// What a fleet does to move toward a desired size: the names it launches and retires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetChange {
    pub launch: Vec<String>,
    pub retire: Vec<String>,
}

impl FleetChange {
    pub fn is_empty(&self) -> bool {
        self.launch.is_empty() && self.retire.is_empty()
    }
}

/// How a fleet reaches `desired` serving instances without ever having more than `max` alive:
/// every instance not yet gone counts against the cap, stopping ones included, so launches wait
/// for them to leave. New names are the lowest free `app-instanceK` (so never above
/// `app-instance{max}`); the surplus retired is idle before busy, not yet running before running,
/// newest first.
pub fn plan(desired: usize, max: usize, instances: &[Instance]) -> FleetChange {
    let desired = desired.min(max);
    let serving: Vec<&Instance> = instances.iter().filter(|i| i.serves()).collect();
    let mut resize = FleetChange::default();
    if desired > serving.len() {
        let room = max.saturating_sub(instances.len());
        let taken: HashSet<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        resize.launch = (1..=max)
            .map(instance_name)
            .filter(|name| !taken.contains(name.as_str()))
            .take((desired - serving.len()).min(room))
            .collect();
    } else if desired < serving.len() {
        let mut order = serving;
        order.sort_by_key(|i| {
            (
                i.busy,
                i.state == InstanceState::Running,
                std::cmp::Reverse(i.launched_at),
            )
        });
        resize.retire = order
            .iter()
            .take(order.len() - desired)
            .map(|i| i.name.clone())
            .collect();
    }
    resize
}

pub fn instance_name(k: usize) -> String {
    format!("{INSTANCE_PREFIX}{k}")
}

/// `K` of `app-instanceK`, for sorting (app-instance2 before app-instance10); other names last.
pub fn instance_number(name: &str) -> (u64, String) {
    let k = name
        .strip_prefix(INSTANCE_PREFIX)
        .and_then(|k| k.parse().ok())
        .unwrap_or(u64::MAX);
    (k, name.to_owned())
}

/// The app-tier instances: OS processes locally, an Auto Scaling group on AWS. The fleet names its
/// instances; the scaler only says how many.
#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    /// Every instance not yet gone, crashed ones already noticed and dropped.
    async fn instances(&self) -> PortResult<Vec<Instance>>;
    /// Moves toward `desired` serving instances in one step (`plan`): launches what is missing at
    /// once, as far as `max` instances alive in any state allows, and asks the surplus to finish
    /// what it holds and stop. Returns what it did.
    async fn scale_to(&self, desired: usize, max: usize) -> PortResult<FleetChange>;
    /// The most instances this fleet can hold, if it has its own bound (an Auto Scaling group's
    /// MaxSize); the scaler never asks for more.
    async fn max_size(&self) -> PortResult<Option<usize>> {
        Ok(None)
    }
    /// The latest launch that failed in the last `LAUNCH_FAILURE_WINDOW`, if any (local
    /// processes: the latest of those that exited before they were ready, until one is ready; a
    /// process that cannot be started at all fails `scale_to` itself).
    async fn launch_failure(&self) -> PortResult<Option<LaunchFailure>> {
        Ok(None)
    }
    /// Stops every instance (on shutdown of the stack).
    async fn shutdown(&self) -> PortResult<()> {
        Ok(())
    }
    /// The warm pool beside the fleet, if it has one.
    async fn warm_pool(&self) -> PortResult<Option<WarmPool>> {
        Ok(None)
    }
}

/// How an app-tier instance tells the fleet it is ready or busy (so scale-in retires idle ones),
/// and that it is alive and making progress.
#[async_trait]
pub trait InstanceStatus: Send + Sync + 'static {
    async fn report(&self, state: InstanceState, busy: bool) -> PortResult<()>;
    /// Called every `app_tier.heartbeat_ms` while the worker makes progress; a fleet that watches
    /// heartbeats replaces an instance that misses them. (On EC2 the systemd watchdog does, so
    /// there is nothing to send to the group.)
    async fn heartbeat(&self) -> PortResult<()> {
        Ok(())
    }
    /// Returns once this instance may take work: one initialised for a warm pool waits there
    /// (stopped or hibernated) until the group puts it in service. Processes serve at once.
    async fn until_in_service(&self) -> PortResult<()> {
        Ok(())
    }
    /// Whether the group still counts this instance in service; checked every few seconds while
    /// it works. One the group moves on (back to its warm pool on scale-in, or toward
    /// termination) drains, and waits in `until_in_service` to be put back.
    async fn in_service(&self) -> PortResult<bool> {
        Ok(true)
    }
    /// When this instance will be taken away without its consent (a Spot interruption notice),
    /// once it has been told; checked every few seconds.
    async fn reclaim_at(&self) -> PortResult<Option<SystemTime>> {
        Ok(None)
    }
    /// Tells the fleet that this instance's worker started (model loaded, buckets and queues
    /// found), clearing an earlier `failed_to_start` from `Fleet::launch_failure`. A fleet that
    /// watches its processes sees as much itself, so by default nothing is sent.
    async fn started(&self) -> PortResult<()> {
        Ok(())
    }
    /// Tells the fleet why this instance's worker cannot start, for `Fleet::launch_failure`
    /// (on EC2 the instance itself launched, and stays in service, idle, while it restarts).
    async fn failed_to_start(&self, _reason: &str) -> PortResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn instance(k: usize, state: InstanceState, busy: bool, launched_s: u64) -> Instance {
        Instance {
            name: instance_name(k),
            state,
            launched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(launched_s),
            busy,
            purchase: None,
        }
    }

    #[test]
    fn stopping_instances_count_against_the_cap_and_keep_their_names() {
        use InstanceState::*;
        let fleet = [instance(1, Running, true, 1), instance(3, Stopping, true, 2)];
        // Room for two more under a cap of 4, named around the stopping app-instance3.
        let r = plan(10, 4, &fleet);
        assert_eq!(r.launch, ["app-instance2", "app-instance4"]);
        assert!(r.retire.is_empty());
        // At the cap nothing launches until app-instance3 is gone.
        assert_eq!(plan(10, 2, &fleet), FleetChange::default());
    }

    #[test]
    fn retires_idle_first_then_not_yet_running_then_newest() {
        use InstanceState::*;
        let fleet = [
            instance(1, Running, true, 50),
            instance(2, Running, false, 40),
            instance(3, Running, true, 30),
            instance(4, Running, false, 20),
            instance(5, Pending, false, 60),
            instance(6, Stopping, false, 70),
        ];
        let r = plan(1, 20, &fleet);
        assert_eq!(
            r.retire,
            ["app-instance5", "app-instance2", "app-instance4", "app-instance1"]
        );
        assert!(plan(5, 20, &fleet).is_empty());
    }
}
