//! Writes and namespace changes on the filesystem core: create, open for writing, write, flush/fsync (upload),
//! truncate, mkdir, rmdir, unlink, rename. Staging and upload live in [`crate::write`]; this file decides what each
//! operation means for the tree and keeps the caches (inodes, listings, negative lookups) truthful after it.
//!
//! Directories made with `mkdir` are kept by a marker object `DIR/.zmount-dir` (hidden from listings), so an empty
//! directory survives a remount. A rename whose source and target are routed to different providers answers EXDEV:
//! `mv` then copies and deletes, with progress and errors the user can see.
//!
//! Lock order: `handles` before `open_writes` before `Inodes`; none is held across an await.

use super::error::{FsError, FsResult};
use super::inode::{Entry, Ino, Kind};
use super::posix::Posix;
use super::{Attr, Filesystem, Handle};
use crate::images::ImageWorker;
use crate::routing::is_within;
use crate::storage::FileInfo;
use crate::write::{FileAttrs, Staged};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use std::sync::Arc;
use std::time::SystemTime;

pub use crate::storage::DIR_MARKER;

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Filesystem {
    pub(super) fn check_writable(&self, path: &str) -> FsResult<Option<u64>> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        let (_, resolved, provider) = self.storage.resolve(path)?;
        if provider.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(self.storage.size_limit(&resolved))
    }

    /// Forgets cached answers about `path` and its parent's listing after a change.
    fn changed(&self, path: &str) {
        self.negative.invalidate(path);
        self.listings.invalidate(parent_of(path));
        self.listings.invalidate(path);
    }

    fn gone(&self, path: &str) {
        self.changed(path);
        self.inodes.expire(path);
        self.negative.insert(path.to_string(), ());
    }

    pub(super) fn open_write_of(&self, path: &str) -> Option<Arc<Staged>> {
        self.open_writes
            .lock()
            .unwrap()
            .get(path)
            .and_then(|w| w.upgrade())
    }

    fn register_write(&self, staged: Staged) -> (Arc<Staged>, u64) {
        let staged = Arc::new(staged);
        self.open_writes
            .lock()
            .unwrap()
            .insert(staged.path.clone(), Arc::downgrade(&staged));
        let fh = self.add_handle(Handle::Write {
            staged: staged.clone(),
        });
        (staged, fh)
    }

    fn file_entry(&self, size: u64, info: Option<&FileInfo>, posix: Posix) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime: SystemTime::now(),
            etag: info.and_then(|i| i.etag.clone()),
            posix: (!posix.is_empty()).then_some(posix),
            source: info.map(|i| i.provider.clone()),
        }
    }

    /// Creates (or truncates) `name` in `parent` and opens it for writing.
    /// `mode`, `uid` and `gid` are the creating program's; they are stored with the object.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, u64)> {
        let path = self.child_path(parent, name)?;
        if name == DIR_MARKER {
            return Err(FsError::Invalid(format!("{DIR_MARKER} is reserved")));
        }
        self.check_writable(&path)?;
        let posix = Posix {
            mode: Some(mode & 0o7777),
            uid: Some(uid),
            gid: Some(gid),
            mtime: None,
        };
        let (_, resolved, _) = self.storage.resolve(&path)?;
        let attrs = FileAttrs {
            posix,
            metadata: resolved.route.metadata.clone(),
            tags: resolved.route.tags.clone(),
            content_type: None,
        };
        let (_, fh) = self.register_write(Staged::empty(&self.staging_dir, &path, attrs)?);
        let entry = self.file_entry(0, None, posix);
        let ino = self.inodes.record(&path, entry.clone());
        self.changed(&path);
        Ok((self.attr(ino, &entry), fh))
    }

    /// Opens an existing file; writers get a staged copy (empty with `truncate`, else the current bytes).
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> FsResult<u64> {
        if !write {
            return self.open_read(ino).await;
        }
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        self.check_writable(&path)?;
        if let Some(staged) = self.open_write_of(&path) {
            if truncate {
                staged.truncate(0, None).await?;
            }
            return Ok(self.add_handle(Handle::Write { staged }));
        }
        let staged = if truncate {
            // The bytes go; what the object carries besides (xattrs) stays, as on a local filesystem.
            let posix = entry.posix.unwrap_or_default();
            let attrs = FileAttrs::of_object(&self.storage, &path, posix).await?;
            Staged::empty(&self.staging_dir, &path, attrs)?
        } else {
            Staged::from_object(
                &self.staging_dir,
                &path,
                &self.storage,
                entry.posix.unwrap_or_default(),
            )
            .await?
        };
        Ok(self.register_write(staged).1)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        let Handle::Write { staged } = &*handle else {
            return Err(FsError::Invalid("not open for writing".into()));
        };
        let limit = self.check_writable(&staged.path)?;
        staged.write(offset, data, limit, &self.storage).await
    }

    /// `close`: uploads what was written, so an upload failure is close's error (EIO). On a write-back route it
    /// only makes the data durable locally (journaled) and queues the upload.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Handle::Write { staged } = &*handle else {
            return Ok(());
        };
        let (_, resolved, _) = self.storage.resolve(&staged.path)?;
        if resolved.route.write_back {
            if staged.stage_durably().await? {
                let images = self.images.clone();
                self.background
                    .upload(self.storage.clone(), staged.clone(), images);
            }
            return Ok(());
        }
        self.commit(staged).await
    }

    /// `fsync`: the data is on the provider when this returns, on every route.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Handle::Write { staged } = &*handle else {
            return Ok(());
        };
        self.commit(staged).await
    }

    pub(super) async fn commit(&self, staged: &Arc<Staged>) -> FsResult<()> {
        if let Some(info) = staged.commit(&self.storage).await? {
            self.inodes.record(
                &staged.path,
                self.file_entry(info.size, Some(&info), staged.posix()),
            );
            self.changed(&staged.path);
            if let Some(images) = &self.images {
                images.uploaded(&staged.path, info.size);
            }
        }
        Ok(())
    }

    /// `truncate`/`ftruncate`: through the open handle when there is one, else stage, cut and upload now.
    pub async fn set_size(&self, ino: Ino, fh: Option<u64>, size: u64) -> FsResult<Attr> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        let limit = self.check_writable(&path)?;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let staged = match handle.as_deref() {
            Some(Handle::Write { staged }) => Some(staged.clone()),
            _ => self.open_write_of(&path),
        };
        let entry = match staged {
            Some(staged) => {
                staged.truncate(size, limit).await?;
                Entry {
                    size,
                    mtime: SystemTime::now(),
                    ..entry
                }
            }
            None => {
                let staged = if size == 0 {
                    let posix = entry.posix.unwrap_or_default();
                    let attrs = FileAttrs::of_object(&self.storage, &path, posix).await?;
                    Staged::empty(&self.staging_dir, &path, attrs)?
                } else {
                    let posix = entry.posix.unwrap_or_default();
                    Staged::from_object(&self.staging_dir, &path, &self.storage, posix).await?
                };
                staged.truncate(size, limit).await?;
                let info = staged.commit(&self.storage).await?;
                self.changed(&path);
                self.file_entry(size, info.as_ref(), entry.posix.unwrap_or_default())
            }
        };
        let ino = self.inodes.record(&path, entry.clone());
        Ok(self.attr(ino, &entry))
    }

    /// Uploads a closed file again with its attributes changed by `change` (and `posix` as its mode/owner/times):
    /// object stores cannot change metadata in place through object_store, so this costs a GET and a PUT of the
    /// whole object.
    pub(super) async fn rewrite_closed(
        &self,
        path: &str,
        entry: &Entry,
        posix: Posix,
        change: impl FnOnce(&mut FileAttrs),
    ) -> FsResult<()> {
        let staged = Staged::from_object(&self.staging_dir, path, &self.storage, posix).await?;
        staged.change_attrs(change).await; // also marks it for upload
        let info = staged.commit(&self.storage).await?;
        self.changed(path);
        let entry = match info {
            Some(info) => Entry {
                etag: info.etag,
                source: Some(info.provider),
                ..entry.clone()
            },
            None => entry.clone(),
        };
        self.inodes.record(path, entry);
        Ok(())
    }

    /// `chmod`, `chown`, `touch`: stored with the object. With the file open for writing they ride along with its
    /// upload; otherwise the object is uploaded again with the new values (object stores cannot change metadata
    /// in place through this API) — a full re-upload, which SEMANTICS.md states. Directories keep the defaults.
    pub async fn set_attrs(&self, ino: Ino, fh: Option<u64>, changes: Posix) -> FsResult<Attr> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir || changes.is_empty() {
            return self.getattr(ino).await;
        }
        self.check_writable(&path)?;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let open = match handle.as_deref() {
            Some(Handle::Write { staged }) => Some(staged.clone()),
            _ => self.open_write_of(&path),
        };
        let posix = entry.posix.unwrap_or_default().merged(changes);
        match open {
            Some(staged) => {
                // Uploaded now: the file may be closing, and its last commit may already have run.
                staged.set_posix(changes).await;
                self.commit(&staged).await?;
            }
            None => self.rewrite_closed(&path, &entry, posix, |_| {}).await?,
        }
        let (_, entry, _) = self.path_of(ino)?;
        let entry = Entry {
            posix: Some(posix),
            ..entry
        };
        let ino = self.inodes.record(&path, entry.clone());
        Ok(self.attr(ino, &self.current(&path, entry).await))
    }

    pub async fn mkdir(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if self.lookup(parent, name).await.is_ok() {
            return Err(FsError::Exists);
        }
        let marker = format!("{path}/{DIR_MARKER}");
        self.check_writable(&marker)?;
        self.storage
            .upload(&marker, Bytes::new(), Default::default())
            .await?;
        let entry = Entry::dir(SystemTime::now());
        let ino = self.inodes.record(&path, entry.clone());
        self.changed(&path);
        Ok(self.attr(ino, &entry))
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let attr = self.lookup(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        if !self.is_empty_dir(&path).await? {
            return Err(FsError::NotEmpty);
        }
        let marker = format!("{path}/{DIR_MARKER}");
        self.check_writable(&marker)?;
        self.storage.delete(&marker).await?;
        self.gone(&path);
        Ok(())
    }

    /// Whether directory `path` holds nothing. Subdirectories are checked for content, because some servers
    /// (SeaweedFS) keep listing a folder after its last object is gone.
    async fn is_empty_dir(&self, path: &str) -> FsResult<bool> {
        let (entries, partial) = self.list_dir(path).await?;
        if let Some(outage) = partial {
            return Err(outage.into()); // a provider that did not answer may hold files here
        }
        for entry in entries {
            let child = format!("{path}/{}", entry.name);
            if entry.attr.kind == Kind::File || self.dir_exists(&child).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let attr = self.lookup(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        self.check_writable(&path)?;
        self.storage.delete(&path).await?;
        self.gone(&path);
        Ok(())
    }

    /// Renames a file (replacing the target) or a directory (every object below it). Source and target must be
    /// routed to the same provider, else EXDEV before anything moves.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
    ) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let attr = self.lookup(parent, name).await?;
        if is_within(&to, &from) && to != from {
            return Err(FsError::Invalid(
                "cannot move a directory into itself".into(),
            ));
        }
        let moves = match attr.kind {
            Kind::File => vec![(from.clone(), to.clone())],
            Kind::Dir => {
                if let Ok(target) = self.lookup(new_parent, new_name).await {
                    if target.kind == Kind::Dir && !self.is_empty_dir(&to).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
                let objects = self.storage.list_all(&from).await?;
                objects
                    .into_iter()
                    .map(|o| (o.path.clone(), format!("{to}{}", &o.path[from.len()..])))
                    .collect()
            }
        };
        let mut plan = Vec::with_capacity(moves.len());
        for (src, dst) in moves {
            self.check_writable(&dst)?;
            let (_, _, src_provider) = self.storage.resolve(&src)?;
            let (_, _, dst_provider) = self.storage.resolve(&dst)?;
            // A file whose newest bytes wait on a fallback for their heal, or a target that has such bytes, is
            // copied by `mv` through the mount (which writes and deletes with the heal in mind).
            let heals = self.storage.heals();
            if src_provider.name != dst_provider.name
                || heals.is_pending(&src)
                || heals.is_pending(&dst)
            {
                return Err(FsError::CrossDevice);
            }
            plan.push((src_provider.clone(), src, dst));
        }
        let mut moved = Vec::with_capacity(plan.len());
        for (provider, src, dst) in plan {
            // No write, delete, heal or image transform of either path lands in the middle of the move.
            let _held = self.storage.lock_paths(&[&src, &dst]).await;
            provider
                .store
                .rename(&provider.key_for(&src), &provider.key_for(&dst))
                .await
                .map_err(|e| crate::storage::StorageError::from_store(&provider, &src, e))?;
            if let Some(route) = self.storage.router().resolve(&src) {
                self.storage.forget_fallback_copies(&src, route.route).await;
            }
            self.changed(&dst);
            moved.push(dst);
        }
        self.inodes.rename(&from, &to);
        self.gone(&from);
        self.changed(&to);
        self.listings.invalidate_all();
        // A program that writes a temporary name and renames it into place (rsync, editors) gets variants too,
        // and so do the files of a folder moved into an image route.
        if let Some(images) = &self.images {
            moved.iter().for_each(|dst| images.submit(dst));
        }
        Ok(())
    }
}

/// Uploads queued by write-back `close`s: many in flight, counted so unmount can wait for all of them.
pub struct BackgroundUploads {
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: crate::tasks::InFlight,
}

impl BackgroundUploads {
    /// Uploads in flight at once. 32: enough to hide per-request latency for small files (measured: 1,000 small
    /// puts reach full speed at 32 in flight), few enough not to flood a provider.
    const CONCURRENCY: usize = 32;

    pub fn new() -> Self {
        BackgroundUploads {
            permits: Arc::new(tokio::sync::Semaphore::new(Self::CONCURRENCY)),
            in_flight: Default::default(),
        }
    }

    /// Queues the upload of `staged`; once it is on the provider, `images` (if any) gets the path.
    fn upload(
        &self,
        storage: Arc<crate::storage::Storage>,
        staged: Arc<Staged>,
        images: Option<Arc<ImageWorker>>,
    ) {
        let running = self.in_flight.start();
        let permits = self.permits.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            match staged.commit(&storage).await {
                Ok(Some(info)) => {
                    if let Some(images) = images {
                        images.uploaded(&staged.path, info.size);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "background upload of {} failed, kept for retry: {e}",
                    staged.path
                ),
            }
            drop(staged);
            drop(running);
        });
    }

    pub fn pending(&self) -> usize {
        self.in_flight.pending()
    }

    /// Waits until every queued upload has finished (or failed and been kept), reporting progress.
    pub async fn wait(&self) {
        self.in_flight.wait("background uploads").await
    }
}
