//! The attributes of a local object: content type and user metadata in `user.zmount.*` extended attributes,
//! a symlink's mode, owner and times from its `lstat`, and the mode a file is given on disk.

use super::user_mode;
use object_store::{Attribute, AttributeValue, Attributes};
use rustix::fs::{Mode, Stat};
use rustix::io::Errno;
use std::os::fd::OwnedFd;

/// Extended-attribute namespace for attributes of objects stored in a local provider.
const XATTR_PREFIX: &str = "user.zmount.";
const XATTR_CONTENT_TYPE: &str = "user.zmount.content-type";
const XATTR_META_PREFIX: &str = "user.zmount.meta.";

/// The mode of a file on disk: its stored permission bits (a file made 0600 through the mount is 0600 in the
/// folder too), never more open than the user's umask allows, never setuid, setgid or sticky (the daemon may run
/// as root), always readable and writable by the daemon's user (a `chmod 000` file must still be served); 0666
/// less the umask for objects without a stored mode.
pub(super) fn disk_mode(attributes: &Attributes) -> Mode {
    let stored = metadata_number(attributes, "mode").map(|m| (m as u32 & 0o777) | 0o600);
    user_mode(stored.unwrap_or(0o666))
}

/// What a symlink's `lstat` says, in the metadata keys zmount reads POSIX attributes from.
pub(super) fn link_attributes(st: &Stat) -> Attributes {
    let mut attributes = Attributes::new();
    let mut put = |key: &str, value: String| {
        attributes.insert(
            Attribute::Metadata(key.to_string().into()),
            AttributeValue::from(value),
        );
    };
    put("mode", (libc::S_IFLNK | 0o777).to_string());
    put("uid", st.st_uid.to_string());
    put("gid", st.st_gid.to_string());
    for (key, secs, nsec) in [
        ("mtime", st.st_mtime as i64, st.st_mtime_nsec as u64),
        ("atime", st.st_atime as i64, st.st_atime_nsec as u64),
        ("ctime", st.st_ctime as i64, st.st_ctime_nsec as u64),
    ] {
        put(key, secs.max(0).to_string());
        put(&format!("{key}_nsec"), nsec.to_string());
    }
    attributes
}

pub(super) fn metadata_number(attributes: &Attributes, key: &str) -> Option<i64> {
    attributes
        .get(&Attribute::Metadata(key.to_string().into()))
        .and_then(|v| v.as_ref().split('.').next()?.trim().parse().ok())
}

/// Whether a write's attributes describe a symlink (s3fs's `mode` with S_IFLNK).
pub(super) fn is_link(attributes: &Attributes) -> bool {
    metadata_number(attributes, "mode").is_some_and(|m| (m as u32) & libc::S_IFMT == libc::S_IFLNK)
}

/// Sets the attributes on a new file (content type and user metadata; tags live in the metadata's mirror, see
/// `crate::storage::TAGS_MIRROR_KEY`).
pub(super) fn write_xattrs(
    fd: std::os::fd::BorrowedFd<'_>,
    attributes: &Attributes,
) -> std::io::Result<()> {
    for (key, value) in attributes.iter() {
        let name = match key {
            Attribute::ContentType => XATTR_CONTENT_TYPE.to_string(),
            Attribute::Metadata(k) => format!("{XATTR_META_PREFIX}{k}"),
            _ => continue,
        };
        let v: &str = value.as_ref();
        rustix::fs::fsetxattr(
            fd,
            name.as_str(),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

pub(super) fn read_xattrs(fd: &OwnedFd) -> rustix::io::Result<Attributes> {
    let mut attributes = Attributes::new();
    let size = rustix::fs::flistxattr_query(fd)?;
    let mut names = vec![0u8; size];
    let size = rustix::fs::flistxattr(fd, &mut names[..])?;
    names.truncate(size);
    for name in names.split(|b| *b == 0) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !name.starts_with(XATTR_PREFIX) {
            continue;
        }
        let size = match rustix::fs::fgetxattr_query(fd, name) {
            Ok(size) => size,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        let mut value = vec![0u8; size];
        let size = rustix::fs::fgetxattr(fd, name, &mut value[..])?;
        value.truncate(size);
        let value = AttributeValue::from(String::from_utf8_lossy(&value).into_owned());
        if name == XATTR_CONTENT_TYPE {
            attributes.insert(Attribute::ContentType, value);
        } else if let Some(key) = name.strip_prefix(XATTR_META_PREFIX) {
            attributes.insert(Attribute::Metadata(key.to_string().into()), value);
        }
    }
    Ok(attributes)
}
