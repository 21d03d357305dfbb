//! A lease as one small S3 object written only with conditional puts (If-None-Match to create,
//! If-Match on the ETag read to renew or take over): of several scalers, the one whose put wins
//! acts. S3 is the one store every instance already reaches; no table to create or pay for.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Aws, AwsError};
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
    aws: Aws,
    client: Client,
    bucket: String,
    key: String,
    name: String,
    holder: String,
    /// The ETag of this holder's last successful put, for releasing it.
    held: Mutex<Option<String>>,
}

/// A conditional put that lost (412), or raced another (409): the lease is someone else's.
fn lost(e: &AwsError) -> bool {
    e.code_is("PreconditionFailed") || e.code_is("ConditionalRequestConflict")
}

impl S3Lease {
    pub fn new(aws: &Aws, bucket: &str, name: &str, holder: &str) -> Self {
        Self {
            aws: aws.clone(),
            client: super::s3::client(&aws.sdk),
            bucket: bucket.to_owned(),
            key: format!("{PREFIX}{name}"),
            name: name.to_owned(),
            holder: holder.to_owned(),
            held: Mutex::new(None),
        }
    }

    /// The lease's record and ETag, `None` when it has never been taken.
    async fn read(&self) -> anyhow::Result<Option<(Record, String)>> {
        let request = self.client.get_object().bucket(&self.bucket).key(&self.key);
        let out = match self.aws.call("GetObject", request.send()).await {
            Ok(out) => out,
            Err(e) if e.code_is("NoSuchKey") => return Ok(None),
            // What S3 answers for a missing key when s3:ListBucket is not granted, too.
            Err(e) if e.code_is("AccessDenied") => {
                return Err(anyhow::Error::from(e.on(&self.key)).context(format!(
                    "reading the scaler lease in bucket {} was denied: the role needs s3:GetObject on the \
                     lease and s3:ListBucket on the bucket (without it a lease not yet written reads as 403)",
                    self.bucket
                )))
            }
            Err(e) => return Err(e.on(&self.key).into()),
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
        match self.aws.call("PutObject", put.send()).await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if lost(&e) => Ok(None),
            Err(e) => Err(e.on(&self.key).into()),
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

    fn name(&self) -> &str {
        &self.name
    }

    fn holder(&self) -> &str {
        &self.holder
    }
}
