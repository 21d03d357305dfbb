//! The web tier's state, shared by its handlers and its background tasks.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use imgrec_classifier::{ImageLimits, Manifest};
use imgrec_domain::policy::admission::Admission;
use imgrec_runtime::backend::Adapters;
use imgrec_runtime::settings::Settings;
use scaler::ScalerHandle;
use tokio::sync::watch;
use tracing::warn;

use crate::api_keys::ApiKeys;
use crate::depth::DepthCache;
use crate::dispatch::Waiters;
use crate::history::History;
use crate::jobs::{AnswerCache, CallbacksHeld};
use crate::metrics::Metrics;
use crate::upload::UploadLimits;

pub struct WebTier {
    pub settings: Settings,
    pub adapters: Adapters,
    /// This web tier's name (`web-instanceK`; another one if it loses this one while paused).
    pub name: watch::Receiver<String>,
    /// This process, uniquely (names pass between processes): who holds a job's callback.
    pub holder: String,
    /// The response queue its answers come back on (this process's own).
    pub reply_to: String,
    /// Requests waiting for their answer.
    pub waiters: Waiters,
    pub metrics: Metrics,
    pub upload_limits: UploadLimits,
    /// The hosted scaler, when this process runs one.
    pub scaler: Option<ScalerHandle>,
    /// What the dashboard charts.
    pub history: History,
    /// How uploads are judged, when `web.admission_control` is on and a scaler shows the pool.
    pub admission: Option<Admission>,
    /// Uploads refused by admission control.
    pub refused: AtomicU64,
    /// The keys uploads must carry, when any are configured.
    pub api_keys: Option<ApiKeys>,
    /// Jobs' answers read before.
    pub answers: AnswerCache,
    /// The jobs' callbacks this web tier holds.
    pub callbacks: CallbacksHeld,
    /// The request queue's depth and the dead-letter queue's, as the open endpoints show them.
    pub request_depth: DepthCache,
    pub dead_letter_depth: DepthCache,
}

impl WebTier {
    pub fn new(
        settings: Settings,
        adapters: Adapters,
        name: watch::Receiver<String>,
        holder: String,
        reply_to: String,
        scaler: Option<ScalerHandle>,
        api_keys: Option<ApiKeys>,
    ) -> anyhow::Result<Arc<Self>> {
        let admission = match (&scaler, settings.web.admission_control) {
            (Some(_), true) => Some(Admission::new(
                &settings.scaler.policy_config()?,
                settings.web.response_timeout(),
            )),
            _ => None,
        };
        Ok(Arc::new(Self {
            request_depth: DepthCache::new(adapters.requests.clone()),
            dead_letter_depth: DepthCache::new(adapters.dead_letter.clone()),
            upload_limits: UploadLimits::new(&settings.web, model_image_limits(&settings)),
            settings,
            adapters,
            name,
            holder,
            reply_to,
            waiters: Waiters::default(),
            metrics: Metrics::new(),
            scaler,
            history: History::default(),
            admission,
            refused: AtomicU64::new(0),
            api_keys,
            answers: AnswerCache::default(),
            callbacks: CallbacksHeld::default(),
        }))
    }
}

/// The image limits for the model the workers run (a model that runs at the image's own size takes
/// fewer pixels), read from its manifest. A web tier without the model folder checks uploads
/// against the settings alone; the workers still refuse what their model cannot take.
fn model_image_limits(settings: &Settings) -> ImageLimits {
    let dir = &settings.inference.model_dir;
    match Manifest::load(dir) {
        Ok(manifest) => settings.image_limits.for_model(&manifest),
        Err(e) => {
            warn!(
                error = %format!("{e:#}"),
                "cannot read the model's manifest in {}: uploads are checked without the model's own \
                 limits, which its workers apply",
                dir.display()
            );
            settings.image_limits
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE: &str = r#"{
      "format_version": 1, "name": "native",
      "input": {"name": "input", "layout": "NCHW", "color": "RGB", "shape": ["N", 3, "H", "W"]},
      "output": {"name": "logits", "kind": "logits"},
      "resize": null,
      "normalize": {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},
      "labels": "labels.json"
    }"#;

    fn limits_with_model(dir: &std::path::Path) -> ImageLimits {
        let mut settings = Settings::defaults().unwrap();
        settings.inference.model_dir = dir.to_path_buf();
        model_image_limits(&settings)
    }

    #[test]
    fn uploads_are_checked_against_the_limits_of_the_model_in_the_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), NATIVE).unwrap();
        assert!(limits_with_model(dir.path()).native_size_model);
        let resizing = NATIVE
            .replace(
                r#""resize": null"#,
                r#""resize": {"width": 8, "height": 8, "filter": "bilinear"}"#,
            )
            .replace(r#""H", "W"]"#, "8, 8]");
        std::fs::write(dir.path().join("manifest.json"), resizing).unwrap();
        assert!(!limits_with_model(dir.path()).native_size_model);
        // No model folder: the settings' limits, and the workers apply the model's.
        let none = limits_with_model(&dir.path().join("nothing"));
        assert_eq!(none, Settings::defaults().unwrap().image_limits);
    }
}
