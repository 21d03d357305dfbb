//! The image check before anything is stored or queued: a worker must be able to read it.

use bytes::Bytes;
use imgrec_classifier::decode::{inspect, verify, ImageError, Probe};

use super::UploadLimits;
use crate::error::UploadError;

/// Decodes the whole image without keeping its pixels (off the async threads, within the decode
/// budget), so that nothing a worker cannot read is queued.
pub async fn validate(bytes: Bytes, limits: &UploadLimits) -> Result<Probe, UploadError> {
    let image = limits.image;
    let header = bytes.clone();
    let cost = off_runtime(move || inspect(&header, &image)).await?.verify_bytes;
    let _reserved = limits.decode_budget.reserve(cost as u64).await?;
    off_runtime(move || verify(&bytes, &image)).await
}

/// Image work runs on the blocking pool: even reading a header walks every chunk of the file.
async fn off_runtime<T: Send + 'static>(
    check: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(check)
        .await
        .map_err(|_| UploadError::CheckFailed)?
        .map_err(UploadError::Image)
}
