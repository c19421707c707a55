//! Listing a local folder: the entries served (links, regular files and directories with names keys can hold,
//! zmount's temporary files left out) and the object metadata of each.

use super::{error, Shared, TEMP_MARK};
use chrono::{DateTime, Utc};
use object_store::path::{Path, PathPart};
use object_store::{ListResult, ObjectMeta, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// `true` for zmount's temporary files and the `NAME#<digits>` ones earlier versions staged writes in.
pub(super) fn is_temporary(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((_, suffix)) if !suffix.is_empty() => {
            suffix.bytes().all(|b| b.is_ascii_digit())
                || suffix
                    .strip_prefix(&TEMP_MARK[1..])
                    .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        _ => false,
    }
}

/// `dir/name` for a name [`Shared::read_dir`] checked (kept byte for byte, as keys are).
fn child(dir: &Path, name: &str) -> Path {
    match PathPart::parse(name) {
        Ok(part) => dir.clone().join(part),
        Err(_) => dir.clone().join(name),
    }
}

fn time_of(secs: i64, nanos: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, nanos as u32).unwrap_or_default()
}

/// Metadata of a regular file or a symlink; the ETag is the one HTTP servers derive (inode, mtime, size).
pub(super) fn meta_of(location: Path, st: &Stat) -> ObjectMeta {
    let mtime = time_of(st.st_mtime as i64, st.st_mtime_nsec as u64);
    let micros = mtime.timestamp_micros().max(0);
    ObjectMeta {
        location,
        last_modified: mtime,
        size: st.st_size as u64,
        e_tag: Some(format!(
            "\"{:x}-{micros:x}-{:x}\"",
            st.st_ino as u64, st.st_size as u64
        )),
        version: None,
    }
}

impl Shared {
    /// Logs, once per name, an entry a listing leaves out because no key can name it.
    fn skip(&self, dir: &str, name: &[u8], why: &str) {
        let shown = format!("{dir}/{}", String::from_utf8_lossy(name));
        if self.skipped.lock().expect("poisoned").insert(shown.clone()) {
            tracing::warn!(
                "local folder {}: {shown:?} is left out of listings: {why}",
                self.path.display()
            );
        }
    }

    /// The entries of one directory: (name, lstat). Links, regular files and directories only.
    fn read_dir(&self, fd: &OwnedFd, shown: &str) -> Result<Vec<(String, Stat)>> {
        let mut out = Vec::new();
        let dir = rustix::fs::Dir::read_from(fd).map_err(|e| error(shown, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| error(shown, e))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(bytes) else {
                self.skip(shown, bytes, "the name is not UTF-8");
                continue;
            };
            if PathPart::parse(name).is_err() {
                self.skip(shown, bytes, "the name holds a control character");
                continue;
            }
            if is_temporary(name) {
                continue;
            }
            let Ok(st) = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue; // removed meanwhile
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile | FileType::Symlink | FileType::Directory => {
                    out.push((name.to_string(), st))
                }
                _ => {} // fifos, sockets, devices: not served
            }
        }
        Ok(out)
    }

    pub(super) fn list_recursive(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        let Some(top) = self.open_prefix(prefix)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let top = Arc::new(top);
        let at = prefix.cloned().unwrap_or_default();
        // Depth first; a folder is opened when its turn comes, from its parent's descriptor, so only the folders
        // on the current path hold descriptors (a folder of 100,000 subfolders does not open them all at once).
        let mut pending: Vec<(Arc<OwnedFd>, Option<String>, Path)> = vec![(top, None, at)];
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        while let Some((parent, name, at)) = pending.pop() {
            let fd = match name {
                None => parent,
                Some(name) => {
                    match rustix::fs::openat(&*parent, name.as_str(), flags, Mode::empty()) {
                        Ok(fd) => Arc::new(fd),
                        Err(_) => continue, // removed or replaced meanwhile
                    }
                }
            };
            for (name, st) in self.read_dir(&fd, at.as_ref())? {
                let location = child(&at, &name);
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    pending.push((fd.clone(), Some(name), location));
                } else {
                    out.push(meta_of(location, &st));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn list_one(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        let Some(fd) = self.open_prefix(prefix)? else {
            return Ok(result);
        };
        let at = prefix.cloned().unwrap_or_default();
        for (name, st) in self.read_dir(&fd, at.as_ref())? {
            let location = child(&at, &name);
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                result.common_prefixes.push(location);
            } else {
                result.objects.push(meta_of(location, &st));
            }
        }
        // In key order, as object stores list (a folder's entries come in whatever order the file system keeps).
        result.common_prefixes.sort_unstable();
        result
            .objects
            .sort_unstable_by(|a, b| a.location.cmp(&b.location));
        Ok(result)
    }
}
