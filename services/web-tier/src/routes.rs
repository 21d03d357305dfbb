//! The web tier's endpoints, in one table: a new endpoint is one line here and a handler on
//! `WebTier`.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::api_keys;
use crate::reply;
use crate::state::WebTier;
use crate::upload::UploadRequest;

const PAGE: &str = include_str!("page.html");
const DASHBOARD: &str = include_str!("dashboard.html");

/// Every endpoint. Paths before methods, so that an unknown path is 404 rather than the POST
/// route's 405.
pub fn routes(
    tier: Arc<WebTier>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let upload = warp::path::end()
        .and(warp::post())
        .and(with(tier.clone()))
        .and(upload_request())
        .then(WebTier::upload);
    let submit_job = warp::path!("jobs")
        .and(warp::post())
        .and(with(tier.clone()))
        .and(upload_request())
        .then(WebTier::submit_job);
    let job_status = warp::path!("jobs" / String)
        .and(warp::get())
        .and(with(tier.clone()))
        .and(query())
        .and(api_key())
        .then(|id, tier: Arc<WebTier>, query, api_key| tier.job_status(id, query, api_key));
    let page = get_at("").map(|| warp::reply::html(PAGE));
    let status = get_at("status").and(with(tier.clone())).then(WebTier::status);
    let history = warp::path!("status" / "history")
        .and(warp::get())
        .and(with(tier.clone()))
        .then(WebTier::history);
    let dashboard = get_at("dashboard").map(|| warp::reply::html(DASHBOARD));
    let metrics = get_at("metrics").and(with(tier)).then(WebTier::metrics);
    let health = get_at("healthz").map(|| "ok\n");
    upload
        .map(Reply::into_response)
        .or(submit_job)
        .unify()
        .or(job_status)
        .unify()
        .or(page.map(Reply::into_response))
        .unify()
        .or(status)
        .unify()
        .or(history)
        .unify()
        .or(dashboard.map(Reply::into_response))
        .unify()
        .or(metrics)
        .unify()
        .or(health.map(Reply::into_response))
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http")
        }))
        .map(Reply::into_response)
}

/// `GET /{segment}` (`GET /` for "").
fn get_at(segment: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let path = if segment.is_empty() {
        warp::path::end().boxed()
    } else {
        warp::path(segment).and(warp::path::end()).boxed()
    };
    path.and(warp::get())
}

fn with(tier: Arc<WebTier>) -> impl Filter<Extract = (Arc<WebTier>,), Error = Infallible> + Clone {
    warp::any().map(move || tier.clone())
}

/// A `POST /`'s headers and its body, not yet read.
fn upload_request() -> impl Filter<
    Extract = (UploadRequest<impl futures::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + Unpin>,),
    Error = Rejection,
> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(warp::header::optional::<String>("accept"))
        .and(query())
        .and(api_key())
        .and(warp::header::optional::<String>("idempotency-key"))
        .map(
            |content_type, content_length, body, accept: Option<String>, query, api_key, idempotency_key| {
                UploadRequest {
                    content_type,
                    content_length,
                    body: Box::pin(body),
                    wants_json: accept.is_some_and(|a| a.contains("application/json")),
                    query,
                    api_key,
                    idempotency_key,
                }
            },
        )
}

/// The API key presented (`Authorization: Bearer`, or `X-Api-Key`), if any.
fn api_key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-api-key"))
        .map(|authorization: Option<String>, x_api_key: Option<String>| {
            api_keys::presented(authorization.as_deref(), x_api_key.as_deref())
        })
}

/// The query string, empty when there is none.
fn query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Maps warp's own rejections (unknown path, wrong method) to one-line answers.
async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let (status, reason) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if err.find::<warp::reject::InvalidHeader>().is_some() {
        (StatusCode::BAD_REQUEST, "bad request header")
    } else {
        // Warp's Debug form names its internals: the client gets the gist, the log the rest.
        tracing::debug!(rejection = ?err, "bad request");
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(reply::text(status, reason))
}
