//! All settings in one typed struct, loaded once: built-in defaults (`config/default.toml`), then
//! an optional file named by `IMGREC_CONFIG`, then `IMGREC__SECTION__KEY` environment variables,
//! then `PORT` and `DATA_DIR`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::policy::{PolicyConfig, PolicyKind, ScalingPolicy};

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// How a worker runs its model.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    /// `models/<name>/`: model.onnx, labels.json, manifest.json.
    pub model_dir: PathBuf,
    /// ONNX Runtime intra-op threads per session. One per worker process is best when workers
    /// share cores: ORT's spinning pool loses badly under contention.
    pub threads: usize,
    /// Explicit `libonnxruntime.so` path; `ORT_DYLIB_PATH` overrides it.
    #[serde(default)]
    pub onnxruntime_lib: Option<PathBuf>,
}

/// Bounds on decoded images, checked from the header before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    pub max_side: usize,
    pub max_pixels: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 40_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Local,
    Aws,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub buckets: Buckets,
    pub queues: Queues,
    pub web: WebSettings,
    pub app_tier: AppTierSettings,
    pub scaler: ScalerSettings,
    pub fleet: FleetSettings,
    pub aws: AwsSettings,
    pub inference: InferenceSettings,
    pub image_limits: ImageLimits,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    pub backend: Backend,
    pub heartbeat_timeout_s: u64,
    pub worker_memory_max_bytes: u64,
}

impl FleetSettings {
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_s.max(1))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub auto_scaling_group: String,
    pub metric_namespace: String,
    pub instance_id: Option<String>,
    pub max_attempts: u32,
    /// The bucket of the scaler lease object; unset: the input bucket, under `_imgrec/leases/`
    /// (no upload can land there).
    #[serde(default)]
    pub lease_bucket: Option<String>,
}

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

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppTierSettings {
    pub batch_size: usize,
    pub max_batch_pixels: usize,
    pub poll_wait_ms: u64,
    pub heartbeat_ms: u64,
    pub stall_timeout_s: u64,
}

impl AppTierSettings {
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

impl Settings {
    /// The defaults alone (config/default.toml), no file and no environment: for tests that set
    /// fields themselves.
    pub fn defaults() -> anyhow::Result<Self> {
        Self::load_from(
            None,
            Environment::with_prefix("IMGREC").source(Some(Default::default())),
            None,
            None,
        )
    }

    /// Loads from the process environment.
    pub fn load() -> anyhow::Result<Self> {
        let file = std::env::var_os("IMGREC_CONFIG");
        let vars = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self::load_from(
            file.as_deref().map(Path::new),
            Environment::with_prefix("IMGREC"),
            vars("PORT"),
            vars("DATA_DIR"),
        )
    }

    fn load_from(
        file: Option<&Path>,
        env: Environment,
        port: Option<String>,
        data_dir: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        let settings: Settings = builder
            .add_source(env.prefix_separator("__").separator("__").try_parsing(true))
            .set_override_option("web.port", port)?
            .set_override_option("data_dir", data_dir)?
            .build()
            .and_then(Config::try_deserialize)
            .context("invalid configuration")?;
        settings.scaler.policy_config()?;
        settings.check_timeouts()?;
        anyhow::ensure!(
            settings.app_tier.batch_size >= 1,
            "app_tier.batch_size must be at least 1"
        );
        Ok(settings)
    }

    /// Timeouts that only work together: a request that fails on every receive must reach the
    /// dead-letter queue (and its client its 500) before the client's own wait runs out, and a
    /// live worker must beat more often than the fleet gives up on it.
    fn check_timeouts(&self) -> anyhow::Result<()> {
        let q = &self.queues;
        anyhow::ensure!(q.max_receives >= 1, "queues.max_receives must be at least 1");
        // Each failed receive costs up to one visibility timeout; then one long poll of the
        // dead-letter watcher (2 s) and slack for the worker's stall detection.
        let to_dead_letter = u64::from(q.max_receives) * q.visibility_timeout_s + 10;
        anyhow::ensure!(
            to_dead_letter < self.web.response_timeout_s,
            "queues.max_receives x queues.visibility_timeout_s ({} x {} s, plus 10 s) must be shorter than \
             web.response_timeout_s ({} s), so that a request that keeps failing is answered before its client gives up",
            q.max_receives,
            q.visibility_timeout_s,
            self.web.response_timeout_s
        );
        anyhow::ensure!(
            self.app_tier.heartbeat() * 2 <= self.fleet.heartbeat_timeout(),
            "app_tier.heartbeat_ms ({}) must be at most half of fleet.heartbeat_timeout_s ({} s)",
            self.app_tier.heartbeat_ms,
            self.fleet.heartbeat_timeout_s
        );
        // The holder renews at a tick once a third of the lease has passed: it must come in time.
        let ttl = Duration::try_from_secs_f64(self.scaler.lease_ttl_s).ok();
        anyhow::ensure!(
            ttl.is_some_and(|ttl| self.scaler.tick() * 3 <= ttl * 2),
            "scaler.lease_ttl_s ({}) must be at least 1.5 x scaler.tick_ms ({} ms)",
            self.scaler.lease_ttl_s,
            self.scaler.tick_ms
        );
        anyhow::ensure!(
            self.app_tier.max_batch_pixels >= 1,
            "app_tier.max_batch_pixels must be at least 1"
        );
        Ok(())
    }

    /// The local stack's shared database (queues and instance status).
    pub fn queue_db(&self) -> PathBuf {
        self.data_dir.join("queue.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Environment::with_prefix("IMGREC").source(Some(map))
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, env(&[]), None, None).unwrap();
        assert_eq!(s.inference.threads, 1);
        assert_eq!(s.inference.model_dir, Path::new("models/efficientnet-lite0"));
        assert_eq!(s.image_limits, ImageLimits::default());
        assert_eq!(
            (s.buckets.input.as_str(), s.buckets.output.as_str()),
            ("input-bucket", "output-bucket")
        );
        assert_eq!((s.scaler.min, s.scaler.max), (0, 20));
        assert_eq!(s.web.port, 8000);
        assert_eq!(s.data_dir, Path::new("data"));
    }

    #[test]
    fn response_queues_are_named_after_their_web_tier() {
        let s = Settings::load_from(None, env(&[]), None, None).unwrap();
        let q = &s.queues;
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

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_from(
            None,
            env(&[("IMGREC__INFERENCE__THREADS", "3"), ("IMGREC__SCALER__MAX", "4")]),
            Some("9000".into()),
            Some("/tmp/d".into()),
        )
        .unwrap();
        assert_eq!(s.inference.threads, 3);
        assert_eq!(s.scaler.max, 4);
        assert_eq!(s.web.port, 9000);
        assert_eq!(s.data_dir, Path::new("/tmp/d"));
    }

    #[test]
    fn inconsistent_values_are_errors() {
        assert!(Settings::load_from(
            None,
            env(&[("IMGREC__SCALER__MIN", "5"), ("IMGREC__SCALER__MAX", "2")]),
            None,
            None
        )
        .is_err());
        assert!(Settings::load_from(None, env(&[]), Some("notaport".into()), None).is_err());
    }

    #[test]
    fn bad_scaling_settings_are_errors_naming_the_key() {
        for (key, value, named) in [
            ("IMGREC__SCALER__POLICY", "fastest", "policy"),
            ("IMGREC__SCALER__SERVICE_TIME_S", "0", "service_time_s"),
            ("IMGREC__SCALER__TARGET_LATENCY_S", "0", "target_latency_s"),
            ("IMGREC__SCALER__BOOT_TIME_S", "-1", "boot_time_s"),
            ("IMGREC__SCALER__SCALE_IN_AFTER_S", "NaN", "scale_in_after_s"),
            ("IMGREC__SCALER__TARGET_LATENCY_S", "1e300", "target_latency_s"),
        ] {
            let err = Settings::load_from(None, env(&[(key, value)]), None, None).expect_err(key);
            assert!(format!("{err:#}").contains(named), "{key}={value}: {err:#}");
        }
    }

    #[test]
    fn file_overrides_defaults_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[image_limits]\nmax_side = 100\n").unwrap();
        assert_eq!(
            Settings::load_from(Some(&good), env(&[]), None, None)
                .unwrap()
                .image_limits
                .max_side,
            100
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[inference]\nthread = 2\n").unwrap();
        assert!(Settings::load_from(Some(&bad), env(&[]), None, None).is_err());
    }
}
