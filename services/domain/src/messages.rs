//! Messages between the tiers. Versioned so that old and new instances can coexist in a rolling
//! deployment: a reader rejects a version it does not know instead of misreading it, and ignores
//! fields it does not know, so that adding an optional field needs no new version and the
//! previous release still reads the new messages (`tests/fixtures/messages/` holds today's, which
//! every later release must read). A message a reader cannot read goes back to its queue, never
//! away: another reader (a newer release) may read it, and the dead-letter queue keeps it after
//! `queues.max_receives`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const VERSION: u32 = 1;

/// Web tier -> app tier: classify the object `key` (at `version`) of the input bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyRequest {
    pub version: u32,
    pub request_id: Uuid,
    /// Input bucket key, the uploaded file name (`test_0.JPEG`).
    pub key: String,
    /// The input object's version, so that each request gets its own bytes even when two
    /// uploads share a file name.
    pub object_version: Option<String>,
    pub submitted_at_ms: u64,
    /// How many times a worker put this request back as a new message instead of holding it
    /// beside another suspect one (poison isolation); absent in first sends.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requeued: u32,
    /// How many times an interrupted worker gave this request back unfinished, as a new message
    /// (its drain ran out): not the request's failure, so not a receive that counts towards the
    /// dead-letter queue, up to `queues.max_receives` times. Absent in first sends.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub given_back: u32,
    /// The response queue of the web tier waiting for the answer (each web tier has its own).
    /// Absent in requests of older web tiers: the answer goes to `queues.responses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Where the answer is also kept, in the output bucket (a `records` key): for the images of
    /// jobs and uploads sent with an idempotency key, whose answers outlive the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_record: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// App tier -> web tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResponse {
    pub version: u32,
    pub request_id: Uuid,
    pub key: String,
    pub outcome: Outcome,
    /// The app-tier instance that answered.
    pub instance: String,
    /// Where the request's time went on the worker; absent in older workers' answers and in
    /// answers without a model run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// A request's time on the app tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the upload's queueing (the web tier's clock) to its worker fetching the image (the
    /// worker's clock): time in the queue, give or take the two clocks' skew.
    pub queue_wait_ms: u64,
    /// The model run's time per image of the run.
    pub inference_ms: f64,
    /// Images in the model run.
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Label {
        label: String,
        probability: f32,
        /// The most likely classes, most likely first (up to `TOP_K`); absent in older workers'
        /// answers, which carry only the top one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        top: Vec<Scored>,
        /// The model that answered; absent in older workers' answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<ModelId>,
    },
    /// The image could not be classified; `reason` is one line for the client.
    Rejected { reason: String },
    /// The request failed on every receive and was set aside in the dead-letter queue (sent by
    /// whichever web tier read it there).
    DeadLettered { receives: u32 },
}

/// How many classes an answer can list: `?k=` goes up to this.
pub const TOP_K: usize = 10;

/// One class and how likely the model finds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub label: String,
    pub probability: f32,
}

/// Which model answered: its name and a version that changes whenever its graph or weights do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message version {0} is not supported (this build speaks {VERSION})")]
    Version(u32),
}

pub trait Message: Serialize + for<'de> Deserialize<'de> {
    fn version(&self) -> u32;

    /// JSON that every queue carries as it is. SQS takes XML's characters only, refusing the
    /// rest or putting U+FFFD in their place; of those, JSON leaves U+FFFE and U+FFFF raw (a file
    /// name may hold them), so they are escaped (`\uffff`) and arrive as sent.
    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_string(self).expect("messages serialize");
        if !json.contains(['\u{FFFE}', '\u{FFFF}']) {
            return json.into_bytes();
        }
        json.replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff")
            .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        // Check the version before the shape, so a newer message says so instead of failing on a field.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes)?;
        if v.version != VERSION {
            return Err(MessageError::Version(v.version));
        }
        let message: Self = serde_json::from_slice(bytes)?;
        debug_assert_eq!(message.version(), VERSION);
        Ok(message)
    }
}

impl Message for ClassifyRequest {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Message for ClassifyResponse {
    fn version(&self) -> u32 {
        self.version
    }
}

/// The output bucket key and value of a result: `test_0` and `(test_0, bathtub)`.
pub fn result_object(input_key: &str, label: &str) -> (String, String) {
    let file = input_key.rsplit('/').next().unwrap_or(input_key);
    let stem = match file.rsplit_once('.') {
        Some((stem, _ext)) if !stem.is_empty() => stem,
        _ => file,
    };
    (stem.to_string(), format!("({stem}, {label})"))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_object_strips_the_extension() {
        assert_eq!(
            result_object("test_0.JPEG", "bathtub"),
            ("test_0".into(), "(test_0, bathtub)".into())
        );
        assert_eq!(result_object("a.b.png", "x"), ("a.b".into(), "(a.b, x)".into()));
        assert_eq!(result_object("noext", "x"), ("noext".into(), "(noext, x)".into()));
        assert_eq!(result_object(".hidden", "x"), (".hidden".into(), "(.hidden, x)".into()));
    }

    #[test]
    fn messages_carry_noncharacters_escaped_and_get_them_back() {
        let key = "a\u{FFFF}b\u{FFFE}\u{FFFD}é.jpg";
        let req = ClassifyRequest {
            version: VERSION,
            request_id: Uuid::new_v4(),
            key: key.into(),
            object_version: None,
            submitted_at_ms: 5,
            requeued: 0,
            given_back: 0,
            reply_to: None,
            answer_record: None,
        };
        let body = String::from_utf8(req.encode()).unwrap();
        assert!(!body.contains(['\u{FFFE}', '\u{FFFF}']), "{body:?}");
        assert!(body.contains("a\\uffffb\\ufffe\u{FFFD}é.jpg"), "{body:?}");
        assert_eq!(ClassifyRequest::decode(body.as_bytes()).unwrap().key, key);
    }

    #[test]
    fn messages_round_trip_and_reject_other_versions() {
        let req = ClassifyRequest {
            version: VERSION,
            request_id: Uuid::new_v4(),
            key: "test_0.JPEG".into(),
            object_version: Some("v1".into()),
            submitted_at_ms: 5,
            requeued: 0,
            given_back: 0,
            reply_to: Some("responses-web-instance2".into()),
            answer_record: None,
        };
        assert_eq!(ClassifyRequest::decode(&req.encode()).unwrap(), req);
        let mut future = serde_json::to_value(&req).unwrap();
        future["version"] = 2.into();
        future["new_field"] = 1.into();
        let err = ClassifyRequest::decode(future.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, MessageError::Version(2)));
        assert!(ClassifyRequest::decode(b"{not json").is_err());
    }

    #[test]
    fn a_field_added_by_a_later_release_is_ignored() {
        let newer = r#"{"version":1,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","key":"a.png","object_version":null,"submitted_at_ms":1,"top_k":5}"#;
        assert_eq!(ClassifyRequest::decode(newer.as_bytes()).unwrap().key, "a.png");
        let newer = r#"{"version":1,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","key":"a.png","outcome":{"label":{"label":"cat","probability":0.5,"top":[]}},"instance":"app-instance1","model":"x"}"#;
        let response = ClassifyResponse::decode(newer.as_bytes()).unwrap();
        assert!(matches!(response.outcome, Outcome::Label { ref label, .. } if label == "cat"));
    }

    #[test]
    fn requests_of_older_web_tiers_still_decode() {
        let old = r#"{"version":1,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","key":"a.png","object_version":null,"submitted_at_ms":1}"#;
        let request = ClassifyRequest::decode(old.as_bytes()).unwrap();
        assert_eq!((request.requeued, request.reply_to.as_deref()), (0, None));
        let encoded = String::from_utf8(request.encode()).unwrap();
        assert!(!encoded.contains("reply_to") && !encoded.contains("requeued"));
    }
}
