//! The `ObjectStore` port on folders: `<data_dir>/s3/<bucket>/<key>`, written atomically, with
//! every version kept readable by its id for a while as the AWS buckets do.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;

use super::file_names::{key_of, relative_path, NamesFor, LONG_DIR};
use super::group_commit::GroupCommit;
use imgrec_domain::ports::{
    metadata_problem, Kept, Metadata, ObjectKey, ObjectStore, PortError, PortResult, StoredObject, UploadOrder,
    ORDER_METADATA,
};

/// Buckets as folders: `<root>/s3/<bucket>/<file name of key>`, where an ordinary key is its own
/// file name (`test_0`) and any other maps to a safe one (see `file_names`). Writes are atomic
/// (temp file, fsync, rename), and every version stays reachable under
/// `<root>/versions/<bucket>/<id>` (a hard link, no copy) so that a later upload of the same name
/// cannot change what an earlier request classifies. A failed put leaves no file behind. A put
/// returns once both names, and any folder it created, are durable: the folders are synced in
/// groups shared by concurrent puts.
#[derive(Debug, Clone)]
pub struct FsObjectStore {
    root: PathBuf,
    dir_syncs: GroupCommit<PathBuf, String>,
}

fn check_bucket(bucket: &str) -> PortResult<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with('.');
    if !ok {
        return Err(PortError::Refused(format!("invalid bucket name {bucket:?}")));
    }
    Ok(())
}

fn check_version(version: &str) -> PortResult<()> {
    let ok =
        !version.is_empty() && version.len() <= 64 && version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(PortError::Refused(format!("invalid object version {version:?}")));
    }
    Ok(())
}

impl FsObjectStore {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: data_dir.into(),
            dir_syncs: GroupCommit::default(),
        }
    }

    /// Removes temp files older than `age`: what a process killed in the middle of a put left.
    /// Younger ones may belong to a put in progress in another process.
    pub fn sweep_temp_files(&self, age: std::time::Duration) -> anyhow::Result<usize> {
        remove_files_older_than(&self.root.join("tmp"), age)
    }

    /// Removes the version links (`versions/<bucket>/<id>`) written longer than `age` ago, in every
    /// bucket: a long-running stack would otherwise keep every upload and result it ever stored.
    /// The current objects are other links to the same files and stay.
    pub fn sweep_versions(&self, age: std::time::Duration) -> anyhow::Result<usize> {
        let root = self.root.join("versions");
        let mut removed = 0;
        for bucket in entries(&root)? {
            removed += remove_files_older_than(&bucket.path(), age)?;
        }
        Ok(removed)
    }

    /// Makes the names a write created durable: syncs their folders, in groups shared by
    /// concurrent writes.
    async fn sync(&self, dirs: Vec<PathBuf>) -> PortResult<()> {
        if dirs.is_empty() {
            return Ok(());
        }
        match self.dir_syncs.submit(dirs, sync_dirs).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow::anyhow!(e).into()),
            None => Err(anyhow::anyhow!("the folder sync task ended (shutting down)").into()),
        }
    }

    /// Removes the objects of `bucket` under `prefix` written longer than `age` ago: the
    /// service's records, as the output bucket's lifecycle rule expires them on AWS.
    pub fn sweep_prefix(&self, bucket: &str, prefix: &str, age: std::time::Duration) -> anyhow::Result<usize> {
        let mut removed = 0;
        for key in self.list_blocking(bucket, prefix)? {
            let path = self.object_path(bucket, &key);
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join("s3").join(bucket)
    }

    /// Where `key`'s object is: `s3/<bucket>/<file name of key>`.
    fn object_path(&self, bucket: &str, key: &ObjectKey) -> PathBuf {
        self.bucket_dir(bucket).join(relative_path(key))
    }

    /// Writes the object, with `metadata` (encoded) if given, and returns its version and the
    /// folders whose syncs make it durable. The metadata goes on the object's own inode (an
    /// extended attribute, synced and renamed with it); where the file system cannot hold it
    /// there, into its metadata file, before the object is in place.
    fn put_blocking(
        &self,
        bucket: &str,
        key: &ObjectKey,
        bytes: &[u8],
        metadata: Option<&[u8]>,
    ) -> PortResult<(String, Vec<PathBuf>)> {
        check_bucket(bucket)?;
        let target = self.object_path(bucket, key);
        let versions = self.root.join("versions").join(bucket);
        let tmp_dir = self.root.join("tmp");
        let parent = target.parent().expect("a key's path has a parent");
        // Temp files never need to survive a crash, so neither does their folder.
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        let mut to_sync = create_dirs(parent)?;
        to_sync.extend(create_dirs(&versions)?);
        // Dropped on any error before `persist`, which deletes the temp file.
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).context("cannot create a temp file")?;
        tmp.write_all(bytes).context("cannot write a temp file")?;
        if let Some(metadata) = metadata {
            if !set_metadata_attr(tmp.as_file(), metadata)? {
                to_sync.extend(self.write_beside(&self.metadata_path(bucket, key), metadata)?);
            }
        }
        tmp.as_file().sync_all().context("cannot sync a temp file")?;
        let version = uuid::Uuid::new_v4().simple().to_string();
        let version_path = versions.join(&version);
        std::fs::hard_link(tmp.path(), &version_path).context("cannot record the object version")?;
        if let Err(e) = tmp.persist(&target) {
            let _ = std::fs::remove_file(&version_path);
            return Err(anyhow::Error::from(e.error)
                .context(format!("cannot write {}", target.display()))
                .into());
        }
        to_sync.extend([versions, parent.to_path_buf()]);
        Ok((version, to_sync))
    }

    /// `put_blocking` unless the object answers a later upload. The object's order is kept in its
    /// metadata (under `ORDER_METADATA`, as S3 keeps it in the object's user metadata), and the
    /// compare and the write happen under a lock that every process of the stack takes: one of
    /// `LOCK_STRIPES` per bucket, by key, so that writers of different keys rarely wait for each
    /// other. The metadata is on the object's inode: one new inode, fsync and rename per result,
    /// and no older metadata file replaced, whose freed inode ext4 without a journal skips over,
    /// one by one, on every later file creation for minutes.
    fn put_newest_blocking(
        &self,
        bucket: &str,
        key: &ObjectKey,
        bytes: &[u8],
        order: &UploadOrder,
        metadata: &Metadata,
    ) -> PortResult<(Kept, Vec<PathBuf>)> {
        check_bucket(bucket)?;
        if let Some(problem) = metadata_problem(metadata) {
            return Err(PortError::Refused(problem));
        }
        let _lock = self.lock(bucket, key)?;
        if self.stored_order(bucket, key)?.is_some_and(|stored| &stored > order) {
            return Ok((Kept::Superseded, Vec::new()));
        }
        let mut kept = metadata.clone();
        kept.insert(ORDER_METADATA.to_owned(), order.as_str().to_owned());
        let kept = serde_json::to_vec(&kept).context("cannot encode metadata")?;
        let (_, to_sync) = self.put_blocking(bucket, key, bytes, Some(&kept))?;
        Ok((Kept::Stored, to_sync))
    }

    /// The order `put_newest` kept with the object, if any: in its metadata, or, for one an
    /// earlier release wrote, in `orders/<bucket>/<file name of key>`.
    fn stored_order(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<UploadOrder>> {
        let Some(metadata) = self.kept_metadata(bucket, key)? else {
            return Ok(None);
        };
        if let Some(order) = metadata.get(ORDER_METADATA) {
            return Ok(UploadOrder::parse(order));
        }
        let legacy = read_if_exists(&self.root.join("orders").join(bucket).join(relative_path(key)))?;
        Ok(legacy.and_then(|text| UploadOrder::parse(String::from_utf8_lossy(&text).trim())))
    }

    /// The metadata `put_newest` kept with `key`, its upload order included (which `metadata`
    /// leaves out), `None` if there is none: on the object's inode, or else in its metadata file
    /// (where the file system could not hold it on the inode, or an earlier release wrote it).
    pub fn kept_metadata(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<Metadata>> {
        let object = self.object_path(bucket, key);
        let (path, bytes) = match get_metadata_attr(&object)? {
            Some(bytes) => (object, bytes),
            None => {
                let path = self.metadata_path(bucket, key);
                match read_if_exists(&path)? {
                    Some(bytes) => (path, bytes),
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("cannot read the metadata of {}", path.display())
        })?))
    }

    /// Where metadata the object's inode could not hold is kept: `metadata/<bucket>/<file name of key>`.
    fn metadata_path(&self, bucket: &str, key: &ObjectKey) -> PathBuf {
        self.root.join("metadata").join(bucket).join(relative_path(key))
    }

    /// Writes a file kept beside an object (its metadata) atomically, and returns the
    /// folders to sync.
    fn write_beside(&self, path: &Path, bytes: &[u8]) -> PortResult<Vec<PathBuf>> {
        let dir = path.parent().expect("a key's path has a parent");
        let mut to_sync = create_dirs(dir)?;
        let tmp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).context("cannot create a temp file")?;
        tmp.write_all(bytes).context("cannot write a temp file")?;
        tmp.as_file().sync_all().context("cannot sync a temp file")?;
        tmp.persist(path)
            .map_err(|e| anyhow::Error::from(e.error).context(format!("cannot write {}", path.display())))?;
        to_sync.push(dir.to_path_buf());
        Ok(to_sync)
    }

    fn metadata_blocking(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<Metadata>> {
        check_bucket(bucket)?;
        if !self.object_path(bucket, key).is_file() {
            return Ok(None);
        }
        let mut metadata = self.kept_metadata(bucket, key)?.unwrap_or_default();
        metadata.remove(ORDER_METADATA);
        Ok(Some(metadata))
    }

    /// Holds the lock of `key`'s stripe until dropped: every process of the stack takes the same.
    fn lock(&self, bucket: &str, key: &ObjectKey) -> PortResult<std::fs::File> {
        let locks = self.root.join("locks").join(bucket);
        std::fs::create_dir_all(&locks).with_context(|| format!("cannot create {}", locks.display()))?;
        let lock_path = locks.join(lock_stripe(key).to_string());
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        Ok(lock)
    }

    /// `put_blocking` under the key's lock, unless the object exists.
    fn put_if_absent_blocking(&self, bucket: &str, key: &ObjectKey, bytes: &[u8]) -> PortResult<Option<Vec<PathBuf>>> {
        check_bucket(bucket)?;
        let _lock = self.lock(bucket, key)?;
        let target = self.object_path(bucket, key);
        if target
            .try_exists()
            .with_context(|| format!("cannot check {}", target.display()))?
        {
            return Ok(None);
        }
        Ok(Some(self.put_blocking(bucket, key, bytes, None)?.1))
    }

    /// Removes the object (under the key's lock, so never halfway through a conditional put) and
    /// returns the folder to sync.
    fn delete_blocking(&self, bucket: &str, key: &ObjectKey) -> PortResult<Vec<PathBuf>> {
        check_bucket(bucket)?;
        let _lock = self.lock(bucket, key)?;
        let target = self.object_path(bucket, key);
        match std::fs::remove_file(&target) {
            Ok(()) => Ok(target.parent().map(Path::to_path_buf).into_iter().collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(anyhow::Error::from(e)
                .context(format!("cannot remove {}", target.display()))
                .into()),
        }
    }

    fn get_blocking(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> PortResult<Option<Bytes>> {
        check_bucket(bucket)?;
        let path = match version {
            Some(v) => {
                check_version(v)?;
                self.root.join("versions").join(bucket).join(v)
            }
            None => self.object_path(bucket, key),
        };
        Ok(read_if_exists(&path)?.map(Bytes::from))
    }

    fn list_blocking(&self, bucket: &str, prefix: &str) -> PortResult<Vec<ObjectKey>> {
        check_bucket(bucket)?;
        let base = self.bucket_dir(bucket);
        let names = NamesFor::prefix(prefix);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("cannot list {}", dir.display()))
                        .into())
                }
            };
            let in_long_tree = dir != base;
            for entry in entries {
                let entry = entry.context("cannot list a bucket")?;
                let name = entry.file_name();
                if !in_long_tree && name != LONG_DIR && !names.may_hold(name.as_bytes()) {
                    continue;
                }
                let path = entry.path();
                if entry.file_type().context("cannot list a bucket")?.is_dir() {
                    // Only the long-name tree has folders; others are left by older layouts.
                    if in_long_tree || name == LONG_DIR {
                        stack.push(path);
                    }
                } else if let Some(key) = path.strip_prefix(&base).ok().and_then(key_of) {
                    if key.as_str().starts_with(prefix) {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// Creates `dir` and its missing ancestors, and returns the folders that gained an entry (the
/// parent of each one created): a new folder survives a crash only once its parent is synced.
fn create_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.is_dir()).collect();
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Another put made it first; syncing its parent covers that creation too.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", d.display())),
        }
    }
    Ok(missing
        .iter()
        .filter_map(|d| d.parent())
        .map(Path::to_path_buf)
        .collect())
}

/// Syncs each folder once: a new name in a folder is durable only once the folder is synced.
async fn sync_dirs(dirs: Vec<PathBuf>) -> Result<(), String> {
    let dirs: BTreeSet<PathBuf> = dirs.into_iter().collect();
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| sync_dir(d)))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map_err(|e| format!("{e:#}"))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

const LOCK_STRIPES: u32 = 64;

/// The lock stripe of `key`: FNV-1a, the same in every process and release.
fn lock_stripe(key: &ObjectKey) -> u32 {
    let hash = key
        .as_str()
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash % LOCK_STRIPES
}

/// The entries of `dir`; none if it does not exist.
fn entries(dir: &Path) -> anyhow::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
}

/// Removes the files in `dir` last modified longer than `age` ago; how many.
fn remove_files_older_than(dir: &Path, age: std::time::Duration) -> anyhow::Result<usize> {
    let mut removed = 0;
    for entry in entries(dir)? {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The extended attribute holding an object's metadata (`put_newest`'s JSON).
const METADATA_ATTR: &str = "user.imgrec.metadata";

/// Whether the file system would not keep this metadata on the inode: no user attributes
/// (`ENOTSUP`: an older tmpfs, some FUSE file systems), or too large for the room it has
/// (`E2BIG`, `ENOSPC`: ext4 holds one block of attributes per inode without `ea_inode`).
fn attr_cannot_hold(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP | libc::E2BIG | libc::ENOSPC | libc::ERANGE)
    )
}

/// Puts `metadata` on `file`'s inode; `false` if the file system cannot hold it there.
fn set_metadata_attr(file: &std::fs::File, metadata: &[u8]) -> PortResult<bool> {
    use xattr::FileExt;
    match file.set_xattr(METADATA_ATTR, metadata) {
        Ok(()) => Ok(true),
        Err(e) if attr_cannot_hold(&e) => Ok(false),
        Err(e) => Err(anyhow::Error::from(e)
            .context("cannot keep metadata on a temp file")
            .into()),
    }
}

/// The metadata on `object`'s inode; `None` if it has none, or there is no such object.
fn get_metadata_attr(object: &Path) -> PortResult<Option<Vec<u8>>> {
    match xattr::get(object, METADATA_ATTR) {
        Ok(value) => Ok(value),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || attr_cannot_hold(&e) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e)
            .context(format!("cannot read the metadata of {}", object.display()))
            .into()),
    }
}

/// The file's bytes, `None` if there is no such file.
fn read_if_exists(path: &Path) -> PortResult<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::from(e)
            .context(format!("cannot read {}", path.display()))
            .into()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> PortResult<T> + Send + 'static) -> PortResult<T> {
    tokio::task::spawn_blocking(f).await.context("storage task failed")?
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn put(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<StoredObject> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.clone());
        let (version, dirs) = blocking(move || {
            // A plain put has no metadata, as on S3: none of an earlier object's stays.
            check_bucket(&bucket)?;
            let _ = std::fs::remove_file(this.metadata_path(&bucket, &key));
            this.put_blocking(&bucket, &key, &bytes, None)
        })
        .await?;
        self.sync(dirs).await?;
        Ok(StoredObject { version: Some(version) })
    }

    async fn put_newest(
        &self,
        bucket: &str,
        key: &ObjectKey,
        bytes: Bytes,
        order: &UploadOrder,
        metadata: &Metadata,
    ) -> PortResult<Kept> {
        let (this, bucket, key, order, metadata) = (
            self.clone(),
            bucket.to_owned(),
            key.clone(),
            order.clone(),
            metadata.clone(),
        );
        let (kept, dirs) = blocking(move || this.put_newest_blocking(&bucket, &key, &bytes, &order, &metadata)).await?;
        self.sync(dirs).await?;
        Ok(kept)
    }

    async fn metadata(&self, bucket: &str, key: &ObjectKey) -> PortResult<Option<Metadata>> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.clone());
        blocking(move || this.metadata_blocking(&bucket, &key)).await
    }

    async fn get(&self, bucket: &str, key: &ObjectKey, version: Option<&str>) -> PortResult<Option<Bytes>> {
        let (this, bucket, key, version) = (self.clone(), bucket.to_owned(), key.clone(), version.map(str::to_owned));
        blocking(move || this.get_blocking(&bucket, &key, version.as_deref())).await
    }

    async fn put_if_absent(&self, bucket: &str, key: &ObjectKey, bytes: Bytes) -> PortResult<bool> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.clone());
        let Some(dirs) = blocking(move || this.put_if_absent_blocking(&bucket, &key, &bytes)).await? else {
            return Ok(false);
        };
        self.sync(dirs).await?;
        Ok(true)
    }

    async fn delete(&self, bucket: &str, key: &ObjectKey) -> PortResult<()> {
        let (this, bucket, key) = (self.clone(), bucket.to_owned(), key.clone());
        let dirs = blocking(move || this.delete_blocking(&bucket, &key)).await?;
        self.sync(dirs).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> PortResult<Vec<ObjectKey>> {
        let (this, bucket, prefix) = (self.clone(), bucket.to_owned(), prefix.to_owned());
        blocking(move || this.list_blocking(&bucket, &prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_folders_are_reported_by_their_parents_and_existing_ones_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        let mut synced = create_dirs(&deep).unwrap();
        synced.sort();
        let want: Vec<PathBuf> = vec![root.path().into(), root.path().join("a"), root.path().join("a/b")];
        assert_eq!(synced, want);
        assert!(deep.is_dir());
        assert!(create_dirs(&deep).unwrap().is_empty());
        assert_eq!(create_dirs(&root.path().join("a/d")).unwrap(), [root.path().join("a")]);
    }

    #[tokio::test]
    async fn folders_are_synced_once_each_and_a_missing_one_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        sync_dirs(vec![dir.clone(), dir.clone()]).await.unwrap();
        let missing = sync_dirs(vec![dir.join("nonexistent")]).await.unwrap_err();
        assert!(missing.contains("cannot sync"), "{missing}");
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let err = create_dirs(&root.path().join("file/sub")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
    }

    #[tokio::test]
    async fn a_result_is_one_file_with_its_metadata_and_an_earlier_release_order_still_counts() {
        let root = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(root.path());
        let key = ObjectKey::new("cat").unwrap();
        let meta = Metadata::from([("model".to_owned(), "m".to_owned())]);
        let (older, newer) = (UploadOrder::new(1, "a"), UploadOrder::new(2, "b"));
        let kept = store.put_newest("out-bucket", &key, Bytes::from_static(b"tabby"), &newer, &meta);
        assert_eq!(kept.await.unwrap(), Kept::Stored);
        assert!(!root.path().join("orders").exists(), "the order has no file of its own");
        if attrs_supported(root.path()) {
            assert!(
                !root.path().join("metadata").exists(),
                "the metadata is on the object's inode"
            );
        }
        assert_eq!(store.metadata("out-bucket", &key).await.unwrap(), Some(meta.clone()));

        // A key an earlier release wrote: its metadata file without the order, the order apart.
        let legacy = FsObjectStore::new(root.path().join("legacy"));
        legacy
            .put("out-bucket", &key, Bytes::from_static(b"tabby"))
            .await
            .unwrap();
        let meta_file = root.path().join("legacy/metadata/out-bucket/cat");
        std::fs::create_dir_all(meta_file.parent().unwrap()).unwrap();
        std::fs::write(&meta_file, serde_json::to_vec(&meta).unwrap()).unwrap();
        let order_file = root.path().join("legacy/orders/out-bucket/cat");
        std::fs::create_dir_all(order_file.parent().unwrap()).unwrap();
        std::fs::write(&order_file, newer.as_str()).unwrap();
        let late = legacy.put_newest("out-bucket", &key, Bytes::from_static(b"dog"), &older, &meta);
        assert_eq!(late.await.unwrap(), Kept::Superseded);
        let get = legacy.get("out-bucket", &key, None).await.unwrap();
        assert_eq!(get.as_deref(), Some(&b"tabby"[..]));
    }

    fn attrs_supported(dir: &Path) -> bool {
        let file = tempfile::NamedTempFile::new_in(dir).unwrap();
        set_metadata_attr(file.as_file(), b"{}").unwrap()
    }

    #[tokio::test]
    async fn metadata_too_large_for_the_inode_goes_beside_it_and_the_newest_place_wins() {
        let root = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(root.path());
        let key = ObjectKey::new("cat").unwrap();
        // 12 KiB: more than ext4 keeps on an inode without `ea_inode` (XFS and tmpfs keep it).
        let large: Metadata = (0..12).map(|i| (format!("note-{i}"), "x".repeat(1024))).collect();
        let small = Metadata::from([("model".to_owned(), "m".to_owned())]);
        let order = |ms| UploadOrder::new(ms, "a");

        let put = |bytes: &'static [u8], ms: u64, meta: &Metadata| {
            let (store, key, meta) = (store.clone(), key.clone(), meta.clone());
            async move {
                store
                    .put_newest("out-bucket", &key, Bytes::from_static(bytes), &order(ms), &meta)
                    .await
            }
        };
        assert_eq!(put(b"large", 2, &large).await.unwrap(), Kept::Stored);
        let on_inode = get_metadata_attr(&root.path().join("s3/out-bucket/cat"))
            .unwrap()
            .is_some();
        let in_file = root.path().join("metadata/out-bucket/cat").is_file();
        assert!(
            on_inode != in_file,
            "kept in exactly one place: inode {on_inode}, file {in_file}"
        );
        assert_eq!(store.metadata("out-bucket", &key).await.unwrap(), Some(large.clone()));
        assert_eq!(
            put(b"older", 1, &small).await.unwrap(),
            Kept::Superseded,
            "the large one's order counts"
        );
        assert_eq!(put(b"small", 3, &small).await.unwrap(), Kept::Stored);
        assert_eq!(store.metadata("out-bucket", &key).await.unwrap(), Some(small.clone()));
        assert_eq!(put(b"large", 4, &large).await.unwrap(), Kept::Stored);
        assert_eq!(store.metadata("out-bucket", &key).await.unwrap(), Some(large.clone()));
        let get = store.get("out-bucket", &key, None).await.unwrap();
        assert_eq!(get.as_deref(), Some(&b"large"[..]));

        // A plain put has no metadata, wherever the last one was kept.
        store
            .put("out-bucket", &key, Bytes::from_static(b"plain"))
            .await
            .unwrap();
        assert_eq!(store.metadata("out-bucket", &key).await.unwrap(), Some(Metadata::new()));
    }
}
