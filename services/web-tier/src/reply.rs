//! The shapes of the web tier's answers: one line of plain text, or JSON.

use warp::http::{header, StatusCode};
use warp::reply::{self, Reply as _, Response};

/// A plain-text answer: the label, or a one-line reason.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    reply::with_status(
        reply::with_header(body, header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        status,
    )
    .into_response()
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    reply::with_status(reply::json(value), status).into_response()
}
