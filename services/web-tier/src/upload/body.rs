//! Reading an upload's multipart body: the first file field, exactly within the size limit,
//! before the body deadline, its memory drawn from the body budget as it arrives.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use imgrec_domain::messages::result_object;
use imgrec_domain::ports::ObjectKey;

use super::budget::Share;
use super::UploadLimits;
use crate::error::UploadError;

/// Field names: `myfile` (the CSE546 workload generator) and `inputFile`.
pub const FIELDS: [&str; 2] = ["myfile", "inputFile"];

/// Other form fields are read and dropped; each may be at most this large.
const OTHER_FIELD_BYTES: u64 = 64 * 1024;
/// Room for the multipart framing and small fields around the file.
const FRAMING_BYTES: u64 = 1024 * 1024;

/// A file received, not yet checked.
pub struct Upload {
    pub key: ObjectKey,
    pub bytes: Bytes,
    /// This upload's share of the body budget, released when the bytes are stored.
    pub reservation: Share,
}

/// The file name as the client sent it -> the input key, refused (400) unless both it and the
/// output key derived from it (the name without its extension) are keys every backend stores.
pub fn key_from_file_name(name: &str) -> Result<ObjectKey, UploadError> {
    // Browsers on Windows may send a full path: keep the base name.
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let bad = |why: String| UploadError::BadRequest(format!("bad file name {:?}: {why}", truncated(name)));
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

/// Reads the multipart body: its one file, exactly within `max_file_bytes`, before the
/// body deadline.
pub async fn read<S, B>(
    content_type: Option<String>,
    content_length: Option<u64>,
    body: S,
    limits: &UploadLimits,
) -> Result<Upload, UploadError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let multipart = multipart(content_type, content_length, body, limits.max_file_bytes, 1)?;
    let mut reservation = limits.body_budget.share();
    let reading = first_file(multipart, limits.max_file_bytes, &mut reservation);
    let (name, bytes) = tokio::time::timeout(limits.body_timeout, reading)
        .await
        .map_err(|_| UploadError::BodyTimeout(limits.body_timeout.as_secs()))??;
    if name.is_empty() {
        return Err(UploadError::BadRequest(
            "the uploaded file has no file name, or one that is not UTF-8".into(),
        ));
    }
    let key = key_from_file_name(&name)?;
    if bytes.is_empty() {
        return Err(UploadError::BadRequest("empty file".into()));
    }
    Ok(Upload {
        key,
        bytes,
        reservation,
    })
}

/// The multipart body of up to `files` files of up to `max_file` bytes each, in the fields
/// `FIELDS`, with room for framing and small fields around them.
pub fn multipart<S, B>(
    content_type: Option<String>,
    content_length: Option<u64>,
    body: S,
    max_file: u64,
    files: u64,
) -> Result<multer::Multipart<'static>, UploadError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let boundary = content_type
        .as_deref()
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            UploadError::BadRequest("send the image as multipart/form-data in the field \"myfile\"".into())
        })?;
    let max_body = max_file.saturating_add(FRAMING_BYTES).saturating_mul(files);
    if content_length.is_some_and(|n| n > max_body) {
        return Err(UploadError::TooLarge(max_file));
    }
    let sizes = FIELDS.iter().fold(
        multer::SizeLimit::new()
            .whole_stream(max_body)
            .per_field(OTHER_FIELD_BYTES),
        |sizes, field| sizes.for_field(*field, max_file),
    );
    let stream = body.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
    Ok(multer::Multipart::with_constraints(
        stream,
        boundary,
        multer::Constraints::new().size_limit(sizes),
    ))
}

/// A field's bytes, its share of the body budget grown as they arrive (`keep`), or read through
/// and dropped.
pub async fn field_bytes(
    field: &mut multer::Field<'static>,
    max: u64,
    share: &mut Share,
    keep: bool,
) -> Result<Bytes, UploadError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
        if keep {
            share.cover((buf.len() + chunk.len()) as u64).await?;
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(buf.freeze())
}

/// The one file in the fields `FIELDS`: its name and bytes, its share of the body budget grown
/// with the bytes kept. Other fields are read through and dropped; a second file is refused
/// rather than dropped unseen.
async fn first_file(
    mut multipart: multer::Multipart<'static>,
    max: u64,
    share: &mut Share,
) -> Result<(String, Bytes), UploadError> {
    let mut found = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        let file_field = field.name().is_some_and(|n| FIELDS.contains(&n));
        let name = field.file_name().unwrap_or_default().to_owned();
        if file_field && found.is_some() && !name.is_empty() {
            return Err(UploadError::BadRequest(
                "send one image per upload (POST /jobs takes several)".into(),
            ));
        }
        let keep = file_field && found.is_none();
        let bytes = field_bytes(&mut field, max, share, keep).await?;
        if keep && !left_empty(&name, &bytes) {
            found = Some((name, bytes));
        }
    }
    found.ok_or_else(|| UploadError::BadRequest(format!("no file: send the image in the form field {:?}", FIELDS[0])))
}

/// A file input the user left empty, as a browser sends it: no file name and no bytes. It is no
/// file, not an empty one (a form with two file inputs sends one whichever is used).
pub fn left_empty(name: &str, bytes: &[u8]) -> bool {
    name.is_empty() && bytes.is_empty()
}

pub fn multipart_error(e: multer::Error, max: u64) -> UploadError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            UploadError::TooLarge(max)
        }
        other => UploadError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use warp::http::StatusCode;

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
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST, "{name:?}");
            assert!(!refusal.to_string().contains('\n'), "{name:?}: {refusal}");
        }
        let long = "x".repeat(1100) + ".jpg";
        let refusal = key_from_file_name(&long).unwrap_err();
        assert!(refusal.to_string().len() < 200, "{refusal}");
    }
}
