//! The web tier's endpoints, in one table: a new endpoint is one line here and a handler on
//! `WebTier`.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::header::ACCEPT;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
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
        .and(get_or_head())
        .and(with(tier.clone()))
        .and(query())
        .and(api_key())
        .then(|id, tier: Arc<WebTier>, query, api_key| tier.job_status(id, query, api_key));
    let page = get_at("").map(|| warp::reply::html(PAGE));
    let status = get_at("status").and(with(tier.clone())).then(WebTier::status);
    let history = warp::path!("status" / "history")
        .and(get_or_head())
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

/// `GET /{segment}` (`GET /` for ""), and its `HEAD`.
fn get_at(segment: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let path = if segment.is_empty() {
        warp::path::end().boxed()
    } else {
        warp::path(segment).and(warp::path::end()).boxed()
    };
    path.and(get_or_head())
}

/// GET, or HEAD: what HTTP has every server take where it takes GET (uptime monitors and load
/// balancers probe with it); hyper sends a HEAD's answer without its body.
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

fn with(tier: Arc<WebTier>) -> impl Filter<Extract = (Arc<WebTier>,), Error = Infallible> + Clone {
    warp::any().map(move || tier.clone())
}

/// A `POST /`'s headers and its body, not yet read.
fn upload_request() -> impl Filter<
    Extract = (UploadRequest<impl futures::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + Unpin>,),
    Error = Rejection,
> + Clone {
    text_headers()
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(query())
        .map(|headers: TextHeaders, content_length, body, query| UploadRequest {
            wants_json: headers.accept.as_ref().is_some_and(|a| a.contains("application/json")),
            api_key: headers.api_key(),
            content_type: headers.content_type,
            content_length,
            body: Box::pin(body),
            query,
            idempotency_key: headers.idempotency_key,
        })
}

/// The API key presented (`Authorization: Bearer`, or `X-Api-Key`), if any.
fn api_key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    text_headers().map(|headers: TextHeaders| headers.api_key())
}

/// The headers the API reads as text. Bytes past ASCII become U+FFFD, which each reader refuses
/// with its own reason: warp's typed headers rejected such a value as a whole, and the request
/// then took another route's answer (an upload got 405). A header read as one value and sent
/// twice is refused, as which one would count is a guess; `Accept`'s lines are joined, as HTTP
/// lists are.
struct TextHeaders {
    content_type: Option<String>,
    accept: Option<String>,
    authorization: Option<String>,
    x_api_key: Option<String>,
    idempotency_key: Option<String>,
}

impl TextHeaders {
    fn read(headers: &HeaderMap) -> Result<Self, RepeatedHeader> {
        let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
        let one = |name: &'static str| {
            let mut values = headers.get_all(name).iter();
            let first = values.next().map(text);
            match values.next() {
                Some(_) => Err(RepeatedHeader(name)),
                None => Ok(first),
            }
        };
        let accept: Vec<String> = headers.get_all(ACCEPT).iter().map(text).collect();
        Ok(Self {
            content_type: one("content-type")?,
            accept: (!accept.is_empty()).then(|| accept.join(", ")),
            authorization: one("authorization")?,
            x_api_key: one("x-api-key")?,
            idempotency_key: one("idempotency-key")?,
        })
    }

    fn api_key(&self) -> Option<String> {
        api_keys::presented(self.authorization.as_deref(), self.x_api_key.as_deref())
    }
}

fn text_headers() -> impl Filter<Extract = (TextHeaders,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(|headers: HeaderMap| async move { TextHeaders::read(&headers).map_err(warp::reject::custom) })
}

/// A header the API reads as one value, sent more than once.
#[derive(Debug)]
struct RepeatedHeader(&'static str);

impl warp::reject::Reject for RepeatedHeader {}

/// The query string, empty when there is none.
fn query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Maps warp's own rejections (unknown path, wrong method, bad header) to one-line answers.
async fn recover(err: Rejection) -> Result<Response, Infallible> {
    // A route that matched the path and method and then refused a header says why, rather than
    // another route's 404 or 405.
    let (status, reason) = if let Some(RepeatedHeader(name)) = err.find() {
        (StatusCode::BAD_REQUEST, format!("send one {name} header, not several"))
    } else if let Some(header) = err.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, format!("bad {} header", header.name()))
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".into())
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
    } else {
        // Warp's Debug form names its internals: the client gets the gist, the log the rest.
        tracing::debug!(rejection = ?err, "bad request");
        (StatusCode::BAD_REQUEST, "bad request".into())
    };
    Ok(reply::text(status, reason))
}
