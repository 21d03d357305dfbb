//! `ObjectStore`: the input and output buckets, and `ObjectKey`, the keys every backend stores.

use async_trait::async_trait;

use super::error::PortResult;
use bytes::Bytes;

/// A validated object key: S3's keys (1 to 1,024 bytes of UTF-8) less those its REST API cannot
/// carry unchanged: control characters (XML 1.0 cannot hold them in listings) and `.` or `..`
/// path segments (HTTP clients normalize them away). Every adapter stores every `ObjectKey`.
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
    #[error("object key has a '.' or '..' path segment")]
    DotSegment,
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
        if key.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(KeyError::DotSegment);
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

/// Where a result stands among the results stored under one key: the order of the uploads they
/// answer, later uploads greater. Results of several uploads can share an output key (the same file
/// sent twice; `cat.jpg` and `cat.png` both answer as `cat`), and their requests can finish in any
/// order (a retried older one last): the result of the newest upload is the one that stays.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UploadOrder(String);

impl UploadOrder {
    /// When the upload was stored (the web tier's clock, ms since the epoch), then its request's
    /// id to order two of one millisecond.
    pub fn new(stored_at_ms: u64, request_id: &str) -> Self {
        Self(format!("{stored_at_ms:020}-{request_id}"))
    }

    /// An order as `as_str` wrote it (kept beside the object); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, id) = text.split_once('-')?;
        let ok = ms.len() == 20
            && ms.bytes().all(|b| b.is_ascii_digit())
            && !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The user metadata name (`x-amz-meta-upload-order` on S3) under which `put_newest` keeps a
/// result's `UploadOrder` with it; `metadata` never returns it.
pub const ORDER_METADATA: &str = "upload-order";

/// User metadata kept with an object (S3's `x-amz-meta-*`): names of lowercase letters, digits and
/// `-`, values of printable ASCII, as S3 carries them unchanged in headers.
pub type Metadata = std::collections::BTreeMap<String, String>;

/// `None` if every name and value is one S3 carries unchanged; else why not.
pub fn metadata_problem(metadata: &Metadata) -> Option<String> {
    metadata.iter().find_map(|(name, value)| {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let value_ok = value.len() <= 1024 && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        (!name_ok || !value_ok).then(|| format!("metadata {name:?} = {value:?} cannot be stored"))
    })
}

/// What `put_newest` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The bytes are the object now.
    Stored,
    /// The object there answers a later upload, and stays.
    Superseded,
}

/// Buckets of objects: folders locally, S3 on AWS.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<StoredObject>;
    /// Writes `bytes` as `key` unless the object there was written for a later upload, atomically
    /// against concurrent writers of the key (a conditional write, or a lock).
    /// `metadata` is kept with the object (and replaced with it).
    async fn put_newest(
        &self,
        bucket: &str,
        key: &ObjectKey,
        bytes: Bytes,
        order: &UploadOrder,
        metadata: &Metadata,
    ) -> PortResult<Kept>;
    /// The metadata `put_newest` kept with the object (empty for one `put` wrote); `None` if there
    /// is no such object.
    async fn metadata(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<Metadata>>;
    /// The object's bytes (that version's when given); `None` if there is no such object.
    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> PortResult<Option<Bytes>>;
    /// Writes `bytes` as `key` only if there is no object there, atomically against concurrent
    /// writers of the key: of several, exactly one stores. `false` when an object was there.
    async fn put_if_absent(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<bool>;
    /// Removes the object (its current version: older ones stay readable by id for a while); no
    /// error if there is none.
    async fn delete(&self, bucket: &str, key: &ObjectKey) -> PortResult<()>;
    /// The keys in the bucket that start with `prefix` (every key for `""`), sorted.
    async fn list(&self, bucket: &str, prefix: &str) -> PortResult<Vec<ObjectKey>>;
}
