//! The web tier: the HTTP front of the service (and, locally, a host of the scaler).
//!
//! `POST /` (multipart field `myfile` or `inputFile`) -> the label; `GET /` upload page;
//! `GET /status`, `GET /metrics`, `GET /healthz`.
//!
//! `serve` runs it on a bound listener until asked to stop (the binary: on SIGTERM/SIGINT);
//! `spawn` runs one in-process on a free port, for tests.

mod app;
mod dispatch;
mod history;
mod metrics;
mod server;
mod upload;

pub use upload::MEMORY_WAIT;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use imgrec_domain::config::Settings;
use imgrec_runtime::backend::{self, Ports};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::app::{App, UploadRequest};
use crate::server::ServerLimits;

const PAGE: &str = include_str!("page.html");
const DASHBOARD: &str = include_str!("dashboard.html");
/// After the drain deadline, how long connections get to send their last (503) answers.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

fn wants_json() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    warp::header::optional::<String>("accept")
        .map(|accept: Option<String>| accept.is_some_and(|a| a.contains("application/json")))
}

/// Maps warp's own rejections (unknown path, wrong method) to one-line answers.
async fn recover(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, reason) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_string())
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".to_string())
    } else if err.find::<warp::reject::InvalidHeader>().is_some() {
        (StatusCode::BAD_REQUEST, "bad request header".to_string())
    } else {
        // Warp's Debug form names its internals: the client gets the gist, the log the rest.
        tracing::debug!(rejection = ?err, "bad request");
        (StatusCode::BAD_REQUEST, "bad request".to_string())
    };
    Ok(app::text(status, reason))
}

/// Binds `web.host:web.port`.
pub async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = format!("{}:{}", settings.web.host, settings.web.port)
        .parse()
        .context("web.host/web.port")?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// A web tier running in this process (`spawn`).
pub struct Spawned {
    pub addr: SocketAddr,
    stops: watch::Sender<u32>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Spawned {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops it as a first signal does (stop accepting, drain), and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stops.send_modify(|n| *n += 1);
        self.task.await.context("web tier task")?
    }
}

/// Runs a web tier in this process on a free port of `web.host`.
pub async fn spawn(settings: Settings) -> anyhow::Result<Spawned> {
    let ports = Ports::connect(&settings).await?;
    spawn_on(settings, ports).await
}

/// `spawn` on ports the caller built (a test's failing queue, say).
pub async fn spawn_on(mut settings: Settings, ports: Ports) -> anyhow::Result<Spawned> {
    settings.web.port = 0;
    let listener = bind(&settings).await?;
    let addr = listener.local_addr()?;
    let (stops, requests) = watch::channel(0);
    let task = tokio::spawn(serve_on(settings, ports, listener, requests));
    Ok(Spawned { addr, stops, task })
}

/// Serves on `listener` until `stops` counts a first stop request; then drains the waiting
/// requests for up to `web.drain_timeout_s`, cut short by a second one.
pub async fn serve(settings: Settings, listener: TcpListener, stops: watch::Receiver<u32>) -> anyhow::Result<()> {
    let ports = Ports::connect(&settings).await?;
    serve_on(settings, ports, listener, stops).await
}

async fn serve_on(
    settings: Settings,
    ports: Ports,
    listener: TcpListener,
    mut stops: watch::Receiver<u32>,
) -> anyhow::Result<()> {
    let web_tier = backend::web_tier_name(&settings).await?;
    let name = web_tier.current();
    let (stop_tx, stop_rx) = watch::channel(false);

    let completed = Arc::new(AtomicU64::new(0));
    let scaler_task = if settings.web.run_scaler || settings.web.watch_fleet {
        let worker = std::env::current_exe()?.with_file_name("app-tier");
        // Owned by this process, not its name: a name can pass to another web tier while this one
        // is paused, its workers do not.
        let fleet = backend::fleet(&settings, worker, &web_tier.holder, &ports.calls).await?;
        let scaler = scaler::Scaler::new(settings.scaler.policy()?, ports.requests.clone(), fleet);
        let scaler = if settings.web.run_scaler {
            scaler
                .with_metrics(backend::metrics_sink(&settings, &ports.calls).await)
                .with_completions(completed.clone())
                .with_lease(
                    backend::scaler_lease(&settings, &web_tier.holder, &ports.calls).await?,
                    settings.scaler.lease_ttl(),
                )
        } else {
            scaler.watching()
        };
        let view = scaler.handle();
        let task = tokio::spawn(scaler.run(settings.scaler.tick(), stop_rx.clone()));
        Some((task, view))
    } else {
        None
    };
    let app = App::new(
        settings.clone(),
        ports.clone(),
        web_tier.name.clone(),
        web_tier.response_queue.clone(),
        scaler_task.as_ref().map(|(_, view)| view.clone()),
    );
    let own_responses = ports.response_queues.open(&app.reply_to).await?;
    let responses = tokio::spawn(dispatch::responses(
        own_responses,
        app.waiters.clone(),
        completed,
        stop_rx.clone(),
    ));
    let dead = tokio::spawn(dispatch::dead_letters(
        ports.dead_letter.clone(),
        ports.response_queues.clone(),
        settings.queues.clone(),
        name.clone(),
        stop_rx.clone(),
    ));
    let housekeeping = backend::housekeeping(&settings, stop_rx.clone());
    let sampler = {
        let (app, mut stop) = (app.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while !*stop.borrow() {
                tokio::select! {
                    _ = every.tick() => app.sample().await,
                    _ = stop.changed() => {}
                }
            }
        })
    };

    // Paths before methods, so that an unknown path is 404 rather than the POST route's 405.
    let upload = warp::path::end()
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(wants_json())
        .then(|app: Arc<App>, content_type, content_length, body, wants_json| {
            app.classify(UploadRequest {
                content_type,
                content_length,
                body: Box::pin(body),
                wants_json,
            })
        });
    let page = warp::path::end().and(warp::get()).map(|| warp::reply::html(PAGE));
    let status = warp::path("status")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app(app.clone()))
        .then(App::status);
    let history = warp::path!("status" / "history")
        .and(warp::get())
        .and(with_app(app.clone()))
        .then(App::history);
    let dashboard = warp::path("dashboard")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::html(DASHBOARD));
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_app(app.clone()))
        .then(App::metrics);
    let health = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| "ok\n");
    let routes = upload
        .or(page)
        .or(status)
        .or(history)
        .or(dashboard)
        .or(metrics)
        .or(health)
        .recover(recover)
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http")
        }));

    info!(
        "{name} listening on http://{} (data in {})",
        listener.local_addr()?,
        settings.data_dir.display()
    );
    let limits = ServerLimits {
        header_timeout: settings.web.header_timeout(),
        max_connections: server::connection_limit(settings.web.max_connections),
    };
    info!(max_connections = limits.max_connections, "accepting connections");
    let (close_tx, close_rx) = watch::channel(false);
    let routes = routes.map(Reply::into_response);
    let mut server = tokio::spawn(server::serve(listener, routes, limits, close_rx));

    let _ = stops.wait_for(|n| *n >= 1).await;
    let drain = settings.web.drain_timeout();
    info!(
        waiting = app.waiters.len(),
        "shutting down: accepting nothing new, answering waiting requests for up to {}s",
        drain.as_secs()
    );
    let _ = close_tx.send(true);
    // Workers, the scaler and the response dispatcher keep running while the waiting are answered,
    // until the deadline or a second signal.
    let drained = tokio::select! {
        done = tokio::time::timeout(drain, &mut server) => done.is_ok(),
        _ = stops.wait_for(|n| *n >= 2) => false,
    };
    if !drained {
        let rest = app.waiters.shut_down_all();
        warn!(
            requests = rest,
            "stopped draining (deadline passed or signalled again); answered the rest 503"
        );
        if tokio::time::timeout(CLOSE_GRACE, &mut server).await.is_err() {
            warn!("connections still open after the drain; closing them");
            server.abort();
        }
    }
    app.waiters.shut_down_all();
    let _ = stop_tx.send(true);
    let _ = responses.await;
    let _ = dead.await;
    let _ = sampler.await;
    if let Some(task) = housekeeping {
        let _ = task.await;
    }
    if let Some((task, _)) = scaler_task {
        task.await.context("scaler task")??;
    }
    drop(web_tier);
    info!("stopped");
    Ok(())
}
