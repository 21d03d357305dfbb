//! Wiring of the AWS adapters (the `aws` feature).

use std::sync::Arc;

use anyhow::{anyhow, Context};
use imgrec_aws::{
    AsgFleet, AsgInstanceStatus, Aws, CloudWatchSink, Endpoint, S3Lease, S3ObjectStore, SqsQueue, SqsResponseQueues,
    StartRecords,
};
use imgrec_domain::ports::{Fleet, InstanceStatus, Lease, MetricsSink};
use tokio::sync::OnceCell;

use super::{Adapters, Connection};
use crate::settings::Settings;

/// The SDK configuration a process's adapters share, loaded by the first one that needs it.
#[derive(Default)]
pub struct Clients(OnceCell<Aws>);

async fn aws<'a>(settings: &Settings, connection: &'a Connection) -> &'a Aws {
    connection
        .clients
        .0
        .get_or_init(|| async {
            let s = &settings.aws;
            let endpoint = Endpoint {
                region: s.region.clone(),
                url: s.endpoint_url.clone(),
                max_attempts: s.max_attempts,
            };
            Aws::connect(&endpoint, connection.calls.clone()).await
        })
        .await
}

pub async fn adapters(settings: &Settings, connection: Connection) -> anyhow::Result<Adapters> {
    let q = &settings.queues;
    let aws = aws(settings, &connection).await;
    let store = S3ObjectStore::new(aws);
    store.check_bucket(&settings.buckets.input).await?;
    store.check_versioning(&settings.buckets.input).await?;
    store.check_bucket(&settings.buckets.output).await?;
    Ok(Adapters {
        store: Arc::new(store),
        requests: Arc::new(SqsQueue::open(aws, &q.requests).await?),
        response_queues: Arc::new(SqsResponseQueues::new(aws)),
        dead_letter: Arc::new(SqsQueue::open(aws, &q.dead_letter).await?),
        connection: connection.clone(),
    })
}

pub async fn fleet(settings: &Settings, connection: &Connection) -> anyhow::Result<Arc<dyn Fleet>> {
    let aws = aws(settings, connection).await;
    let fleet = AsgFleet::open(aws, &settings.aws.app_groups()).await?;
    Ok(Arc::new(fleet.with_start_records(start_records(aws, settings))))
}

pub async fn scaler_lease(
    settings: &Settings,
    holder: &str,
    connection: &Connection,
) -> anyhow::Result<Arc<dyn Lease>> {
    let aws = aws(settings, connection).await;
    let bucket = settings.aws.lease_bucket.as_ref().unwrap_or(&settings.buckets.input);
    Ok(Arc::new(S3Lease::new(aws, bucket, "scaler", holder)))
}

pub async fn metrics_sink(settings: &Settings, connection: &Connection) -> Option<Arc<dyn MetricsSink>> {
    let aws = aws(settings, connection).await;
    let s = &settings.aws;
    Some(Arc::new(CloudWatchSink::new(
        aws,
        &s.metric_namespace,
        &s.auto_scaling_group,
    )))
}

/// The text of the SSM parameter `name` (decrypted).
pub async fn secure_parameter(settings: &Settings, name: &str, connection: &Connection) -> anyhow::Result<String> {
    imgrec_aws::secure_parameter(aws(settings, connection).await, name).await
}

/// On EC2 an instance is known by its id (its name is a tag the scaler's fleet sets).
pub async fn instance_status(
    settings: &Settings,
    _name: &str,
    connection: &Connection,
) -> anyhow::Result<Arc<dyn InstanceStatus>> {
    let aws = aws(settings, connection).await;
    // Configured: not on EC2 (an emulated endpoint), so no instance metadata either.
    let (id, on_ec2) = match settings.aws.instance_id.clone().filter(|i| !i.is_empty()) {
        Some(id) => (id, false),
        None => (own_instance_id().await?, true),
    };
    let group = &settings.aws.auto_scaling_group;
    let status = if settings.aws.app_groups().len() > 1 {
        AsgInstanceStatus::of_instance(aws, &id, group).await?
    } else {
        AsgInstanceStatus::new(aws, group, &id)
    };
    let status = status.with_start_records(start_records(aws, settings));
    Ok(Arc::new(if on_ec2 {
        status.on_ec2(settings.aws.launch_hook.as_deref())
    } else {
        status
    }))
}

/// Where workers say whether they could start: with the records in the output bucket, which the
/// app tier writes to and the web tier (with its scaler) reads.
fn start_records(aws: &Aws, settings: &Settings) -> StartRecords {
    StartRecords::new(aws, &settings.buckets.output)
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
