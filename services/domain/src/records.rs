//! What the service keeps about jobs and idempotent uploads: objects under `_imgrec/` in the
//! output bucket, so that every web tier of a deployment reads the same state and none keeps it in
//! memory. Uploaded images never land there (a result's key is a file name, with no `/`). Kept for
//! `jobs.retention_s`, then swept (locally) or expired by the bucket's lifecycle rule (on S3).
//!
//! - `_imgrec/jobs/<id>`: the job (`Job`), written once all its images are queued;
//! - `_imgrec/jobs/<id>/<index>`: each image's answer (a `ClassifyResponse`), written by the
//!   worker that classified it (or by the web tier, for an image refused on arrival or
//!   dead-lettered);
//! - `_imgrec/callbacks/<id>`: a job's callback not yet delivered (`CallbackLease`): the web
//!   tier that holds it watches the job and delivers; any web tier takes over a lease that lapsed
//!   (its holder died), creating `_imgrec/callbacks/<id>.<generation>` once, so that one does;
//! - `_imgrec/idempotency/<digest>`: the first upload with an `Idempotency-Key` (`Claim`),
//!   `_imgrec/idempotency/<digest>/answer` its answer, and `.../resent` if a retry had to send its
//!   request (the first upload died before it could);
//! - `_imgrec/starts/<instance id>` (on AWS): whether that instance's worker could start, kept by
//!   the AWS adapters (`imgrec_aws::StartRecords`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messages::{ClassifyResponse, Message};
use crate::ports::{ObjectKey, ObjectStore, PortError, PortResult};

/// Where records live in the output bucket.
pub const PREFIX: &str = "_imgrec/";

/// A job's id: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub fn random() -> Self {
        Self(Uuid::new_v4().simple().to_string())
    }

    /// The id a client token names: the first 32 digits of its digest (lowercase hex), so that
    /// every web tier finds the same job for one token.
    pub fn from_digest(hex_digest: &str) -> Option<Self> {
        Self::parse(hex_digest.get(..32)?)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("not a job id: {text:?}"))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// A job as submitted: its images in the order sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub created_at_ms: u64,
    /// The digest of the images sent (names and bytes, in order): a retry with the job's client
    /// token must send the same.
    pub fingerprint: String,
    pub images: Vec<JobImage>,
    /// Called (POST, the job's status) once every image has its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobImage {
    /// The file name, as stored in the input bucket.
    pub image: String,
    pub request_id: Uuid,
}

/// The first upload sent with an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The digest of its file name and bytes: a retry must send the same.
    pub fingerprint: String,
    pub request_id: Uuid,
    pub created_at_ms: u64,
    /// Whether its request was queued (the claim is written first, and again once it is): a
    /// claim never marked so is of an upload that died before its request was sent, which a
    /// retry sends in its place. Claims of releases before this field are taken as queued.
    #[serde(default = "queued_before_this_field")]
    pub queued: bool,
}

fn queued_before_this_field() -> bool {
    true
}

pub fn job(id: &JobId) -> ObjectKey {
    key(format!("{PREFIX}jobs/{id}"))
}

/// The prefix of a job's answers.
pub fn job_answers(id: &JobId) -> String {
    format!("{PREFIX}jobs/{id}/")
}

pub fn job_answer(id: &JobId, index: usize) -> ObjectKey {
    key(format!("{}{index:06}", job_answers(id)))
}

/// The index of the image a key of `job_answers(id)` answers.
pub fn job_answer_index(id: &JobId, key: &ObjectKey) -> Option<usize> {
    key.as_str().strip_prefix(&job_answers(id))?.parse().ok()
}

/// Where jobs' callbacks not yet delivered are kept.
pub const CALLBACKS: &str = "_imgrec/callbacks/";

/// Who delivers a job's callback, until when (unless renewed), and how often it changed hands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackLease {
    /// The web tier process holding it (`unique_holder`).
    pub holder: String,
    /// 0 for the web tier that took the job, one more for each takeover.
    pub generation: u64,
    /// Lapsed after this (0: given up on a stop, for another to take at once).
    pub until_ms: u64,
}

pub fn pending_callback(id: &JobId) -> ObjectKey {
    key(format!("{CALLBACKS}{id}"))
}

/// The job whose pending callback `key` is (not a takeover's claim, nor anything else).
pub fn pending_callback_id(key: &ObjectKey) -> Option<JobId> {
    JobId::parse(key.as_str().strip_prefix(CALLBACKS)?)
}

/// Created once by the web tier that takes over a lapsed lease as its `generation`.
pub fn callback_takeover(id: &JobId, generation: u64) -> ObjectKey {
    key(format!("{CALLBACKS}{id}.{generation}"))
}

/// `digest`: the lowercase hex digest of the key and who sent it.
pub fn claim(digest: &str) -> ObjectKey {
    key(format!("{PREFIX}idempotency/{digest}"))
}

pub fn claim_answer(digest: &str) -> ObjectKey {
    key(format!("{PREFIX}idempotency/{digest}/answer"))
}

/// Created once by the retry that sends the request of a claim whose upload died unqueued.
pub fn claim_resent(digest: &str) -> ObjectKey {
    key(format!("{PREFIX}idempotency/{digest}/resent"))
}

fn key(text: String) -> ObjectKey {
    ObjectKey::new(text).expect("record keys are short, printable and have no dot segments")
}

/// Keeps `response` as the answer at `key`, which must be a record's (a request names where its
/// answer is kept; nothing else of the bucket can be written this way).
pub async fn store_answer(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    response: &ClassifyResponse,
) -> PortResult<()> {
    if !key.starts_with(PREFIX) {
        return Err(PortError::Refused(format!("{key:?} is not a record's key")));
    }
    let key = ObjectKey::new(key).map_err(|e| PortError::Refused(format!("bad record key: {e}")))?;
    store.put(bucket, &key, response.encode().into()).await?;
    Ok(())
}

/// The answer kept at `key`, if there is one (`None` too for one this release cannot read).
pub async fn answer(store: &dyn ObjectStore, bucket: &str, key: &ObjectKey) -> PortResult<Option<ClassifyResponse>> {
    let Some(bytes) = store.get(bucket, key, None).await? else {
        return Ok(None);
    };
    Ok(ClassifyResponse::decode(&bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_32_lowercase_hex_digits() {
        let id = JobId::random();
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"a".repeat(33),
            "../../../../../../etc/passwd0000",
        ] {
            assert!(JobId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(serde_json::from_str::<JobId>("\"nope\"").is_err());
        let digest = "0123456789abcdef".repeat(4);
        assert_eq!(JobId::from_digest(&digest).unwrap().as_str(), &digest[..32]);
    }

    #[test]
    fn claims_of_releases_before_the_queued_mark_read_as_queued() {
        let old = r#"{"fingerprint":"f","request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","created_at_ms":1}"#;
        assert!(
            serde_json::from_str::<Claim>(old).unwrap().queued,
            "no retry may send their requests again"
        );
        let new = Claim {
            fingerprint: "f".into(),
            request_id: Uuid::new_v4(),
            created_at_ms: 1,
            queued: false,
        };
        let read: Claim = serde_json::from_slice(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(read, new);
    }

    #[test]
    fn answers_are_found_by_index_under_their_job_only() {
        let (a, b) = (JobId::random(), JobId::random());
        assert_eq!(job_answer_index(&a, &job_answer(&a, 7)), Some(7));
        assert_eq!(job_answer_index(&a, &job_answer(&b, 7)), None);
        assert_eq!(job_answer_index(&a, &job(&a)), None);
        assert_eq!(job_answer_index(&a, &pending_callback(&a)), None);
        assert_eq!(pending_callback_id(&pending_callback(&a)), Some(a.clone()));
        assert_eq!(pending_callback_id(&callback_takeover(&a, 1)), None);
        assert_eq!(pending_callback_id(&job(&a)), None);
        assert!(job_answer(&a, 999_999).as_str().starts_with(PREFIX));
        assert!(job_answer(&a, 2) < job_answer(&a, 10), "listed in order");
    }
}
