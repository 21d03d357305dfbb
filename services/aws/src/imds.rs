//! What an EC2 instance learns about itself from the instance metadata service (IMDSv2): where
//! its Auto Scaling group wants it (a warm pool, or in service), and a Spot interruption notice.

use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use aws_config::imds::client::error::ImdsError;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use imgrec_domain::ports::{PortError, PortResult};

pub struct Imds {
    client: aws_config::imds::Client,
}

impl Default for Imds {
    fn default() -> Self {
        Self {
            client: aws_config::imds::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .read_timeout(Duration::from_secs(2))
                .build(),
        }
    }
}

impl Imds {
    /// `path`'s value, or `None` where the service has none (404).
    async fn get(&self, path: &str) -> PortResult<Option<String>> {
        match self.client.get(path).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(PortError::Transient(anyhow!("instance metadata {path}: {e}"))),
        }
    }

    /// "InService", "Warmed:Stopped", "Warmed:Hibernated", ...; `None` outside a group.
    pub async fn target_lifecycle_state(&self) -> PortResult<Option<String>> {
        self.get("/latest/meta-data/autoscaling/target-lifecycle-state").await
    }

    /// When EC2 takes this Spot instance back, once it has sent the two-minute notice.
    pub async fn spot_reclaim_at(&self) -> PortResult<Option<SystemTime>> {
        let Some(notice) = self.get("/latest/meta-data/spot/instance-action").await? else {
            return Ok(None);
        };
        reclaim_time(&notice).map(Some)
    }
}

/// The `time` of an instance-action notice: `{"action": "terminate", "time": "2026-12-04T08:22:00Z"}`.
fn reclaim_time(notice: &str) -> PortResult<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Notice {
        time: String,
    }
    let bad = |e: &dyn std::fmt::Display| PortError::Permanent(anyhow!("unreadable Spot notice {notice:?}: {e}"));
    let notice: Notice = serde_json::from_str(notice).map_err(|e| bad(&e))?;
    let at = DateTime::from_str(&notice.time, Format::DateTime).map_err(|e| bad(&e))?;
    SystemTime::try_from(at).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_says_when_the_instance_goes() {
        let at = reclaim_time(r#"{"action": "terminate", "time": "2026-12-04T08:22:00Z"}"#).unwrap();
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_796_372_520);
        assert!(reclaim_time(r#"{"action": "stop"}"#).is_err());
        assert!(reclaim_time("not json").is_err());
    }
}
