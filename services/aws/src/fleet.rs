//! The `Fleet` and `InstanceStatus` ports on an EC2 Auto Scaling group: the scaler sizes the
//! group and names its instances with tags; an instance's readiness is the group's lifecycle
//! state, and a busy one protects itself from scale-in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::anyhow;
use async_trait::async_trait;
use aws_sdk_autoscaling::types::{Activity, LifecycleState, ScalingActivityStatusCode};
use aws_sdk_ec2::types::{Filter, Tag};
use tracing::warn;

use crate::Aws;
use imgrec_domain::ports::fleet::{instance_name, instance_number, plan, LAUNCH_FAILURE_WINDOW};
use imgrec_domain::ports::{
    Fleet, FleetChange, Instance, InstanceState, InstanceStatus, LaunchFailure, PortError, PortResult,
};

/// The app tier as an EC2 Auto Scaling group. The scaler owns its desired capacity; instances get
/// `Name` tags `app-instanceK` as they appear (the names `plan` chose for them, freed numbers
/// reused).
///
/// Scale-out is one SetDesiredCapacity per decision. Scale-in terminates exactly the instances
/// `plan` picks (idle ones first) with TerminateInstanceInAutoScalingGroup, decrementing the
/// desired capacity, rather than lowering it and letting the group choose. Busy workers also set
/// scale-in protection on themselves (`AsgInstanceStatus`), which is how the fleet sees that they
/// are busy and which keeps any other scale-in (an operator, a second policy) off them.
///
/// Terminating instances are still alive: they count against the cap and keep their names, so
/// the group is never asked for more than `max` instances in all.
pub struct AsgFleet {
    aws: Aws,
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    group: String,
    /// Names chosen for launches the group has not started yet, oldest first, with when asked.
    pending_names: Mutex<VecDeque<(String, SystemTime)>>,
    /// When an instance was first seen (the group's API has no launch time).
    first_seen: Mutex<HashMap<String, SystemTime>>,
    /// The last cap the scaler gave (the group's MaxSize until then): no name goes above it.
    cap: Mutex<Option<usize>>,
}

struct Group {
    desired: i32,
    max_size: i32,
    /// (instance id, lifecycle state, protected from scale-in)
    members: Vec<(String, LifecycleState, bool)>,
}

impl AsgFleet {
    /// A clear startup error when the group does not exist or access is denied.
    pub async fn open(aws: &Aws, group: &str) -> PortResult<Self> {
        let fleet = Self {
            aws: aws.clone(),
            autoscaling: aws_sdk_autoscaling::Client::new(&aws.sdk),
            ec2: aws_sdk_ec2::Client::new(&aws.sdk),
            group: group.to_owned(),
            pending_names: Mutex::new(VecDeque::new()),
            first_seen: Mutex::new(HashMap::new()),
            cap: Mutex::new(None),
        };
        fleet.group().await?;
        Ok(fleet)
    }

    async fn group(&self) -> PortResult<Group> {
        let request = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group);
        let out = self.aws.call("DescribeAutoScalingGroups", request.send()).await?;
        let g = out
            .auto_scaling_groups()
            .first()
            .ok_or_else(|| PortError::Permanent(anyhow!("Auto Scaling group {:?} does not exist", self.group)))?;
        let members = g
            .instances()
            .iter()
            .filter_map(|i| {
                let id = i.instance_id()?.to_owned();
                Some((
                    id,
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

    /// The group's instances by name, newcomers named, plus the launches it has been asked for
    /// and not started yet (as pending, under the names chosen for them).
    async fn list(&self, group: &Group) -> PortResult<(Vec<Instance>, HashMap<String, String>)> {
        let ids: Vec<String> = group.members.iter().map(|m| m.0.clone()).collect();
        let mut names = self.names(&ids).await?;
        self.name_newcomers(&ids, &mut names).await?;
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        first_seen.retain(|id, _| ids.contains(id));
        let mut instances: Vec<Instance> = group
            .members
            .iter()
            .filter_map(|(id, lifecycle, protected)| {
                Some(Instance {
                    name: names.get(id).cloned().unwrap_or_else(|| id.clone()),
                    state: state(lifecycle)?,
                    launched_at: *first_seen.entry(id.clone()).or_insert_with(SystemTime::now),
                    busy: *protected,
                })
            })
            .collect();
        // The group counts launches it has not started in its desired capacity.
        let serving = instances.iter().filter(|i| i.serves()).count();
        let unseen = (group.desired.max(0) as usize).saturating_sub(serving);
        let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
        pending.truncate(unseen);
        instances.extend(pending.iter().map(|(name, asked)| Instance {
            name: name.clone(),
            state: InstanceState::Pending,
            launched_at: *asked,
            busy: false,
        }));
        instances.sort_by_key(|i| instance_number(&i.name));
        Ok((instances, names))
    }

    /// Tags the group's unnamed instances with the names the scaler chose for them.
    async fn name_newcomers(&self, ids: &[String], names: &mut HashMap<String, String>) -> PortResult<()> {
        // Only the fleet that sizes the group (the acting scaler: `scale_to` sets its cap) names
        // newcomers; a watcher shows them by instance id until then, so that two processes never
        // race to tag one instance.
        let cap = *self.cap.lock().unwrap_or_else(|p| p.into_inner());
        let unnamed: Vec<&String> = match cap {
            Some(_) => ids.iter().filter(|id| !names.contains_key(*id)).collect(),
            None => Vec::new(),
        };
        let cap = cap.unwrap_or(0);
        for id in unnamed {
            let taken: HashSet<&String> = names.values().collect();
            let chosen = {
                let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
                pending.retain(|(n, _)| !taken.contains(n));
                pending.pop_front().map(|(n, _)| n)
            };
            // One the scaler did not ask for (an operator raised the capacity): the lowest free
            // name within the cap, or none until one frees.
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
        Ok(())
    }

    async fn set_desired_capacity(&self, capacity: i32) -> PortResult<()> {
        let request = self
            .autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
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
        pending.iter().any(|(n, _)| n == name)
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
        let group = self.group().await?;
        Ok(self.list(&group).await?.0)
    }

    async fn scale_to(&self, desired: usize, max: usize) -> PortResult<FleetChange> {
        let group = self.group().await?;
        // The group's MaxSize bounds us even where the API would accept more (moto does).
        let max = max.min(group.max_size.max(0) as usize);
        *self.cap.lock().unwrap_or_else(|p| p.into_inner()) = Some(max);
        let (instances, names) = self.list(&group).await?;
        let resize = plan(desired, max, &instances);
        // Launches the group has not started yet are retired by asking for fewer.
        let (unstarted, started): (Vec<&String>, Vec<&String>) = resize
            .retire
            .iter()
            .partition(|name| !names.values().any(|n| n == *name));
        let capacity = group.desired + resize.launch.len() as i32 - unstarted.len() as i32;
        if capacity != group.desired {
            self.set_desired_capacity(capacity).await?;
            let now = SystemTime::now();
            let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|(n, _)| !unstarted.contains(&n));
            pending.extend(resize.launch.iter().map(|n| (n.clone(), now)));
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
        Ok(Some(self.group().await?.max_size.max(0) as usize))
    }

    async fn launch_failure(&self) -> PortResult<Option<LaunchFailure>> {
        let request = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(&self.group)
            .max_records(20);
        let out = self.aws.call("DescribeScalingActivities", request.send()).await?;
        Ok(latest_launch_failure(out.activities(), SystemTime::now()))
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

/// A worker on EC2 reports busy by setting scale-in protection on its own instance.
pub struct AsgInstanceStatus {
    aws: Aws,
    autoscaling: aws_sdk_autoscaling::Client,
    group: String,
    instance_id: String,
}

impl AsgInstanceStatus {
    pub fn new(aws: &Aws, group: &str, instance_id: &str) -> Self {
        Self {
            aws: aws.clone(),
            autoscaling: aws_sdk_autoscaling::Client::new(&aws.sdk),
            group: group.to_owned(),
            instance_id: instance_id.to_owned(),
        }
    }
}

#[async_trait]
impl InstanceStatus for AsgInstanceStatus {
    async fn report(&self, state: InstanceState, busy: bool) -> PortResult<()> {
        // Readiness is the group's lifecycle state; only busyness is ours to report.
        let protect = busy && state == InstanceState::Running;
        let request = self
            .autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(&self.group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(protect);
        self.aws.call("SetInstanceProtection", request.send()).await?;
        Ok(())
    }
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
