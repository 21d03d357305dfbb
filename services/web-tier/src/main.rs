//! `web-tier`: the HTTP front of the service (and, locally, the host of the scaler).
//!
//! `POST /` (multipart field `myfile` or `inputFile`) -> the label; `GET /` upload page;
//! `GET /status`, `GET /metrics`, `GET /healthz`.

mod app;
mod dispatch;
mod metrics;
mod upload;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use imgrec_core::backend::{self, Ports};
use imgrec_core::config::Settings;
use tokio::sync::watch;
use tracing::info;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::app::App;

const PAGE: &str = include_str!("page.html");

fn main() -> ExitCode {
    imgrec_core::logging::init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

fn wants_json() -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    warp::header::optional::<String>("accept")
        .map(|accept: Option<String>| accept.is_some_and(|a| a.contains("application/json")))
}

/// Maps warp's own rejections (body too large, not multipart, unknown path) to one-line answers.
async fn recover(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, reason) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_string())
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "upload too large".to_string())
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some()
        || err.find::<warp::reject::InvalidHeader>().is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "send the image as multipart/form-data in the field \"myfile\"".to_string(),
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".to_string())
    } else {
        (StatusCode::BAD_REQUEST, format!("bad request: {err:?}"))
    };
    Ok(app::text(status, reason))
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let mut signals = imgrec_core::shutdown::on_signal()?;
    let ports = Ports::connect(&settings).await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let completed = Arc::new(AtomicU64::new(0));
    let scaler_task = if settings.web.run_scaler {
        let worker = std::env::current_exe()?.with_file_name("app-tier");
        let fleet = backend::fleet(&settings, worker).await?;
        let scaler = scaler::Scaler::new(settings.scaler.policy()?, ports.requests.clone(), fleet)
            .with_metrics(backend::metrics_sink(&settings).await)
            .with_completions(completed.clone());
        let view = (scaler.status(), scaler.nudge());
        let task = tokio::spawn(scaler.run(settings.scaler.tick(), stop_rx.clone()));
        Some((task, view))
    } else {
        None
    };
    let app = App::new(
        settings.clone(),
        ports.clone(),
        scaler_task.as_ref().map(|(_, view)| view.clone()),
    );
    let responses = tokio::spawn(dispatch::responses(
        ports.responses.clone(),
        app.waiters.clone(),
        completed,
        stop_rx.clone(),
    ));
    let dead = tokio::spawn(dispatch::dead_letters(
        ports.dead_letter.clone(),
        app.waiters.clone(),
        stop_rx.clone(),
    ));

    let max_body = settings.web.max_upload_bytes + 64 * 1024; // room for the multipart framing
    let upload = warp::post()
        .and(warp::path::end())
        .and(with_app(app.clone()))
        .and(warp::multipart::form().max_length(max_body))
        .and(wants_json())
        .then(|app: Arc<App>, form, json| app.classify(form, json));
    let page = warp::get().and(warp::path::end()).map(|| warp::reply::html(PAGE));
    let status = warp::get()
        .and(warp::path("status"))
        .and(warp::path::end())
        .and(with_app(app.clone()))
        .then(App::status);
    let metrics = warp::get()
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .and(with_app(app.clone()))
        .then(App::metrics);
    let health = warp::get()
        .and(warp::path("healthz"))
        .and(warp::path::end())
        .map(|| "ok\n");
    let routes = upload
        .or(page)
        .or(status)
        .or(metrics)
        .or(health)
        .recover(recover)
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http")
        }));

    let addr: SocketAddr = format!("{}:{}", settings.web.host, settings.web.port)
        .parse()
        .context("web.host/web.port")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(
        "web-instance1 listening on http://{} (data in {})",
        listener.local_addr()?,
        settings.data_dir.display()
    );
    let mut stop = stop_rx.clone();
    let server = warp::serve(routes.map(Reply::into_response))
        .incoming(listener)
        .graceful(async move {
            let _ = stop.changed().await;
        });
    let server = tokio::spawn(server.run());

    let _ = signals.changed().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = responses.await;
    let _ = dead.await;
    if let Some((task, _)) = scaler_task {
        task.await.context("scaler task")??;
    }
    info!("stopped");
    Ok(())
}
