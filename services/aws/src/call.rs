//! Every AWS call goes through `Aws::call`: it is counted (calls per classified image are a cost
//! figure), and its error becomes an `AwsError` that says in one line what failed and whether
//! trying again may help, which the adapters turn into their port's typed error.

use std::fmt;
use std::future::Future;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use imgrec_domain::ports::{ApiCalls, PortError};

/// Error codes of answers that a later identical call may not get: throttling, and the services'
/// own transient failures. (The SDK has already retried these `aws.max_attempts` times.)
const TRANSIENT_CODES: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ScalingActivityInProgress",
    "ResourceContention",
];

/// The SDK configuration and this process's call counts, shared by every adapter.
#[derive(Clone)]
pub struct Aws {
    pub sdk: SdkConfig,
    pub calls: ApiCalls,
}

impl Aws {
    pub fn new(sdk: SdkConfig, calls: ApiCalls) -> Self {
        Self { sdk, calls }
    }

    /// Sends one request (`builder.send()`), counted under `operation`.
    pub(crate) async fn call<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, AwsError>
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        let result = request.await;
        self.record(operation, result)
    }

    /// Counts one call already made (a paginator's page) and types its error.
    pub(crate) fn record<T, E>(
        &self,
        operation: &'static str,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<T, AwsError>
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        self.calls.count(operation);
        result.map_err(|e| AwsError::new(operation, &e))
    }
}

/// One failed AWS call.
#[derive(Debug, thiserror::Error)]
pub struct AwsError {
    pub operation: &'static str,
    /// What it was about (a bucket and key, a queue, a group), when the caller says.
    target: Option<String>,
    /// AWS's error code (`NoSuchKey`, `AccessDenied`, ...), when the service answered.
    pub code: Option<String>,
    detail: String,
    /// Whether the same call may succeed later (throttling, timeouts, 5xx, lost connections).
    pub transient: bool,
    /// The body of the error answer, if any (some emulators answer in shapes the SDK misreads).
    pub body: Option<Vec<u8>>,
}

impl AwsError {
    fn new<E>(operation: &'static str, e: &SdkError<E, HttpResponse>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        let service = e.as_service_error();
        let code = service.and_then(|s| s.code()).map(str::to_owned);
        let status = e.raw_response().map(|r| r.status().as_u16());
        let transient = match e {
            SdkError::ConstructionFailure(_) => false,
            SdkError::ServiceError(_) => {
                status.is_some_and(|s| s >= 500 || s == 429)
                    || code.as_deref().is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            // Timeouts, connection failures, garbled answers.
            _ => true,
        };
        let detail = match service {
            Some(s) => format!(
                "{}: {}",
                s.code().unwrap_or("error"),
                s.message().unwrap_or("no message")
            ),
            None => DisplayErrorContext(e).to_string(),
        };
        let body = e.raw_response().and_then(|r| r.body().bytes()).map(<[u8]>::to_vec);
        Self {
            operation,
            target: None,
            code,
            detail,
            transient,
            body,
        }
    }

    /// Names what the call was about, for the message.
    pub fn on(mut self, target: impl fmt::Display) -> Self {
        self.target = Some(target.to_string());
        self
    }

    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(target) => write!(f, "{} {target}: {}", self.operation, self.detail),
            None => write!(f, "{}: {}", self.operation, self.detail),
        }
    }
}

impl From<AwsError> for PortError {
    fn from(e: AwsError) -> Self {
        if e.transient {
            Self::Transient(e.into())
        } else {
            Self::Permanent(e.into())
        }
    }
}

/// S3's answers that no retry can change for this request; anything else (throttling, 5xx,
/// network, a missing bucket or denied access, which an operator fixes) is worth retrying, as the
/// store has always treated it: a request then reaches the dead-letter queue, not a wrong answer.
const INVALID_REQUEST_CODES: [&str; 5] = [
    "InvalidArgument",
    "InvalidRequest",
    "KeyTooLongError",
    "EntityTooLarge",
    "InvalidObjectName",
];

impl AwsError {
    /// A failed S3 call as the `ObjectStore` port reports it.
    pub fn into_store_error(self) -> PortError {
        match self.code.as_deref() {
            Some(code) if INVALID_REQUEST_CODES.contains(&code) => PortError::Refused(self.to_string()),
            _ => PortError::Transient(self.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::operation::send_message::SendMessageError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service_error(status: u16, code: &str) -> SdkError<SendMessageError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(SendMessageError::generic(meta), raw)
    }

    #[test]
    fn throttling_and_server_errors_are_transient_the_rest_permanent() {
        let typed = |status, code| AwsError::new("SendMessage", &service_error(status, code));
        assert!(typed(400, "ThrottlingException").transient);
        assert!(typed(400, "RequestThrottled").transient);
        assert!(typed(503, "Whatever").transient);
        assert!(typed(429, "Whatever").transient);
        assert!(!typed(400, "AWS.SimpleQueueService.NonExistentQueue").transient);
        assert!(!typed(403, "AccessDenied").transient);
        let e = typed(403, "AccessDenied").on("queue q");
        assert_eq!(e.to_string(), "SendMessage queue q: AccessDenied: m");
        assert!(matches!(PortError::from(e), PortError::Permanent(_)));
        assert!(matches!(
            PortError::from(typed(500, "InternalError")),
            PortError::Transient(_)
        ));
        let timeout: SdkError<SendMessageError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(AwsError::new("SendMessage", &timeout).transient);
    }

    #[test]
    fn the_store_refuses_what_s3_never_accepts_and_retries_the_rest() {
        let typed = |status, code| AwsError::new("PutObject", &service_error(status, code));
        assert!(matches!(
            typed(400, "KeyTooLongError").into_store_error(),
            PortError::Refused(_)
        ));
        for (status, code) in [(403, "AccessDenied"), (404, "NoSuchBucket"), (503, "SlowDown")] {
            assert!(typed(status, code).into_store_error().is_transient(), "{code}");
        }
    }

    #[test]
    fn every_call_is_counted_failed_ones_too() {
        let aws = Aws::new(SdkConfig::builder().build(), ApiCalls::default());
        let failed: Result<(), _> = aws.record("SendMessage", Err(service_error(400, "AccessDenied")));
        assert!(failed.is_err());
        let _ = aws.record::<_, SendMessageError>("SendMessage", Ok(()));
        assert_eq!(aws.calls.snapshot().get("SendMessage"), Some(&2));
    }
}
