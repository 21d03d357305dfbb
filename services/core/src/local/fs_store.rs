use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use async_trait::async_trait;
use bytes::Bytes;

use crate::ports::{ObjectKey, ObjectStore, StoredObject};

/// Buckets as folders: `<root>/s3/<bucket>/<key>`. Writes are atomic (temp file, fsync, rename),
/// and every version stays reachable under `<root>/versions/<bucket>/<id>` (a hard link, no copy)
/// so that a later upload of the same name cannot change what an earlier request classifies.
#[derive(Debug, Clone)]
pub struct FsObjectStore {
    root: PathBuf,
}

fn check_bucket(bucket: &str) -> anyhow::Result<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with('.');
    ensure!(ok, "invalid bucket name {bucket:?}");
    Ok(())
}

fn check_version(version: &str) -> anyhow::Result<()> {
    ensure!(
        !version.is_empty() && version.len() <= 64 && version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "invalid object version {version:?}"
    );
    Ok(())
}

impl FsObjectStore {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self { root: data_dir.into() }
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join("s3").join(bucket)
    }

    fn put_blocking(&self, bucket: &str, key: &ObjectKey, bytes: &[u8]) -> anyhow::Result<StoredObject> {
        check_bucket(bucket)?;
        let target = self.bucket_dir(bucket).join(key.as_str());
        let versions = self.root.join("versions").join(bucket);
        let tmp_dir = self.root.join("tmp");
        for dir in [target.parent().expect("key has a parent"), &versions, &tmp_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).context("cannot create a temp file")?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        let version = uuid::Uuid::new_v4().simple().to_string();
        std::fs::hard_link(tmp.path(), versions.join(&version)).context("cannot record the object version")?;
        tmp.persist(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        sync_dir(target.parent().expect("key has a parent"))?;
        Ok(StoredObject { version: Some(version) })
    }

    fn get_blocking(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> anyhow::Result<Option<Bytes>> {
        check_bucket(bucket)?;
        let path = match version {
            Some(v) => {
                check_version(v)?;
                self.root.join("versions").join(bucket).join(v)
            }
            None => self.bucket_dir(bucket).join(key.as_str()),
        };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn list_blocking(&self, bucket: &str) -> anyhow::Result<Vec<ObjectKey>> {
        check_bucket(bucket)?;
        let base = self.bucket_dir(bucket);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(key) = relative_key(&base, &path) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

fn relative_key(base: &Path, path: &Path) -> Option<ObjectKey> {
    ObjectKey::new(path.strip_prefix(base).ok()?.to_str()?).ok()
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("storage task failed")?
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> anyhow::Result<StoredObject> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.clone());
        blocking(move || this.put_blocking(&bucket, &key, &bytes)).await
    }

    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> anyhow::Result<Option<Bytes>> {
        let (this, bucket, key, version) = (self.clone(), bucket.to_owned(), key.clone(), version.map(str::to_owned));
        blocking(move || this.get_blocking(&bucket, &key, version.as_deref())).await
    }

    async fn list(&self, bucket: &str) -> anyhow::Result<Vec<ObjectKey>> {
        let (this, bucket) = (self.clone(), bucket.to_owned());
        blocking(move || this.list_blocking(&bucket)).await
    }
}
