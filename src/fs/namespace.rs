//! Namespace changes on the filesystem core: mkdir, symlink, mknod, rmdir, unlink and rename, and directory
//! attributes. Directories made with `mkdir` are kept by a marker object `DIR/.zmount-dir` (hidden from listings),
//! so an empty directory survives a remount. A rename whose source and target are routed to different providers
//! answers EXDEV: `mv` then copies and deletes, with progress and errors the user can see.
//!
//! Lock order: see [`crate::write`] (the one place it is written down).

use super::error::{FsError, FsResult};
use super::inode::{Entry, Ino, Kind};
use super::posix::Posix;
use super::write_ops::{parent_of, DIR_MARKER};
use super::{Attr, Filesystem};
use crate::providers::Attempts;
use crate::routing::is_within;
use crate::storage::{guess_content_type, same_content_type};
use crate::write::FileAttrs;
use bytes::Bytes;
use std::time::SystemTime;

/// Largest file whose content type a rename updates (see `Filesystem::retype`): 16 MiB.
const RETYPE_MAX: u64 = 16 << 20;

impl Filesystem {
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
    pub(super) async fn change_dir(
        &self,
        path: &str,
        entry: Entry,
        changes: Posix,
    ) -> FsResult<()> {
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
    pub(super) fn entries_changed(&self, path: &str) {
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
        self.inodes.remove_dir(&path);
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
        if from == to {
            return Ok(()); // rename(2): a name renamed onto itself is left as it is
        }
        if is_within(&to, &from) {
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
