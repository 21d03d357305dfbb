//! AWS adapters: S3 buckets, SQS queues, an Auto Scaling group as the fleet, CloudWatch metrics;
//! and secrets from SSM Parameter Store.
//! Credentials come from the SDK's default chain only; an endpoint override points every client at
//! a local AWS-compatible server (moto) for tests and `make run-aws-emulated`.

pub mod bootstrap;
mod call;
mod fleet;
mod imds;
mod instance_status;
mod lease;
mod metrics;
mod s3;
mod sqs;
mod ssm;
mod starts;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub use call::{Aws, AwsError};
pub use fleet::AsgFleet;
pub use imds::Imds;
pub use instance_status::AsgInstanceStatus;
pub use lease::S3Lease;
pub use metrics::CloudWatchSink;
pub use s3::S3ObjectStore;
pub use sqs::{SqsQueue, SqsResponseQueues};
pub use ssm::secure_parameter;
pub use starts::StartRecords;

use imgrec_domain::ports::ApiCalls;

/// Where the SDK clients connect and how hard they retry.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Unset: the SDK's default chain.
    pub region: Option<String>,
    /// An AWS-compatible server instead of AWS (moto).
    pub url: Option<String>,
    pub max_attempts: u32,
}

/// Shared SDK configuration: region, optional endpoint, retries with exponential backoff and
/// jitter on throttling and transient errors (the SDK's standard mode), bounded operation time.
pub async fn sdk_config(endpoint: &Endpoint) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(endpoint.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // Long polls take up to 20 s.
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = endpoint.region.as_deref().filter(|r| !r.is_empty()) {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint.url.as_deref().filter(|e| !e.is_empty()) {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

impl Aws {
    /// The SDK configured for `endpoint`, counting calls into `calls`.
    pub async fn connect(endpoint: &Endpoint, calls: ApiCalls) -> Self {
        Self::new(sdk_config(endpoint).await, calls)
    }
}
