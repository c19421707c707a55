//! Files written through the mount, from the first `write` until their bytes are on the provider.
//!
//! - [`staged`]: one file being written or waiting for its upload — the open file that owns its data (working
//!   copy, pending acknowledged version, failure state, the name it has now).
//! - [`queue`]: the upload queue, the one owner of those files by path and the only publisher of staged versions;
//!   it tells the tree what changed.
//! - [`journal`]: acknowledged versions on local disk, so nothing acknowledged is lost to a crash or `kill -9`.
//! - [`stream`]: streaming of sequential writes into a multipart upload while the program writes.
//!
//! The publish rule: a provider object is replaced only by a whole version a program closed or fsynced with no
//! write error; a failed write fails the file (nothing of it is uploaded, the provider keeps its previous
//! version). Acknowledged means: on the provider (write-through `close`, `fsync`) or journaled (write-back `close`,
//! or an upload that failed, which `close`/`fsync` then report as EIO and which is retried).
//!
//! Lock order (the one place it is written down; nothing else is taken in another order):
//! 1. `Staged::publish` of each file (tokio mutexes; a rename takes those of every file it moves, in path order),
//! 2. `Staged::state` of that file (tokio mutex; held across a write-through upload, so writes wait for it),
//! 3. a path's write lock in storage (`Storage::lock_paths`, tokio, in path order) — taken inside uploads,
//! 4. short std mutexes, never held across an await: `Uploads::files`, `Staged::{path, attrs, modified}`, the
//!    filesystem's `handles` (then `page_versions` inside it) and `Inodes`; `Inodes` is held while a cache beside it (negative lookups, listings,
//!    both `moka` caches with locks of their own) is filled, and nothing of ours is taken inside it. An open
//!    file's `ReadState` (`read::Reader`) is held while read-ahead is planned and requested: the block cache's
//!    own locks and the read-ahead semaphore (`try_acquire`, never waited on) are taken inside it.
//! 5. leaves, taken alone: the disk tier's `state` and `open_files` (`cache::disk`; never held together).

pub mod journal;
pub mod queue;
pub mod staged;
mod stream;

pub use journal::write_durably;
pub use queue::{Published, Replay, Uploads};
pub use staged::{Space, Staged};

use crate::meta::posix::Posix;
use crate::storage::{FileInfo, Storage, UploadOptions};
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Why staging or publishing a write failed. The filesystem maps it to errno (`fs/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The local staging disk failed (ENOSPC, EIO, ...): a program sees that errno.
    #[error("local I/O error: {0}")]
    Local(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// Past the largest file the route or its provider takes.
    #[error("file too large")]
    TooLarge,
    /// The file failed earlier (see [`Staged`]): every later write, fsync and close returns that failure.
    #[error(transparent)]
    Failed(Arc<WriteError>),
}

impl WriteError {
    /// The provider could not answer: the version is kept and retried (see [`queue`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            WriteError::Storage(e) => e.is_unavailable(),
            // A failed file's error is final, whatever caused it.
            WriteError::Failed(_) | WriteError::Local(_) | WriteError::TooLarge => false,
        }
    }
}

pub type WriteResult<T> = Result<T, WriteError>;

/// Read size when streaming a staged file to the provider: one upload part.
const UPLOAD_CHUNK: usize = crate::storage::UPLOAD_PART_SIZE;

/// What an object gets besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileAttrs {
    pub posix: Posix,
    /// User metadata, lowercase keys (the POSIX keys live in `posix`).
    pub metadata: std::collections::BTreeMap<String, String>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// None: guessed from the name at upload.
    pub content_type: Option<String>,
}

impl FileAttrs {
    pub fn with_posix(posix: Posix) -> Self {
        FileAttrs {
            posix,
            ..Default::default()
        }
    }

    /// What the object at `path` carries now (the defaults with `posix` when there is none), with `posix` merged
    /// over its stored POSIX attributes.
    pub async fn of_object(storage: &Storage, path: &str, posix: Posix) -> WriteResult<FileAttrs> {
        match storage.get_info(path).await {
            Ok(info) => Ok(FileAttrs::of_info(storage, info, posix)),
            Err(e) if e.is_not_found() => Ok(FileAttrs::with_posix(posix)),
            Err(e) => Err(e.into()),
        }
    }

    /// What `info` describes, keeping only what every upload accepts: metadata written by other tools with keys
    /// or values zmount cannot send back (e.g. `original-filename`, UTF-8 values), and tags on a provider without
    /// tags, are dropped with a warning instead of failing every later write of the file.
    pub fn of_info(storage: &Storage, info: crate::storage::FileInfo, posix: Posix) -> FileAttrs {
        let path = &info.path;
        let mut metadata = std::collections::BTreeMap::new();
        for (key, value) in info.metadata {
            if crate::meta::posix::KEYS.contains(&key.as_str()) {
                continue;
            }
            let portable = crate::storage::normalize_metadata_key(&key)
                .and_then(|k| crate::storage::check_metadata_value(&k, &value));
            match portable {
                Ok(()) => {
                    metadata.insert(key, value);
                }
                Err(why) => tracing::warn!(
                    "{path}: metadata `{key}` is not kept when the file is rewritten: {why}"
                ),
            }
        }
        let tag_support = storage
            .resolve(path)
            .is_ok_and(|(_, _, provider)| provider.supports_tags());
        if !tag_support && !info.tags.is_empty() {
            tracing::warn!(
                "{path}: its provider has no tags; they are not kept when the file is rewritten"
            );
        }
        FileAttrs {
            posix,
            metadata,
            tags: if tag_support {
                info.tags
            } else {
                Default::default()
            },
            content_type: Some(info.content_type),
        }
    }

    /// The inverse of [`FileAttrs::upload_options`] (journal records keep the latter).
    pub fn from_options(options: UploadOptions) -> FileAttrs {
        let mut attributes = object_store::Attributes::new();
        let mut metadata = std::collections::BTreeMap::new();
        for (key, value) in options.metadata {
            if crate::meta::posix::KEYS.contains(&key.as_str()) {
                attributes.insert(
                    object_store::Attribute::Metadata(key.into()),
                    object_store::AttributeValue::from(value),
                );
            } else {
                metadata.insert(key, value);
            }
        }
        FileAttrs {
            posix: Posix::from_attributes(&attributes).unwrap_or_default(),
            metadata,
            tags: options.tags,
            content_type: options.content_type,
        }
    }

    pub fn upload_options(&self) -> UploadOptions {
        let mut metadata = self.metadata.clone();
        metadata.extend(self.posix.to_metadata());
        UploadOptions {
            content_type: self.content_type.clone(),
            metadata,
            tags: self.tags.clone(),
        }
    }
}

/// Uploads `size` bytes of `file`: one PUT when they fit in a part, else a multipart upload read from disk.
pub(crate) async fn upload_file(
    storage: &Storage,
    path: &str,
    file: Arc<std::fs::File>,
    size: u64,
    options: UploadOptions,
) -> crate::storage::Result<FileInfo> {
    if size as usize <= UPLOAD_CHUNK {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; size as usize];
            file.read_exact_at(&mut buf, 0).map(|_| buf)
        })
        .await;
        let data = read
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| crate::storage::StorageError::Invalid {
                path: path.to_string(),
                what: "staged file",
                reason: e.to_string(),
            })?;
        storage.upload(path, Bytes::from(data), options).await
    } else {
        storage
            .upload_from(path, || file_chunks(file.clone(), size), options)
            .await
    }
}

/// Uploads a journaled version from its data file.
pub(crate) async fn upload_local(
    storage: &Storage,
    path: &str,
    local: &std::path::Path,
    size: u64,
    attrs: &FileAttrs,
) -> WriteResult<FileInfo> {
    let file = Arc::new(std::fs::File::open(local)?);
    Ok(upload_file(storage, path, file, size, attrs.upload_options()).await?)
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
