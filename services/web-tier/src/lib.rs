//! The web tier: the HTTP front of the service (and, locally, a host of the scaler).
//!
//! The endpoints are in `routes`: `POST /` (multipart field `myfile` or `inputFile`) -> the label;
//! `POST /jobs` (one or many files) -> 202 and the job's id, `GET /jobs/{id}` its images' labels;
//! `GET /` upload page; `GET /status`, `GET /status/history`, `GET /dashboard`, `GET /metrics`,
//! `GET /healthz`.
//!
//! `serve` runs it on a bound listener until asked to stop (the binary: on SIGTERM/SIGINT);
//! `spawn` runs one in-process on a free port, for tests.

mod api_keys;
mod background;
mod depth;
mod dispatch;
mod error;
mod history;
mod jobs;
mod metrics;
mod reply;
mod routes;
mod server;
mod state;
mod status;
mod upload;

pub use upload::MEMORY_WAIT;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use imgrec_runtime::backend::{self, Adapters};
use imgrec_runtime::settings::Settings;
use imgrec_runtime::shutdown::{Shutdown, Spawned};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api_keys::ApiKeys;
use crate::background::Background;
use crate::server::ServerLimits;
use crate::state::WebTier;

/// After the drain deadline, how long connections get to send their last (503) answers.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Binds `web.host:web.port`.
pub async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = format!("{}:{}", settings.web.host, settings.web.port)
        .parse()
        .context("web.host/web.port")?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// A web tier running in this process (`spawn`), at `addr`.
pub struct SpawnedWebTier {
    pub addr: SocketAddr,
    spawned: Spawned,
}

impl SpawnedWebTier {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops it as a first signal does (stop accepting, drain), and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.spawned.stop().await
    }
}

/// Runs a web tier in this process on a free port of `web.host`.
pub async fn spawn(settings: Settings) -> anyhow::Result<SpawnedWebTier> {
    let adapters = Adapters::connect(&settings).await?;
    spawn_on(settings, adapters).await
}

/// `spawn` on ports the caller built (a test's failing queue, say).
pub async fn spawn_on(mut settings: Settings, adapters: Adapters) -> anyhow::Result<SpawnedWebTier> {
    settings.web.port = 0;
    let listener = bind(&settings).await?;
    let addr = listener.local_addr()?;
    let spawned = Spawned::spawn(|shutdown| serve_on(settings, adapters, listener, shutdown));
    Ok(SpawnedWebTier { addr, spawned })
}

/// Serves on `listener` until a first stop request; then drains the waiting requests for up to
/// `web.drain_timeout_s`, cut short by a second one.
pub async fn serve(settings: Settings, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let adapters = Adapters::connect(&settings).await?;
    serve_on(settings, adapters, listener, shutdown).await
}

async fn serve_on(
    settings: Settings,
    adapters: Adapters,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let web_tier_name = backend::web_tier_name(&settings).await?;
    let completed = Arc::new(AtomicU64::new(0));
    let scaler = background::hosted_scaler(&settings, &adapters, &web_tier_name, &completed).await?;
    let parameter = backend::api_keys_parameter(&settings, &adapters.connection).await?;
    let api_keys = ApiKeys::load(&settings.web, parameter.as_deref())?;
    let tier = WebTier::new(
        settings,
        adapters,
        web_tier_name.name.clone(),
        web_tier_name.holder.clone(),
        web_tier_name.response_queue.clone(),
        scaler.as_ref().map(|s| s.handle()),
        api_keys,
    )?;
    let background = Background::start(&tier, scaler, completed).await?;

    let web = &tier.settings.web;
    let limits = ServerLimits {
        header_timeout: web.header_timeout(),
        max_connections: server::connection_limit(web.max_connections),
    };
    info!(
        max_connections = limits.max_connections,
        "{} listening on http://{} (data in {})",
        web_tier_name.current(),
        listener.local_addr()?,
        tier.settings.data_dir.display()
    );
    let routes = routes::routes(tier.clone());
    let server = tokio::spawn(server::serve(listener, routes, limits, shutdown.clone()));

    shutdown.requested().await;
    drain(&tier, server, &mut shutdown).await;
    // Workers, the scaler and the response dispatcher ran on while the waiting were answered.
    background.stop().await?;
    // Given back, so that a web tier started next takes the name at once.
    web_tier_name.release().await;
    info!("stopped");
    Ok(())
}

/// The server accepts nothing new once a stop is asked: answers the requests still waiting until
/// the drain deadline or a second stop request, then the rest 503.
async fn drain(tier: &WebTier, mut server: JoinHandle<()>, shutdown: &mut Shutdown) {
    let deadline = tier.settings.web.drain_timeout();
    info!(
        waiting = tier.waiters.len(),
        "shutting down: accepting nothing new, answering waiting requests for up to {}s",
        deadline.as_secs()
    );
    let drained = tokio::select! {
        done = tokio::time::timeout(deadline, &mut server) => done.is_ok(),
        _ = shutdown.insisted() => false,
    };
    if !drained {
        let rest = tier.waiters.shut_down_all();
        warn!(
            requests = rest,
            "stopped draining (deadline passed or signalled again); answered the rest 503"
        );
        if tokio::time::timeout(CLOSE_GRACE, &mut server).await.is_err() {
            warn!("connections still open after the drain; closing them");
            server.abort();
        }
    }
    tier.waiters.shut_down_all();
}
