//! AWS adapters: S3 buckets, SQS queues, an Auto Scaling group as the fleet, CloudWatch metrics.
//! Credentials come from the SDK's default chain only; an endpoint override points every client at
//! a local AWS-compatible server (moto) for tests and `make run-aws-emulated`.

pub mod bootstrap;
mod fleet;
mod lease;
mod metrics;
mod s3;
mod sqs;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub use fleet::{AsgFleet, AsgInstanceStatus};
pub use lease::S3Lease;
pub use metrics::CloudWatchSink;
pub use s3::S3ObjectStore;
pub use sqs::{SqsQueue, SqsResponseQueues};

use imgrec_domain::config::AwsSettings;

static CALLS: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Counts one SDK call of `operation` made by this process (shown on `/metrics` and logged by
/// workers at exit), so that calls per classified image can be measured.
pub(crate) fn count(operation: &'static str) {
    *CALLS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(operation)
        .or_default() += 1;
}

/// SDK calls made by this process so far, by operation.
pub fn calls() -> std::collections::BTreeMap<&'static str, u64> {
    CALLS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Shared SDK configuration: region, optional endpoint, retries with exponential backoff and
/// jitter on throttling and transient errors (the SDK's standard mode), bounded operation time.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // Long polls take up to 20 s.
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = settings.region.as_deref().filter(|r| !r.is_empty()) {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(endpoint) = settings.endpoint_url.as_deref().filter(|e| !e.is_empty()) {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Turns an SDK error into one readable line (the SDK's Display says only "service error").
pub(crate) fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => {
            format!(
                "{}: {}",
                service.code().unwrap_or("error"),
                service.message().unwrap_or("no message")
            )
        }
        None => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(e)),
    }
}
