//! The image check before anything is stored or queued: a worker must be able to read it.

use bytes::Bytes;
use imgrec_classifier::decode::{inspect, verify, ImageError, Probe};

use super::UploadLimits;
use crate::error::UploadError;

/// Decodes the whole image without keeping its pixels (off the async threads, within the decode
/// budget), so that nothing a worker cannot read is queued.
pub async fn validate(bytes: Bytes, limits: &UploadLimits) -> Result<Probe, UploadError> {
    let (image, budget) = (limits.image, limits.decode_budget.clone());
    let header = bytes.clone();
    // One trip to the blocking pool while the decoder's memory is free at once (a hand-off costs
    // more than checking a small image); a second, after waiting for it, when it is not.
    let first = off_runtime(move || {
        let probe = inspect(&header, &image)?;
        Ok(match budget.try_reserve(probe.verify_bytes as u64) {
            Some(_reserved) => Ok(verify(&header, &image)?),
            None => Err(probe.verify_bytes),
        })
    })
    .await?;
    match first {
        Ok(probe) => Ok(probe),
        Err(cost) => {
            let _reserved = limits.decode_budget.reserve(cost as u64).await?;
            off_runtime(move || verify(&bytes, &image)).await
        }
    }
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
