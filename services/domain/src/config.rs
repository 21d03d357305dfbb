//! The settings sections of the domain's own components (buckets, queues, the web tier, the app
//! tier, the scaler): plain data. The whole configuration, which embeds them beside the backend's
//! sections, is `imgrec_runtime::settings::Settings`.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::policy::{PolicyConfig, PolicyKind, ScalingPolicy};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    pub input: String,
    pub output: String,
    /// Locally: how long each stored version stays readable by its id (`versions/`), as the AWS
    /// buckets' lifecycle keeps old versions.
    pub version_retention_s: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Queues {
    pub requests: String,
    pub responses: String,
    pub dead_letter: String,
    pub max_receives: u32,
    pub visibility_timeout_s: u64,
    /// Locally: how long a message is kept, by queue, as SQS's MessageRetentionPeriod (the same
    /// values as the Terraform queues).
    pub request_retention_s: u64,
    pub dead_letter_retention_s: u64,
    pub response_retention_s: u64,
}

impl Queues {
    /// The response queue of the web tier `web_tier` (`responses-web-instance1`).
    pub fn response_queue_of(&self, web_tier: &str) -> String {
        format!("{}-{web_tier}", self.responses)
    }

    /// Whether a request may ask for its answer in `name`: a web tier's response queue, or the
    /// shared one of older web tiers, never a request or dead-letter queue.
    pub fn is_response_queue(&self, name: &str) -> bool {
        name == self.responses
            || name
                .strip_prefix(&self.responses)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|web_tier| {
                    !web_tier.is_empty()
                        && web_tier
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    pub host: String,
    pub port: u16,
    pub max_upload_bytes: u64,
    pub response_timeout_s: u64,
    pub header_timeout_s: u64,
    pub body_timeout_s: u64,
    pub max_connections: usize,
    pub upload_buffer_bytes: u64,
    pub decode_budget_bytes: u64,
    pub drain_timeout_s: u64,
    pub run_scaler: bool,
    /// Without a scaler of its own, still watch the fleet, so that `/status` and `/dashboard`
    /// show it (on AWS the scaler is a service of its own beside the web tier).
    #[serde(default)]
    pub watch_fleet: bool,
    /// This web tier's name (`web-instanceK`). Unset: locally, the lowest name no running web
    /// tier on the same data folder holds; on AWS, Terraform sets it per instance.
    #[serde(default)]
    pub name: Option<String>,
    /// Refuse at once (503, `Retry-After`) an upload the pool at its cap cannot answer within
    /// `response_timeout_s`, instead of answering it 504 then.
    pub admission_control: bool,
    /// API keys: when any is set (here or in `api_keys_file`), an upload without a valid one is 401.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// A file of more keys, one a line: `name sha256-hex rate_per_s burst` (`#` starts a comment).
    #[serde(default)]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// An SSM parameter (SecureString) holding more keys, in `api_keys_file`'s format: read once
    /// at start (Terraform's `api_keys_parameter`).
    #[serde(default)]
    pub api_keys_parameter: Option<String>,
}

/// One client's key, stored as its SHA-256 (hex) so that the config holds no secret, with the
/// rate its uploads may come at (a token bucket: `burst` at once, refilled at `rate_per_s`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    pub sha256: String,
    pub rate_per_s: f64,
    pub burst: u32,
}

impl WebSettings {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s.max(1))
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_s.max(1))
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_s.max(1))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }
}

/// Jobs (`POST /jobs`) and idempotency keys: what the web tier accepts and how long it keeps
/// their records.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// How long jobs, their answers and idempotency keys are kept at least.
    pub retention_s: u64,
    /// Images one job may hold.
    pub max_images: usize,
    /// A job's whole body must arrive within this many seconds.
    pub body_timeout_s: u64,
    /// Deliveries of a job's callback tried at most, backing off from 1 s.
    pub callback_attempts: u32,
    /// Each callback delivery's timeout.
    pub callback_timeout_s: u64,
    /// A web tier holds a job's callback this long unless it renews it (a third of it in);
    /// another takes over one that lapsed (its holder died), looking this often.
    pub callback_lease_s: u64,
}

impl JobSettings {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_s)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_s.max(1))
    }

    pub fn callback_timeout(&self) -> Duration {
        Duration::from_secs(self.callback_timeout_s.max(1))
    }

    pub fn callback_lease(&self) -> Duration {
        Duration::from_secs(self.callback_lease_s.max(1))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppTierSettings {
    pub batch_size: usize,
    pub max_batch_pixels: usize,
    pub poll_wait_ms: u64,
    pub heartbeat_ms: u64,
    pub stall_timeout_s: u64,
    /// From a stop request (SIGTERM: a retirement, a Spot interruption) to giving back whatever
    /// is still held.
    pub drain_deadline_ms: u64,
}

impl AppTierSettings {
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_millis(self.drain_deadline_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_s.max(1))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalerSettings {
    pub policy: PolicyKind,
    pub min: usize,
    pub max: usize,
    pub target_latency_s: f64,
    pub service_time_s: f64,
    pub boot_time_s: f64,
    pub scale_in_after_s: f64,
    pub tick_ms: u64,
    pub lease_ttl_s: f64,
}

impl ScalerSettings {
    pub fn policy_config(&self) -> anyhow::Result<PolicyConfig> {
        let seconds = |value: f64, key: &str| {
            Duration::try_from_secs_f64(value).with_context(|| format!("scaler.{key} must be seconds, 0 or more"))
        };
        let config = PolicyConfig {
            min: self.min,
            max: self.max,
            target_latency: seconds(self.target_latency_s, "target_latency_s")?,
            service_time: seconds(self.service_time_s, "service_time_s")?,
            boot_time: seconds(self.boot_time_s, "boot_time_s")?,
            scale_in_after: seconds(self.scale_in_after_s, "scale_in_after_s")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The configured policy, ready to decide.
    pub fn policy(&self) -> anyhow::Result<Box<dyn ScalingPolicy>> {
        Ok(self.policy.build(self.policy_config()?))
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.max(10))
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.lease_ttl_s).unwrap_or(Duration::from_secs(3))
    }
}

impl Queues {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_s.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_queues_are_named_after_their_web_tier() {
        let q = Queues {
            requests: "requests".into(),
            responses: "responses".into(),
            dead_letter: "requests-dlq".into(),
            max_receives: 3,
            visibility_timeout_s: 5,
            request_retention_s: 1,
            dead_letter_retention_s: 1,
            response_retention_s: 1,
        };
        assert_eq!(q.response_queue_of("web-instance2"), "responses-web-instance2");
        assert!(q.is_response_queue("responses-web-instance2"));
        assert!(q.is_response_queue("responses"));
        for other in [
            "requests",
            "requests-dlq",
            "responses-",
            "responsesX",
            "responses-a/b",
            "",
        ] {
            assert!(!q.is_response_queue(other), "{other:?}");
        }
    }
}
