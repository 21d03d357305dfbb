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
            Some(_reserved) => Check::Verified(verify(&header, &image)?),
            None => Check::Waits(probe.verify_bytes),
        })
    })
    .await?;
    match first {
        Check::Verified(probe) => Ok(probe),
        Check::Waits(cost) => {
            let _reserved = limits.decode_budget.reserve(cost as u64).await?;
            off_runtime(move || verify(&bytes, &image)).await
        }
    }
}

/// How the first trip ended: the image verified, or its verifying waits for this many bytes of
/// the decode budget.
enum Check {
    Verified(Probe),
    Waits(usize),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use imgrec_classifier::ImageLimits;

    use super::*;

    const JPEG: &[u8] = include_bytes!("../../../classifier/tests/fixtures/small.jpg");

    fn limits(decode_budget_bytes: u64) -> UploadLimits {
        let mut web = imgrec_runtime::settings::Settings::defaults().unwrap().web;
        web.decode_budget_bytes = decode_budget_bytes;
        UploadLimits::new(&web, ImageLimits::default())
    }

    #[tokio::test]
    async fn a_check_verifies_at_once_or_after_waiting_for_the_decode_budget() {
        let limits = limits(64 * 1024);
        let free = validate(Bytes::from_static(JPEG), &limits).await.unwrap();
        let held = limits.decode_budget.reserve(u64::MAX).await.unwrap();
        let waiting = tokio::spawn({
            let limits = limits.clone();
            async move {
                validate(Bytes::from_static(JPEG), &limits)
                    .await
                    .map(|p| (p.width, p.height))
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "verified without room in the decode budget");
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), (free.width, free.height));
        let truncated = Bytes::copy_from_slice(&JPEG[..JPEG.len() / 2]);
        assert!(matches!(validate(truncated, &limits).await, Err(UploadError::Image(_))));
    }
}
