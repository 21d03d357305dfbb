//! Wiring of the AWS adapters (the `aws` feature).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::Ports;
use imgrec_aws::{AsgFleet, AsgInstanceStatus, CloudWatchSink, S3Lease, S3ObjectStore, SqsQueue, SqsResponseQueues};
use imgrec_domain::config::Settings;
use imgrec_domain::ports::{Fleet, InstanceStatus, Lease, MetricsSink};

pub async fn ports(settings: &Settings) -> anyhow::Result<Ports> {
    let q = &settings.queues;
    let sdk = imgrec_aws::sdk_config(&settings.aws).await;
    let store = S3ObjectStore::new(&sdk);
    store.check_bucket(&settings.buckets.input).await?;
    store.check_versioning(&settings.buckets.input).await?;
    store.check_bucket(&settings.buckets.output).await?;
    Ok(Ports {
        store: Arc::new(store),
        requests: Arc::new(SqsQueue::open(&sdk, &q.requests).await?),
        response_queues: Arc::new(SqsResponseQueues::new(&sdk)),
        dead_letter: Arc::new(SqsQueue::open(&sdk, &q.dead_letter).await?),
    })
}

pub async fn fleet(settings: &Settings) -> anyhow::Result<Arc<dyn Fleet>> {
    let sdk = imgrec_aws::sdk_config(&settings.aws).await;
    Ok(Arc::new(AsgFleet::open(&sdk, &settings.aws.auto_scaling_group).await?))
}

pub async fn scaler_lease(settings: &Settings, holder: &str) -> anyhow::Result<Arc<dyn Lease>> {
    let sdk = imgrec_aws::sdk_config(&settings.aws).await;
    let bucket = settings.aws.lease_bucket.as_ref().unwrap_or(&settings.buckets.input);
    Ok(Arc::new(S3Lease::new(&sdk, bucket, "scaler", holder)))
}

pub async fn metrics_sink(settings: &Settings) -> Option<Arc<dyn MetricsSink>> {
    let sdk = imgrec_aws::sdk_config(&settings.aws).await;
    let aws = &settings.aws;
    Some(Arc::new(CloudWatchSink::new(
        &sdk,
        &aws.metric_namespace,
        &aws.auto_scaling_group,
    )))
}

/// On EC2 an instance is known by its id (its name is a tag the scaler's fleet sets).
pub async fn instance_status(settings: &Settings, _name: &str) -> anyhow::Result<Arc<dyn InstanceStatus>> {
    let sdk = imgrec_aws::sdk_config(&settings.aws).await;
    let id = match settings.aws.instance_id.clone().filter(|i| !i.is_empty()) {
        Some(id) => id,
        None => own_instance_id().await?,
    };
    Ok(Arc::new(AsgInstanceStatus::new(
        &sdk,
        &settings.aws.auto_scaling_group,
        &id,
    )))
}

/// This EC2 instance's id, from the instance metadata service (IMDSv2, as Terraform requires).
async fn own_instance_id() -> anyhow::Result<String> {
    let imds = aws_config::imds::Client::builder().build();
    let id = imds
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| anyhow!("cannot read the instance id from IMDS: {e}"))
        .context("set aws.instance_id when not running on EC2")?;
    Ok(id.as_ref().to_owned())
}

pub fn calls() -> BTreeMap<&'static str, u64> {
    imgrec_aws::calls()
}
