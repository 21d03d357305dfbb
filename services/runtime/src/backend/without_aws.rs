//! A build without the `aws` feature: configuring an AWS backend is a clear startup error.

use std::sync::Arc;

use imgrec_domain::ports::{Fleet, InstanceStatus, Lease, MetricsSink};

use super::{Adapters, Connection};
use crate::settings::Settings;

/// No clients to share.
#[derive(Default)]
pub struct Clients;

fn unsupported() -> anyhow::Error {
    anyhow::anyhow!(
        "this build has no AWS support: build with `--features aws` \
         (`make run-aws-emulated` and `make deploy` do)"
    )
}

pub async fn adapters(_: &Settings, _: Connection) -> anyhow::Result<Adapters> {
    Err(unsupported())
}

pub async fn fleet(_: &Settings, _: &Connection) -> anyhow::Result<Arc<dyn Fleet>> {
    Err(unsupported())
}

pub async fn scaler_lease(_: &Settings, _: &str, _: &Connection) -> anyhow::Result<Arc<dyn Lease>> {
    Err(unsupported())
}

pub async fn metrics_sink(_: &Settings, _: &Connection) -> Option<Arc<dyn MetricsSink>> {
    None
}

pub async fn instance_status(_: &Settings, _: &str, _: &Connection) -> anyhow::Result<Arc<dyn InstanceStatus>> {
    Err(unsupported())
}

pub async fn secure_parameter(_: &Settings, _: &str, _: &Connection) -> anyhow::Result<String> {
    Err(unsupported())
}
