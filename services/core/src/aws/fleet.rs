use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ec2::types::{Filter, Tag};

use super::describe;
use crate::policy::free_names;
use crate::ports::{Fleet, Instance, InstanceState, InstanceStatus};

/// The app tier as an EC2 Auto Scaling group. The scaler owns its desired capacity; instances get
/// `Name` tags `app-instanceK` as they appear (the lowest free K, freed numbers reused).
///
/// Scale-in: the scaler picks the instances to retire (idle ones first) and terminates exactly
/// those with TerminateInstanceInAutoScalingGroup, decrementing the desired capacity, rather than
/// lowering the desired capacity and letting the group choose. Busy workers also set scale-in
/// protection on themselves (`AsgInstanceStatus`), which is how the scaler sees that they are busy
/// and which keeps any other scale-in (an operator, a second policy) off them.
pub struct AsgFleet {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    group: String,
    /// Names chosen by the scaler for instances the group has not started yet.
    pending_names: Mutex<VecDeque<String>>,
    /// When an instance was first seen (the group's API has no launch time).
    first_seen: Mutex<HashMap<String, SystemTime>>,
}

struct Group {
    desired: i32,
    max_size: i32,
    /// (instance id, lifecycle state, protected from scale-in)
    members: Vec<(String, LifecycleState, bool)>,
}

impl AsgFleet {
    /// A clear startup error when the group does not exist or access is denied.
    pub async fn open(sdk: &SdkConfig, group: &str) -> anyhow::Result<Self> {
        let fleet = Self {
            autoscaling: aws_sdk_autoscaling::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            group: group.to_owned(),
            pending_names: Mutex::new(VecDeque::new()),
            first_seen: Mutex::new(HashMap::new()),
        };
        fleet.group().await?;
        Ok(fleet)
    }

    async fn group(&self) -> anyhow::Result<Group> {
        super::count("DescribeAutoScalingGroups");
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| anyhow!("Auto Scaling DescribeAutoScalingGroups: {}", describe(&e)))?;
        let g = out
            .auto_scaling_groups()
            .first()
            .with_context(|| format!("Auto Scaling group {:?} does not exist", self.group))?;
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

    async fn names(&self, ids: &[String]) -> anyhow::Result<HashMap<String, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        super::count("DescribeTags");
        let out = self
            .ec2
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("resource-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .filters(Filter::builder().name("key").values("Name").build())
            .send()
            .await
            .map_err(|e| anyhow!("EC2 DescribeTags: {}", describe(&e)))?;
        Ok(out
            .tags()
            .iter()
            .filter_map(|t| Some((t.resource_id()?.to_owned(), t.value()?.to_owned())))
            .collect())
    }

    async fn tag(&self, id: &str, name: &str) -> anyhow::Result<()> {
        super::count("CreateTags");
        self.ec2
            .create_tags()
            .resources(id)
            .tags(Tag::builder().key("Name").value(name).build())
            .send()
            .await
            .map_err(|e| anyhow!("EC2 CreateTags {id}: {}", describe(&e)))?;
        Ok(())
    }

    async fn id_of(&self, name: &str) -> anyhow::Result<String> {
        let group = self.group().await?;
        let ids: Vec<String> = group.members.iter().map(|m| m.0.clone()).collect();
        let names = self.names(&ids).await?;
        names
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id)
            .with_context(|| format!("no instance named {name}"))
    }
}

fn state(lifecycle: &LifecycleState) -> Option<InstanceState> {
    use LifecycleState as L;
    match lifecycle {
        L::Pending | L::PendingWait | L::PendingProceed => Some(InstanceState::Pending),
        L::InService => Some(InstanceState::Running),
        L::Terminated => None,
        // Terminating*, Detaching, Standby, EnteringStandby, ...: not taking work.
        _ => Some(InstanceState::Stopping),
    }
}

#[async_trait]
impl Fleet for AsgFleet {
    async fn instances(&self) -> anyhow::Result<Vec<Instance>> {
        let group = self.group().await?;
        let ids: Vec<String> = group.members.iter().map(|m| m.0.clone()).collect();
        let mut names = self.names(&ids).await?;
        // Name the newcomers: the scaler's chosen names first, then the lowest free numbers.
        let unnamed: Vec<&String> = ids.iter().filter(|id| !names.contains_key(*id)).collect();
        if !unnamed.is_empty() {
            let taken: Vec<Instance> = names
                .values()
                .map(|n| Instance {
                    name: n.clone(),
                    state: InstanceState::Running,
                    launched_at: SystemTime::now(),
                    busy: false,
                })
                .collect();
            let mut fallback = free_names(&taken, unnamed.len() * 2).into_iter();
            for id in unnamed {
                let taken_now: HashSet<&String> = names.values().collect();
                let chosen = {
                    let mut pending = self.pending_names.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        match pending.pop_front() {
                            Some(n) if taken_now.contains(&n) => continue,
                            Some(n) => break Some(n),
                            None => break None,
                        }
                    }
                };
                let name = match chosen {
                    Some(n) => n,
                    None => fallback
                        .find(|n| !taken_now.contains(n))
                        .context("no free instance name")?,
                };
                self.tag(id, &name).await?;
                names.insert(id.clone(), name);
            }
        }
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        first_seen.retain(|id, _| ids.contains(id));
        let mut instances: Vec<Instance> = group
            .members
            .iter()
            .filter_map(|(id, lifecycle, protected)| {
                Some(Instance {
                    name: names.get(id)?.clone(),
                    state: state(lifecycle)?,
                    launched_at: *first_seen.entry(id.clone()).or_insert_with(SystemTime::now),
                    busy: *protected,
                })
            })
            .collect();
        instances.sort_by_key(|i| crate::policy::instance_number(&i.name));
        Ok(instances)
    }

    async fn launch(&self, name: &str) -> anyhow::Result<()> {
        let pending = self
            .pending_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name.to_owned());
        if pending || self.instances().await?.iter().any(|i| i.name == name) {
            bail!("instance {name} already exists");
        }
        let group = self.group().await?;
        // The group's MaxSize bounds us even where the API would accept more (moto does).
        if group.desired >= group.max_size {
            bail!("Auto Scaling group {} is at its MaxSize {}", self.group, group.max_size);
        }
        super::count("SetDesiredCapacity");
        self.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
            .desired_capacity(group.desired + 1)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| anyhow!("Auto Scaling SetDesiredCapacity: {}", describe(&e)))?;
        self.pending_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(name.to_owned());
        Ok(())
    }

    async fn retire(&self, name: &str) -> anyhow::Result<()> {
        let id = self.id_of(name).await?;
        super::count("TerminateInstanceInAutoScalingGroup");
        self.autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "Auto Scaling TerminateInstanceInAutoScalingGroup {id}: {}",
                    describe(&e)
                )
            })?;
        Ok(())
    }

    async fn max_size(&self) -> anyhow::Result<Option<usize>> {
        Ok(Some(self.group().await?.max_size.max(0) as usize))
    }
}

/// A worker on EC2 reports busy by setting scale-in protection on its own instance.
pub struct AsgInstanceStatus {
    autoscaling: aws_sdk_autoscaling::Client,
    group: String,
    instance_id: String,
}

impl AsgInstanceStatus {
    pub fn new(sdk: &SdkConfig, group: &str, instance_id: &str) -> Self {
        Self {
            autoscaling: aws_sdk_autoscaling::Client::new(sdk),
            group: group.to_owned(),
            instance_id: instance_id.to_owned(),
        }
    }
}

#[async_trait]
impl InstanceStatus for AsgInstanceStatus {
    async fn report(&self, state: InstanceState, busy: bool) -> anyhow::Result<()> {
        // Readiness is the group's lifecycle state; only busyness is ours to report.
        let protect = busy && state == InstanceState::Running;
        super::count("SetInstanceProtection");
        self.autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(&self.group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(protect)
            .send()
            .await
            .map_err(|e| anyhow!("Auto Scaling SetInstanceProtection: {}", describe(&e)))?;
        Ok(())
    }
}
