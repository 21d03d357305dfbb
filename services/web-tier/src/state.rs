//! The web tier's state, shared by its handlers and its background tasks.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use imgrec_domain::policy::admission::Admission;
use imgrec_runtime::backend::Adapters;
use imgrec_runtime::settings::Settings;
use scaler::ScalerHandle;
use tokio::sync::watch;

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
            upload_limits: UploadLimits::new(&settings.web, settings.image_limits),
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
