//! Extended-attribute requests (get, list, set, remove) translated for the filesystem core; a value is replied
//! with its size when the caller asks for the size, ERANGE when it does not fit.

use super::{empty_reply, errno, name_or_reply, utf8, FuseAdapter};
use crate::fs::error::FsError;
use crate::fs::xattr::SetMode;
use fuser::{Errno, INodeNo, ReplyEmpty};
use std::ffi::OsStr;

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

impl FuseAdapter {
    pub(super) fn get_xattr(
        &self,
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

    pub(super) fn list_xattr(&self, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
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

    pub(super) fn set_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
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

    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn(move |fs| async move {
            empty_reply(reply, "removexattr", fs.removexattr(ino.0, &name).await)
        });
    }
}
