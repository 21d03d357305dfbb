//! `POST /`: the upload, validated before anything is stored or queued.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::TryStreamExt;
use imgrec_core::classifier::decode::{decode_rgb, ImageError};
use imgrec_core::classifier::ImageLimits;
use imgrec_core::ports::ObjectKey;
use warp::http::StatusCode;
use warp::multipart::FormData;

/// Field names: `myfile` (the CSE546 workload generator) and `inputFile`.
pub const FIELDS: [&str; 2] = ["myfile", "inputFile"];

pub struct Upload {
    pub key: ObjectKey,
    pub bytes: Bytes,
}

/// A client error: status and a one-line reason.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: String,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// The file's base name (browsers on Windows may send a full path) as an object key.
fn key_from_file_name(name: &str) -> Result<ObjectKey, Rejection> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    ObjectKey::new(base).map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, format!("bad file name {name:?}: {e}")))
}

pub async fn read(form: FormData) -> Result<Upload, Rejection> {
    let mut parts = Box::pin(form);
    let mut found = None;
    while let Some(part) = parts
        .try_next()
        .await
        .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, format!("malformed multipart body: {e}")))?
    {
        if !FIELDS.contains(&part.name()) || found.is_some() {
            continue; // other fields are ignored; their data is skipped by the stream
        }
        let name = part.filename().unwrap_or_default().to_owned();
        let mut buf = BytesMut::new();
        let mut stream = Box::pin(part.stream());
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, format!("cannot read the upload: {e}")))?
        {
            buf.put(chunk.chunk());
        }
        found = Some((name, buf.freeze()));
    }
    let (name, bytes) = found.ok_or_else(|| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("no file: send the image in the form field {:?}", FIELDS[0]),
        )
    })?;
    if name.is_empty() {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "the uploaded file has no file name",
        ));
    }
    let key = key_from_file_name(&name)?;
    if bytes.is_empty() {
        return Err(Rejection::new(StatusCode::BAD_REQUEST, "empty file"));
    }
    Ok(Upload { key, bytes })
}

/// Decodes the whole image (off the async threads) so that nothing a worker cannot read is queued.
pub async fn validate(bytes: Bytes, limits: ImageLimits) -> Result<(), Rejection> {
    let result = tokio::task::spawn_blocking(move || decode_rgb(&bytes, &limits).map(|_| ()))
        .await
        .map_err(|_| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, "image check failed"))?;
    result.map_err(|e| {
        let status = match e {
            ImageError::Empty => StatusCode::BAD_REQUEST,
            ImageError::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ImageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ImageError::ZeroSize | ImageError::Truncated | ImageError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Rejection::new(status, e.to_string())
    })
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
        assert!(key_from_file_name("..").is_err());
        assert!(key_from_file_name("dir/").is_err());
        assert!(key_from_file_name("a\0b.jpg").is_err());
    }
}
