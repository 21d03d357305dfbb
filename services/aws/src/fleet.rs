//! The `Fleet` port on EC2 Auto Scaling groups: the scaler sizes the groups and names their
//! instances with tags (each instance's side is `instance_status`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::anyhow;
use async_trait::async_trait;
use aws_sdk_autoscaling::types::{Activity, LifecycleState, ScalingActivityStatusCode};
use aws_sdk_ec2::types::{Filter, Tag};
use tracing::warn;

use crate::{Aws, StartRecords};
use imgrec_domain::ports::fleet::{instance_name, instance_number, plan, LAUNCH_FAILURE_WINDOW};
use imgrec_domain::ports::{
    Fleet, FleetChange, Instance, InstanceState, LaunchFailure, PortError, PortResult, Purchase, WarmPool,
};

/// The app tier as EC2 Auto Scaling groups. The scaler owns their desired capacities; instances
/// get `Name` tags `app-instanceK` as they appear (the names `plan` chose for them, freed numbers
/// reused), unique across the groups.
///
/// The groups take launches in order, each up to its MaxSize: the On-Demand group (with the warm
/// pool, which AWS allows only on a group without Spot) first, then the Spot group (a mixed
/// instances policy). One group is the plain case.
///
/// Scale-out is one SetDesiredCapacity per group that grows. Scale-in terminates exactly the
/// instances `plan` picks (idle ones first) with TerminateInstanceInAutoScalingGroup,
/// decrementing their group's desired capacity, rather than lowering it and letting the group
/// choose. Busy workers also set scale-in protection on themselves (`AsgInstanceStatus`), which
/// is how the fleet sees that they are busy and which keeps any other scale-in (an operator, a
/// second policy) off them.
///
/// Terminating instances are still alive: they count against the cap and keep their names, so
/// the groups are never asked for more than `max` instances in all. An instance back from the
/// warm pool may carry the name it had before; if another instance has taken that name since, the
/// newcomer is renamed.
pub struct AsgFleet {
    aws: Aws,
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    groups: Vec<String>,
    /// Per group, names chosen for launches it has not started yet, oldest first, with when asked.
    pending_names: Mutex<Vec<VecDeque<(String, SystemTime)>>>,
    /// When an instance was first seen (the group's API has no launch time).
    first_seen: Mutex<HashMap<String, SystemTime>>,
    /// The name each instance had when last listed.
    known_names: Mutex<HashMap<String, String>>,
    /// The last cap the scaler gave (the groups' MaxSize until then): no name goes above it.
    cap: Mutex<Option<usize>>,
    /// What the instances' workers say of their starts.
    starts: Option<StartRecords>,
}

struct Group {
    desired: i32,
    max_size: i32,
    /// (instance id, lifecycle state, protected from scale-in)
    members: Vec<(String, LifecycleState, bool)>,
}

impl AsgFleet {
    /// The fleet of `groups`, in the order they take launches. A clear startup error when one
    /// does not exist or access is denied.
    pub async fn open(aws: &Aws, groups: &[&str]) -> PortResult<Self> {
        let fleet = Self {
            aws: aws.clone(),
            autoscaling: aws_sdk_autoscaling::Client::new(&aws.sdk),
            ec2: aws_sdk_ec2::Client::new(&aws.sdk),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            pending_names: Mutex::new(vec![VecDeque::new(); groups.len()]),
            first_seen: Mutex::new(HashMap::new()),
            known_names: Mutex::new(HashMap::new()),
            cap: Mutex::new(None),
            starts: None,
        };
        fleet.groups().await?;
        Ok(fleet)
    }

    /// Also reports the workers that cannot start, from what they record in `starts`.
    pub fn with_start_records(mut self, starts: StartRecords) -> Self {
        self.starts = Some(starts);
        self
    }

    /// Every group, in order, in one call.
    async fn groups(&self) -> PortResult<Vec<Group>> {
        let request = self
            .autoscaling
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(self.groups.clone()));
        let out = self.aws.call("DescribeAutoScalingGroups", request.send()).await?;
        self.groups
            .iter()
            .map(|name| {
                let g = out
                    .auto_scaling_groups()
                    .iter()
                    .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
                    .ok_or_else(|| PortError::Permanent(anyhow!("Auto Scaling group {name:?} does not exist")))?;
                let members = g
                    .instances()
                    .iter()
                    .filter_map(|i| {
                        Some((
                            i.instance_id()?.to_owned(),
                            i.lifecycle_state()?.clone(),
                            i.protected_from_scale_in().unwrap_or(false),
                        ))
                    })
                    .collect();
                Ok(Group {
                    desired: g.desired_capacity().unwrap_or(0),
                    max_size: g.max_size().unwrap_or(0),
                    members,
                })
            })
            .collect()
    }

    async fn names(&self, ids: &[String]) -> PortResult<HashMap<String, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let request = self
            .ec2
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("resource-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .filters(Filter::builder().name("key").values("Name").build());
        let out = self.aws.call("DescribeTags", request.send()).await?;
        Ok(out
            .tags()
            .iter()
            .filter_map(|t| Some((t.resource_id()?.to_owned(), t.value()?.to_owned())))
            .collect())
    }

    async fn tag(&self, id: &str, name: &str) -> PortResult<()> {
        let request = self
            .ec2
            .create_tags()
            .resources(id)
            .tags(Tag::builder().key("Name").value(name).build());
        self.aws
            .call("CreateTags", request.send())
            .await
            .map_err(|e| e.on(id))?;
        Ok(())
    }

    /// The groups' instances by name, newcomers named, plus the launches each has been asked for
    /// and not started yet (as pending, under the names chosen for them).
    async fn list(&self, groups: &[Group]) -> PortResult<(Vec<Instance>, HashMap<String, String>)> {
        let ids: Vec<String> = groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| m.0.clone()))
            .collect();
        let mut names = self.names(&ids).await?;
        self.drop_duplicate_names(&mut names);
        self.name_newcomers(groups, &mut names).await?;
        *self.known_names.lock().unwrap_or_else(|p| p.into_inner()) = names.clone();
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        first_seen.retain(|id, _| ids.contains(id));
        let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
        let mut instances = Vec::new();
        for (g, (group, pending)) in groups.iter().zip(pending.iter_mut()).enumerate() {
            // The first group is On-Demand; those after it, Spot.
            let purchase = Some(if g == 0 { Purchase::OnDemand } else { Purchase::Spot });
            let before = instances.len();
            instances.extend(group.members.iter().filter_map(|(id, lifecycle, protected)| {
                Some(Instance {
                    name: names.get(id).cloned().unwrap_or_else(|| id.clone()),
                    state: state(lifecycle)?,
                    launched_at: *first_seen.entry(id.clone()).or_insert_with(SystemTime::now),
                    busy: *protected,
                    purchase,
                })
            }));
            // A group counts launches it has not started in its desired capacity.
            let serving = instances[before..].iter().filter(|i| i.serves()).count();
            let unseen = (group.desired.max(0) as usize).saturating_sub(serving);
            pending.truncate(unseen);
            instances.extend(pending.iter().map(|(name, asked)| Instance {
                name: name.clone(),
                state: InstanceState::Pending,
                launched_at: *asked,
                busy: false,
                purchase,
            }));
        }
        instances.sort_by_key(|i| instance_number(&i.name));
        Ok((instances, names))
    }

    /// An instance back from the warm pool keeps its old Name tag; if another has carried that
    /// name since, the one this fleet last listed under it keeps it (else the one seen first)
    /// and the other is named again as a newcomer.
    fn drop_duplicate_names(&self, names: &mut HashMap<String, String>) {
        let first_seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.known_names.lock().unwrap_or_else(|p| p.into_inner());
        let mut held: HashSet<String> = HashSet::new();
        let mut ids: Vec<(String, String)> = names.iter().map(|(id, n)| (id.clone(), n.clone())).collect();
        // Ties by id, for a stable choice.
        ids.sort_by_key(|(id, name)| {
            let renamed = known.get(id) != Some(name);
            let seen = first_seen.get(id).copied().unwrap_or(SystemTime::now());
            (renamed, seen, id.clone())
        });
        for (id, name) in ids {
            if !held.insert(name.clone()) {
                warn!(instance = %id, %name, "instance carries a name another holds; naming it again");
                names.remove(&id);
            }
        }
    }

    /// Tags the groups' unnamed instances with the names the scaler chose for them.
    async fn name_newcomers(&self, groups: &[Group], names: &mut HashMap<String, String>) -> PortResult<()> {
        // Only the fleet that sizes the groups (the acting scaler: `scale_to` sets its cap) names
        // newcomers; a watcher shows them by instance id until then, so that two processes never
        // race to tag one instance.
        let Some(cap) = *self.cap.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(());
        };
        for (g, group) in groups.iter().enumerate() {
            let unnamed: Vec<&String> = group
                .members
                .iter()
                .map(|m| &m.0)
                .filter(|id| !names.contains_key(*id))
                .collect();
            for id in unnamed {
                let taken: HashSet<&String> = names.values().collect();
                let chosen = {
                    let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
                    pending[g].retain(|(n, _)| !taken.contains(n));
                    pending[g].pop_front().map(|(n, _)| n)
                };
                // One the scaler did not ask for (an operator raised the capacity, the group
                // replaced an interrupted Spot instance): the lowest free name within the cap,
                // or none until one frees.
                let name = chosen.or_else(|| {
                    (1..=cap)
                        .map(instance_name)
                        .find(|n| !taken.contains(n) && !self.is_pending(n))
                });
                match name {
                    Some(name) => {
                        self.tag(id, &name).await?;
                        names.insert(id.clone(), name);
                    }
                    None => warn!(instance = %id, cap, "no free instance name within the cap; left unnamed"),
                }
            }
        }
        Ok(())
    }

    async fn set_desired_capacity(&self, group: &str, capacity: i32) -> PortResult<()> {
        let request = self
            .autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(capacity)
            .honor_cooldown(false);
        self.aws
            .call("SetDesiredCapacity", request.send())
            .await
            .map_err(|e| e.on(capacity))?;
        Ok(())
    }

    fn is_pending(&self, name: &str) -> bool {
        let pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
        pending.iter().flatten().any(|(n, _)| n == name)
    }

    /// Each group's new desired capacity: launches go to the groups in order, each up to its
    /// MaxSize; retirements of launches not started yet lower the group that was asked.
    fn resize_groups(&self, groups: &[Group], launch: &[String], unstarted: &[&String]) -> Vec<(i32, Vec<String>)> {
        let pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
        let mut launches = launch.iter();
        groups
            .iter()
            .zip(pending.iter())
            .map(|(group, pending)| {
                let cancelled = pending.iter().filter(|(n, _)| unstarted.contains(&n)).count() as i32;
                let desired = group.desired - cancelled;
                let room = (group.max_size - desired).max(0) as usize;
                let mine: Vec<String> = launches.by_ref().take(room).cloned().collect();
                (desired + mine.len() as i32, mine)
            })
            .collect()
    }
}

fn state(lifecycle: &LifecycleState) -> Option<InstanceState> {
    use LifecycleState as L;
    match lifecycle {
        L::Pending | L::PendingWait | L::PendingProceed => Some(InstanceState::Pending),
        L::InService => Some(InstanceState::Running),
        L::Terminated => None,
        // Terminating*, Detaching, Standby, EnteringStandby, ...: not taking work, still alive.
        _ => Some(InstanceState::Stopping),
    }
}

#[async_trait]
impl Fleet for AsgFleet {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        let groups = self.groups().await?;
        Ok(self.list(&groups).await?.0)
    }

    async fn scale_to(&self, desired: usize, max: usize) -> PortResult<FleetChange> {
        let groups = self.groups().await?;
        // The groups' MaxSizes bound us even where the API would accept more (moto does).
        let max = max.min(groups.iter().map(|g| g.max_size.max(0) as usize).sum());
        *self.cap.lock().unwrap_or_else(|p| p.into_inner()) = Some(max);
        let (instances, names) = self.list(&groups).await?;
        let resize = plan(desired, max, &instances);
        // Launches the groups have not started yet are retired by asking for fewer.
        let (unstarted, started): (Vec<&String>, Vec<&String>) = resize
            .retire
            .iter()
            .partition(|name| !names.values().any(|n| n == *name));
        let sized = self.resize_groups(&groups, &resize.launch, &unstarted);
        let now = SystemTime::now();
        for (g, (group, (capacity, launched))) in groups.iter().zip(sized).enumerate() {
            if capacity == group.desired {
                continue;
            }
            self.set_desired_capacity(&self.groups[g], capacity).await?;
            let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
            pending[g].retain(|(n, _)| !unstarted.contains(&n));
            pending[g].extend(launched.into_iter().map(|n| (n, now)));
        }
        for name in started {
            let id = names.iter().find(|(_, n)| *n == name).map(|(id, _)| id);
            let id = id.ok_or_else(|| PortError::Transient(anyhow!("{name} has no instance id yet")))?;
            let request = self
                .autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(true);
            self.aws
                .call("TerminateInstanceInAutoScalingGroup", request.send())
                .await
                .map_err(|e| e.on(id))?;
        }
        Ok(resize)
    }

    async fn max_size(&self) -> PortResult<Option<usize>> {
        let groups = self.groups().await?;
        Ok(Some(groups.iter().map(|g| g.max_size.max(0) as usize).sum()))
    }

    async fn warm_pool(&self) -> PortResult<Option<WarmPool>> {
        // Only the first group (On-Demand) may have one.
        let request = self
            .autoscaling
            .describe_warm_pool()
            .auto_scaling_group_name(&self.groups[0]);
        let out = self.aws.call("DescribeWarmPool", request.send()).await?;
        let Some(config) = out.warm_pool_configuration() else {
            return Ok(None);
        };
        let mut instances = std::collections::BTreeMap::new();
        for state in out.instances().iter().filter_map(|i| i.lifecycle_state()) {
            *instances.entry(state.as_str().to_owned()).or_default() += 1;
        }
        Ok(Some(WarmPool {
            state: config.pool_state().map_or("Stopped", |s| s.as_str()).to_owned(),
            size: config.min_size().unwrap_or(0).max(0) as usize,
            instances,
        }))
    }

    /// The newest of the groups' failed launches and the workers' failed starts.
    async fn launch_failure(&self) -> PortResult<Option<LaunchFailure>> {
        let now = SystemTime::now();
        let mut failures = Vec::new();
        for group in &self.groups {
            let request = self
                .autoscaling
                .describe_scaling_activities()
                .auto_scaling_group_name(group)
                .max_records(20);
            let out = self.aws.call("DescribeScalingActivities", request.send()).await?;
            failures.extend(latest_launch_failure(out.activities(), now));
        }
        if let Some(starts) = &self.starts {
            failures.extend(starts.latest_failure(now).await?);
        }
        Ok(failures.into_iter().max_by_key(|f| f.at_s))
    }
}

/// The newest failed launch among a group's activities (newest first, as AWS lists them) within
/// `LAUNCH_FAILURE_WINDOW` of `now`.
fn latest_launch_failure(activities: &[Activity], now: SystemTime) -> Option<LaunchFailure> {
    // Long messages carry AWS's advice in full; the cause comes first.
    const MAX_REASON: usize = 400;
    let since = now.checked_sub(LAUNCH_FAILURE_WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
    activities.iter().find_map(|a| {
        let launch = a.description().is_some_and(|d| d.starts_with("Launching"));
        if !launch || a.status_code() != Some(&ScalingActivityStatusCode::Failed) {
            return None;
        }
        let at = SystemTime::try_from(*a.start_time()?).ok()?;
        if at < since {
            return None;
        }
        let reason = a.status_message().or(a.description()).unwrap_or("no reason given");
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let at_s = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        Some(LaunchFailure { at_s, reason })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_autoscaling::primitives::DateTime;

    use super::*;

    fn activity(description: &str, status: ScalingActivityStatusCode, message: &str, at: SystemTime) -> Activity {
        Activity::builder()
            .activity_id("a")
            .auto_scaling_group_name("imgrec-app-tier")
            .cause("At 2026-12-03T08:00:00Z a user request update of AutoScalingGroup constraints")
            .description(description)
            .status_code(status)
            .status_message(message)
            .start_time(DateTime::from(at))
            .build()
    }

    #[test]
    fn the_newest_failed_launch_in_the_window_is_the_fleets_trouble() {
        let now = SystemTime::now();
        let quota = "You have requested more vCPU capacity than your current vCPU limit of 32 allows \
                     for the instance bucket that the specified instance type belongs to.";
        let activities = [
            activity(
                "Launching a new EC2 instance: i-1",
                ScalingActivityStatusCode::Successful,
                "",
                now,
            ),
            activity(
                "Terminating EC2 instance: i-0",
                ScalingActivityStatusCode::Failed,
                "gone",
                now,
            ),
            activity(
                "Launching a new EC2 instance.  Status Reason: quota",
                ScalingActivityStatusCode::Failed,
                quota,
                now - Duration::from_secs(60),
            ),
            activity(
                "Launching a new EC2 instance",
                ScalingActivityStatusCode::Failed,
                "older",
                now - Duration::from_secs(120),
            ),
        ];
        let failure = latest_launch_failure(&activities, now).expect("a failure");
        assert_eq!(failure.reason, quota);
        let age = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() - failure.at_s;
        assert!((59..=61).contains(&age), "{age}");
    }

    #[test]
    fn old_failures_and_successes_are_no_trouble() {
        let now = SystemTime::now();
        let old = now - LAUNCH_FAILURE_WINDOW - Duration::from_secs(1);
        let activities = [
            activity(
                "Launching a new EC2 instance: i-1",
                ScalingActivityStatusCode::Successful,
                "",
                now,
            ),
            activity(
                "Launching a new EC2 instance",
                ScalingActivityStatusCode::Failed,
                "quota",
                old,
            ),
        ];
        assert_eq!(latest_launch_failure(&activities, now), None);
    }
}
