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

// `struct stat` field widths differ between architectures; the casts keep these files portable.
#![allow(clippy::unnecessary_cast)]

mod attributes;
mod confine;
mod files;
mod listing;

use crate::config::LocalConfig;
use async_trait::async_trait;
use attributes::write_xattrs;
use bytes::Bytes;
use files::discard;
use futures::stream::{self, BoxStream, StreamExt};
use listing::meta_of;
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, RenameTargetMode, Result, UploadPart,
};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

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
                shared: shared.clone(),
                location: key.clone(),
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
    shared: Arc<Shared>,
    location: Path,
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

    /// Removes the temporary file, and the folders that were made for it and hold nothing else (as a delete does).
    async fn abort(&mut self) -> Result<()> {
        let (parent, temp, key) = (self.parent.clone(), self.temp.clone(), self.key.clone());
        let (shared, location) = (self.shared.clone(), self.location.clone());
        blocking(move || {
            rustix::fs::unlinkat(&*parent, temp.as_str(), AtFlags::empty())
                .map_err(|e| error(&key, e))?;
            if let Ok((chain, dirs, _)) = shared.parent(&location, false) {
                Shared::clean_up(&chain, &dirs);
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
