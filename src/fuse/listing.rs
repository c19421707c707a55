//! Directory replies (`readdir`, `readdirplus`): an open directory's entries added until the kernel's buffer
//! is full, or the error that ended its listing.

use super::errno;
use crate::fs::error::FsResult;
use crate::fs::{DirEntry, DirPage};
use fuser::{Errno, ReplyDirectory, ReplyDirectoryPlus};

/// A directory reply: entries added until the kernel's buffer is full (`add` says so), or the listing's error.
pub(super) trait DirReply {
    fn ok(self);
    fn error(self, e: Errno);
}

impl DirReply for ReplyDirectory {
    fn ok(self) {
        ReplyDirectory::ok(self)
    }
    fn error(self, e: Errno) {
        ReplyDirectory::error(self, e)
    }
}

impl DirReply for ReplyDirectoryPlus {
    fn ok(self) {
        ReplyDirectoryPlus::ok(self)
    }
    fn error(self, e: Errno) {
        ReplyDirectoryPlus::error(self, e)
    }
}

pub(super) fn dir_reply<R: DirReply>(
    mut reply: R,
    page: FsResult<DirPage>,
    add: impl Fn(&mut R, u64, DirEntry) -> bool,
) {
    match page {
        Ok(entries) => {
            for (next, entry) in entries {
                if add(&mut reply, next, entry) {
                    break;
                }
            }
            reply.ok();
        }
        Err(e) => reply.error(errno("readdir", &e)),
    }
}
