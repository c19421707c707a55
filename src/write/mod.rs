//! Files open for writing. Every written file is staged in a local file under `<cache_dir>/staging/` and uploaded
//! as one object when the program calls `close` (flush) or `fsync`; the object appears complete and atomically,
//! never partially. Sequential and random writes, appends and truncation all work on the staged copy, so any
//! write pattern is supported; a file opened without O_TRUNC is first filled with the object's current bytes.
//!
//! No data loss: the staged file is fsynced before upload and is only removed after the upload succeeded. When the
//! upload fails, `close`/`fsync` return EIO, the staged data stays on disk and is logged with provider and path.
//!
//! Lock order: `Staged::inner` only; it is held across the upload so writes cannot interleave with it.

use crate::fs::error::{FsError, FsResult};
use crate::storage::{FileInfo, Storage, UploadOptions};
use bytes::Bytes;
use futures::StreamExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Read size when streaming a staged file to the provider: one upload part.
const UPLOAD_CHUNK: usize = crate::storage::UPLOAD_PART_SIZE;

/// A file being written, staged on local disk.
pub struct Staged {
    /// Mount path of the object it becomes.
    pub path: String,
    local: PathBuf,
    inner: tokio::sync::Mutex<StagedInner>,
}

struct StagedInner {
    file: Arc<std::fs::File>,
    size: u64,
    /// Written since the last successful upload.
    dirty: bool,
}

static NEXT_STAGING_ID: AtomicU64 = AtomicU64::new(0);

fn staging_file(dir: &Path) -> FsResult<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)?;
    let id = NEXT_STAGING_ID.fetch_add(1, Ordering::Relaxed);
    let local = dir.join(format!("{}-{id}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&local)?;
    Ok((local, file))
}

impl Staged {
    /// An empty staged file (create, or open with O_TRUNC): uploaded on close even if nothing is written.
    pub fn empty(dir: &Path, path: &str) -> FsResult<Staged> {
        let (local, file) = staging_file(dir)?;
        Ok(Staged::new(path, local, file, 0, true))
    }

    /// A staged copy of the object's current bytes (open for writing without O_TRUNC).
    pub async fn from_object(dir: &Path, path: &str, storage: &Storage) -> FsResult<Staged> {
        let (local, file) = staging_file(dir)?;
        let file = Arc::new(file);
        let mut stream = storage.download_stream(path).await?;
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let (f, at) = (file.clone(), size);
            size += chunk.len() as u64;
            tokio::task::spawn_blocking(move || f.write_all_at(&chunk, at))
                .await
                .map_err(join_error)??;
        }
        let file = Arc::try_unwrap(file)
            .map_err(|_| FsError::Invalid("staging file still shared".into()))?;
        Ok(Staged::new(path, local, file, size, false))
    }

    fn new(path: &str, local: PathBuf, file: std::fs::File, size: u64, dirty: bool) -> Staged {
        let inner = StagedInner {
            file: Arc::new(file),
            size,
            dirty,
        };
        Staged {
            path: path.to_string(),
            local,
            inner: tokio::sync::Mutex::new(inner),
        }
    }

    pub async fn size(&self) -> u64 {
        self.inner.lock().await.size
    }

    /// Writes `data` at `offset`; `limit` is the route's largest file size (EFBIG past it).
    pub async fn write(&self, offset: u64, data: Bytes, limit: Option<u64>) -> FsResult<u32> {
        let end = offset + data.len() as u64;
        if limit.is_some_and(|l| end > l) {
            return Err(FsError::TooLarge);
        }
        let mut inner = self.inner.lock().await;
        let file = inner.file.clone();
        let len = data.len() as u32;
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(join_error)??;
        inner.size = inner.size.max(end);
        inner.dirty = true;
        Ok(len)
    }

    pub async fn read(&self, offset: u64, len: u32) -> FsResult<Bytes> {
        let inner = self.inner.lock().await;
        let end = (offset + u64::from(len)).min(inner.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let file = inner.file.clone();
        let mut buf = vec![0u8; (end - offset) as usize];
        let buf =
            tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, offset).map(|_| buf))
                .await
                .map_err(join_error)??;
        Ok(Bytes::from(buf))
    }

    pub async fn truncate(&self, size: u64, limit: Option<u64>) -> FsResult<()> {
        if limit.is_some_and(|l| size > l) {
            return Err(FsError::TooLarge);
        }
        let mut inner = self.inner.lock().await;
        let file = inner.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(size))
            .await
            .map_err(join_error)??;
        inner.size = size;
        inner.dirty = true;
        Ok(())
    }

    /// Uploads the staged bytes if they changed since the last upload. The local copy is fsynced first, so data
    /// acknowledged here is on the provider, and until then safe on local disk.
    pub async fn commit(&self, storage: &Storage) -> FsResult<Option<FileInfo>> {
        let mut inner = self.inner.lock().await;
        if !inner.dirty {
            return Ok(None);
        }
        let file = inner.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(join_error)??;
        let size = inner.size;
        let result = if size as usize <= UPLOAD_CHUNK {
            let file = inner.file.clone();
            let mut buf = vec![0u8; size as usize];
            let data =
                tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, 0).map(|_| buf))
                    .await
                    .map_err(join_error)??;
            storage
                .upload(&self.path, Bytes::from(data), UploadOptions::default())
                .await
        } else {
            storage
                .upload_stream(
                    &self.path,
                    file_chunks(inner.file.clone(), size),
                    UploadOptions::default(),
                )
                .await
        };
        match result {
            Ok(info) => {
                inner.dirty = false;
                Ok(Some(info))
            }
            Err(e) => {
                tracing::error!(
                    "upload of {} failed; its data is kept at {}: {e}",
                    self.path,
                    self.local.display()
                );
                Err(FsError::Storage(e))
            }
        }
    }

    /// Whether bytes are waiting for a successful upload.
    pub async fn is_dirty(&self) -> bool {
        self.inner.lock().await.dirty
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let dirty = self.inner.try_lock().map(|i| i.dirty).unwrap_or(true);
        if dirty {
            tracing::error!(
                "{}: closed with changes that never reached the provider; kept at {}",
                self.path,
                self.local.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.local);
        }
    }
}

/// The staged file as a stream of upload-part-sized chunks.
fn file_chunks(
    file: Arc<std::fs::File>,
    size: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin {
    Box::pin(futures::stream::unfold(0u64, move |offset| {
        let file = file.clone();
        async move {
            if offset >= size {
                return None;
            }
            let len = (size - offset).min(UPLOAD_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)
                    .map(|_| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            Some((read, offset + len as u64))
        }
    }))
}

fn join_error(e: tokio::task::JoinError) -> FsError {
    FsError::Local(std::io::Error::other(e))
}
