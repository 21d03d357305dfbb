//! Why an upload got no label: one variant per answer, each with its HTTP status and the label it
//! is counted under in `imgrec_requests_total` and `imgrec_request_duration_seconds`.

use std::time::Duration;

use imgrec_classifier::decode::ImageError;
use warp::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not a well-formed upload: no multipart body, no file, an empty file, a bad file name.
    #[error("{0}")]
    BadRequest(String),
    #[error("the upload did not arrive within {0}s")]
    BodyTimeout(u64),
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// Not an image a worker can read (checked before anything is stored or queued).
    #[error("{0}")]
    Image(#[from] ImageError),
    /// A file name every key check accepts but the store still refuses.
    #[error("cannot store a file of this name; rename it and try again")]
    UnstorableName { reason: String },
    /// The memory budgets stayed spent by other uploads for the whole wait.
    #[error("the server is busy with other uploads; try again shortly")]
    Busy,
    #[error("the service is shutting down; try again")]
    ShuttingDown,
    /// API keys are configured and this upload carries no valid one.
    #[error("a valid API key is required (Authorization: Bearer <key>, or X-Api-Key)")]
    Unauthorized,
    /// This key's uploads came faster than its rate.
    #[error("this API key's rate is used up; try again in {}s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    /// Admission control: the pool at its cap cannot answer this upload within the timeout.
    #[error("too many requests are waiting to answer this one in time; try again in {}s", retry_after.as_secs())]
    Overloaded { retry_after: Duration },
    /// The store or the queue failed in a way that may pass.
    #[error("{what}; try again later")]
    Unavailable {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
    /// The request queue is gone or forbidden: a fault of this deployment, not a busy moment.
    #[error("cannot queue the request (the upload is stored as {key})")]
    QueueRefused {
        key: String,
        #[source]
        source: anyhow::Error,
    },
    /// The worker could not read the stored image.
    #[error("{0}")]
    Rejected(String),
    #[error("the request failed {0} times and was set aside")]
    DeadLettered(u32),
    /// The web tier stopped waiting before the answer came.
    #[error("the service is shutting down; the result will still be stored as {0}")]
    StoppedWaiting(String),
    #[error("no label within {seconds}s; the result will still be stored as {image}")]
    Timeout { seconds: u64, image: String },
    /// An idempotency key or a job's client token sent again with other files.
    #[error("this {0} was first sent with other files (names or bytes); use a new one for a new request")]
    KeyReused(&'static str),
    #[error("{0}")]
    NotFound(String),
    /// The image check itself failed (a bug, not the client's fault).
    #[error("image check failed")]
    CheckFailed,
}

impl UploadError {
    /// Maps a failure of the store or the queue that may pass to `Unavailable`, saying `what`.
    pub fn unavailable<E: Into<anyhow::Error>>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::Unavailable { what, source: e.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::UnstorableName { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Image(e) => match e {
                ImageError::Empty => StatusCode::BAD_REQUEST,
                ImageError::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ImageError::TooLarge { .. } | ImageError::TooLargeForModel { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ImageError::ZeroSize | ImageError::Truncated | ImageError::Corrupt(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            },
            Self::Busy
            | Self::ShuttingDown
            | Self::Overloaded { .. }
            | Self::Unavailable { .. }
            | Self::StoppedWaiting(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rejected(_) | Self::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::QueueRefused { .. } | Self::DeadLettered(_) | Self::CheckFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `outcome` label of the request metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadRequest(_)
            | Self::BodyTimeout(_)
            | Self::TooLarge(_)
            | Self::Image(_)
            | Self::UnstorableName { .. }
            | Self::KeyReused(_) => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::Busy | Self::ShuttingDown | Self::Unavailable { .. } | Self::StoppedWaiting(_) => "unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::Rejected(_) => "rejected",
            Self::QueueRefused { .. } | Self::DeadLettered(_) | Self::CheckFailed => "failed",
            Self::Timeout { .. } => "timeout",
        }
    }

    /// Worth retrying after a pause (`Retry-After`).
    pub fn is_retryable(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }

    /// How long a client should wait before trying again, if trying again helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after } | Self::RateLimited { retry_after } => Some(*retry_after),
            _ => self.is_retryable().then_some(Duration::from_secs(1)),
        }
    }

    /// Says in the log what the client is not told: the store's or the queue's own words.
    pub fn log(&self) {
        match self {
            Self::UnstorableName { reason } => tracing::warn!(%reason, "cannot store an upload"),
            Self::Unavailable { what, source } => tracing::warn!(error = %format!("{source:#}"), "{what}"),
            Self::QueueRefused { source, .. } => {
                tracing::error!(error = %format!("{source:#}"), "cannot queue the request, and retrying will not help")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_client_may_retry_are_503_and_counted_unavailable() {
        let errors = [
            UploadError::BadRequest("x".into()),
            UploadError::BodyTimeout(60),
            UploadError::TooLarge(10),
            UploadError::Image(ImageError::Truncated),
            UploadError::UnstorableName { reason: "x".into() },
            UploadError::Busy,
            UploadError::ShuttingDown,
            UploadError::Unavailable {
                what: "cannot store the upload",
                source: anyhow::anyhow!("disk full"),
            },
            UploadError::QueueRefused {
                key: "k".into(),
                source: anyhow::anyhow!("no such queue"),
            },
            UploadError::Rejected("x".into()),
            UploadError::DeadLettered(3),
            UploadError::StoppedWaiting("k".into()),
            UploadError::Timeout {
                seconds: 1,
                image: "k".into(),
            },
            UploadError::CheckFailed,
        ];
        for e in &errors {
            assert_eq!(e.is_retryable(), e.label() == "unavailable", "{e:?}");
            assert!(e.status().is_client_error() || e.status().is_server_error(), "{e:?}");
            assert_eq!(
                e.status().is_client_error(),
                matches!(e.label(), "bad_request" | "rejected"),
                "{e:?}"
            );
            // What the client reads never carries the source's words.
            assert!(!e.to_string().contains("disk full") && !e.to_string().contains("no such queue"));
        }
    }
}
