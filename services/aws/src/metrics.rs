//! The `MetricsSink` port on CloudWatch: the scaler's backlog and fleet size, each tick, for the
//! dashboard and the alarms Terraform sets.

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::Aws;
use imgrec_domain::ports::{MetricsSink, ScalingMetrics};

/// Publishes the scaler's view to CloudWatch, one PutMetricData call per tick, in one namespace
/// with the group's name as the dimension (what the dashboard and alarms select on).
pub struct CloudWatchSink {
    aws: Aws,
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    group: String,
}

impl CloudWatchSink {
    pub fn new(aws: &Aws, namespace: &str, group: &str) -> Self {
        Self {
            aws: aws.clone(),
            client: aws_sdk_cloudwatch::Client::new(&aws.sdk),
            namespace: namespace.to_owned(),
            group: group.to_owned(),
        }
    }
}

#[async_trait]
impl MetricsSink for CloudWatchSink {
    async fn publish(&self, m: &ScalingMetrics) -> anyhow::Result<()> {
        let dimension = Dimension::builder()
            .name("AutoScalingGroupName")
            .value(&self.group)
            .build();
        let datum = |name: &str, value: f64| {
            MetricDatum::builder()
                .metric_name(name)
                .dimensions(dimension.clone())
                .value(value)
                .unit(StandardUnit::Count)
                .build()
        };
        let request = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .metric_data(datum("Backlog", m.backlog as f64))
            .metric_data(datum("BacklogPerInstance", m.backlog_per_instance))
            .metric_data(datum("DesiredCapacity", m.desired as f64))
            .metric_data(datum("InServiceInstances", m.running as f64));
        self.aws.call("PutMetricData", request.send()).await?;
        Ok(())
    }
}
