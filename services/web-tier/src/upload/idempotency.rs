//! Uploads sent with an `Idempotency-Key`: the first one with a key claims it (a create-once
//! object, so that of racing retries on any web tiers exactly one wins) and is classified as any
//! upload, its answer kept beside the claim; every retry gets that answer, waiting for it as an
//! upload waits for its label, and nothing is classified or stored twice. A retry with other
//! files is refused (422).

use std::time::Duration;

use imgrec_domain::messages::{now_ms, result_object};
use imgrec_domain::ports::ObjectKey;
use imgrec_domain::records::{self, Claim};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::body::Upload;
use super::Labelled;
use crate::error::UploadError;
use crate::state::WebTier;

/// Keys longer than this are refused (Stripe's limit).
const MAX_KEY_LEN: usize = 255;
/// How often a retry looks for the first upload's answer.
const POLL: Duration = Duration::from_millis(200);

/// The digest naming a key's records: each client (API key) has keys of its own. `what` names
/// the key in the error of a bad one.
pub fn digest(what: &str, client: &str, key: &str) -> Result<String, UploadError> {
    let printable = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
        return Err(UploadError::BadRequest(format!(
            "the {what} must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    Ok(hex(Sha256::new()
        .chain_update(client)
        .chain_update([0])
        .chain_update(key)))
}

/// The digest of files' names and bytes, in order: what a retry must send again.
#[derive(Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn add(&mut self, name: &str, bytes: &[u8]) {
        // Lengths first, so that no two lists of files hash alike.
        self.0.update((name.len() as u64).to_be_bytes());
        self.0.update(name);
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    pub fn finish(self) -> String {
        hex(self.0)
    }
}

pub fn fingerprint(files: &[(&str, &[u8])]) -> String {
    let mut fingerprint = Fingerprint::default();
    for (name, bytes) in files {
        fingerprint.add(name, bytes);
    }
    fingerprint.finish()
}

fn hex(hasher: Sha256) -> String {
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl WebTier {
    /// The label of the first upload sent with this key (`digest`), classifying `upload` only if
    /// it is that first one.
    pub(super) async fn label_once(&self, upload: Upload, digest: &str) -> Result<Labelled, UploadError> {
        let output = &self.settings.buckets.output;
        let store = &self.adapters.store;
        let claim_key = records::claim(digest);
        let claim = Claim {
            fingerprint: fingerprint(&[(upload.key.as_str(), &upload.bytes)]),
            request_id: Uuid::new_v4(),
            created_at_ms: now_ms(),
        };
        let claim_bytes = serde_json::to_vec(&claim).expect("claims serialize");
        // Twice at most: a first upload that failed before queueing frees its key meanwhile.
        for _ in 0..2 {
            let first = (store
                .put_if_absent(output, &claim_key, claim_bytes.clone().into())
                .await)
                .map_err(UploadError::unavailable("cannot record the idempotency key"))?;
            if first {
                let answer_record = Some(records::claim_answer(digest).to_string());
                return match self.store_and_queue(upload, claim.request_id, answer_record).await {
                    Ok((request, waiting)) => self.await_answer(request, waiting).await,
                    Err(e) => {
                        // Nothing was queued: free the key for the client's retry.
                        if let Err(e) = store.delete(output, &claim_key).await {
                            tracing::warn!(error = %format!("{e:#}"), "cannot free an idempotency key");
                        }
                        Err(e)
                    }
                };
            }
            let held = (store.get(output, &claim_key, None).await)
                .map_err(UploadError::unavailable("cannot read the idempotency key"))?;
            let Some(held) = held else { continue };
            let held: Claim =
                serde_json::from_slice(&held).map_err(UploadError::unavailable("cannot read the idempotency key"))?;
            if held.fingerprint != claim.fingerprint {
                return Err(UploadError::KeyReused("Idempotency-Key"));
            }
            self.metrics.replays.inc();
            let (image, _) = result_object(upload.key.as_str(), "");
            return self.await_record(&records::claim_answer(digest), image).await;
        }
        Err(UploadError::Unavailable {
            what: "the idempotency key is being claimed and freed by other uploads",
            source: anyhow::anyhow!("claim lost twice"),
        })
    }

    /// Waits, as an upload waits for its label, for an answer kept at `record`.
    async fn await_record(&self, record: &ObjectKey, image: String) -> Result<Labelled, UploadError> {
        let timeout = self.settings.web.response_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let output = &self.settings.buckets.output;
        loop {
            let kept = records::answer(self.adapters.store.as_ref(), output, record).await;
            match kept {
                Ok(Some(response)) => return self.labelled(response, image),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read a kept answer; trying again"),
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Err(UploadError::Timeout {
                    seconds: timeout.as_secs(),
                    image,
                });
            }
            if self.waiters.is_closed() {
                return Err(UploadError::StoppedWaiting(image));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_by_client_and_checked() {
        let a = digest("key", "alice", "k1").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, digest("key", "alice", "k1").unwrap());
        assert_ne!(a, digest("key", "bob", "k1").unwrap());
        assert_ne!(a, digest("key", "alic", "ek1").unwrap(), "the scope is delimited");
        for bad in ["", "tab\there", "é", &"x".repeat(256)] {
            assert!(
                matches!(digest("key", "", bad), Err(UploadError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fingerprints_tell_names_bytes_and_their_split_apart() {
        let f = |parts: &[(&str, &[u8])]| fingerprint(parts);
        let one = f(&[("a.jpg", b"xyz")]);
        assert_eq!(one, f(&[("a.jpg", b"xyz")]));
        assert_ne!(one, f(&[("a.jpg", b"xy")]));
        assert_ne!(one, f(&[("b.jpg", b"xyz")]));
        assert_ne!(f(&[("a", b"bc")]), f(&[("ab", b"c")]));
        assert_ne!(f(&[("a", b"1"), ("b", b"2")]), f(&[("b", b"2"), ("a", b"1")]));
    }
}
