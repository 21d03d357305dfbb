//! Creates the buckets, queues (with the dead-letter redrive) and Auto Scaling group on an
//! AWS-compatible endpoint, the way Terraform does on AWS. Used by the tests and by
//! `make run-aws-emulated`; never against real AWS (Terraform owns those resources).

use anyhow::{ensure, Context};
use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::Aws;

pub struct Resources<'a> {
    pub buckets: &'a [&'a str],
    pub requests_queue: &'a str,
    pub dead_letter_queue: &'a str,
    pub other_queues: &'a [&'a str],
    pub max_receives: u32,
    /// Seconds a received request stays invisible (the queue's default).
    pub visibility_timeout_s: u64,
    /// `(name, max size)` of the app tier's Auto Scaling group, if one is wanted.
    pub group: Option<(&'a str, usize)>,
}

pub async fn create(aws: &Aws, r: &Resources<'_>) -> anyhow::Result<()> {
    ensure!(
        aws.sdk.endpoint_url().is_some(),
        "bootstrap only creates resources on an emulated endpoint (aws.endpoint_url)"
    );
    for bucket in r.buckets {
        create_bucket(aws, bucket).await?;
    }
    create_queues(aws, r).await?;
    if let Some((group, max_size)) = r.group {
        create_group(aws, group, max_size).await?;
    }
    Ok(())
}

/// A versioned bucket, as Terraform makes them.
async fn create_bucket(aws: &Aws, bucket: &str) -> anyhow::Result<()> {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws.sdk)
            .force_path_style(true)
            .build(),
    );
    aws.call("CreateBucket", s3.create_bucket().bucket(bucket).send())
        .await
        .map_err(|e| e.on(bucket))?;
    let versioning = VersioningConfiguration::builder()
        .status(BucketVersioningStatus::Enabled)
        .build();
    let request = s3
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(versioning);
    aws.call("PutBucketVersioning", request.send())
        .await
        .map_err(|e| e.on(bucket))?;
    Ok(())
}

/// The dead-letter queue first: the requests queue's redrive policy names its ARN.
async fn create_queues(aws: &Aws, r: &Resources<'_>) -> anyhow::Result<()> {
    let sqs = aws_sdk_sqs::Client::new(&aws.sdk);
    let visibility = r.visibility_timeout_s.to_string();
    let create_queue = |name: &str, redrive: Option<String>| {
        let mut req = sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::VisibilityTimeout, visibility.clone())
            .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "20");
        if let Some(policy) = redrive {
            req = req.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        aws.call("CreateQueue", req.send())
    };
    let dlq = create_queue(r.dead_letter_queue, None)
        .await
        .map_err(|e| e.on(r.dead_letter_queue))?;
    let dlq_url = dlq.queue_url().context("no dead-letter queue URL")?;
    let request = sqs
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::QueueArn);
    let arn = aws
        .call("GetQueueAttributes", request.send())
        .await?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("no dead-letter queue ARN")?;
    let redrive = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": r.max_receives.to_string() });
    create_queue(r.requests_queue, Some(redrive.to_string()))
        .await
        .map_err(|e| e.on(r.requests_queue))?;
    for name in r.other_queues {
        create_queue(name, None).await.map_err(|e| e.on(name))?;
    }
    Ok(())
}

/// An empty Auto Scaling group on a launch template of whatever image the endpoint offers.
pub async fn create_group(aws: &Aws, group: &str, max_size: usize) -> anyhow::Result<()> {
    let ec2 = aws_sdk_ec2::Client::new(&aws.sdk);
    let image = aws
        .call("DescribeImages", ec2.describe_images().owners("amazon").send())
        .await?
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
        .context("the endpoint offers no machine image")?;
    let template = format!("{group}-template");
    let data = RequestLaunchTemplateData::builder()
        .image_id(image)
        .instance_type("t3.micro".into())
        .build();
    let request = ec2
        .create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(data);
    aws.call("CreateLaunchTemplate", request.send()).await?;
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws.sdk);
    let request = autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(group)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name(&template)
                .version("$Latest")
                .build(),
        )
        .min_size(0)
        .max_size(max_size as i32)
        .desired_capacity(0)
        .availability_zones(format!("{}a", aws.sdk.region().map_or("us-east-1", |r| r.as_ref())));
    aws.call("CreateAutoScalingGroup", request.send())
        .await
        .map_err(|e| e.on(group))?;
    Ok(())
}
