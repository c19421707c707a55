//! The FUSE adapter: translates fuser calls into calls on the filesystem core ([`crate::fs::Filesystem`]) and
//! nothing else. Each request is spawned on the tokio runtime and replied to from its task, so a slow provider
//! only delays requests that need it. Errors become errno through [`FsError::errno`], the one place that decides.

use crate::fs::error::FsError;
use crate::fs::inode::Kind;
use crate::fs::posix::Posix;
use crate::fs::xattr::SetMode;
use crate::fs::{Attr, Filesystem};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, Request,
};
use std::ffi::OsStr;
use std::sync::Arc;

pub struct FuseAdapter {
    fs: Arc<Filesystem>,
    runtime: tokio::runtime::Handle,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Filesystem>, runtime: tokio::runtime::Handle) -> Self {
        FuseAdapter { fs, runtime }
    }

    /// Runs `work` on the runtime with a clone of the filesystem.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Filesystem>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.fs.clone()));
    }
}

fn errno(op: &str, e: &FsError) -> Errno {
    if e.is_noteworthy() {
        tracing::warn!("{op}: {e}");
    }
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Special(libc::S_IFLNK) => FileType::Symlink,
        Kind::Special(libc::S_IFIFO) => FileType::NamedPipe,
        Kind::Special(libc::S_IFSOCK) => FileType::Socket,
        Kind::Special(libc::S_IFCHR) => FileType::CharDevice,
        Kind::Special(libc::S_IFBLK) => FileType::BlockDevice,
        Kind::Special(_) => FileType::RegularFile,
    }
}

/// An xattr value (or name list): its size when the caller asks for the size (0), ERANGE when it does not fit.
fn xattr_reply(reply: fuser::ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

/// Replies with the new or found entry's attributes, or the error's errno.
fn entry_reply(fs: &Filesystem, reply: ReplyEntry, op: &str, result: Result<Attr, FsError>) {
    match result {
        Ok(attr) => reply.entry(&fs.attr_ttl(), &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn empty_reply(reply: ReplyEmpty, op: &str, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

/// The name as UTF-8, or replies EINVAL and returns from the calling handler.
macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match utf8($name) {
            Ok(name) => name,
            Err(e) => return $reply.error(e),
        }
    };
}

/// Names must be UTF-8 to become object keys.
/// The process (thread group) a request comes from: FUSE names the thread, and a file may be opened by one
/// thread of a program and closed by another.
fn process_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

fn utf8(name: &OsStr) -> Result<String, Errno> {
    name.to_str()
        .map(str::to_string)
        .ok_or(Errno::from_i32(libc::EINVAL))
}

/// The kernel's read-ahead of one file at most (it may allow less).
const READ_AHEAD: u32 = 1 << 20;
/// Background requests (read-ahead among them) the kernel keeps in flight at most.
const MAX_BACKGROUND: u16 = 64;

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with the open (not as a truncate before it), so a file truncated by an open is a new
        // version published at its close, never an empty object published at once.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::warn!("kernel does not offer ATOMIC_O_TRUNC; open(O_TRUNC) truncates at once");
        }
        // Sequential reads: the kernel's read-ahead as large as it allows, with more of its reads in flight (they
        // are background requests: 12 by default).
        if let Err(largest) = config.set_max_readahead(READ_AHEAD) {
            let _ = config.set_max_readahead(largest);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        // Directory listings carry attributes, so `ls -l` needs no lookup per entry.
        if config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS)
            .is_err()
        {
            tracing::debug!(
                "kernel does not offer READDIRPLUS; listings fall back to readdir + lookup"
            );
        }
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
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (next, entry) in entries {
                    if reply.add(
                        INodeNo(entry.attr.ino),
                        next,
                        file_type(entry.attr.kind),
                        &entry.name,
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                let ttl = self.fs.attr_ttl();
                for (next, entry) in entries {
                    let attr = file_attr(&entry.attr);
                    if reply.add(
                        INodeNo(entry.attr.ino),
                        next,
                        &entry.name,
                        &ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdirplus", &e)),
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
        let name = name_or_reply!(name, reply);
        if !crate::fs::xattr::serves(&name) {
            // `ls -l` asks for security/ACL attributes: answered here, without a task per request.
            return reply.error(errno("getxattr", &FsError::ForeignAttribute));
        }
        self.spawn(move |fs| async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(value) => xattr_reply(reply, size, &value),
                Err(e) => reply.error(errno("getxattr", &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.spawn(move |fs| async move {
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let list: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
                    xattr_reply(reply, size, &list)
                }
                Err(e) => reply.error(errno("listxattr", &e)),
            }
        });
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
        let name = name_or_reply!(name, reply);
        let mode = match flags {
            libc::XATTR_CREATE => SetMode::CreateOnly,
            libc::XATTR_REPLACE => SetMode::ReplaceOnly,
            _ => SetMode::Any,
        };
        let value = value.to_vec();
        self.spawn(move |fs| async move {
            empty_reply(
                reply,
                "setxattr",
                fs.setxattr(ino.0, &name, &value, mode).await,
            )
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            empty_reply(reply, "removexattr", fs.removexattr(ino.0, &name).await)
        });
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
