//! All settings in one typed struct, loaded once: built-in defaults (`config/default.toml`), then
//! an optional file named by `IMGREC_CONFIG`, then `IMGREC__SECTION__KEY` environment variables,
//! then `PORT` and `DATA_DIR`.
//!
//! Each component owns its section's type (the domain's tiers and scaler, the classifier's
//! inference and image limits); this crate, the wiring, adds what only it knows: which backend
//! backs the ports, the local fleet's and the AWS adapters' sections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use imgrec_classifier::{ImageLimits, InferenceSettings};
use imgrec_domain::config::{AppTierSettings, Buckets, JobSettings, Queues, ScalerSettings, WebSettings};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// What backs the ports: `local` (folders, SQLite, processes) or `aws` (S3, SQS, an Auto Scaling
/// group).
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
    pub jobs: JobSettings,
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
    /// Model runs busy at once across the local fleet's workers: unset, one per core; 0, no
    /// limit. On EC2 each instance is a machine of its own and this does not apply.
    #[serde(default)]
    pub inference_slots: Option<usize>,
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
    /// The app tier's On-Demand group (with the warm pool, if any): it takes launches first.
    pub auto_scaling_group: String,
    /// The Spot group (a mixed instances policy) that takes the launches beyond the first's
    /// MaxSize; unset: one group.
    #[serde(default)]
    pub spot_auto_scaling_group: Option<String>,
    pub metric_namespace: String,
    pub instance_id: Option<String>,
    pub max_attempts: u32,
    /// The bucket of the scaler lease object; unset: the input bucket, under `_imgrec/leases/`
    /// (no upload can land there).
    #[serde(default)]
    pub lease_bucket: Option<String>,
    /// The On-Demand group's launch lifecycle hook, which a worker completes once its model is
    /// loaded: an instance for the warm pool is stopped or hibernated only then, and one put in
    /// service serves at once. Unset: no hook.
    #[serde(default)]
    pub launch_hook: Option<String>,
}

impl AwsSettings {
    /// The app tier's groups, in the order they take launches.
    pub fn app_groups(&self) -> Vec<&str> {
        std::iter::once(self.auto_scaling_group.as_str())
            .chain(self.spot_auto_scaling_group.as_deref().filter(|g| !g.is_empty()))
            .collect()
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
        settings.check_ranges()?;
        settings.check_timeouts()?;
        let jobs = &settings.jobs;
        anyhow::ensure!(
            jobs.max_images >= 1 && jobs.callback_attempts >= 1,
            "jobs.max_images and jobs.callback_attempts must be at least 1"
        );
        // An idempotency key must outlive its client's retries, which come after a response timeout.
        anyhow::ensure!(
            jobs.retention_s >= settings.web.response_timeout_s,
            "jobs.retention_s ({} s) must be at least web.response_timeout_s ({} s)",
            jobs.retention_s,
            settings.web.response_timeout_s
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
        let to_dead_letter = (u64::from(q.max_receives).saturating_mul(q.visibility_timeout_s)).saturating_add(10);
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
        Ok(())
    }

    /// Values outside which a setting does harm instead of tuning something: below a floor (each
    /// accepted 0 before: a worker polling with no wait spun a core while idle), or a duration
    /// past what a clock can add.
    fn check_ranges(&self) -> anyhow::Result<()> {
        let (app, web) = (&self.app_tier, &self.web);
        let minimums = [
            (
                "app_tier.batch_size",
                app.batch_size as u64,
                1,
                "a batch holds at least one request",
            ),
            (
                "app_tier.max_batch_pixels",
                app.max_batch_pixels as u64,
                1,
                "a model run holds at least one image",
            ),
            (
                "app_tier.poll_wait_ms",
                app.poll_wait_ms,
                100,
                "a receive that returns at once spins a core while idle (on SQS, a paid empty receive each time)",
            ),
            (
                "app_tier.heartbeat_ms",
                app.heartbeat_ms,
                100,
                "each beat is a write to the fleet's table",
            ),
            (
                "app_tier.stall_timeout_s",
                app.stall_timeout_s,
                1,
                "every batch would count as a stall",
            ),
            (
                "queues.visibility_timeout_s",
                self.queues.visibility_timeout_s,
                1,
                "a received request would go to the next receive at once, and be classified twice",
            ),
            (
                "scaler.tick_ms",
                self.scaler.tick_ms,
                10,
                "the scaler would look at the queue without pause",
            ),
            (
                "web.max_upload_bytes",
                web.max_upload_bytes,
                1,
                "every upload would be refused",
            ),
            (
                "web.max_connections",
                web.max_connections as u64,
                1,
                "no client could connect",
            ),
            (
                "image_limits.max_native_pixels",
                self.image_limits.max_native_pixels as u64,
                1,
                "a model that runs at the image's own size would take no image",
            ),
            (
                "inference.threads",
                self.inference.threads as u64,
                1,
                "a model runs on at least one thread",
            ),
        ];
        for (key, value, min, why) in minimums {
            anyhow::ensure!(value >= min, "{key} ({value}) must be at least {min}: {why}");
        }
        // A deadline is now plus a duration: past this, the sum overflows a clock (a header
        // timeout of u64::MAX seconds panicked in every connection's task).
        let (q, jobs) = (&self.queues, &self.jobs);
        let durations_s = [
            ("buckets.version_retention_s", self.buckets.version_retention_s),
            ("queues.visibility_timeout_s", q.visibility_timeout_s),
            ("queues.request_retention_s", q.request_retention_s),
            ("queues.dead_letter_retention_s", q.dead_letter_retention_s),
            ("queues.response_retention_s", q.response_retention_s),
            ("web.response_timeout_s", web.response_timeout_s),
            ("web.header_timeout_s", web.header_timeout_s),
            ("web.body_timeout_s", web.body_timeout_s),
            ("web.drain_timeout_s", web.drain_timeout_s),
            ("jobs.retention_s", jobs.retention_s),
            ("jobs.body_timeout_s", jobs.body_timeout_s),
            ("jobs.callback_timeout_s", jobs.callback_timeout_s),
            ("jobs.callback_lease_s", jobs.callback_lease_s),
            ("app_tier.poll_wait_ms", app.poll_wait_ms / 1000),
            ("app_tier.heartbeat_ms", app.heartbeat_ms / 1000),
            ("app_tier.stall_timeout_s", app.stall_timeout_s),
            ("app_tier.drain_deadline_ms", app.drain_deadline_ms / 1000),
            ("scaler.tick_ms", self.scaler.tick_ms / 1000),
            ("fleet.heartbeat_timeout_s", self.fleet.heartbeat_timeout_s),
        ];
        let scaler = &self.scaler;
        let scaler_durations_s = [
            ("scaler.target_latency_s", scaler.target_latency_s),
            ("scaler.service_time_s", scaler.service_time_s),
            ("scaler.boot_time_s", scaler.boot_time_s),
            ("scaler.scale_in_after_s", scaler.scale_in_after_s),
            ("scaler.lease_ttl_s", scaler.lease_ttl_s),
        ];
        let too_long = durations_s
            .into_iter()
            .map(|(key, s)| (key, s as f64))
            .chain(scaler_durations_s)
            .find(|&(_, seconds)| seconds > MAX_DURATION_S as f64);
        if let Some((key, seconds)) = too_long {
            anyhow::bail!("{key} is over 10 years ({seconds} s): a deadline that far overflows the clock");
        }
        Ok(())
    }

    /// The local stack's shared database: its queues, its instances and its leases (the file
    /// keeps its first name, so that an upgraded stack finds its queued requests).
    pub fn local_db(&self) -> PathBuf {
        self.data_dir.join("queue.sqlite3")
    }
}

/// The longest duration a setting may name: 10 years.
const MAX_DURATION_S: u64 = 10 * 365 * 24 * 3600;

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
    fn bad_settings_are_errors_naming_the_key() {
        for (key, value, named) in [
            ("IMGREC__SCALER__POLICY", "fastest", "policy"),
            ("IMGREC__SCALER__SERVICE_TIME_S", "0", "service_time_s"),
            ("IMGREC__SCALER__TARGET_LATENCY_S", "0", "target_latency_s"),
            ("IMGREC__SCALER__BOOT_TIME_S", "-1", "boot_time_s"),
            ("IMGREC__SCALER__SCALE_IN_AFTER_S", "NaN", "scale_in_after_s"),
            ("IMGREC__SCALER__TARGET_LATENCY_S", "1e300", "target_latency_s"),
            ("IMGREC__SCALER__TICK_MS", "0", "scaler.tick_ms (0) must be at least 10"),
            (
                "IMGREC__APP_TIER__POLL_WAIT_MS",
                "0",
                "app_tier.poll_wait_ms (0) must be at least 100",
            ),
            (
                "IMGREC__APP_TIER__HEARTBEAT_MS",
                "0",
                "app_tier.heartbeat_ms (0) must be at least 100",
            ),
            (
                "IMGREC__APP_TIER__STALL_TIMEOUT_S",
                "0",
                "app_tier.stall_timeout_s (0) must be at least 1",
            ),
            (
                "IMGREC__APP_TIER__BATCH_SIZE",
                "0",
                "app_tier.batch_size (0) must be at least 1",
            ),
            (
                "IMGREC__APP_TIER__MAX_BATCH_PIXELS",
                "0",
                "app_tier.max_batch_pixels (0) must be at least 1",
            ),
            (
                "IMGREC__QUEUES__VISIBILITY_TIMEOUT_S",
                "0",
                "queues.visibility_timeout_s (0) must be at least 1",
            ),
            (
                "IMGREC__WEB__MAX_UPLOAD_BYTES",
                "0",
                "web.max_upload_bytes (0) must be at least 1",
            ),
            (
                "IMGREC__WEB__MAX_CONNECTIONS",
                "0",
                "web.max_connections (0) must be at least 1",
            ),
            (
                "IMGREC__INFERENCE__THREADS",
                "0",
                "inference.threads (0) must be at least 1",
            ),
            (
                "IMGREC__WEB__HEADER_TIMEOUT_S",
                "18446744073709551615",
                "web.header_timeout_s is over 10 years",
            ),
            (
                "IMGREC__APP_TIER__POLL_WAIT_MS",
                "18446744073709551615",
                "app_tier.poll_wait_ms is over 10 years",
            ),
            (
                "IMGREC__SCALER__BOOT_TIME_S",
                "1e18",
                "scaler.boot_time_s is over 10 years",
            ),
            (
                "IMGREC__SCALER__LEASE_TTL_S",
                "1e18",
                "scaler.lease_ttl_s is over 10 years",
            ),
            ("IMGREC__SCALER__MAX", "21", "scaler.max (21) is above the cap of 20"),
            (
                "IMGREC__QUEUES__VISIBILITY_TIMEOUT_S",
                "315360000",
                "must be shorter than web.response_timeout_s",
            ),
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
