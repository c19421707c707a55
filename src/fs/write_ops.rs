//! Writes and namespace changes on the filesystem core: create, open for writing, write, flush/fsync (upload),
//! truncate, mkdir, rmdir, unlink, rename. Staging and upload live in [`crate::write`]; this file decides what each
//! operation means for the tree and keeps the caches (inodes, listings, negative lookups) truthful after it.
//!
//! Directories made with `mkdir` are kept by a marker object `DIR/.zmount-dir` (hidden from listings), so an empty
//! directory survives a remount. A rename whose source and target are routed to different providers answers EXDEV:
//! `mv` then copies and deletes, with progress and errors the user can see.
//!
//! Lock order: see [`crate::write`] (the one place it is written down).

use super::error::{FsError, FsResult};
use super::inode::{Entry, Ino, Kind};
use super::posix::Posix;
use super::{Attr, Filesystem, Handle};
use crate::providers::Attempts;
use crate::routing::is_within;
use crate::storage::{guess_content_type, same_content_type, FileInfo};
use crate::write::{FileAttrs, Staged};
use bytes::Bytes;

use std::sync::Arc;
use std::time::SystemTime;

/// Largest file whose content type a rename updates (see `Filesystem::retype`): 16 MiB.
const RETYPE_MAX: u64 = 16 << 20;

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
    fn changed(&self, path: &str) {
        self.inodes.mark(path);
        self.negative.invalidate(path);
        self.listings.invalidate(parent_of(path));
        self.listings.invalidate(path);
    }

    fn gone(&self, path: &str) {
        self.changed(path);
        self.inodes.expire(path);
        self.negative.insert(path.to_string(), ());
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
    fn new_file_attrs(&self, path: &str, posix: Posix) -> FsResult<FileAttrs> {
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
    async fn change_file_with(
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

    /// Makes directory `name` with the creating program's `mode`, `uid` and `gid`, stored on its marker object.
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if self.lookup(parent, name).await.is_ok() {
            return Err(FsError::Exists);
        }
        let posix = Posix::created(mode, uid, gid);
        self.store_dir_posix(&path, posix).await?;
        let entry = Entry {
            posix: Some(posix),
            ..Entry::dir(SystemTime::now())
        };
        let ino = self.inodes.record(&path, entry.clone());
        self.changed(&path);
        self.entries_changed(&path);
        Ok(self.attr(ino, &entry))
    }

    /// `symlink`: an object holding the target, whose stored `mode` says S_IFLNK (as s3fs stores them).
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        if target.is_empty() || target.len() >= 4096 {
            return Err(FsError::NameTooLong(format!(
                "symlink target of {} bytes",
                target.len()
            )));
        }
        let mode = libc::S_IFLNK | 0o777;
        self.make_node(parent, name, mode, 0, (uid, gid), target.as_bytes())
            .await
    }

    /// `mknod`/`mkfifo`/socket `bind`: an empty object whose stored `mode` says what it is (as s3fs stores them);
    /// the kernel does the rest. A regular file is an empty file.
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.make_node(parent, name, mode, rdev, (uid, gid), b"")
            .await
    }

    /// A node of file type `mode & S_IFMT` holding `content`, made at once.
    async fn make_node(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        rdev: u32,
        (uid, gid): (u32, u32),
        content: &[u8],
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if name == DIR_MARKER {
            return Err(FsError::Invalid(format!("{DIR_MARKER} is reserved")));
        }
        if self.lookup(parent, name).await.is_ok() {
            return Err(FsError::Exists);
        }
        self.check_writable(&path)?;
        let kind = mode & libc::S_IFMT;
        let special = [
            libc::S_IFLNK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ]
        .contains(&kind);
        if !special && kind != libc::S_IFREG && kind != 0 {
            return Err(FsError::Invalid(format!("mknod of file type {kind:o}")));
        }
        let device = kind == libc::S_IFCHR || kind == libc::S_IFBLK;
        let posix = Posix {
            kind: special.then_some(kind),
            rdev: device.then_some(rdev),
            ..Posix::created(mode, uid, gid)
        };
        let attrs = self.new_file_attrs(&path, posix)?;
        let info = self
            .storage
            .upload(
                &path,
                Bytes::copy_from_slice(content),
                attrs.upload_options(),
            )
            .await?;
        if kind == libc::S_IFLNK {
            self.remember_link(&path, info.etag.clone(), &String::from_utf8_lossy(content));
        }
        let entry = Entry {
            kind: Kind::of_file(Some(&posix)),
            ..self.file_entry(content.len() as u64, Some(&info), posix)
        };
        let ino = self.inodes.record(&path, entry.clone());
        self.changed(&path);
        self.entries_changed(&path);
        Ok(self.attr(ino, &entry))
    }

    /// Writes directory `path`'s marker object with `posix` as its mode, owner and times.
    async fn store_dir_posix(&self, path: &str, posix: Posix) -> FsResult<()> {
        let marker = super::marker_of(path);
        self.check_writable(&marker)?;
        let options = crate::storage::UploadOptions {
            metadata: posix.to_metadata_as(libc::S_IFDIR),
            ..Default::default()
        };
        self.storage.upload(&marker, Bytes::new(), options).await?;
        Ok(())
    }

    /// `chmod`, `chown`, `utimensat` of a directory: stored on its marker (made now if it has none). The root's
    /// marker is `.zmount-dir` at the top, on the provider a file of that name is routed to; with no route for it,
    /// changing the root is ENOTSUP, never a silent success.
    async fn change_dir(&self, path: &str, entry: Entry, changes: Posix) -> FsResult<()> {
        if path.is_empty() && self.storage.resolve(DIR_MARKER).is_err() {
            return Err(FsError::NotSupported(
                "the mount's root directory: no route stores its mode, owner and times".into(),
            ));
        }
        let stored = self.dir_posix(path).await?;
        let changes = Posix {
            ctime: Some(SystemTime::now()),
            ..changes
        };
        let posix = stored.or(entry.posix).unwrap_or_default().merged(changes);
        self.store_dir_posix(path, posix).await?;
        self.inodes.record(
            path,
            Entry {
                posix: Some(posix),
                ..entry
            },
        );
        if changes.mtime.is_some() {
            self.inodes.untouch(path);
        }
        Ok(())
    }

    /// The entries of `path`'s directory changed: its mtime moves.
    fn entries_changed(&self, path: &str) {
        self.inodes.touch_dir(parent_of(path), SystemTime::now());
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let attr = self.lookup(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        if self.uploads.any_under(&path) || !self.is_empty_dir(&path).await? {
            return Err(FsError::NotEmpty);
        }
        let marker = format!("{path}/{DIR_MARKER}");
        self.check_writable(&marker)?;
        // A directory written by another tool as an object of its own goes with it (on a local provider that
        // object is a file, so no marker can be below it).
        if self.head(&path).await?.is_some_and(|e| e.kind == Kind::Dir) {
            self.storage.delete(&path).await?;
            if let Err(e) = self.storage.delete(&marker).await {
                tracing::debug!("{marker}: {e}");
            }
        } else {
            self.storage.delete(&marker).await?;
        }
        self.gone(&path);
        self.entries_changed(&path);
        Ok(())
    }

    /// Whether directory `path` holds nothing. Subdirectories are checked for content, because some servers
    /// (SeaweedFS) keep listing a folder after its last object is gone.
    async fn is_empty_dir(&self, path: &str) -> FsResult<bool> {
        let (entries, partial, _) = self.list_dir(path, super::Heads::Small).await?;
        if let Some(outage) = partial {
            return Err(outage.into()); // a provider that did not answer may hold files here
        }
        for entry in entries {
            let child = format!("{path}/{}", entry.name);
            if entry.attr.kind != Kind::Dir || self.dir_exists(&child).await? {
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
        // A file written here leaves the tree with its name: its open handles keep it, it is never uploaded,
        // and no upload of it in flight can land after the delete.
        let held = self.uploads.hold_for_rename(&path, &path).await;
        self.storage.delete(&path).await?;
        self.uploads.unlinked(held).await;
        self.inodes.unlink(&path);
        self.gone(&path);
        self.entries_changed(&path);
        Ok(())
    }

    /// After a rename of a stored file: a content type that was derived from the old name (`x.txt` stored as
    /// text/plain) is derived from the new one (`x.md`: text/markdown), changed as `chmod` changes attributes (see
    /// [`Filesystem::change_file`]): in place where the provider can (up to 5 GiB), else by rewriting the object,
    /// then only for files up to [`RETYPE_MAX`] (a rename must not cost a transfer of gigabytes). Best effort: the
    /// rename has happened.
    async fn retype(&self, from: &str, to: &str) {
        let (old, new) = (guess_content_type(from), guess_content_type(to));
        if old == new {
            return;
        }
        let Ok(info) = self.storage.get_info(to).await else {
            return;
        };
        // In place (S3) a retype moves no data; elsewhere it sends the bytes again, so only small files get it.
        let in_place = self
            .storage
            .resolve(to)
            .is_ok_and(|(_, _, provider)| provider.s3_direct.is_some());
        let limit = if in_place {
            crate::providers::COPY_MAX
        } else {
            RETYPE_MAX
        };
        if !same_content_type(&info.content_type, &old) || info.size > limit {
            return;
        }
        let posix = self
            .inodes
            .find(to)
            .and_then(|(_, entry, _)| entry.posix)
            .unwrap_or_default();
        // Past RETYPE_MAX, only in place: a refused copy must not turn a rename into a transfer of gigabytes.
        let retype = move |attrs: &mut FileAttrs| attrs.content_type = Some(new.clone());
        let retyped = self
            .change_file_with(to, posix, retype, info.size <= RETYPE_MAX)
            .await;
        match retyped {
            Ok(()) => self.changed(to),
            Err(e) => tracing::warn!("{to}: content type not updated after the rename: {e:?}"),
        }
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
        // Files written here move with their names; none of them is uploaded during the move.
        let held = self.uploads.hold_for_rename(&from, &to).await;
        let moves = match attr.kind {
            Kind::File | Kind::Special(_) => vec![(from.clone(), to.clone())],
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
            // Asked before the path locks: lock order (crate::write).
            let copy = !held.has_pending(&src).await;
            let _locked = self.storage.lock_paths(&[&src, &dst]).await;
            let client = provider.client(Attempts::Sole);
            // A file written here whose newest bytes are not on the provider yet goes to the new name when it
            // is published: only the objects under both names (older versions) have to go. Anything else
            // moves on the provider.
            let renamed = match copy {
                true => client.rename(&src, &dst).await,
                false => Err(crate::storage::StorageError::NotFound {
                    provider: provider.name.clone(),
                    path: src.clone(),
                }),
            };
            match renamed {
                Ok(()) => {}
                Err(e) if e.is_not_found() && held.holds(&src) => {
                    for path in [&src, &dst] {
                        client.delete(path).await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(route) = self.storage.router().resolve(&src) {
                self.storage.forget_fallback_copies(&src, route.route).await;
            }
            self.changed(&dst);
            moved.push(dst);
        }
        self.uploads.renamed(held, &from, &to).await;
        self.inodes.rename(&from, &to);
        if matches!(attr.kind, Kind::File) && !moved.is_empty() {
            self.retype(&from, &to).await;
        }
        self.entries_changed(&from);
        self.entries_changed(&to);
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
