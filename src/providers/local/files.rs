//! One object of a local folder: read, written through a temporary file (or made as a symlink), copied, renamed
//! and removed, each through `*at` calls that never follow the last component.

use super::attributes::{
    disk_mode, is_link, link_attributes, metadata_number, read_xattrs, write_xattrs,
};
use super::listing::meta_of;
use super::{error, generic, Shared, TEMP_MARK};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{Attributes, GetOptions, GetResult, GetResultPayload, PutResult, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

impl Shared {
    fn temp_name(&self, name: &str) -> String {
        let n = self.temp_seq.fetch_add(0x9E37_79B9, Ordering::Relaxed);
        format!("{name}{TEMP_MARK}{n:08x}")
    }

    pub(super) fn get(&self, location: &Path, options: &GetOptions) -> Result<GetResult> {
        let key = location.as_ref();
        let (chain, _, name) = self.parent(location, false)?;
        let parent = chain.last().expect("parent");
        let st = rustix::fs::statat(parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| error(key, e))?;
        let (meta, attributes, payload) = match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(parent, name.as_str(), Vec::new())
                    .map_err(|e| error(key, e))?;
                let mut meta = meta_of(location.clone(), &st);
                let target = Bytes::from(target.into_bytes());
                meta.size = target.len() as u64;
                (meta, link_attributes(&st), Some(target))
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(parent, name.as_str(), flags, Mode::empty())
                    .map_err(|e| error(key, e))?;
                let st = rustix::fs::fstat(&fd).map_err(|e| error(key, e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(error(key, Errno::NOENT)); // replaced meanwhile by something not served
                }
                let attributes = read_xattrs(&fd).map_err(|e| error(key, e))?;
                let meta = meta_of(location.clone(), &st);
                options.check_preconditions(&meta)?;
                let range = match &options.range {
                    Some(range) => range.as_range(meta.size).map_err(generic)?,
                    None => 0..meta.size,
                };
                let payload = match options.head {
                    true => GetResultPayload::Stream(stream::empty().boxed()),
                    false => GetResultPayload::File(File::from(fd), self.path.join(key)),
                };
                return Ok(GetResult {
                    payload,
                    meta,
                    range,
                    attributes,
                    extensions: Default::default(),
                });
            }
            _ => return Err(error(key, Errno::NOENT)), // directories and special files are not objects
        };
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(range) => range.as_range(meta.size).map_err(generic)?,
            None => 0..meta.size,
        };
        let bytes = payload
            .filter(|_| !options.head)
            .map(|b| b.slice(range.start as usize..range.end as usize));
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::iter(bytes.map(Ok)).boxed()),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    /// Puts `temp` (in `parent`) at `name`: replacing what is there, or only where nothing is (`create`).
    pub(super) fn publish(
        parent: &OwnedFd,
        temp: &str,
        name: &str,
        create: bool,
        key: &str,
    ) -> Result<()> {
        let flags = match create {
            true => RenameFlags::NOREPLACE,
            false => RenameFlags::empty(),
        };
        let moved = rustix::fs::renameat_with(parent, temp, parent, name, flags);
        if let Err(e) = moved {
            discard(parent, temp);
            return Err(error(key, e));
        }
        rustix::fs::fsync(parent).map_err(|e| error(key, e))
    }

    /// A new temporary file in `parent`, for writing.
    pub(super) fn create_temp(
        &self,
        parent: &OwnedFd,
        name: &str,
        key: &str,
        attributes: &Attributes,
    ) -> Result<(File, String)> {
        let temp = self.temp_name(name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, temp.as_str(), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| error(key, e))?;
        if let Err(e) = rustix::fs::fchmod(&fd, disk_mode(attributes)) {
            discard(parent, &temp);
            return Err(error(key, e));
        }
        Ok((File::from(fd), temp))
    }

    /// A symlink at a temporary name in `parent`, with the owner and times the attributes name.
    fn create_link(
        &self,
        parent: &OwnedFd,
        name: &str,
        target: &[u8],
        attributes: &Attributes,
        key: &str,
    ) -> Result<String> {
        let temp = self.temp_name(name);
        rustix::fs::symlinkat(target, parent, temp.as_str()).map_err(|e| error(key, e))?;
        let undo = |e: Errno| {
            discard(parent, &temp);
            error(key, e)
        };
        let id = |k: &str| metadata_number(attributes, k).map(|n| n as u32);
        let (uid, gid) = (id("uid"), id("gid"));
        if uid.is_some() || gid.is_some() {
            let st = rustix::fs::statat(parent, temp.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(undo)?;
            if uid.is_some_and(|u| u != st.st_uid) || gid.is_some_and(|g| g != st.st_gid) {
                let uid = uid.map(rustix::fs::Uid::from_raw_unchecked);
                let gid = gid.map(rustix::fs::Gid::from_raw_unchecked);
                rustix::fs::chownat(parent, temp.as_str(), uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(undo)?;
            }
        }
        let time = |k: &str| {
            metadata_number(attributes, k).map(|secs| rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: metadata_number(attributes, &format!("{k}_nsec"))
                    .filter(|n| (0..1_000_000_000).contains(n))
                    .unwrap_or(0) as _,
            })
        };
        let omit = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        };
        let (mtime, atime) = (time("mtime"), time("atime"));
        if mtime.is_some() || atime.is_some() {
            let times = rustix::fs::Timestamps {
                last_access: atime.or(mtime).unwrap_or(omit),
                last_modification: mtime.unwrap_or(omit),
            };
            rustix::fs::utimensat(parent, temp.as_str(), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(undo)?;
        }
        Ok(temp)
    }

    pub(super) fn put(
        &self,
        location: &Path,
        payload: &[u8],
        attributes: &Attributes,
        create: bool,
    ) -> Result<PutResult> {
        let key = location.as_ref();
        let (chain, _, name) = self.parent(location, true)?;
        let parent = chain.last().expect("parent");
        let temp = if is_link(attributes) {
            self.create_link(parent, &name, payload, attributes, key)?
        } else {
            let (mut file, temp) = self.create_temp(parent, &name, key, attributes)?;
            let written = file
                .write_all(payload)
                .and_then(|()| write_xattrs(file.as_fd(), attributes))
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                discard(parent, &temp);
                return Err(generic(e));
            }
            temp
        };
        Self::publish(parent, &temp, &name, create, key)?;
        let st = rustix::fs::statat(parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| error(key, e))?;
        Ok(PutResult {
            e_tag: meta_of(location.clone(), &st).e_tag,
            version: None,
            extensions: Default::default(),
        })
    }

    pub(super) fn delete(&self, location: &Path) -> Result<()> {
        let key = location.as_ref();
        let (chain, dirs, name) = self.parent(location, false)?;
        let parent = chain.last().expect("parent");
        rustix::fs::unlinkat(parent, name.as_str(), AtFlags::empty()).map_err(|e| match e {
            Errno::ISDIR | Errno::PERM
                if rustix::fs::statat(parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory) =>
            {
                error(key, Errno::NOENT) // a directory is not an object
            }
            e => error(key, e),
        })?;
        Self::clean_up(&chain, &dirs);
        Ok(())
    }

    pub(super) fn copy(&self, from: &Path, to: &Path, create: bool) -> Result<()> {
        let source = self.get(from, &GetOptions::default())?;
        let attributes = source.attributes.clone();
        let (to_chain, _, to_name) = self.parent(to, true)?;
        let to_parent = to_chain.last().expect("parent");
        let key = to.as_ref();
        let temp = match source.payload {
            GetResultPayload::File(mut file, _) => {
                let (mut out, temp) = self.create_temp(to_parent, &to_name, key, &attributes)?;
                let copied = std::io::copy(&mut file, &mut out)
                    .and_then(|_| write_xattrs(out.as_fd(), &attributes))
                    .and_then(|()| out.sync_all());
                if let Err(e) = copied {
                    discard(to_parent, &temp);
                    return Err(generic(e));
                }
                temp
            }
            GetResultPayload::Stream(_) => {
                // a symlink: its target again, with its owner and times
                let (chain, _, name) = self.parent(from, false)?;
                let target = rustix::fs::readlinkat(
                    chain.last().expect("parent"),
                    name.as_str(),
                    Vec::new(),
                )
                .map_err(|e| error(from.as_ref(), e))?;
                self.create_link(to_parent, &to_name, target.as_bytes(), &attributes, key)?
            }
        };
        Self::publish(to_parent, &temp, &to_name, create, key)
    }

    pub(super) fn rename(&self, from: &Path, to: &Path, create: bool) -> Result<()> {
        let (from_chain, from_dirs, from_name) = self.parent(from, false)?;
        let from_parent = from_chain.last().expect("parent");
        let st = rustix::fs::statat(from_parent, from_name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| error(from.as_ref(), e))?;
        if !matches!(
            FileType::from_raw_mode(st.st_mode),
            FileType::RegularFile | FileType::Symlink
        ) {
            return Err(error(from.as_ref(), Errno::NOENT));
        }
        let (to_chain, _, to_name) = self.parent(to, true)?;
        let to_parent = to_chain.last().expect("parent");
        let flags = match create {
            true => RenameFlags::NOREPLACE,
            false => RenameFlags::empty(),
        };
        rustix::fs::renameat_with(
            from_parent,
            from_name.as_str(),
            to_parent,
            to_name.as_str(),
            flags,
        )
        .map_err(|e| error(to.as_ref(), e))?;
        rustix::fs::fsync(to_parent).map_err(|e| error(to.as_ref(), e))?;
        Self::clean_up(&from_chain, &from_dirs);
        Ok(())
    }
}

/// Removes the temporary file of a write that failed (best effort: it is left out of listings anyway).
pub(super) fn discard(parent: &OwnedFd, temp: &str) {
    let _ = rustix::fs::unlinkat(parent, temp, AtFlags::empty());
}
