//! The `ObjectStore` port on S3: versioned puts, reads of one version, conditional writes that
//! keep the newest upload's result.

use std::time::SystemTime;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::Aws;
use imgrec_domain::ports::{
    metadata_problem, Kept, Metadata, ObjectKey, ObjectStore, PortError, PortResult, StoredObject, UploadOrder,
    ORDER_METADATA,
};

/// Buckets on S3. With versioning enabled on the bucket (Terraform does), `put` returns the
/// version id, so a later upload of the same name cannot change what an earlier request reads.
#[derive(Clone)]
pub struct S3ObjectStore {
    aws: Aws,
    client: Client,
}

/// An S3 client for `sdk`.
pub(crate) fn client(sdk: &SdkConfig) -> Client {
    let mut config = aws_sdk_s3::config::Builder::from(sdk);
    if sdk.endpoint_url().is_some() {
        // Local endpoints serve buckets by path, not by virtual host.
        config = config.force_path_style(true);
    }
    Client::from_conf(config.build())
}

impl S3ObjectStore {
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: client(&aws.sdk),
        }
    }

    /// A clear startup error when a bucket does not exist or access is denied.
    pub async fn check_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.aws
            .call("HeadBucket", self.client.head_bucket().bucket(bucket).send())
            .await
            .map_err(|e| e.on(format_args!("(S3 bucket {bucket:?} is not usable)")))?;
        Ok(())
    }

    /// A clear startup error when a bucket does not keep versions: each request names the version
    /// of its upload, so that two uploads with one file name each get their own label.
    pub async fn check_versioning(&self, bucket: &str) -> anyhow::Result<()> {
        let request = self.client.get_bucket_versioning().bucket(bucket);
        let status = match self.aws.call("GetBucketVersioning", request.send()).await {
            Ok(out) => out.status().map(|s| s.as_str().to_owned()),
            // moto answers with another root element than S3's, which the SDK cannot parse; the
            // status inside it is right.
            Err(e) => match e.body.as_deref().and_then(versioning_status) {
                Some(status) => status,
                None => return Err(e.on(bucket).into()),
            },
        };
        anyhow::ensure!(
            status.as_deref() == Some("Enabled"),
            "S3 bucket {bucket:?} does not keep versions (versioning is {}): enable it, or two uploads \
             with one file name could be classified from the same bytes",
            status.as_deref().unwrap_or("off")
        );
        Ok(())
    }

    /// Every object under `prefix` (all of them: ""), with when it was last written, in S3's
    /// order (by key).
    pub(crate) async fn list_written(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> PortResult<Vec<(String, Option<SystemTime>)>> {
        let request = self.client.list_objects_v2().bucket(bucket);
        let request = if prefix.is_empty() {
            request
        } else {
            request.prefix(prefix)
        };
        let mut pages = request.into_paginator().send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = self
                .aws
                .record("ListObjectsV2", page)
                .map_err(|e| e.on(bucket).into_store_error())?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    let written = object.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
                    objects.push((key.to_owned(), written));
                }
            }
        }
        Ok(objects)
    }
}

/// The `<Status>` of a versioning document (`None` inside: never enabled), or `None` when `xml`
/// is not one.
fn versioning_status(xml: &[u8]) -> Option<Option<String>> {
    let xml = std::str::from_utf8(xml).ok()?;
    if !xml.contains("Versioning") {
        return None;
    }
    let Some(start) = xml.find("<Status>").map(|at| at + "<Status>".len()) else {
        return Some(None);
    };
    let len = xml[start..].find("</Status>")?;
    Some(Some(xml[start..start + len].to_owned()))
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<StoredObject> {
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key.as_str())
            .body(ByteStream::from(bytes));
        let out = self
            .aws
            .call("PutObject", request.send())
            .await
            .map_err(|e| e.on(format_args!("{bucket}/{key}")).into_store_error())?;
        // "null" is what S3 reports for a bucket without versioning.
        let version = out.version_id().filter(|v| *v != "null").map(str::to_owned);
        Ok(StoredObject { version })
    }

    /// Reads the stored object's order (user metadata `upload-order`) and ETag, then writes only
    /// if the object is still that one (If-Match, or If-None-Match when there is none): another
    /// writer between the two makes the put fail (412, or 409 for a race), and it starts over.
    async fn put_newest(
        &self,
        bucket: &str,
        key: &ObjectKey,
        bytes: Bytes,
        order: &UploadOrder,
        metadata: &Metadata,
    ) -> PortResult<Kept> {
        const ATTEMPTS: usize = 10;
        if let Some(problem) = metadata_problem(metadata) {
            return Err(PortError::Refused(problem));
        }
        let mut user_metadata: std::collections::HashMap<String, String> =
            metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        user_metadata.insert(ORDER_METADATA.to_owned(), order.as_str().to_owned());
        for _ in 0..ATTEMPTS {
            let head = self.client.head_object().bucket(bucket).key(key.as_str());
            let stored = match self.aws.call("HeadObject", head.send()).await {
                Ok(out) => {
                    let stored = out
                        .metadata()
                        .and_then(|m| m.get(ORDER_METADATA))
                        .and_then(|o| UploadOrder::parse(o));
                    if stored.as_ref().is_some_and(|stored| stored > order) {
                        return Ok(Kept::Superseded);
                    }
                    Some(out.e_tag().unwrap_or_default().to_owned())
                }
                // HeadObject has no body, so no error code: a 404 is all S3 says.
                Err(e) if e.code_is("NotFound") || e.code_is("NoSuchKey") => None,
                Err(e) => return Err(e.on(format_args!("{bucket}/{key}")).into_store_error()),
            };
            let put = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key.as_str())
                .set_metadata(Some(user_metadata.clone()))
                .body(ByteStream::from(bytes.clone()));
            let put = match &stored {
                Some(etag) => put.if_match(etag),
                None => put.if_none_match("*"),
            };
            match self.aws.call("PutObject", put.send()).await {
                Ok(_) => return Ok(Kept::Stored),
                Err(e) if e.code_is("PreconditionFailed") || e.code_is("ConditionalRequestConflict") => continue,
                Err(e) => return Err(e.on(format_args!("{bucket}/{key}")).into_store_error()),
            }
        }
        Err(anyhow::anyhow!("S3 PutObject {bucket}/{key}: {ATTEMPTS} conditional writes in a row lost a race").into())
    }

    async fn metadata(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<Metadata>> {
        let head = self.client.head_object().bucket(bucket).key(key.as_str());
        match self.aws.call("HeadObject", head.send()).await {
            Ok(out) => Ok(Some(
                (out.metadata().into_iter().flatten())
                    .filter(|(name, _)| name.as_str() != ORDER_METADATA)
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            )),
            Err(e) if e.code_is("NotFound") || e.code_is("NoSuchKey") => Ok(None),
            Err(e) => Err(e.on(format_args!("{bucket}/{key}")).into_store_error()),
        }
    }

    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> PortResult<Option<Bytes>> {
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key.as_str())
            .set_version_id(version.map(str::to_owned));
        match self.aws.call("GetObject", request.send()).await {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("S3 GetObject {bucket}/{key}: body"))?;
                Ok(Some(body.into_bytes()))
            }
            Err(e) if e.code_is("NoSuchKey") => Ok(None),
            Err(e) => Err(e.on(format_args!("{bucket}/{key}")).into_store_error()),
        }
    }

    /// PutObject with `If-None-Match: *`: S3 answers 412 when the key exists, and 409 while
    /// another conditional write of the key is in flight (that one settles it, so ask again).
    async fn put_if_absent(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<bool> {
        const ATTEMPTS: usize = 10;
        for attempt in 0..ATTEMPTS {
            let put = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key.as_str())
                .if_none_match("*")
                .body(ByteStream::from(bytes.clone()));
            match self.aws.call("PutObject", put.send()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.code_is("PreconditionFailed") => return Ok(false),
                Err(e) if e.code_is("ConditionalRequestConflict") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
                }
                Err(e) => return Err(e.on(format_args!("{bucket}/{key}")).into_store_error()),
            }
        }
        Err(
            anyhow::anyhow!("S3 PutObject {bucket}/{key}: {ATTEMPTS} conditional writes in a row met a conflict")
                .into(),
        )
    }

    async fn delete(&self, bucket: &str, key: &ObjectKey) -> PortResult<()> {
        let request = self.client.delete_object().bucket(bucket).key(key.as_str());
        self.aws
            .call("DeleteObject", request.send())
            .await
            .map_err(|e| e.on(format_args!("{bucket}/{key}")).into_store_error())?;
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str) -> PortResult<Vec<ObjectKey>> {
        let objects = self.list_written(bucket, prefix).await?;
        let mut keys: Vec<ObjectKey> = objects
            .into_iter()
            .filter_map(|(key, _)| ObjectKey::new(key).ok())
            .collect();
        keys.sort();
        Ok(keys)
    }
}
