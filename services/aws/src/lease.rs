//! A lease as one small S3 object written only with conditional puts (If-None-Match to create,
//! If-Match on the ETag read to renew or take over): of several scalers, the one whose put wins
//! acts. S3 is the one store every instance already reaches; no table to create or pay for.

use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::describe;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::Lease;

/// Where leases live in the bucket: uploads are stored under their base file name, which never
/// holds a `/`, so no upload can land here.
const PREFIX: &str = "_imgrec/leases/";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    holder: String,
    expires_at_ms: u64,
}

pub struct S3Lease {
    client: Client,
    bucket: String,
    key: String,
    holder: String,
    /// The ETag of this holder's last successful put, for releasing it.
    held: Mutex<Option<String>>,
}

/// A conditional put that lost (412), or raced another (409): the lease is someone else's.
fn lost<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(e.code(), Some("PreconditionFailed" | "ConditionalRequestConflict"))
}

impl S3Lease {
    pub fn new(sdk: &SdkConfig, bucket: &str, name: &str, holder: &str) -> Self {
        Self {
            client: super::s3::client(sdk),
            bucket: bucket.to_owned(),
            key: format!("{PREFIX}{name}"),
            holder: holder.to_owned(),
            held: Mutex::new(None),
        }
    }

    /// The lease's record and ETag, `None` when it has never been taken.
    async fn read(&self) -> anyhow::Result<Option<(Record, String)>> {
        super::count("GetObject");
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(anyhow!("S3 GetObject {}: {}", self.key, describe(&e))),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let body = out.body.collect().await?.into_bytes();
        // A record that does not parse is treated as expired: the next put replaces it.
        let record = serde_json::from_slice(&body).unwrap_or(Record {
            holder: String::new(),
            expires_at_ms: 0,
        });
        Ok(Some((record, etag)))
    }

    /// Writes `record` if the object is still at `etag` (or absent, for `None`).
    async fn write(&self, record: &Record, etag: Option<&str>) -> anyhow::Result<Option<String>> {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/json")
            .body(ByteStream::from(serde_json::to_vec(record)?));
        let put = match etag {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        super::count("PutObject");
        match put.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if e.as_service_error().is_some_and(lost) => Ok(None),
            Err(e) => Err(anyhow!("S3 PutObject {}: {}", self.key, describe(&e))),
        }
    }
}

#[async_trait]
impl Lease for S3Lease {
    async fn hold(&self, ttl: Duration) -> anyhow::Result<bool> {
        let now = now_ms();
        let current = self.read().await?;
        let etag = match &current {
            Some((record, _)) if record.holder != self.holder && record.expires_at_ms > now => {
                *self.held.lock().await = None;
                return Ok(false);
            }
            Some((_, etag)) => Some(etag.as_str()),
            None => None,
        };
        let record = Record {
            holder: self.holder.clone(),
            expires_at_ms: now + ttl.as_millis() as u64,
        };
        let written = self.write(&record, etag).await?;
        let held = written.is_some();
        *self.held.lock().await = written;
        Ok(held)
    }

    async fn release(&self) -> anyhow::Result<()> {
        let Some(etag) = self.held.lock().await.take() else {
            return Ok(());
        };
        let expired = Record {
            holder: self.holder.clone(),
            expires_at_ms: 0,
        };
        self.write(&expired, Some(&etag)).await?;
        Ok(())
    }

    fn holder(&self) -> &str {
        &self.holder
    }
}
