use async_trait::async_trait;
use bytes::Bytes;

/// A validated object key: what S3 accepts and what cannot escape a bucket folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("object key is empty")]
    Empty,
    #[error("object key is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("object key contains a control character")]
    ControlCharacter,
    #[error("object key must be relative, without '.', '..' or empty path segments or backslashes")]
    BadPath,
}

impl ObjectKey {
    /// S3's limit.
    pub const MAX_LEN: usize = 1024;

    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > Self::MAX_LEN {
            return Err(KeyError::TooLong { max: Self::MAX_LEN });
        }
        if key.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        if key.contains('\\') || key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(KeyError::BadPath);
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `put` stored: the version to fetch these exact bytes later, even after the key is
/// overwritten by another upload of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub version: Option<String>,
}

/// Buckets of objects: folders locally, S3 on AWS.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> anyhow::Result<StoredObject>;
    /// The object's bytes (that version's when given); `None` if there is no such object.
    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> anyhow::Result<Option<Bytes>>;
    /// Every key in the bucket, sorted.
    async fn list(&self, bucket: &str) -> anyhow::Result<Vec<ObjectKey>>;
}
