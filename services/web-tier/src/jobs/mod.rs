//! Jobs: `POST /jobs` takes one or many images (multipart, one file a part) and answers 202 with
//! the job's id and its `Location`; `GET /jobs/{id}` gives each image's status and label. A job's
//! state is the records it leaves in the output bucket (see `imgrec_domain::records`), so any web
//! tier of the deployment answers for any job, and a web tier that dies loses none.

mod callback;
mod callback_lease;
mod status;
mod submit;

pub use callback_lease::{adopt_callbacks, CallbacksHeld};
pub use status::AnswerCache;

use serde::Deserialize;

use crate::error::UploadError;
use crate::upload::set_once;

/// How many classes each image of a callback's report lists.
const REPORT_TOP: usize = 5;

/// What a job's submission names besides its images, in its query string or in form fields
/// before the first file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct JobParams {
    /// Called with the job's status once every image has its answer.
    pub callback_url: Option<String>,
    /// A retry with the same token gets the first submission's job.
    pub client_token: Option<String>,
}

impl JobParams {
    /// The query string's `callback_url` and `client_token`; other parameters are ignored.
    pub fn parse(query: &str) -> Result<Self, UploadError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| UploadError::BadRequest("the query string is not form-encoded".into()))?;
        let mut params = Self::default();
        for (name, value) in pairs {
            params.set(&name, value)?;
        }
        Ok(params)
    }

    /// Sets the parameter `name`, if it is one; whether it was. A parameter given again (in the
    /// query, a form field or, for `client_token`, the `Idempotency-Key` header) must say the
    /// same: with the last one winning, a retry that carried only the header would have started
    /// a second job.
    pub fn set(&mut self, name: &str, value: String) -> Result<bool, UploadError> {
        let (slot, value) = match name {
            "callback_url" => (&mut self.callback_url, callback::check_url(&value)?),
            "client_token" => (&mut self.client_token, value),
            _ => return Ok(false),
        };
        set_once(name, slot, value)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_come_from_the_query_and_a_bad_callback_is_refused() {
        let p = JobParams::parse("client_token=t-1&callback_url=http%3A%2F%2F127.0.0.1%3A9%2Fdone&x=1").unwrap();
        assert_eq!(p.client_token.as_deref(), Some("t-1"));
        assert_eq!(p.callback_url.as_deref(), Some("http://127.0.0.1:9/done"));
        assert_eq!(JobParams::parse("").unwrap(), JobParams::default());
        assert!(JobParams::parse("callback_url=ftp://x/").is_err());
    }

    #[test]
    fn a_parameter_given_twice_must_say_the_same() {
        let p = JobParams::parse("client_token=t-1&client_token=t-1").unwrap();
        assert_eq!(p.client_token.as_deref(), Some("t-1"));
        for query in [
            "client_token=t-1&client_token=t-2",
            "callback_url=http%3A%2F%2Fa%2F&callback_url=http%3A%2F%2Fb%2F",
        ] {
            let err = JobParams::parse(query).unwrap_err().to_string();
            assert!(err.contains("given twice with different values"), "{query}: {err}");
        }
        let mut p = JobParams::parse("client_token=from-the-query").unwrap();
        assert!(p.set("client_token", "from-a-form-field".into()).is_err());
        assert_eq!(p.client_token.as_deref(), Some("from-the-query"));
    }
}
