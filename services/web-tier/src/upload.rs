//! `POST /`: the upload, read within limits and checked before anything is stored or queued.
//!
//! Memory is bounded by configuration, not by what clients send: an upload reserves room for its
//! body in a shared budget before it is read (its Content-Length, or the most a file may be when it
//! is chunked), and the image check reserves the decoder's working memory in a second budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use imgrec_classifier::decode::{inspect, verify, ImageError, Probe};
use imgrec_classifier::ImageLimits;
use imgrec_domain::messages::result_object;
use imgrec_domain::ports::ObjectKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::StatusCode;

/// Field names: `myfile` (the CSE546 workload generator) and `inputFile`.
pub const FIELDS: [&str; 2] = ["myfile", "inputFile"];

/// Other form fields are read and dropped; each may be at most this large.
const OTHER_FIELD_BYTES: u64 = 64 * 1024;
/// Room for the multipart framing and small fields around the file.
const FRAMING_BYTES: u64 = 1024 * 1024;

pub struct Upload {
    pub key: ObjectKey,
    pub bytes: Bytes,
    /// This upload's share of the body budget, released when the bytes are stored.
    pub reservation: OwnedSemaphorePermit,
}

/// A client error: status and a one-line reason.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }
}

/// A memory budget in bytes, shared by concurrent requests (counted in KiB: a semaphore holds at
/// most `u32::MAX` permits).
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// Waits until `bytes` are free (the whole budget at most, so one large request still runs alone).
    pub async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.kib);
        self.permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the budget's semaphore is never closed")
    }
}

/// What an upload may be, and the budgets it draws on.
#[derive(Clone)]
pub struct UploadLimits {
    pub max_file_bytes: u64,
    pub body_timeout: Duration,
    pub image: ImageLimits,
    pub body_budget: Budget,
    pub decode_budget: Budget,
}

/// The file name as the client sent it -> the input key, refused (400) unless both it and the
/// output key derived from it (the name without its extension) are keys every backend stores.
pub fn key_from_file_name(name: &str) -> Result<ObjectKey, Refusal> {
    // Browsers on Windows may send a full path: keep the base name.
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let bad = |why: String| Refusal::bad_request(format!("bad file name {:?}: {why}", truncated(name)));
    if base.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if base.chars().any(char::is_control) {
        return Err(bad("it contains a control character".into()));
    }
    let key = ObjectKey::new(base).map_err(|e| bad(e.to_string()))?;
    let (stem, _) = result_object(base, "");
    ObjectKey::new(stem.as_str()).map_err(|e| bad(format!("its result would be stored as {stem:?}, and {e}")))?;
    Ok(key)
}

/// At most 60 characters of a client-supplied name, for a one-line reason.
fn truncated(name: &str) -> String {
    match name.char_indices().nth(60) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_owned(),
    }
}

/// Reads the multipart body: the first file field, exactly within `max_file_bytes`, before the
/// body deadline.
pub async fn read<S, B>(
    content_type: Option<String>,
    content_length: Option<u64>,
    body: S,
    limits: &UploadLimits,
) -> Result<Upload, Refusal>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let boundary = content_type
        .as_deref()
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| Refusal::bad_request("send the image as multipart/form-data in the field \"myfile\""))?;
    let max_body = limits.max_file_bytes + FRAMING_BYTES;
    if content_length.is_some_and(|n| n > max_body) {
        return Err(too_large(limits.max_file_bytes));
    }
    let reservation = limits
        .body_budget
        .reserve(content_length.unwrap_or(max_body).min(limits.max_file_bytes))
        .await;
    let sizes = FIELDS.iter().fold(
        multer::SizeLimit::new()
            .whole_stream(max_body)
            .per_field(OTHER_FIELD_BYTES),
        |sizes, field| sizes.for_field(*field, limits.max_file_bytes),
    );
    let stream = body.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
    let multipart = multer::Multipart::with_constraints(stream, boundary, multer::Constraints::new().size_limit(sizes));
    let (name, bytes) = tokio::time::timeout(limits.body_timeout, first_file(multipart, limits.max_file_bytes))
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload did not arrive within {}s", limits.body_timeout.as_secs()),
            )
        })??;
    if name.is_empty() {
        return Err(Refusal::bad_request("the uploaded file has no file name"));
    }
    let key = key_from_file_name(&name)?;
    if bytes.is_empty() {
        return Err(Refusal::bad_request("empty file"));
    }
    Ok(Upload {
        key,
        bytes,
        reservation,
    })
}

async fn first_file(mut multipart: multer::Multipart<'static>, max: u64) -> Result<(String, Bytes), Refusal> {
    let mut found = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        let wanted = found.is_none() && field.name().is_some_and(|n| FIELDS.contains(&n));
        let name = field.file_name().unwrap_or_default().to_owned();
        let mut buf = BytesMut::new();
        // Other fields (and a second file) are read through and dropped.
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
            if wanted {
                buf.extend_from_slice(&chunk);
            }
        }
        if wanted {
            found = Some((name, buf.freeze()));
        }
    }
    found.ok_or_else(|| Refusal::bad_request(format!("no file: send the image in the form field {:?}", FIELDS[0])))
}

fn too_large(max: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the file is larger than {max} bytes"),
    )
}

fn multipart_error(e: multer::Error, max: u64) -> Refusal {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => too_large(max),
        other => Refusal::bad_request(format!("malformed multipart body: {other}")),
    }
}

/// Decodes the whole image without keeping its pixels (off the async threads, within the decode
/// budget), so that nothing a worker cannot read is queued.
pub async fn validate(bytes: Bytes, limits: &UploadLimits) -> Result<Probe, Refusal> {
    let image = limits.image;
    let cost = inspect(&bytes, &image).map_err(image_refusal)?.verify_bytes;
    let _reserved = limits.decode_budget.reserve(cost as u64).await;
    tokio::task::spawn_blocking(move || verify(&bytes, &image))
        .await
        .map_err(|_| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "image check failed"))?
        .map_err(image_refusal)
}

fn image_refusal(e: ImageError) -> Refusal {
    let status = match e {
        ImageError::Empty => StatusCode::BAD_REQUEST,
        ImageError::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ImageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ImageError::ZeroSize | ImageError::Truncated | ImageError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Refusal::new(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_become_base_name_keys() {
        assert_eq!(key_from_file_name("test_0.JPEG").unwrap().as_str(), "test_0.JPEG");
        assert_eq!(
            key_from_file_name("C:\\Users\\me\\cat.png").unwrap().as_str(),
            "cat.png"
        );
        assert_eq!(key_from_file_name("/etc/../x.jpg").unwrap().as_str(), "x.jpg");
        assert_eq!(key_from_file_name("....png").unwrap().as_str(), "....png");
        assert_eq!(key_from_file_name(".hidden").unwrap().as_str(), ".hidden");
        assert_eq!(
            key_from_file_name("héllo wörld.jpg").unwrap().as_str(),
            "héllo wörld.jpg"
        );
    }

    #[test]
    fn names_without_a_usable_stem_are_refused() {
        for name in [
            "..",
            ".",
            "dir/",
            "a\0b.jpg",
            "..jpg",
            "...png",
            "",
            "  ",
            "tab\there.png",
        ] {
            let refusal = key_from_file_name(name).expect_err(name);
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{name:?}");
            assert!(!refusal.reason.contains('\n'), "{name:?}: {}", refusal.reason);
        }
        let long = "x".repeat(1100) + ".jpg";
        let refusal = key_from_file_name(&long).unwrap_err();
        assert!(refusal.reason.len() < 200, "{}", refusal.reason);
    }

    #[tokio::test]
    async fn a_budget_larger_than_the_whole_is_capped_and_others_wait() {
        let budget = Budget::new(10 * 1024);
        let whole = budget.reserve(1 << 40).await; // capped: runs alone
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(1024)).await;
        assert!(waiting.is_err(), "a reservation ran while the budget was spent");
        drop(whole);
        let _ = tokio::time::timeout(Duration::from_millis(500), budget.reserve(1024))
            .await
            .expect("the budget was released");
    }
}
