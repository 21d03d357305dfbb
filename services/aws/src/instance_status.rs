//! The `InstanceStatus` port on EC2: an instance's readiness is its Auto Scaling group's lifecycle
//! state (read from the instance metadata, which also brings Spot interruption notices), a busy
//! worker protects itself from scale-in, and a worker says whether it could start.

use std::time::SystemTime;

use async_trait::async_trait;
use tracing::{debug, info, warn};

use crate::{Aws, Imds, StartRecords};
use imgrec_domain::ports::{InstanceState, InstanceStatus, PortResult};

/// A worker on EC2 reports busy by setting scale-in protection on its own instance.
pub struct AsgInstanceStatus {
    aws: Aws,
    autoscaling: aws_sdk_autoscaling::Client,
    group: String,
    instance_id: String,
    /// On EC2: the instance's own metadata (warm pool state, Spot notices).
    imds: Option<Imds>,
    /// The group's launch lifecycle hook, completed once the worker is ready.
    launch_hook: Option<String>,
    /// Where this instance says whether its worker could start.
    starts: Option<StartRecords>,
}

impl AsgInstanceStatus {
    pub fn new(aws: &Aws, group: &str, instance_id: &str) -> Self {
        Self {
            aws: aws.clone(),
            autoscaling: aws_sdk_autoscaling::Client::new(&aws.sdk),
            group: group.to_owned(),
            instance_id: instance_id.to_owned(),
            imds: None,
            launch_hook: None,
            starts: None,
        }
    }

    /// Records in `starts` whether the worker could start, for the fleet's `launch_failure`.
    pub fn with_start_records(mut self, starts: StartRecords) -> Self {
        self.starts = Some(starts);
        self
    }

    /// Reads the warm pool state and Spot notices from the instance metadata service, and
    /// completes `launch_hook` (if any) whenever the group moves the ready instance on.
    pub fn on_ec2(mut self, launch_hook: Option<&str>) -> Self {
        self.imds = Some(Imds::default());
        self.launch_hook = launch_hook.filter(|h| !h.is_empty()).map(str::to_owned);
        self
    }

    /// Lets the group move this instance on (into the warm pool, or into service). A group
    /// with no such action pending (an instance of the Spot group, a hook already completed)
    /// refuses, which is no news.
    async fn complete_launch(&self) {
        let Some(hook) = &self.launch_hook else {
            return;
        };
        let request = self
            .autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result("CONTINUE");
        match self.aws.call("CompleteLifecycleAction", request.send()).await {
            Ok(_) => info!(%hook, "ready: launch lifecycle action completed"),
            Err(e) => debug!(error = %e, %hook, "no launch lifecycle action to complete"),
        }
    }

    /// Whether the group keeps (or is putting) this instance in its warm pool, as the instance
    /// metadata says; unknown (off EC2, or the metadata unreadable) counts as not.
    async fn in_warm_pool(&self) -> bool {
        let Some(imds) = &self.imds else {
            return false;
        };
        match imds.target_lifecycle_state().await {
            Ok(target) => target.is_some_and(|t| t.starts_with("Warmed:")),
            Err(e) => {
                debug!(error = %e, "cannot read the lifecycle state");
                false
            }
        }
    }

    /// The status of `instance_id` in whichever of the app tier's groups launched it (an
    /// instance in the warm pool is not listed yet: it belongs to `fallback`, the group that has
    /// the pool).
    pub async fn of_instance(aws: &Aws, instance_id: &str, fallback: &str) -> PortResult<Self> {
        let autoscaling = aws_sdk_autoscaling::Client::new(&aws.sdk);
        let request = autoscaling.describe_auto_scaling_instances().instance_ids(instance_id);
        let out = aws.call("DescribeAutoScalingInstances", request.send()).await?;
        let group = out
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.auto_scaling_group_name())
            .unwrap_or(fallback);
        Ok(Self::new(aws, group, instance_id))
    }
}

#[async_trait]
impl InstanceStatus for AsgInstanceStatus {
    async fn report(&self, state: InstanceState, busy: bool) -> PortResult<()> {
        // Readiness is the group's lifecycle state; only busyness is ours to report.
        let protect = busy && state == InstanceState::Running;
        if state != InstanceState::Running && self.in_warm_pool().await {
            // AWS refuses SetInstanceProtection on an instance in a warm pool (API reference),
            // and there is nothing to protect there: the group's scale-in does not reach it.
            // Refused, a worker initialised for the pool would never load its model.
            debug!(?state, "in the warm pool: no scale-in protection to set");
            return Ok(());
        }
        let request = self
            .autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(&self.group)
            .instance_ids(&self.instance_id)
            .protected_from_scale_in(protect);
        self.aws.call("SetInstanceProtection", request.send()).await?;
        Ok(())
    }

    async fn until_in_service(&self) -> PortResult<()> {
        let Some(imds) = &self.imds else {
            return Ok(());
        };
        let mut told = None;
        loop {
            match imds.target_lifecycle_state().await {
                Ok(Some(target)) => {
                    // Called with the model loaded: each move the group makes (into the pool,
                    // out of it into service) waits for this instance once.
                    if told.as_ref() != Some(&target) {
                        self.complete_launch().await;
                        if target != "InService" {
                            info!(%target, "waiting in the warm pool until put in service");
                        }
                        told = Some(target.clone());
                    }
                    if target == "InService" {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => warn!(error = %e, "cannot read the lifecycle state; retrying"),
            }
            // Stopped or hibernated meanwhile, this resumes where it was.
            tokio::time::sleep(WARM_POOL_POLL).await;
        }
    }

    async fn in_service(&self) -> PortResult<bool> {
        match &self.imds {
            Some(imds) => Ok(imds.target_lifecycle_state().await?.is_none_or(|t| t == "InService")),
            None => Ok(true),
        }
    }

    async fn reclaim_at(&self) -> PortResult<Option<SystemTime>> {
        match &self.imds {
            Some(imds) => imds.spot_reclaim_at().await,
            None => Ok(None),
        }
    }

    async fn started(&self) -> PortResult<()> {
        match &self.starts {
            Some(starts) => starts.record(&self.instance_id, None).await,
            None => Ok(()),
        }
    }

    async fn failed_to_start(&self, reason: &str) -> PortResult<()> {
        match &self.starts {
            Some(starts) => starts.record(&self.instance_id, Some(reason)).await,
            None => Ok(()),
        }
    }
}

/// How often an instance waiting in the warm pool asks whether it is in service.
const WARM_POOL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The status of instance i-0123 of `group`, reading the instance metadata from `imds`; its
    /// calls to AWS fail (no region).
    fn reading(imds: &crate::imds::fake::FakeImds, group: &str) -> AsgInstanceStatus {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let mut status = AsgInstanceStatus::new(&Aws::new(sdk, Default::default()), group, "i-0123");
        status.imds = Some(Imds::at(&imds.url));
        status
    }

    /// Found by reading AWS's API reference: "This operation cannot be called on instances in a
    /// warm pool" (SetInstanceProtection). A worker initialised for the warm pool reported its
    /// state first thing, was refused, and exited, so it never loaded its model nor completed the
    /// launch lifecycle action (moto takes the call). Here the API is unreachable (no region):
    /// a call made fails.
    #[tokio::test]
    async fn no_scale_in_protection_is_set_in_the_warm_pool() {
        use crate::imds::fake::FakeImds;

        const TARGET: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
        let imds = FakeImds::start().await;
        let status = reading(&imds, "imgrec-app-tier");
        for target in ["Warmed:Hibernated", "Warmed:Stopped", "Warmed:Running"] {
            imds.set(TARGET, target);
            for state in [InstanceState::Pending, InstanceState::Stopping] {
                status.report(state, false).await.unwrap();
            }
        }
        imds.set(TARGET, "InService");
        status
            .report(InstanceState::Pending, false)
            .await
            .expect_err("in service, the call is made");
        // Serving is only ever reported in service; the call is made whatever the metadata says.
        imds.set(TARGET, "Warmed:Hibernated");
        status
            .report(InstanceState::Running, true)
            .await
            .expect_err("the call is made");
    }

    /// The lifecycle as an instance reads it from its instance metadata: in service until the
    /// group moves it on (to its warm pool), waiting until it is put back; outside a group (no
    /// state at all) always in service.
    #[tokio::test]
    async fn an_instance_follows_its_target_lifecycle_state() {
        use std::sync::Arc;

        use crate::imds::fake::FakeImds;

        const TARGET: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
        let imds = FakeImds::start().await;
        let status = Arc::new(reading(&imds, "imgrec-app-tier"));
        assert!(status.in_service().await.unwrap(), "outside a group");
        imds.set(TARGET, "InService");
        assert!(status.in_service().await.unwrap());
        imds.set(TARGET, "Warmed:Hibernated");
        assert!(!status.in_service().await.unwrap(), "moved back to the warm pool");

        let waiting = tokio::spawn({
            let status = status.clone();
            async move { status.until_in_service().await }
        });
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!waiting.is_finished(), "still in the pool");
        imds.set(TARGET, "InService");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("put back in service")
            .unwrap()
            .unwrap();
    }

    /// A Spot interruption notice, as the instance metadata gives it: none until EC2 sends one.
    #[tokio::test]
    async fn a_spot_notice_is_read_from_instance_metadata() {
        use crate::imds::fake::FakeImds;

        let imds = FakeImds::start().await;
        let status = reading(&imds, "imgrec-app-tier-spot");
        assert_eq!(status.reclaim_at().await.unwrap(), None);
        imds.set(
            "/latest/meta-data/spot/instance-action",
            r#"{"action": "terminate", "time": "2026-12-04T08:22:00Z"}"#,
        );
        let at = status.reclaim_at().await.unwrap().expect("a notice");
        assert_eq!(
            at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_372_520
        );
    }
}
