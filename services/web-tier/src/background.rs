//! What runs beside the HTTP server: the hosted scaler, the response and dead-letter dispatchers,
//! the local retention sweeps, the dashboard's sampler and the look for jobs' callbacks to take
//! over. They keep running while the server
//! drains, so that the requests still waiting get their answers.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use imgrec_runtime::backend::{self, Adapters, WebTierName};
use imgrec_runtime::settings::Settings;
use imgrec_runtime::shutdown::{Shutdown, Stopper};
use scaler::Scaler;
use tokio::task::JoinHandle;

use crate::state::WebTier;
use crate::{dispatch, jobs};

/// The scaler this web tier hosts, if any: acting when `web.run_scaler` (it acts while it holds
/// the scaler lease), only watching the fleet when `web.watch_fleet`.
pub async fn hosted_scaler(
    settings: &Settings,
    adapters: &Adapters,
    web_tier: &WebTierName,
    completed: &Arc<AtomicU64>,
) -> anyhow::Result<Option<Scaler>> {
    let web = &settings.web;
    if !web.run_scaler && !web.watch_fleet {
        return Ok(None);
    }
    // Owned by this process, not its name: a name can pass to another web tier while this one is
    // paused, its workers do not.
    let fleet = backend::fleet(settings, &web_tier.holder, &adapters.connection).await?;
    let scaler = Scaler::new(settings.scaler.policy()?, adapters.requests.clone(), fleet);
    if !web.run_scaler {
        return Ok(Some(scaler.watching()));
    }
    Ok(Some(
        scaler
            .with_metrics(backend::metrics_sink(settings, &adapters.connection).await)
            .with_completions(completed.clone())
            .with_lease(
                backend::scaler_lease(settings, &web_tier.holder, &adapters.connection).await?,
                settings.scaler.lease_ttl(),
            ),
    ))
}

pub struct Background {
    tier: Arc<WebTier>,
    stopper: Stopper,
    tasks: Vec<JoinHandle<()>>,
    scaler: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Background {
    /// Starts them all; `completed` counts the responses received, for the scaler's policy.
    pub async fn start(tier: &Arc<WebTier>, scaler: Option<Scaler>, completed: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let (stopper, shutdown) = Shutdown::new();
        let settings = &tier.settings;
        let adapters = &tier.adapters;
        let own_responses = adapters.response_queues.open(&tier.reply_to).await?;
        let mut tasks = vec![
            tokio::spawn(dispatch::responses(
                own_responses,
                tier.waiters.clone(),
                completed,
                shutdown.clone(),
            )),
            tokio::spawn(dispatch::dead_letters(tier.clone(), shutdown.clone())),
            tokio::spawn(sample(tier.clone(), shutdown.clone())),
            tokio::spawn(jobs::adopt_callbacks(tier.clone(), shutdown.clone())),
        ];
        tasks.extend(backend::housekeeping(settings, shutdown.clone()));
        let scaler = scaler.map(|scaler| tokio::spawn(scaler.run(settings.scaler.tick(), shutdown)));
        Ok(Self {
            tier: tier.clone(),
            stopper,
            tasks,
            scaler,
        })
    }

    /// Stops them and waits until they have (the scaler stops the fleet it drives).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stopper.stop();
        for task in self.tasks {
            let _ = task.await;
        }
        self.tier.release_callbacks().await;
        if let Some(scaler) = self.scaler {
            scaler.await.context("scaler task")??;
        }
        Ok(())
    }
}

/// Records the dashboard's chart once a second.
async fn sample(tier: Arc<WebTier>, mut shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    while !shutdown.is_requested() {
        tokio::select! {
            _ = every.tick() => tier.sample().await,
            _ = shutdown.requested() => {}
        }
    }
}
