//! Each FUSE request translated into a call on the filesystem core, spawned on the runtime where it may wait,
//! and replied to from there.

use super::listing::dir_reply;
use super::{
    empty_reply, entry_reply, errno, file_attr, file_type, kernel, name_or_reply, process_of, utf8,
    FuseAdapter,
};
use crate::fs::posix::Posix;
use crate::fs::DirEntry;
use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use std::ffi::OsStr;

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        kernel::configure(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            let result = fs.lookup(parent.0, &name).await;
            entry_reply(&fs, reply, "lookup", result)
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            match fs.getattr(ino.0, fh.map(|f| f.0)).await {
                Ok(attr) => reply.attr(&fs.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let add = |reply: &mut ReplyDirectory, next, entry: DirEntry| {
            reply.add(
                INodeNo(entry.attr.ino),
                next,
                file_type(entry.attr.kind),
                &entry.name,
            )
        };
        match self.fs.readdir_now(ino.0, fh.0, offset) {
            Ok(Some(page)) => dir_reply(reply, Ok(page), add),
            Ok(None) => self.spawn(move |fs| async move {
                dir_reply(reply, fs.readdir(ino.0, fh.0, offset).await, add)
            }),
            Err(e) => dir_reply(reply, Err(e), add),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.fs.attr_ttl();
        let add = move |reply: &mut ReplyDirectoryPlus, next, entry: DirEntry| {
            let attr = file_attr(&entry.attr);
            reply.add(
                INodeNo(entry.attr.ino),
                next,
                &entry.name,
                &ttl,
                &attr,
                Generation(0),
            )
        };
        match self.fs.readdir_now(ino.0, fh.0, offset) {
            Ok(Some(page)) => dir_reply(reply, Ok(page), add),
            Ok(None) => self.spawn(move |fs| async move {
                dir_reply(reply, fs.readdir(ino.0, fh.0, offset).await, add)
            }),
            Err(e) => dir_reply(reply, Err(e), add),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        // Only writers publish at close, so only they need to know who opened them.
        let opener = if write { process_of(req.pid()) } else { 0 };
        self.spawn(move |fs| async move {
            match fs.open(ino.0, write, truncate, opener).await {
                Ok(fh) => {
                    let flags = match fs.keep_pages(fh) {
                        true => FopenFlags::FOPEN_KEEP_CACHE,
                        false => FopenFlags::empty(),
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        let (uid, gid) = (req.uid(), req.gid());
        let opener = process_of(req.pid());
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            match fs
                .create(parent.0, &name, mode & !umask, uid, gid, opener)
                .await
            {
                Ok((attr, fh)) => reply.created(
                    &fs.attr_ttl(),
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let data = bytes::Bytes::copy_from_slice(data);
        self.spawn(move |fs| async move {
            match fs.write(fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            match fs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fsync", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let time = |t: fuser::TimeOrNow| match t {
            fuser::TimeOrNow::SpecificTime(t) => t,
            fuser::TimeOrNow::Now => std::time::SystemTime::now(),
        };
        let (atime, mtime) = (atime.map(time), mtime.map(time));
        let changes = Posix {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            mtime,
            atime,
            ..Default::default()
        };
        self.spawn(move |fs| async move {
            let fh = fh.map(|f| f.0);
            let mut result = match size {
                Some(size) => fs.set_size(ino.0, fh, size).await,
                None => fs.getattr(ino.0, fh).await,
            };
            if result.is_ok() && !changes.is_empty() {
                result = fs.set_attrs(ino.0, fh, changes).await;
            }
            match result {
                Ok(attr) => reply.attr(&fs.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = (req.uid(), req.gid());
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            let result = fs.mkdir(parent.0, &name, mode & !umask, uid, gid).await;
            entry_reply(&fs, reply, "mkdir", result)
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = (req.uid(), req.gid());
        let name = name_or_reply!(name, reply);
        let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
        self.spawn(move |fs| async move {
            let result = fs.mknod(parent.0, &name, mode, rdev, uid, gid).await;
            entry_reply(&fs, reply, "mknod", result)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = (req.uid(), req.gid());
        let name = name_or_reply!(link_name, reply);
        let target = match target.to_str() {
            Some(t) => t.to_string(),
            None => return reply.error(Errno::EINVAL),
        };
        self.spawn(move |fs| async move {
            let result = fs.symlink(parent.0, &name, &target, uid, gid).await;
            entry_reply(&fs, reply, "symlink", result)
        });
    }

    /// Hard links: an object store has no second name for one object (a copy would diverge), so `link` answers
    /// EPERM, as on filesystems without hard links (see SEMANTICS.md).
    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            empty_reply(reply, "unlink", fs.unlink(parent.0, &name).await)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            empty_reply(reply, "rmdir", fs.rmdir(parent.0, &name).await)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::from_i32(libc::EINVAL)); // RENAME_NOREPLACE/EXCHANGE: not atomic on object stores
        }
        let (name, new_name) = match (utf8(name), utf8(new_name)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            empty_reply(
                reply,
                "rename",
                fs.rename(parent.0, &name, new_parent.0, &new_name).await,
            )
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(data) = self.fs.read_now(fh.0, offset, size) {
            return reply.data(&data);
        }
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // On the runtime: the last release of a written file may start its upload.
        self.spawn(move |fs| async move {
            fs.release(fh.0);
            reply.ok();
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): a written file is uploaded now, so the program sees an upload failure as close's error.
        let closer = process_of(req.pid());
        self.spawn(
            move |fs| async move { empty_reply(reply, "flush", fs.flush(fh.0, closer).await) },
        );
    }

    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.get_xattr(ino, name, size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.list_xattr(ino, size, reply)
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.set_xattr(ino, name, value, flags, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_xattr(ino, name, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Object stores have no fixed capacity: report a large, mostly free filesystem so tools that check free
        // space before copying (installers, rsync --max-size heuristics) proceed.
        const BLOCKS: u64 = 1 << 40;
        let namelen = self.fs.name_max() as u32;
        reply.statfs(
            BLOCKS,
            BLOCKS,
            BLOCKS,
            1 << 32,
            1 << 32,
            4096,
            namelen,
            4096,
        );
    }
}
