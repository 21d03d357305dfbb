//! `POST /`: the upload, read within limits and checked before anything is stored or queued.
//!
//! Memory is bounded by configuration, not by what clients send: an upload's share of a shared
//! body budget grows with the bytes it has actually sent (a slow sender that announces 9 MB and
//! trickles holds what it trickled), and the image check reserves the decoder's working memory in
//! a second budget. No wait for either is unbounded: past `MEMORY_WAIT` the client gets 503.

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

/// The longest an upload waits for room in a memory budget before it is told to come back: long
/// enough to ride out a burst of large uploads being stored, short enough that a client is never
/// left hanging on memory held by others.
pub const MEMORY_WAIT: Duration = Duration::from_secs(5);

pub struct Upload {
    pub key: ObjectKey,
    pub bytes: Bytes,
    /// This upload's share of the body budget, released when the bytes are stored.
    pub reservation: Share,
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

/// Room held in a budget, released on drop; it can grow.
pub struct Share {
    budget: Budget,
    held: OwnedSemaphorePermit,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// A share that holds nothing yet.
    pub fn share(&self) -> Share {
        let held = self
            .permits
            .clone()
            .try_acquire_many_owned(0)
            .expect("the budget's semaphore is never closed");
        Share {
            budget: self.clone(),
            held,
        }
    }

    /// Waits at most `MEMORY_WAIT` until `bytes` are free (the whole budget at most, so one large
    /// request still runs alone).
    pub async fn reserve(&self, bytes: u64) -> Result<Share, Refusal> {
        let mut share = self.share();
        share.cover(bytes).await?;
        Ok(share)
    }

    fn kib_of(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(self.kib)
    }
}

impl Share {
    /// Grows the share to cover `bytes` in all, waiting at most `MEMORY_WAIT` for the rest; past
    /// that, 503: the memory is held by others, not by this client's fault.
    pub async fn cover(&mut self, bytes: u64) -> Result<(), Refusal> {
        let want = self.budget.kib_of(bytes);
        let held = self.held.num_permits() as u32;
        if want <= held {
            return Ok(());
        }
        let more = tokio::time::timeout(MEMORY_WAIT, self.budget.permits.clone().acquire_many_owned(want - held))
            .await
            .map_err(|_| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is busy with other uploads; try again shortly",
                )
            })?
            .expect("the budget's semaphore is never closed");
        self.held.merge(more);
        Ok(())
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
    let sizes = FIELDS.iter().fold(
        multer::SizeLimit::new()
            .whole_stream(max_body)
            .per_field(OTHER_FIELD_BYTES),
        |sizes, field| sizes.for_field(*field, limits.max_file_bytes),
    );
    let stream = body.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
    let multipart = multer::Multipart::with_constraints(stream, boundary, multer::Constraints::new().size_limit(sizes));
    let mut reservation = limits.body_budget.share();
    let reading = first_file(multipart, limits.max_file_bytes, &mut reservation);
    let (name, bytes) = tokio::time::timeout(limits.body_timeout, reading).await.map_err(|_| {
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

/// The first file field's name and bytes; its share of the body budget grows with the bytes kept.
async fn first_file(
    mut multipart: multer::Multipart<'static>,
    max: u64,
    share: &mut Share,
) -> Result<(String, Bytes), Refusal> {
    let mut found = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        let wanted = found.is_none() && field.name().is_some_and(|n| FIELDS.contains(&n));
        let name = field.file_name().unwrap_or_default().to_owned();
        let mut buf = BytesMut::new();
        // Other fields (and a second file) are read through and dropped.
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
            if wanted {
                share.cover((buf.len() + chunk.len()) as u64).await?;
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
    let header = bytes.clone();
    let cost = off_runtime(move || inspect(&header, &image)).await?.verify_bytes;
    let _reserved = limits.decode_budget.reserve(cost as u64).await?;
    off_runtime(move || verify(&bytes, &image)).await
}

/// Image work runs on the blocking pool: even reading a header walks every chunk of the file.
async fn off_runtime<T: Send + 'static>(
    check: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(check)
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
        let whole = budget.reserve(1 << 40).await.unwrap(); // capped: runs alone
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(1024)).await;
        assert!(waiting.is_err(), "a reservation ran while the budget was spent");
        drop(whole);
        let _ = tokio::time::timeout(Duration::from_millis(500), budget.reserve(1024))
            .await
            .expect("the budget was released");
    }

    fn bytes(share: &Share) -> usize {
        share.held.num_permits() * 1024
    }

    #[tokio::test]
    async fn a_share_grows_with_what_it_covers_and_gives_it_all_back() {
        let budget = Budget::new(100 * 1024);
        let mut share = budget.share();
        assert_eq!(bytes(&share), 0);
        share.cover(1).await.unwrap();
        share.cover(30 * 1024).await.unwrap();
        share.cover(10).await.unwrap(); // never shrinks while held
        assert_eq!(bytes(&share), 30 * 1024);
        let other = budget.reserve(70 * 1024).await.unwrap();
        drop(share);
        drop(other);
        assert_eq!(bytes(&budget.reserve(100 * 1024).await.unwrap()), 100 * 1024);
    }
}
