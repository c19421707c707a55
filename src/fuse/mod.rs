//! The FUSE adapter: translates fuser calls into calls on the filesystem core ([`crate::fs::Filesystem`]) and
//! nothing else. Each request is spawned on the tokio runtime and replied to from its task, so a slow provider
//! only delays requests that need it. Errors become errno through [`FsError::errno`], the one place that decides.
//!
//! This file holds the adapter and the conversions and replies every request uses; `requests` translates each
//! request, `xattr` the extended-attribute ones, and `kernel` sets what the mount asks of the kernel at `init`.

mod kernel;
pub use kernel::READ_AHEAD_KIB;
mod listing;
mod requests;
mod xattr;

use crate::fs::error::FsError;
use crate::fs::inode::Kind;
use crate::fs::{Attr, Filesystem};
use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, ReplyEmpty, ReplyEntry};
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
use name_or_reply;

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
