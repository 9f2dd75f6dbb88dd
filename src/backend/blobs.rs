//! Content-addressed files under `<state-dir>/blobs/`: stack sources, uploaded workspaces,
//! tool binaries and state versions, each named by the hex SHA-256 of its bytes.
//!
//! Large things live here rather than in SQLite so that a 512 MiB workspace streams to disk
//! and back without passing through memory or the database's write lock. A blob is written
//! to a temporary file, checked, and renamed into place: a crash leaves at most an orphan
//! temporary file, never a blob whose name lies about its content. The row that refers to a
//! blob is committed after the blob exists, so a row never names a missing blob. Blobs are
//! never deleted (the reference backend keeps every source, workspace and state version).

use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{Context, SHA256};
use futures::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use super::BackendError;
use super::ca::io_error;

/// A blob's identity: digest and size, as the launcher API's `Artifact` has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

impl From<BlobRef> for launcher_api::Artifact {
    fn from(blob: BlobRef) -> Self {
        Self {
            sha256: blob.sha256,
            size: blob.size,
        }
    }
}

/// Why a streamed upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// More bytes than the caller allows.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client's body broke off.
    #[error("the request body could not be read: {0}")]
    Body(#[source] axum::Error),
    /// The disk.
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// An upload on disk, not yet a blob; removed when dropped uncommitted.
pub struct PendingBlob {
    blobs: Blobs,
    temp: Option<PathBuf>,
    /// Hex SHA-256 of what was received.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl PendingBlob {
    /// Makes it a blob. Blocking (a rename).
    pub fn commit(mut self) -> Result<BlobRef, BackendError> {
        if let Some(temp) = self.temp.take() {
            self.blobs.settle_named(&temp, &self.sha256)?;
        }
        Ok(BlobRef {
            sha256: self.sha256.clone(),
            size: self.size,
        })
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The blob directory.
#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    launcher_api::signature::hex(aws_lc_rs::digest::digest(&SHA256, bytes).as_ref())
}

fn is_digest(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Blobs {
    /// Blobs under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where the blob with this digest lives, if the digest is well-formed.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        is_digest(sha256).then(|| self.root.join(sha256))
    }

    /// Whether a blob exists.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path(sha256).is_some_and(|p| p.is_file())
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join(format!(".upload-{}", ulid::Ulid::generate()))
    }

    fn ensure(&self) -> Result<(), BackendError> {
        std::fs::create_dir_all(&self.root).map_err(|err| io_error(&self.root, err))
    }

    /// Stores bytes held in memory. Blocking.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobRef, BackendError> {
        self.ensure()?;
        let blob = BlobRef {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
        };
        let target = self.root.join(&blob.sha256);
        if !target.is_file() {
            let temp = self.temp_path();
            std::fs::write(&temp, bytes).map_err(|err| io_error(&temp, err))?;
            std::fs::rename(&temp, &target).map_err(|err| io_error(&target, err))?;
        }
        Ok(blob)
    }

    /// Copies a file in (a tool binary). Blocking.
    pub fn put_file(&self, source: &Path) -> Result<BlobRef, BackendError> {
        use std::io::Read as _;
        self.ensure()?;
        let mut input = std::fs::File::open(source).map_err(|err| io_error(source, err))?;
        let temp = self.temp_path();
        let mut output = std::fs::File::create(&temp).map_err(|err| io_error(&temp, err))?;
        let mut context = Context::new(&SHA256);
        let mut size = 0u64;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = input
                .read(&mut buffer)
                .map_err(|err| io_error(source, err))?;
            if read == 0 {
                break;
            }
            context.update(&buffer[..read]);
            size += read as u64;
            std::io::Write::write_all(&mut output, &buffer[..read])
                .map_err(|err| io_error(&temp, err))?;
        }
        output.sync_all().map_err(|err| io_error(&temp, err))?;
        self.settle(temp, context, size)
    }

    /// Streams a request body to a temporary file, hashing it, refusing more than `limit`
    /// bytes. Nothing is a blob until [`PendingBlob::commit`]: an upload whose signature then
    /// fails is dropped, and its file with it.
    pub async fn stage_stream<S>(&self, mut body: S, limit: u64) -> Result<PendingBlob, UploadError>
    where
        S: Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
    {
        self.ensure()?;
        let mut pending = PendingBlob {
            blobs: self.clone(),
            temp: Some(self.temp_path()),
            sha256: String::new(),
            size: 0,
        };
        let temp = pending.temp.clone().unwrap_or_default();
        let mut output = tokio::fs::File::create(&temp)
            .await
            .map_err(|err| io_error(&temp, err))?;
        let mut context = Context::new(&SHA256);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(UploadError::Body)?;
            pending.size += chunk.len() as u64;
            if pending.size > limit {
                return Err(UploadError::TooLarge { limit });
            }
            context.update(&chunk);
            output
                .write_all(&chunk)
                .await
                .map_err(|err| io_error(&temp, err))?;
        }
        output
            .sync_all()
            .await
            .map_err(|err| io_error(&temp, err))?;
        pending.sha256 = launcher_api::signature::hex(context.finish().as_ref());
        Ok(pending)
    }

    fn settle(&self, temp: PathBuf, context: Context, size: u64) -> Result<BlobRef, BackendError> {
        let sha256 = launcher_api::signature::hex(context.finish().as_ref());
        self.settle_named(&temp, &sha256)?;
        Ok(BlobRef { sha256, size })
    }

    fn settle_named(&self, temp: &Path, sha256: &str) -> Result<(), BackendError> {
        let target = self.root.join(sha256);
        if target.is_file() {
            let _ = std::fs::remove_file(temp);
        } else {
            std::fs::rename(temp, &target).map_err(|err| io_error(&target, err))?;
        }
        Ok(())
    }

    /// Reads a blob into memory (sources, states: bounded when stored). Blocking.
    pub fn read(&self, sha256: &str) -> Result<Vec<u8>, BackendError> {
        let path = self
            .path(sha256)
            .ok_or_else(|| BackendError::Store(format!("{sha256:?} is not a blob digest")))?;
        std::fs::read(&path).map_err(|err| io_error(&path, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_streamed_blob_is_named_by_its_digest_and_an_oversized_or_dropped_one_leaves_nothing()
    {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().join("blobs"));
        let chunks = vec![
            Ok(axum::body::Bytes::from_static(b"hello ")),
            Ok("world".into()),
        ];
        let pending = blobs
            .stage_stream(futures::stream::iter(chunks), 11)
            .await
            .unwrap();
        assert!(
            !blobs.contains(&pending.sha256),
            "not a blob before it is committed"
        );
        let blob = pending.commit().unwrap();
        assert_eq!(blob.sha256, sha256_hex(b"hello world"));
        assert_eq!(blob.size, 11);
        assert_eq!(blobs.read(&blob.sha256).unwrap(), b"hello world");
        assert_eq!(blobs.put(b"hello world").unwrap(), blob, "stored once");

        let chunks = vec![Ok(axum::body::Bytes::from_static(b"0123456789abc"))];
        let err = blobs
            .stage_stream(futures::stream::iter(chunks), 12)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, UploadError::TooLarge { limit: 12 }), "{err}");
        let chunks = vec![Ok(axum::body::Bytes::from_static(b"dropped"))];
        drop(
            blobs
                .stage_stream(futures::stream::iter(chunks), 12)
                .await
                .unwrap(),
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(&blob.sha256)]);
        assert!(blobs.path("../etc/passwd").is_none());
    }
}
