//! `local`: a folder on this machine, served as an object store that never leaves the folder.
//!
//! Confinement: every key is resolved from a descriptor of the folder, one component at a time, with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`; the last component is read, written, renamed and removed through `*at` calls
//! that do not follow it either. A symlink anywhere in the folder is therefore never followed by zmount: it is an
//! object of its own, shown as a symlink whose target is the link's text, verbatim (the kernel resolves it on the
//! mount as it would any link, with the caller's permissions). Keys cannot hold `..` (object_store refuses it), and
//! a component that is a link where a directory is expected is "not found", never a way out. Fifos, sockets and
//! devices found in the folder are not served (opening one could block or reach hardware); they are left out of
//! listings.
//!
//! Attributes: a folder stores no content type or user metadata, so the file's extended attributes keep them
//! (`user.zmount.*`, the place rclone's local backend uses too). A symlink cannot carry `user.*` attributes on
//! Linux, so its mode, owner and times are the link's own (`lstat`), set with `fchownat`/`utimensat` when a link is
//! written through the mount.
//!
//! Writes go to a temporary file beside the target (`NAME#zm<8 hex>`, left out of listings), are fsynced, renamed
//! into place and the directory fsynced before they are acknowledged. Directories are made as keys need them and
//! removed when their last entry goes (object-store semantics: a folder is the prefix of what it holds).

// `struct stat` field widths differ between architectures; the casts keep this file portable.
#![allow(clippy::unnecessary_cast)]

use crate::config::LocalConfig;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::{Path, PathPart};
use object_store::{
    Attribute, AttributeValue, Attributes, CopyMode, CopyOptions, GetOptions, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, RenameTargetMode,
    Result, UploadPart,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Extended-attribute namespace for attributes of objects stored in a local provider.
const XATTR_PREFIX: &str = "user.zmount.";
const XATTR_CONTENT_TYPE: &str = "user.zmount.content-type";
const XATTR_META_PREFIX: &str = "user.zmount.meta.";
/// The umask of the user who started zmount: the process itself runs with 0o077 (its own files are private), and
/// files and folders of a local provider are given the modes that user's umask gives them (0o644 and 0o755 with
/// the usual 0o022), as any program writing into that folder would.
static USER_UMASK: AtomicU32 = AtomicU32::new(0o022);

pub fn set_user_umask(umask: u32) {
    USER_UMASK.store(umask & 0o777, Ordering::Relaxed);
}

fn user_mode(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & !USER_UMASK.load(Ordering::Relaxed))
}

/// The mode of a file on disk: its stored permission bits (a file made 0600 through the mount is 0600 in the
/// folder too), never more open than the user's umask allows, never setuid, setgid or sticky (the daemon may run
/// as root), always readable and writable by the daemon's user (a `chmod 000` file must still be served); 0666
/// less the umask for objects without a stored mode.
fn disk_mode(attributes: &Attributes) -> Mode {
    let stored = metadata_number(attributes, "mode").map(|m| (m as u32 & 0o777) | 0o600);
    user_mode(stored.unwrap_or(0o666))
}

/// Marks zmount's temporary files: `NAME#zm` + 8 hex digits (11 bytes; see `Provider::name_max`).
const TEMP_MARK: &str = "#zm";

pub fn build(config: &LocalConfig) -> std::result::Result<Arc<LocalStore>, String> {
    std::fs::create_dir_all(&config.path)
        .map_err(|e| format!("cannot create folder {}: {e}", config.path.display()))?;
    // The configured folder itself may be reached through links (it is the operator's choice); nothing below it is.
    let root = rustix::fs::open(
        &config.path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot use folder {}: {e}", config.path.display()))?;
    Ok(Arc::new(LocalStore {
        shared: Arc::new(Shared {
            root,
            path: config.path.clone(),
            skipped: Mutex::new(HashSet::new()),
            temp_seq: AtomicU32::new(std::process::id().rotate_left(16)),
        }),
    }))
}

#[derive(Debug)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The folder, opened once.
    root: OwnedFd,
    path: PathBuf,
    /// Names already reported as not representable as keys (each is logged once).
    skipped: Mutex<HashSet<String>>,
    temp_seq: AtomicU32,
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalStore({})", self.shared.path.display())
    }
}

/// Runs blocking file system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| generic(std::io::Error::other(e)))?
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalStore",
        source: Box::new(e),
    }
}

/// An errno at `key` as object_store's error: a missing entry, a non-directory or a link where a directory was
/// expected are "not found"; an entry in the way of a create-only write "already exists".
fn error(key: &str, errno: Errno) -> object_store::Error {
    let source: Box<dyn std::error::Error + Send + Sync> =
        Box::new(std::io::Error::from_raw_os_error(errno.raw_os_error()));
    match errno {
        Errno::NOENT | Errno::NOTDIR | Errno::LOOP => object_store::Error::NotFound {
            path: key.to_string(),
            source,
        },
        Errno::EXIST => object_store::Error::AlreadyExists {
            path: key.to_string(),
            source,
        },
        _ => object_store::Error::Generic {
            store: "LocalStore",
            source,
        },
    }
}

/// The directories of a key and its last component.
fn split(key: &Path) -> Result<(Vec<String>, String)> {
    let mut parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
    let name = parts.pop().ok_or_else(|| object_store::Error::NotFound {
        path: String::new(),
        source: "the folder itself is not an object".into(),
    })?;
    Ok((parts, name))
}

/// `true` for zmount's temporary files and the `NAME#<digits>` ones earlier versions staged writes in.
fn is_temporary(name: &str) -> bool {
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
fn meta_of(location: Path, st: &Stat) -> ObjectMeta {
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

/// What a symlink's `lstat` says, in the metadata keys zmount reads POSIX attributes from.
fn link_attributes(st: &Stat) -> Attributes {
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

fn metadata_number(attributes: &Attributes, key: &str) -> Option<i64> {
    attributes
        .get(&Attribute::Metadata(key.to_string().into()))
        .and_then(|v| v.as_ref().split('.').next()?.trim().parse().ok())
}

/// Whether a write's attributes describe a symlink (s3fs's `mode` with S_IFLNK).
fn is_link(attributes: &Attributes) -> bool {
    metadata_number(attributes, "mode").is_some_and(|m| (m as u32) & libc::S_IFMT == libc::S_IFLNK)
}

impl Shared {
    /// Opens the directories of a key from the folder, never through a link; with `create`, missing ones are made.
    /// Returns the chain of descriptors: the folder's (a duplicate) first, the key's parent last.
    fn walk(&self, dirs: &[String], create: bool) -> rustix::io::Result<Vec<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut chain = vec![rustix::io::fcntl_dupfd_cloexec(&self.root, 0)?];
        for dir in dirs {
            let parent = chain.last().expect("the chain starts with the folder");
            let fd = match rustix::fs::openat(parent, dir.as_str(), flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, dir.as_str(), Mode::from_raw_mode(0o700)) {
                        Ok(()) => {
                            let mode = user_mode(0o777);
                            rustix::fs::chmodat(parent, dir.as_str(), mode, AtFlags::empty())?;
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    rustix::fs::openat(parent, dir.as_str(), flags, Mode::empty())?
                }
                other => other?,
            };
            chain.push(fd);
        }
        Ok(chain)
    }

    fn parent(&self, key: &Path, create: bool) -> Result<(Vec<OwnedFd>, Vec<String>, String)> {
        let (dirs, name) = split(key)?;
        let chain = self
            .walk(&dirs, create)
            .map_err(|e| error(key.as_ref(), e))?;
        Ok((chain, dirs, name))
    }

    fn temp_name(&self, name: &str) -> String {
        let n = self.temp_seq.fetch_add(0x9E37_79B9, Ordering::Relaxed);
        format!("{name}{TEMP_MARK}{n:08x}")
    }

    /// Removes the key's directories that its removal left empty, deepest first (never the folder itself).
    fn clean_up(chain: &[OwnedFd], dirs: &[String]) {
        for depth in (1..chain.len()).rev() {
            if rustix::fs::unlinkat(
                &chain[depth - 1],
                dirs[depth - 1].as_str(),
                AtFlags::REMOVEDIR,
            )
            .is_err()
            {
                break;
            }
        }
    }

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

    /// The folder a listing of `prefix` reads (None when there is none: an empty listing).
    fn open_prefix(&self, prefix: Option<&Path>) -> Result<Option<OwnedFd>> {
        let dirs: Vec<String> = prefix
            .map(|p| p.parts().map(|p| p.as_ref().to_string()).collect())
            .unwrap_or_default();
        match self.walk(&dirs, false) {
            Ok(chain) => Ok(chain.into_iter().last()),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
            Err(e) => Err(error(prefix.map(|p| p.as_ref()).unwrap_or(""), e)),
        }
    }

    fn list_recursive(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>> {
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

    fn list_one(&self, prefix: Option<&Path>) -> Result<ListResult> {
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
        Ok(result)
    }

    fn get(&self, location: &Path, options: &GetOptions) -> Result<GetResult> {
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
    fn publish(parent: &OwnedFd, temp: &str, name: &str, create: bool, key: &str) -> Result<()> {
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
    fn create_temp(
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

    fn put(
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

    fn delete(&self, location: &Path) -> Result<()> {
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

    fn copy(&self, from: &Path, to: &Path, create: bool) -> Result<()> {
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

    fn rename(&self, from: &Path, to: &Path, create: bool) -> Result<()> {
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
fn discard(parent: &OwnedFd, temp: &str) {
    let _ = rustix::fs::unlinkat(parent, temp, AtFlags::empty());
}

/// Sets the attributes on a new file (content type and user metadata; tags live in the metadata's mirror, see
/// `crate::storage::TAGS_MIRROR_KEY`).
fn write_xattrs(fd: std::os::fd::BorrowedFd<'_>, attributes: &Attributes) -> std::io::Result<()> {
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

fn read_xattrs(fd: &OwnedFd) -> rustix::io::Result<Attributes> {
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

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "conditional update of a local file".into(),
                    implementer: "LocalStore".into(),
                })
            }
        };
        let (shared, location) = (self.shared.clone(), location.clone());
        blocking(move || {
            let bytes: Bytes = payload.into();
            shared.put(&location, &bytes, &opts.attributes, create)
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let (shared, key) = (self.shared.clone(), location.clone());
        blocking(move || {
            let (chain, _, name) = shared.parent(&key, true)?;
            let parent = chain.into_iter().last().expect("parent");
            let (file, temp) =
                shared.create_temp(&parent, &name, key.as_ref(), &opts.attributes)?;
            Ok(Box::new(LocalUpload {
                file: Arc::new(file),
                parent: Arc::new(parent),
                temp,
                name,
                key: key.to_string(),
                offset: 0,
                attributes: opts.attributes,
            }) as Box<dyn MultipartUpload>)
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let (shared, location) = (self.shared.clone(), location.clone());
        blocking(move || shared.get(&location, &options)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let shared = self.shared.clone();
        locations
            .then(move |location| {
                let shared = shared.clone();
                async move {
                    let location = location?;
                    let key = location.clone();
                    blocking(move || shared.delete(&key)).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (shared, prefix) = (self.shared.clone(), prefix.cloned());
        stream::once(blocking(move || shared.list_recursive(prefix.as_ref())))
            .flat_map(|listed| match listed {
                Ok(metas) => stream::iter(metas.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let (shared, prefix) = (self.shared.clone(), prefix.cloned());
        blocking(move || shared.list_one(prefix.as_ref())).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let create = matches!(options.mode, CopyMode::Create);
        let (shared, from, to) = (self.shared.clone(), from.clone(), to.clone());
        blocking(move || shared.copy(&from, &to, create)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let create = matches!(options.target_mode, RenameTargetMode::Create);
        let (shared, from, to) = (self.shared.clone(), from.clone(), to.clone());
        blocking(move || shared.rename(&from, &to, create)).await
    }
}

/// A multipart upload into a temporary file, renamed into place (with its attributes) on completion.
#[derive(Debug)]
struct LocalUpload {
    file: Arc<File>,
    parent: Arc<OwnedFd>,
    temp: String,
    name: String,
    key: String,
    /// Where the next part goes (parts are handed over in order).
    offset: u64,
    attributes: Attributes,
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (file, at) = (self.file.clone(), self.offset);
        self.offset += data.content_length() as u64;
        Box::pin(blocking(move || {
            let mut at = at;
            for chunk in data.iter() {
                file.write_all_at(chunk, at).map_err(generic)?;
                at += chunk.len() as u64;
            }
            Ok(())
        }))
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let (file, parent) = (self.file.clone(), self.parent.clone());
        let (temp, name, key) = (self.temp.clone(), self.name.clone(), self.key.clone());
        let attributes = self.attributes.clone();
        blocking(move || {
            let done = write_xattrs(file.as_fd(), &attributes).and_then(|()| file.sync_all());
            if let Err(e) = done {
                discard(&parent, &temp);
                return Err(generic(e));
            }
            Shared::publish(&parent, &temp, &name, false, &key)?;
            let st = rustix::fs::fstat(&*file).map_err(|e| error(&key, e))?;
            Ok(PutResult {
                e_tag: meta_of(Path::from(key.as_str()), &st).e_tag,
                version: None,
                extensions: Default::default(),
            })
        })
        .await
    }

    async fn abort(&mut self) -> Result<()> {
        let (parent, temp, key) = (self.parent.clone(), self.temp.clone(), self.key.clone());
        blocking(move || {
            rustix::fs::unlinkat(&*parent, temp.as_str(), AtFlags::empty())
                .map_err(|e| error(&key, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn store(dir: &std::path::Path) -> Arc<LocalStore> {
        build(&LocalConfig {
            path: dir.to_path_buf(),
            base_url: None,
            prefix: String::new(),
            read_only: false,
        })
        .unwrap()
    }

    #[test]
    fn temporary_names() {
        assert!(is_temporary("a.txt#zm0123abcd"));
        assert!(is_temporary("a.txt#12"));
        assert!(!is_temporary("a.txt#zm0123"));
        assert!(!is_temporary("a#b"));
        assert!(!is_temporary("a#"));
    }

    /// The links of the confinement case: none is followed; each is an object whose content is its target.
    #[tokio::test]
    async fn links_are_objects_never_followed() {
        let scratch = tempfile::tempdir().unwrap();
        let (root, outside) = (scratch.path().join("root"), scratch.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("host_link")).unwrap();
        let store = store(&root);
        let got = store.get(&Path::from("host_link")).await.unwrap();
        assert_eq!(
            got.attributes
                .get(&Attribute::Metadata("mode".into()))
                .unwrap()
                .as_ref(),
            (libc::S_IFLNK | 0o777).to_string()
        );
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"/etc/hostname");
        for key in ["out/secret.txt", "out/new.txt"] {
            assert!(
                matches!(
                    store.get(&Path::from(key)).await,
                    Err(object_store::Error::NotFound { .. })
                ),
                "{key} read through the link"
            );
        }
        assert!(store.delete(&Path::from("out/secret.txt")).await.is_err());
        assert!(store
            .put(&Path::from("out/new.txt"), "x".into())
            .await
            .is_err());
        assert!(store
            .rename(&Path::from("out/secret.txt"), &Path::from("stolen"))
            .await
            .is_err());
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );
        assert!(!outside.join("new.txt").exists());
        let listed: Vec<_> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        let mut listed = listed;
        listed.sort();
        assert_eq!(
            listed,
            ["host_link", "out"],
            "links are listed as objects, not walked"
        );
        // removing the link removes the link only
        store.delete(&Path::from("out")).await.unwrap();
        assert!(outside.join("secret.txt").exists());
    }

    #[tokio::test]
    async fn objects_round_trip_with_attributes() {
        let scratch = tempfile::tempdir().unwrap();
        let store = store(scratch.path());
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "text/plain".into());
        attributes.insert(Attribute::Metadata("k".into()), "v".into());
        let opts = PutOptions {
            attributes: attributes.clone(),
            ..Default::default()
        };
        store
            .put_opts(&Path::from("a/b/c.txt"), "hello".into(), opts)
            .await
            .unwrap();
        let got = store.get(&Path::from("a/b/c.txt")).await.unwrap();
        assert_eq!(got.attributes, attributes);
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
        let range = store
            .get_range(&Path::from("a/b/c.txt"), 1..3)
            .await
            .unwrap();
        assert_eq!(range.as_ref(), b"el");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        assert!(matches!(
            store
                .put_opts(&Path::from("a/b/c.txt"), "x".into(), create)
                .await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        store
            .copy(&Path::from("a/b/c.txt"), &Path::from("d.txt"))
            .await
            .unwrap();
        assert_eq!(
            store.get(&Path::from("d.txt")).await.unwrap().attributes,
            attributes
        );
        store
            .rename(&Path::from("d.txt"), &Path::from("e/f.txt"))
            .await
            .unwrap();
        store.delete(&Path::from("a/b/c.txt")).await.unwrap();
        assert!(
            !scratch.path().join("a").exists(),
            "emptied folders go with their last entry"
        );
        let mut upload = store.put_multipart(&Path::from("m/big")).await.unwrap();
        upload.put_part(vec![1u8; 10].into()).await.unwrap();
        upload.put_part(vec![2u8; 5].into()).await.unwrap();
        upload.complete().await.unwrap();
        let got = store
            .get(&Path::from("m/big"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.len(), 15);
        assert_eq!(&got[9..11], &[1, 2]);
        let listed = store.list_with_delimiter(None).await.unwrap();
        let dirs: Vec<_> = listed
            .common_prefixes
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        assert!(listed.objects.is_empty());
        store
            .put(&Path::parse("ünï/日本 語.txt").unwrap(), "u".into())
            .await
            .unwrap();
        let listed: Vec<_> = store
            .list(Some(&Path::parse("ünï").unwrap()))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(
            listed,
            ["ünï/日本 語.txt"],
            "names are listed byte for byte"
        );
    }
}
