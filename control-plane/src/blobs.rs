//! Attachment bytes: an S3-shaped object store (put a staged file, get a byte range, delete,
//! delete everything under a prefix) with two implementations, a directory on the local
//! filesystem (the default) and an S3 bucket ([`crate::blobs_s3`]).
//!
//! Uploads are staged first ([`Staging`]): the API streams the request body into a file in the
//! staging directory, counting, hashing and checking it, and only a complete, accepted file is
//! handed to [`ObjectStore::put`]. Keys are `<group id>/<attachment id>`: UUIDs and one slash,
//! so a key never names anything outside the store.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An object's bytes, as they arrive.
pub(crate) type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// `start..=end` of an object, both inclusive (an HTTP byte range, resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// How many bytes (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// Where attachment bytes are kept.
pub(crate) trait ObjectStore: fmt::Debug + Send + Sync {
    /// Stores the complete file at `staged` (`len` bytes, SHA-256 `sha256_hex`) under `key`,
    /// consuming it (the staged file is gone afterwards, whatever the outcome).
    fn put<'a>(
        &'a self,
        key: &'a str,
        staged: &'a Path,
        len: u64,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<()>>;

    /// The bytes of `key` in `range` (all of them if `None`); `None` if there is no such object.
    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, io::Result<Option<ByteStream>>>;

    /// Deletes `key`; deleting what is not there succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;

    /// Deletes every object whose key starts with `prefix` (which ends with `/`).
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>>;
}

/// A key is UUIDs joined by `/`: nothing that could climb out of a directory or need escaping.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key.contains("//")
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'/')
}

/// The error for a key that [`valid_key`] refuses.
pub(crate) fn bad_key(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not an object key: {key:?}"),
    )
}

/// Objects as files under a directory: `<root>/<group>/<attachment>`.
#[derive(Debug)]
pub(crate) struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(bad_key(key))
        }
    }
}

impl ObjectStore for LocalStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        staged: &'a Path,
        _len: u64,
        _sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let result = async {
                let path = self.path(key)?;
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                // The staging directory is on the same filesystem (see `Staging::for_local`),
                // so this is a rename; a copy covers a staging directory elsewhere.
                if tokio::fs::rename(staged, &path).await.is_err() {
                    tokio::fs::copy(staged, &path).await?;
                    tokio::fs::File::open(&path).await?.sync_all().await?;
                }
                Ok(())
            }
            .await;
            let _ = tokio::fs::remove_file(staged).await;
            result
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, io::Result<Option<ByteStream>>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
            let path = self.path(key)?;
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let stream: ByteStream = match range {
                Some(range) => {
                    file.seek(io::SeekFrom::Start(range.start)).await?;
                    Box::pin(tokio_util::io::ReaderStream::new(file.take(range.len())))
                }
                None => Box::pin(tokio_util::io::ReaderStream::new(file)),
            };
            Ok(Some(stream))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let dir = self.path(prefix.trim_end_matches('/'))?;
            match tokio::fs::remove_dir_all(dir).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }
}

/// Where uploads are written while they arrive.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Staging inside a local store's root, so that a finished upload is renamed, not copied.
    pub(crate) fn for_local(root: &Path) -> Self {
        Self {
            dir: root.join(".staging"),
        }
    }

    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// A new, empty file to stage an upload in, and its path.
    pub(crate) async fn create(&self) -> io::Result<(tokio::fs::File, PathBuf)> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let path = self
            .dir
            .join(format!("{}.part", uuid::Uuid::new_v4().as_simple()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((file, path))
    }

    /// Removes staged files older than `age` (uploads cut off by a crash).
    pub(crate) async fn sweep(&self, age: std::time::Duration) -> io::Result<usize> {
        let mut removed = 0;
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let old = entry
                .metadata()
                .await?
                .modified()?
                .elapsed()
                .is_ok_and(|elapsed| elapsed > age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt as _;

    async fn read_all(stream: ByteStream) -> Vec<u8> {
        stream
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap()
    }

    #[test]
    fn keys_cannot_leave_the_store() {
        assert!(valid_key(
            "0190a0b4-1111-7000-8000-000000000000/0190a0b4-2222-7000-8000-000000000000"
        ));
        for bad in ["", "../etc/passwd", "/abs", "a//b", "a/./b", "a\\b", "a b"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn local_store_puts_reads_ranges_and_deletes() {
        let root = std::env::temp_dir().join(format!("convoy-blobs-{}", uuid::Uuid::new_v4()));
        let store = LocalStore::new(root.clone());
        let staging = Staging::for_local(&root);
        let (mut file, staged) = staging.create().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut file, b"0123456789")
            .await
            .unwrap();
        drop(file);
        store.put("ab/cd", &staged, 10, "").await.unwrap();
        assert!(!staged.exists(), "the staged file is consumed");

        let all = store.get("ab/cd", None).await.unwrap().unwrap();
        assert_eq!(read_all(all).await, b"0123456789");
        let part = store
            .get("ab/cd", Some(ByteRange { start: 2, end: 4 }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_all(part).await, b"234");
        assert!(store.get("ab/ef", None).await.unwrap().is_none());
        assert!(store.get("../x", None).await.is_err());

        store.delete("ab/cd").await.unwrap();
        store.delete("ab/cd").await.unwrap();
        assert!(store.get("ab/cd", None).await.unwrap().is_none());

        let (_, staged) = staging.create().await.unwrap();
        store.put("ab/00", &staged, 0, "").await.unwrap();
        store.delete_prefix("ab/").await.unwrap();
        assert!(!root.join("ab").exists());
        store.delete_prefix("ab/").await.unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
