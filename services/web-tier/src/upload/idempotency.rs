//! Uploads sent with an `Idempotency-Key`: the first one with a key claims it (a create-once
//! object, so that of racing retries on any web tiers exactly one wins) and is classified as any
//! upload, its answer kept beside the claim; every retry gets that answer, waiting for it as an
//! upload waits for its label, and nothing is classified or stored twice. A retry with other
//! files is refused (422). A first upload that dies between its claim and its queue (a web tier
//! killed) leaves a claim never marked queued: the retry that finds it so, half an upload's wait
//! after it was written, sends the request itself (one retry, by a create-once record).

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
/// How often a retry looks at a claim not yet queued.
const LOOK: Duration = Duration::from_secs(1);

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
    /// it is that first one, or if that one died before its request was sent.
    pub(super) async fn label_once(&self, upload: Upload, digest: &str) -> Result<Labelled, UploadError> {
        let claim_key = records::claim(digest);
        let claim = Claim {
            fingerprint: fingerprint(&[(upload.key.as_str(), &upload.bytes)]),
            request_id: Uuid::new_v4(),
            created_at_ms: now_ms(),
            queued: false,
        };
        let claim_bytes = serde_json::to_vec(&claim).expect("claims serialize");
        // Twice at most: a first upload that failed before queueing frees its key meanwhile.
        for _ in 0..2 {
            let first = (self.adapters.store)
                .put_if_absent(&self.settings.buckets.output, &claim_key, claim_bytes.clone().into())
                .await
                .map_err(UploadError::unavailable("cannot record the idempotency key"))?;
            if first {
                return self.send_claimed(upload, digest, claim, &claim_key).await;
            }
            let Some(held) = self.read_claim(digest).await? else {
                continue;
            };
            if held.fingerprint != claim.fingerprint {
                return Err(UploadError::KeyReused("Idempotency-Key"));
            }
            self.metrics.replays.inc();
            return self.await_claimed(upload, digest, held).await;
        }
        Err(UploadError::Unavailable {
            what: "the idempotency key is being claimed and freed by other uploads",
            source: anyhow::anyhow!("claim lost twice"),
        })
    }

    async fn read_claim(&self, digest: &str) -> Result<Option<Claim>, UploadError> {
        const UNREADABLE: &str = "cannot read the idempotency key";
        let held = (self.adapters.store)
            .get(&self.settings.buckets.output, &records::claim(digest), None)
            .await
            .map_err(UploadError::unavailable(UNREADABLE))?;
        held.map(|held| serde_json::from_slice(&held))
            .transpose()
            .map_err(UploadError::unavailable(UNREADABLE))
    }

    /// Stores and queues the claimed upload (the claim's request), marks the claim queued and
    /// waits for the answer. `sender`: the create-once record that made this web tier the one to
    /// send it, freed if it cannot be sent, for the client's retry.
    async fn send_claimed(
        &self,
        upload: Upload,
        digest: &str,
        claim: Claim,
        sender: &ObjectKey,
    ) -> Result<Labelled, UploadError> {
        let answer_record = Some(records::claim_answer(digest).to_string());
        let output = &self.settings.buckets.output;
        match self.store_and_queue(upload, claim.request_id, answer_record).await {
            Ok((request, waiting)) => {
                let queued = Claim { queued: true, ..claim };
                let mark = async {
                    let bytes = serde_json::to_vec(&queued).expect("claims serialize");
                    if let Err(e) = self
                        .adapters
                        .store
                        .put(output, &records::claim(digest), bytes.into())
                        .await
                    {
                        tracing::warn!(error = %format!("{e:#}"), "cannot mark an idempotency key's request queued; a retry may send it again");
                    }
                };
                let ((), answer) = tokio::join!(mark, self.await_answer(request, waiting));
                answer
            }
            Err(e) => {
                if let Err(e) = self.adapters.store.delete(output, sender).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot free an idempotency key");
                }
                Err(e)
            }
        }
    }

    /// Waits, as an upload waits for its label, for the answer to the claim `held`; sends its
    /// request itself if the claim is still not queued half an upload's wait
    /// (`web.response_timeout_s`) after it was written: its upload died between the claim and
    /// the queue (a live one stores and queues within seconds), and the retry, sent at once,
    /// still gets its label within its own wait.
    async fn await_claimed(&self, upload: Upload, digest: &str, mut held: Claim) -> Result<Labelled, UploadError> {
        let (image, _) = result_object(upload.key.as_str(), "");
        // Kept only while this retry may yet have to send the request.
        let mut upload = (!held.queued).then_some(upload);
        let timeout = self.settings.web.response_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let output = &self.settings.buckets.output;
        let record = records::claim_answer(digest);
        let mut next_look = tokio::time::Instant::now();
        loop {
            match records::answer(self.adapters.store.as_ref(), output, &record).await {
                Ok(Some(response)) => return self.labelled(response, image),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read a kept answer; trying again"),
            }
            let look = tokio::time::Instant::now() >= next_look;
            if let Some(pending) = upload.take_if(|_| look) {
                next_look = tokio::time::Instant::now() + LOOK;
                match self.read_claim(digest).await {
                    Ok(Some(claim)) => held = claim,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read an idempotency key's claim; trying again"),
                }
                let unqueued_for = Duration::from_millis(now_ms().saturating_sub(held.created_at_ms));
                if held.queued {
                    // Its request was sent: only its answer is awaited now.
                } else if unqueued_for < timeout / 2 {
                    upload = Some(pending);
                } else {
                    let resent = records::claim_resent(digest);
                    let sender = (self.adapters.store)
                        .put_if_absent(output, &resent, bytes::Bytes::from(self.holder.clone()))
                        .await
                        .map_err(UploadError::unavailable("cannot record the idempotency key"))?;
                    if sender {
                        tracing::warn!(request_id = %held.request_id, "an idempotency key's first upload died before its request was sent; sending it for a retry");
                        return self.send_claimed(pending, digest, held, &resent).await;
                    }
                    // Another retry sends it.
                }
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
