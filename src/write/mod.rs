//! Files open for writing. Every written file is staged in a local file under `<cache_dir>/staging/` and uploaded
//! as one object when the program calls `close` (flush) or `fsync`; the object appears complete and atomically,
//! never partially. Sequential and random writes, appends and truncation all work on the staged copy, so any
//! write pattern is supported; a file opened without O_TRUNC is first filled with the object's current bytes.
//!
//! No data loss: the staged file is fsynced before upload and is only removed after the upload succeeded. When the
//! upload fails, `close`/`fsync` return EIO, the staged data stays on disk and is logged with provider and path.
//!
//! Crash safety: `close`/`fsync` acknowledge data once it is on the provider (the upload succeeded) or, on a
//! write-back route, once it is durable locally: the staged data fsynced and a journal record (`<id>.json`, the
//! mount path the data belongs to, its attributes) written and fsynced beside it. A failed upload also makes its
//! data durable that way before the error is returned, so it is retried. Records are removed only after the
//! upload succeeded. [`replay`] runs when a mount starts with the same cache dir: every recorded file
//! is uploaded (or kept for a later try), so nothing acknowledged is lost to a crash or a `kill -9`.
//!
//! Lock order: `Staged::inner` only; it is held across the upload so writes cannot interleave with it.

mod stream;

use crate::fs::error::{FsError, FsResult};
use crate::fs::posix::Posix;
use crate::storage::{FileInfo, Storage, UploadOptions};
use bytes::Bytes;
use futures::StreamExt;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stream::SequentialUpload;

/// Read size when streaming a staged file to the provider: one upload part.
const UPLOAD_CHUNK: usize = crate::storage::UPLOAD_PART_SIZE;

/// A file being written, staged on local disk.
pub struct Staged {
    /// Mount path of the object it becomes.
    pub path: String,
    /// Mode, owner, times, user metadata, tags and content type stored with the object when it is uploaded.
    attrs: std::sync::Mutex<FileAttrs>,
    /// Set by the first write or truncation: the image-work markers are gone from `attrs` (see `bytes_changed`).
    bytes_changed: std::sync::atomic::AtomicBool,
    local: PathBuf,
    inner: tokio::sync::Mutex<StagedInner>,
}

struct StagedInner {
    file: Arc<std::fs::File>,
    size: u64,
    /// Written since the last successful upload.
    dirty: bool,
    /// The multipart upload fed by sequential writes, if this file is still being written front to back.
    sequential: SequentialUpload,
}

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
    pub async fn of_object(storage: &Storage, path: &str, posix: Posix) -> FsResult<FileAttrs> {
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
            if crate::fs::posix::KEYS.contains(&key.as_str()) {
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

static NEXT_STAGING_ID: AtomicU64 = AtomicU64::new(0);

/// Staged files owned by a live [`Staged`] in this process: journal replay must leave them alone, whatever path
/// they were written for (a file may be renamed while its upload is in flight).
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn is_live(local: &Path) -> bool {
    LIVE.lock().unwrap().iter().any(|p| p == local)
}

fn staging_file(dir: &Path) -> FsResult<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)?;
    let id = NEXT_STAGING_ID.fetch_add(1, Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let local = dir.join(format!(
        "{}-{}-{id}",
        started.as_nanos(),
        std::process::id()
    ));
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
    pub fn empty(dir: &Path, path: &str, attrs: FileAttrs) -> FsResult<Staged> {
        let (local, file) = staging_file(dir)?;
        let staged = Staged::new(path, local, file, 0, true, attrs);
        staged.bytes_changed();
        Ok(staged)
    }

    /// A staged copy of the object's current bytes and attributes (open for writing without O_TRUNC), with
    /// `posix` as its mode/owner/times.
    pub async fn from_object(
        dir: &Path,
        path: &str,
        storage: &Storage,
        posix: Posix,
    ) -> FsResult<Staged> {
        let attrs = FileAttrs::of_object(storage, path, posix).await?;
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
        Ok(Staged::new(path, local, file, size, false, attrs))
    }

    fn new(
        path: &str,
        local: PathBuf,
        file: std::fs::File,
        size: u64,
        dirty: bool,
        attrs: FileAttrs,
    ) -> Staged {
        // Only a file written from empty can be streamed: anything else is uploaded whole from the staged copy.
        let sequential = if size == 0 {
            SequentialUpload::start()
        } else {
            SequentialUpload::Off
        };
        let inner = StagedInner {
            file: Arc::new(file),
            size,
            dirty,
            sequential,
        };
        LIVE.lock().unwrap().push(local.clone());
        Staged {
            path: path.to_string(),
            attrs: std::sync::Mutex::new(attrs),
            bytes_changed: Default::default(),
            local,
            inner: tokio::sync::Mutex::new(inner),
        }
    }

    pub async fn size(&self) -> u64 {
        self.inner.lock().await.size
    }

    pub fn posix(&self) -> Posix {
        self.attrs.lock().unwrap().posix
    }

    pub fn attrs(&self) -> FileAttrs {
        self.attrs.lock().unwrap().clone()
    }

    /// Changes the mode/owner/times the object gets; the file is uploaded again at the next commit.
    pub async fn set_posix(&self, changes: Posix) {
        self.change_attrs(|a| a.posix = a.posix.merged(changes))
            .await;
    }

    /// Changes what the object gets besides its bytes; the file is uploaded again at the next commit.
    pub async fn change_attrs(&self, change: impl FnOnce(&mut FileAttrs)) {
        let mut inner = self.inner.lock().await;
        change(&mut self.attrs.lock().unwrap());
        inner.sequential.abandon(); // a streamed upload already carries the old metadata
        inner.dirty = true;
    }

    fn upload_options(&self) -> UploadOptions {
        self.attrs.lock().unwrap().upload_options()
    }

    /// The bytes are the user's now, not image work's output: a user's file written over a variant is never
    /// replaced by the next variant, and new bytes of a transformed file are transformed again.
    /// Once per staged file: writes are a hot path.
    fn bytes_changed(&self) {
        if self
            .bytes_changed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut attrs = self.attrs.lock().unwrap();
        attrs
            .metadata
            .retain(|key, _| !crate::images::MARKER_KEYS.contains(&key.as_str()));
    }

    /// Writes `data` at `offset`; `limit` is the route's largest file size (EFBIG past it).
    pub async fn write(
        &self,
        offset: u64,
        data: Bytes,
        limit: Option<u64>,
        storage: &Arc<Storage>,
    ) -> FsResult<u32> {
        let end = offset + data.len() as u64;
        if limit.is_some_and(|l| end > l) {
            return Err(FsError::TooLarge);
        }
        self.bytes_changed();
        let mut inner = self.inner.lock().await;
        let file = inner.file.clone();
        let len = data.len() as u32;
        let staged = data.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&staged, offset))
            .await
            .map_err(join_error)??;
        if offset == inner.size {
            inner
                .sequential
                .push(data, storage, &self.path, self.upload_options())
                .await;
        } else {
            inner.sequential.abandon();
        }
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
        self.bytes_changed();
        let mut inner = self.inner.lock().await;
        let file = inner.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(size))
            .await
            .map_err(join_error)??;
        inner.sequential.abandon();
        inner.size = size;
        inner.dirty = true;
        Ok(())
    }

    /// Makes acknowledged bytes durable locally (data fsynced, journal record written) without uploading: what
    /// write-back `close` waits for. Returns whether there is anything to upload.
    pub async fn stage_durably(&self) -> FsResult<bool> {
        let inner = self.inner.lock().await;
        self.make_durable(&inner).await
    }

    /// Fsyncs dirty data and writes its journal record; false when there is nothing to upload.
    async fn make_durable(&self, inner: &StagedInner) -> FsResult<bool> {
        if !inner.dirty {
            return Ok(false);
        }
        let file = inner.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(join_error)??;
        write_record(&self.local, &self.path, &self.upload_options())?;
        Ok(true)
    }

    /// Uploads the staged bytes if they changed since the last upload. The local copy is fsynced first, so data
    /// acknowledged here is on the provider, and until then safe on local disk.
    pub async fn commit(&self, storage: &Storage) -> FsResult<Option<FileInfo>> {
        let mut inner = self.inner.lock().await;
        if !inner.dirty {
            return Ok(None);
        }
        // No fsync or journal record before the upload: until `close`/`fsync` returns, nothing is acknowledged,
        // and once the upload succeeded the bytes are on the provider. Only a failed upload, whose data is kept
        // and retried, needs them durable here (below); write-back routes make them durable before acknowledging.
        let size = inner.size;
        // A streamed upload completes under the path's write lock, like every other upload: a conditional
        // replace (an image transform) can then never land between its check and its upload.
        let held = match inner.sequential.is_uploading() {
            true => Some(storage.lock_paths(&[&self.path]).await),
            false => None,
        };
        let streamed = inner.sequential.finish().await;
        drop(held);
        let result = match streamed {
            Some(Ok(info)) if info.size == size => Ok(info),
            // Not streamed, or the stream failed: upload the staged copy (a second attempt in the latter case).
            _ => self.upload_staged(&inner, storage).await,
        };
        match result {
            Ok(info) => {
                inner.dirty = false;
                let _ = std::fs::remove_file(record_of(&self.local));
                drop_superseded(&self.local, &self.path);
                Ok(Some(info))
            }
            Err(e) => {
                self.make_durable(&inner).await?;
                tracing::error!(
                    "upload of {} failed; its data is kept at {}: {e}",
                    self.path,
                    self.local.display()
                );
                Err(FsError::Storage(e))
            }
        }
    }

    /// Uploads the whole staged copy: one PUT when it fits in a part, else a multipart upload read from disk.
    async fn upload_staged(
        &self,
        inner: &StagedInner,
        storage: &Storage,
    ) -> crate::storage::Result<FileInfo> {
        let size = inner.size;
        if size as usize <= UPLOAD_CHUNK {
            let file = inner.file.clone();
            let mut buf = vec![0u8; size as usize];
            let read =
                tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, 0).map(|_| buf))
                    .await;
            let data = read
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| crate::storage::StorageError::Invalid {
                    path: self.path.clone(),
                    what: "staged file",
                    reason: e.to_string(),
                })?;
            storage
                .upload(&self.path, Bytes::from(data), self.upload_options())
                .await
        } else {
            let file = &inner.file;
            storage
                .upload_from(
                    &self.path,
                    || file_chunks(file.clone(), size),
                    self.upload_options(),
                )
                .await
        }
    }

    /// Whether bytes are waiting for a successful upload.
    pub async fn is_dirty(&self) -> bool {
        self.inner.lock().await.dirty
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        LIVE.lock().unwrap().retain(|p| p != &self.local);
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

/// The journal record beside a staged data file.
fn record_of(local: &Path) -> PathBuf {
    local.with_extension("json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// Mount path the staged data becomes.
    path: String,
    /// User metadata the object gets (mode, owner, times included).
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    content_type: Option<String>,
}

/// Writes (atomically, durably) the record saying `local` holds acknowledged data for `path`.
/// Rewritten at every commit, so attribute changes made since the last one are in it too.
fn write_record(local: &Path, path: &str, options: &UploadOptions) -> FsResult<()> {
    let body = serde_json::to_vec(&Record {
        path: path.to_string(),
        metadata: options.metadata.clone(),
        tags: options.tags.clone(),
        content_type: options.content_type.clone(),
    })
    .expect("a record serializes");
    Ok(write_durably(&record_of(local), &body)?)
}

/// Writes `body` to `file` so that after a crash the file is either absent or complete: a `.tmp` sibling is
/// written and fsynced, renamed over `file`, and the folder is fsynced so the rename itself survives.
pub fn write_durably(file: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("json.tmp");
    let out = std::fs::File::create(&tmp)?;
    (&out).write_all(body)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Outcome of replaying the journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    pub uploaded: Vec<String>,
    pub failed: Vec<String>,
}

/// Uploads every journaled file in `dir` whose path `skip` does not claim (files still open in this mount).
pub async fn replay(dir: &Path, storage: &Storage, skip: impl Fn(&str) -> bool) -> Replay {
    let mut outcome = Replay::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return outcome;
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let name = entry.path();
        // Data files are read through their records; `.tmp` is a record being written right now (leftovers are
        // removed at start-up by `discard_unacknowledged`).
        if name.extension().and_then(|e| e.to_str()) == Some("json") {
            records.push(name);
        }
    }
    records.sort(); // oldest first (names start with the staging time), so the newest bytes of a path land last
    for record_path in records {
        let local = record_path.with_extension("");
        let Some(record) = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            continue;
        };
        if skip(&record.path) || is_live(&local) {
            continue;
        }
        let size = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
        let file = match std::fs::File::open(&local) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                tracing::error!(
                    "journal: staged data for {} is missing ({e}); record kept",
                    record.path
                );
                outcome.failed.push(record.path);
                continue;
            }
        };
        match storage
            .upload_from(
                &record.path,
                || file_chunks(file.clone(), size),
                UploadOptions {
                    metadata: record.metadata.clone(),
                    tags: record.tags.clone(),
                    content_type: record.content_type.clone(),
                },
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    "journal: uploaded {} ({size} bytes) staged before the last stop",
                    record.path
                );
                let _ = std::fs::remove_file(&record_path);
                let _ = std::fs::remove_file(&local);
                outcome.uploaded.push(record.path);
            }
            Err(e) => {
                tracing::warn!(
                    "journal: {} still cannot be uploaded, kept for a later try: {e}",
                    record.path
                );
                outcome.failed.push(record.path);
            }
        }
    }
    outcome
}

/// After `path` was uploaded from `local`: journal records of older, failed uploads of the same path (not owned by
/// a live file) are dropped, so a later retry cannot put their older bytes over the newer ones.
fn drop_superseded(local: &Path, path: &str) {
    let Some(dir) = local.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let record = entry.path();
        if record.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let data = record.with_extension("");
        if data == local || is_live(&data) {
            continue;
        }
        let same_path = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .is_some_and(|r| r.path == path);
        if same_path {
            tracing::info!(
                "journal: an older pending upload of {path} is superseded by a newer one; dropped"
            );
            let _ = std::fs::remove_file(&record);
            let _ = std::fs::remove_file(&data);
        }
    }
}

/// Journal records in `dir`: acknowledged files not yet uploaded (in progress or waiting for a retry).
pub fn journaled(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
            .count()
    })
}

/// Removes staged data that no journal record claims and no open file uses: bytes a program wrote but never
/// closed or fsynced before the previous mount stopped. Called once, before the mount serves requests.
pub fn discard_unacknowledged(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut discarded = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(&path); // a record whose writing was cut short
            continue;
        }
        if path.extension().is_none()
            && !record_of(&path).exists()
            && std::fs::remove_file(&path).is_ok()
        {
            discarded += 1;
        }
    }
    discarded
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
