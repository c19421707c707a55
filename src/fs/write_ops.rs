//! Writes of files on the filesystem core: create, open for writing, write, flush/fsync (upload), truncate and
//! attribute changes. Staging and upload live in [`crate::write`]; this file (and `namespace.rs`, for mkdir, rmdir,
//! unlink and rename) decides what each operation means for the tree and keeps the caches (inodes, listings,
//! negative lookups) truthful after it.
//!
//! Lock order: see [`crate::write`] (the one place it is written down).

use super::error::{FsError, FsResult};
use super::inode::{Entry, Ino, Kind};
use super::posix::Posix;
use super::{Attr, Filesystem, Handle};
use crate::storage::FileInfo;
use crate::write::{FileAttrs, Staged};
use bytes::Bytes;

use std::sync::Arc;
use std::time::SystemTime;

pub use crate::storage::DIR_MARKER;

pub(super) fn parent_of(path: &str) -> &str {
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

    /// Forgets cached answers about `path` and its parent's listing after a change (marked first, so an answer
    /// asked before it is not cached after it; see [`super::inode`]).
    pub(super) fn changed(&self, path: &str) {
        self.inodes.mark(path);
        self.negative.invalidate(path);
        self.listings.invalidate(parent_of(path));
        self.listings.invalidate(path);
    }

    pub(super) fn gone(&self, path: &str) {
        self.changed(path);
        self.inodes.expire(path);
        self.negative.insert(path.to_string(), ());
    }

    pub(super) fn file_entry(&self, size: u64, info: Option<&FileInfo>, posix: Posix) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime: SystemTime::now(),
            etag: info.and_then(|i| i.etag.clone()),
            posix: (!posix.is_empty()).then_some(posix),
            source: info.map(|i| i.provider.clone()),
        }
    }

    /// The file behind handle `fh`, when it is one written in this mount.
    fn staged_of(&self, fh: u64) -> FsResult<(Arc<Staged>, bool)> {
        match &*self.handle(fh)? {
            Handle::Write {
                staged, writable, ..
            } => Ok((staged.clone(), *writable)),
            _ => Err(FsError::Invalid("not open for writing".into())),
        }
    }

    fn add_write_handle(&self, ino: Ino, staged: Arc<Staged>, opener: u32) -> u64 {
        self.add_handle(
            ino,
            Handle::Write {
                staged,
                writable: true,
                opener,
            },
        )
    }

    /// A write, truncation or attribute change of `staged` failed it: the tree shows the path's previous
    /// version again.
    async fn after_failure(&self, staged: &Arc<Staged>, path: Option<String>) {
        self.uploads.failed(staged).await;
        if let Some(path) = path {
            self.changed(&path);
            self.inodes.expire(&path);
        }
    }

    /// What a new file at `path` carries: `posix`, and its route's metadata and tags.
    pub(super) fn new_file_attrs(&self, path: &str, posix: Posix) -> FsResult<FileAttrs> {
        let (_, resolved, _) = self.storage.resolve(path)?;
        Ok(FileAttrs {
            posix,
            metadata: resolved.route.metadata.clone(),
            tags: resolved.route.tags.clone(),
            content_type: None,
        })
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
        opener: u32,
    ) -> FsResult<(Attr, u64)> {
        let path = self.child_path(parent, name)?;
        if name == DIR_MARKER {
            return Err(FsError::Invalid(format!("{DIR_MARKER} is reserved")));
        }
        self.check_writable(&path)?;
        let posix = Posix::created(mode, uid, gid);
        let attrs = self.new_file_attrs(&path, posix)?;
        let staged = self.uploads.create(&path, attrs)?;
        let entry = self.file_entry(0, None, posix);
        let ino = self.inodes.record(&path, entry.clone());
        let fh = self.add_write_handle(ino, staged, opener);
        self.changed(&path);
        self.entries_changed(&path);
        Ok((self.attr(ino, &entry), fh))
    }

    /// Opens an existing file; writers share the file written here, or get a working copy (empty with
    /// `truncate`, else the current bytes).
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool, opener: u32) -> FsResult<u64> {
        if !write {
            return self.open_read(ino).await;
        }
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        self.check_writable(&path)?;
        let posix = entry.posix.unwrap_or_default();
        let staged = self.uploads.open(&path, truncate, posix).await?;
        if truncate {
            self.changed(&path);
        }
        Ok(self.add_write_handle(ino, staged, opener))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let (staged, _) = self.staged_of(fh)?;
        let path = staged.path();
        let limit = match &path {
            Some(path) => self.check_writable(path)?,
            None => None,
        };
        let written = staged
            .write(offset, data, limit, &self.storage, self.uploads.space())
            .await;
        if written.is_err() {
            self.after_failure(&staged, path).await;
        }
        Ok(written?)
    }

    /// `close`: publishes what was written (see [`crate::write::queue`]): uploaded now on a write-through route,
    /// so an upload failure is close's error (EIO), or journaled and queued on a write-back route.
    /// Only the close of the process that opened the file publishes: a child that inherited the descriptor
    /// (every `fork` + `exec` of a program that is still writing) closes its copy long before the file is
    /// written, and that must not publish half a file. Changes nobody published by the last close are
    /// published at release.
    pub async fn flush(&self, fh: u64, closer: u32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::Write {
                staged,
                writable: true,
                opener,
            } if *opener == closer => Ok(self.uploads.close(staged).await?),
            _ => Ok(()),
        }
    }

    /// `fsync`: the data is on the provider when this returns, on every route.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Handle::Write {
            staged,
            writable: true,
            ..
        } = &*handle
        else {
            return Ok(());
        };
        Ok(self.uploads.commit(staged).await?)
    }

    /// Runs `op` on the file at `path` written here (or a working copy of its object, opened for the purpose),
    /// then publishes the result as if closed: a change made by path is acknowledged when it returns.
    async fn change_by_path<F, Fut>(
        &self,
        path: &str,
        posix: Posix,
        truncate: bool,
        op: F,
    ) -> FsResult<()>
    where
        F: FnOnce(Arc<Staged>) -> Fut,
        Fut: std::future::Future<Output = crate::write::WriteResult<()>>,
    {
        let staged = self.uploads.open(path, truncate, posix).await?;
        let result = match op(staged.clone()).await {
            Ok(()) => self.uploads.close(&staged).await,
            Err(e) => {
                self.after_failure(&staged, Some(path.to_string())).await;
                Err(e)
            }
        };
        self.uploads.release(&staged);
        Ok(result?)
    }

    /// `truncate`/`ftruncate`: through the open handle when there is one (whatever the file's name is now, or
    /// none), else by path (published at once).
    pub async fn set_size(&self, ino: Ino, fh: Option<u64>, size: u64) -> FsResult<Attr> {
        let space = self.uploads.space().clone();
        if let Some((staged, _)) = fh.and_then(|fh| self.staged_of(fh).ok()) {
            let path = staged.path();
            let limit = match &path {
                Some(path) => self.check_writable(path)?,
                None => None,
            };
            if let Err(e) = staged.truncate(size, limit, &space).await {
                self.after_failure(&staged, path).await;
                return Err(e.into());
            }
            if let Some(path) = &path {
                self.changed(path);
            }
            return self.getattr(ino, fh).await;
        }
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        let limit = self.check_writable(&path)?;
        let posix = entry.posix.unwrap_or_default();
        self.change_by_path(&path, posix, size == 0, |staged| async move {
            staged.truncate(size, limit, &space).await
        })
        .await?;
        self.changed(&path);
        self.getattr(ino, fh).await
    }

    /// Changes what a closed file carries besides its bytes (`chmod`, `chown`, `touch`, xattrs). A file written
    /// here takes the change with its bytes: published now when its bytes were already closed, else with its
    /// next `close`. Any other file: its provider replaces what the object carries in place where it can (S3 and
    /// S3-compatible stores, see [`Storage::replace_attributes`]); elsewhere, or when that is refused, the object
    /// is written again with the change (a GET and a PUT of the whole object), as SEMANTICS.md states.
    pub(super) async fn change_file(
        &self,
        path: &str,
        posix: Posix,
        change: impl Fn(&mut FileAttrs) + Send + Sync + Clone + 'static,
    ) -> FsResult<()> {
        self.change_file_with(path, posix, change, true).await
    }

    /// [`Filesystem::change_file`]; without `rewrite`, a stored file whose provider cannot change it in place is
    /// left as it is (ENOTSUP), rather than sent again.
    pub(super) async fn change_file_with(
        &self,
        path: &str,
        posix: Posix,
        change: impl Fn(&mut FileAttrs) + Send + Sync + Clone + 'static,
        rewrite: bool,
    ) -> FsResult<()> {
        self.check_writable(path)?;
        // Every change of what a file carries moves its ctime.
        let now = SystemTime::now();
        let change = move |attrs: &mut FileAttrs| {
            change(attrs);
            attrs.posix.ctime = Some(now);
        };
        match self.uploads.get(path) {
            Some(staged) if staged.handles() > 0 && staged.writing().await => {
                // Still being written: the change rides along with the upload at its close.
                Ok(staged.change_attrs(change).await?)
            }
            staged => {
                // A file whose mtime was its object's modification time keeps that time (a chmod is no change of
                // data).
                let shown = self.inodes.find(path).map(|(_, entry, _)| entry.mtime);
                let change = move |attrs: &mut FileAttrs| {
                    if attrs.posix.mtime.is_none() {
                        attrs.posix.mtime = shown;
                    }
                    change(attrs);
                };
                if staged.is_none() && self.change_in_place(path, posix, &change).await? {
                    return Ok(());
                }
                if staged.is_none() && !rewrite {
                    return Err(FsError::NotSupported(format!(
                        "{path}: its provider did not change it in place, and it is not sent again"
                    )));
                }
                self.change_by_path(path, posix, false, |staged| async move {
                    staged.change_attrs(change).await
                })
                .await
            }
        }
    }

    /// [`Filesystem::change_file`] of a file not written here, by its provider in place: true when done, false
    /// when the provider cannot (the caller then writes the object again).
    async fn change_in_place(
        &self,
        path: &str,
        posix: Posix,
        change: &(impl Fn(&mut FileAttrs) + Sync),
    ) -> FsResult<bool> {
        let info = match self.storage.get_info(path).await {
            Ok(info) => info,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut attrs = FileAttrs::of_info(&self.storage, info.clone(), posix);
        change(&mut attrs);
        let Some(done) = self
            .storage
            .replace_attributes(path, attrs.upload_options(), &info)
            .await?
        else {
            return Ok(false);
        };
        let modified = attrs.posix.mtime.unwrap_or_else(SystemTime::now);
        self.published(crate::write::Published {
            path: path.to_string(),
            info: done,
            posix: attrs.posix,
            modified,
        });
        Ok(true)
    }

    /// `chmod`, `chown`, `touch`: stored with the object (see [`Filesystem::change_file`]). Directories keep the
    /// defaults.
    pub async fn set_attrs(&self, ino: Ino, fh: Option<u64>, changes: Posix) -> FsResult<Attr> {
        if changes.is_empty() {
            return self.getattr(ino, fh).await;
        }
        let merge = move |attrs: &mut FileAttrs| attrs.posix = attrs.posix.merged(changes);
        if let Some((staged, _)) = fh.and_then(|fh| self.staged_of(fh).ok()) {
            match staged.path() {
                Some(path) => self.change_file(&path, staged.posix(), merge).await?,
                None => staged.change_attrs(merge).await?, // unlinked: kept for its open handles only
            }
            return self.getattr(ino, fh).await;
        }
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            self.change_dir(&path, entry, changes).await?;
            return self.getattr(ino, fh).await;
        }
        let posix = entry.posix.unwrap_or_default();
        self.change_file(&path, posix, merge).await?;
        self.changed(&path);
        self.getattr(ino, fh).await
    }
}
