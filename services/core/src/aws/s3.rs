use anyhow::{anyhow, Context};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::describe;
use crate::ports::{ObjectKey, ObjectStore, StoredObject};

/// Buckets on S3. With versioning enabled on the bucket (Terraform does), `put` returns the
/// version id, so a later upload of the same name cannot change what an earlier request reads.
#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
}

impl S3ObjectStore {
    pub fn new(sdk: &SdkConfig) -> Self {
        let mut config = aws_sdk_s3::config::Builder::from(sdk);
        if sdk.endpoint_url().is_some() {
            // Local endpoints serve buckets by path, not by virtual host.
            config = config.force_path_style(true);
        }
        Self {
            client: Client::from_conf(config.build()),
        }
    }

    /// A clear startup error when a bucket does not exist or access is denied.
    pub async fn check_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| anyhow!("S3 bucket {bucket:?} is not usable: {}", describe(&e)))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> anyhow::Result<StoredObject> {
        super::count("PutObject");
        let out = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key.as_str())
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| anyhow!("S3 PutObject {bucket}/{key}: {}", describe(&e)))?;
        // "null" is what S3 reports for a bucket without versioning.
        let version = out.version_id().filter(|v| *v != "null").map(str::to_owned);
        Ok(StoredObject { version })
    }

    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> anyhow::Result<Option<Bytes>> {
        super::count("GetObject");
        let result = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key.as_str())
            .set_version_id(version.map(str::to_owned))
            .send()
            .await;
        match result {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("S3 GetObject {bucket}/{key}: body"))?;
                Ok(Some(body.into_bytes()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(anyhow!("S3 GetObject {bucket}/{key}: {}", describe(&e))),
        }
    }

    async fn list(&self, bucket: &str) -> anyhow::Result<Vec<ObjectKey>> {
        let mut pages = self.client.list_objects_v2().bucket(bucket).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            super::count("ListObjectsV2");
            let page = page.map_err(|e| anyhow!("S3 ListObjectsV2 {bucket}: {}", describe(&e)))?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| ObjectKey::new(k).ok()) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}
