//! One file being written through this mount, or waiting for its upload: the open file that owns its data.
//!
//! A [`Staged`] file has a *working copy* (a local file under `<cache_dir>/staging/`, what every read of the file
//! sees) and at most one *pending* version: bytes a program acknowledged (write-back `close`, or a `close`/`fsync`
//! whose upload failed) that are not on the provider yet. A pending version is immutable and journaled; while the
//! working copy still is that version they share the data file, and the first change of the bytes copies it first
//! ("forks"), so a crash can only ever publish an acknowledged version, never a half-changed one.
//!
//! The file's path is the name it has *now*: `rename` changes it, `unlink` clears it (a detached file keeps
//! serving its open descriptors and is never uploaded). A failed write (ENOSPC, EFBIG, EIO) fails the file: its
//! working copy is released at once, every later `write`/`fsync`/`close` of it returns that error, and nothing of
//! it is uploaded. Publishing is [`super::queue`]'s work; these files only keep the bytes: this one the file, its
//! versions and their staging, `data` the changes of the working copy's bytes (write, read, truncate) and the
//! failure of the file when one cannot be made.

mod data;

use super::journal::Journal;
use super::stream::SequentialUpload;
use super::FileAttrs;
use super::{WriteError, WriteResult};
use crate::meta::posix::Posix;
use crate::storage::{FileInfo, Storage};
use futures::StreamExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Frees local disk space for staged bytes when the disk is full (the block cache's disk tier); returns the
/// bytes freed.
pub type Space = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

pub struct Staged {
    /// The mount path the file has now; None once unlinked (or replaced by a rename): never uploaded then.
    path: Mutex<Option<String>>,
    /// Open file handles (readers and writers) of this file in this mount.
    handles: AtomicUsize,
    /// Size of the working copy, readable without waiting for an upload in progress.
    size: AtomicU64,
    /// Mode, owner, times, metadata, tags and content type of the working copy.
    attrs: Mutex<FileAttrs>,
    /// When the bytes last changed.
    modified: Mutex<SystemTime>,
    /// Taken (before `state`) by whatever publishes this file, renames it or unlinks it, so none of them lands
    /// in the middle of another: an upload always goes to the name the file has when it starts.
    pub(super) publish: Arc<tokio::sync::Mutex<()>>,
    pub(super) state: tokio::sync::Mutex<State>,
    journal: Arc<Journal>,
}

pub(super) struct State {
    /// None once the file failed (its space is released then).
    pub work: Option<Work>,
    /// The working copy differs from the last acknowledged version (bytes or attributes).
    pub dirty: bool,
    /// Why the file failed; every later write, fsync and close returns it.
    pub failed: Option<Arc<WriteError>>,
    pub pending: Option<Pending>,
    pub sequential: SequentialUpload,
    bytes_changed: bool,
    /// Bytes changed since the last `close`/`fsync` acknowledged a version: the file is mid-write.
    pub unclosed: bool,
}

pub(super) struct Work {
    pub local: PathBuf,
    pub file: Arc<std::fs::File>,
    pub size: u64,
}

/// An acknowledged version not on the provider yet.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub local: PathBuf,
    pub size: u64,
    pub attrs: FileAttrs,
    /// Changes each time the pending version is replaced (a newer version, or new attributes).
    pub generation: u64,
}

impl State {
    /// Whether the pending version and the working copy are the same data file.
    pub fn shares_work(&self) -> bool {
        matches!((&self.pending, &self.work), (Some(p), Some(w)) if p.local == w.local)
    }

    pub fn check_failed(&self) -> WriteResult<()> {
        match &self.failed {
            Some(failure) => Err(WriteError::Failed(failure.clone())),
            None => Ok(()),
        }
    }
}

impl Staged {
    fn new(
        journal: &Arc<Journal>,
        path: &str,
        work: Work,
        dirty: bool,
        attrs: FileAttrs,
        pending: Option<Pending>,
    ) -> Staged {
        // Only a file written from empty can be streamed: anything else is uploaded whole from the working copy.
        let sequential = match work.size == 0 && pending.is_none() {
            true => SequentialUpload::start(),
            false => SequentialUpload::Off,
        };
        let size = work.size;
        Staged {
            path: Mutex::new(Some(path.to_string())),
            handles: AtomicUsize::new(0),
            size: AtomicU64::new(size),
            modified: Mutex::new(SystemTime::now()),
            attrs: Mutex::new(attrs),
            publish: Default::default(),
            state: tokio::sync::Mutex::new(State {
                work: Some(work),
                dirty,
                failed: None,
                pending,
                sequential,
                bytes_changed: false,
                unclosed: false,
            }),
            journal: journal.clone(),
        }
    }

    /// An empty file (create, or open with O_TRUNC): uploaded on close even if nothing is written.
    pub fn empty(journal: &Arc<Journal>, path: &str, attrs: FileAttrs) -> WriteResult<Staged> {
        let (local, file) = journal.new_file()?;
        let work = Work {
            local,
            file: Arc::new(file),
            size: 0,
        };
        let staged = Staged::new(journal, path, work, true, attrs, None);
        staged.state.try_lock().expect("new").bytes_changed = true;
        staged.drop_markers();
        Ok(staged)
    }

    /// A working copy of the object's current bytes and attributes (open for writing without O_TRUNC), with
    /// `posix` as its mode/owner/times.
    pub async fn from_object(
        journal: &Arc<Journal>,
        path: &str,
        storage: &Storage,
        posix: Posix,
    ) -> WriteResult<Staged> {
        let attrs = FileAttrs::of_object(storage, path, posix).await?;
        let (local, file) = journal.new_file()?;
        let file = Arc::new(file);
        let filled: WriteResult<u64> = async {
            let mut stream = storage.download_stream(path).await?;
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let (f, at) = (file.clone(), size);
                size += chunk.len() as u64;
                blocking(move || f.write_all_at(&chunk, at)).await?;
            }
            Ok(size)
        }
        .await;
        let size = match filled {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&local);
                return Err(e);
            }
        };
        let work = Work { local, file, size };
        Ok(Staged::new(journal, path, work, false, attrs, None))
    }

    /// An acknowledged version found in the journal at start-up (pending, its data file also the working copy).
    pub fn from_journal(
        journal: &Arc<Journal>,
        entry: super::journal::Entry,
    ) -> WriteResult<Staged> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&entry.local)?;
        let meta = file.metadata()?;
        let size = meta.len();
        let pending = Pending {
            local: entry.local.clone(),
            size,
            attrs: entry.attrs.clone(),
            generation: journal.next_generation(),
        };
        let work = Work {
            local: entry.local,
            file: Arc::new(file),
            size,
        };
        let staged = Staged::new(
            journal,
            &entry.path,
            work,
            false,
            entry.attrs,
            Some(pending),
        );
        if let Ok(modified) = meta.modified() {
            *staged.modified.lock().unwrap() = modified;
        }
        Ok(staged)
    }

    pub fn path(&self) -> Option<String> {
        self.path.lock().unwrap().clone()
    }

    pub(super) fn set_path(&self, path: Option<String>) {
        *self.path.lock().unwrap() = path;
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    pub fn modified(&self) -> SystemTime {
        *self.modified.lock().unwrap()
    }

    pub fn posix(&self) -> Posix {
        self.attrs.lock().unwrap().posix
    }

    pub fn attrs(&self) -> FileAttrs {
        self.attrs.lock().unwrap().clone()
    }

    pub(super) fn opened(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }

    /// One handle closed; returns how many remain.
    pub(super) fn closed(&self) -> usize {
        self.handles.fetch_sub(1, Ordering::SeqCst) - 1
    }

    pub fn handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    /// Changes what the object gets besides its bytes; uploaded with the next version.
    pub async fn change_attrs(&self, change: impl FnOnce(&mut FileAttrs)) -> WriteResult<()> {
        let mut st = self.state.lock().await;
        st.check_failed()?;
        change(&mut self.attrs.lock().unwrap());
        st.sequential.abandon(); // a streamed upload already carries the old metadata
        st.dirty = true;
        Ok(())
    }

    /// The image-work markers go with the first change of the bytes: a user's file written over a variant is the
    /// user's, and new bytes of a transformed file are transformed again.
    fn drop_markers(&self) {
        let mut attrs = self.attrs.lock().unwrap();
        attrs
            .metadata
            .retain(|key, _| !crate::meta::MARKER_KEYS.contains(&key.as_str()));
    }

    /// Whether bytes were written since the last acknowledged version (a program is mid-write).
    pub async fn writing(&self) -> bool {
        self.state.lock().await.unclosed
    }

    /// Acknowledges the working copy locally: data fsynced, journal record written, so it survives a crash and is
    /// uploaded later; it replaces the older pending version, if any.
    pub(super) async fn stage(&self, st: &mut State, path: &str) -> WriteResult<()> {
        let work = st.work.as_ref().expect("caller checked failed");
        let (file, local, size) = (work.file.clone(), work.local.clone(), work.size);
        blocking(move || file.sync_data()).await?;
        let attrs = self.attrs();
        self.journal.record(&local, path, &attrs)?;
        if let Some(old) = st.pending.take() {
            if old.local != local {
                self.journal.remove(&old.local, false);
            }
        }
        let generation = self.journal.next_generation();
        st.pending = Some(Pending {
            local,
            size,
            attrs,
            generation,
        });
        st.dirty = false;
        st.unclosed = false;
        Ok(())
    }

    /// Uploads the working copy (under `st`, so no write interleaves): streamed when it was written front to
    /// back from empty, else from the local file.
    pub(super) async fn upload_work(
        &self,
        st: &mut State,
        storage: &Storage,
        path: &str,
    ) -> crate::storage::Result<FileInfo> {
        let options = self.attrs.lock().unwrap().upload_options();
        let work = st.work.as_ref().expect("caller checked failed");
        let (file, size) = (work.file.clone(), work.size);
        // A streamed upload completes under the path's write lock, like every other upload: a conditional
        // replace (an image transform) can then never land between its check and its upload.
        let held = match st.sequential.is_uploading() {
            true => Some(storage.lock_paths(&[path]).await),
            false => None,
        };
        let streamed = st.sequential.finish().await;
        drop(held);
        match streamed {
            Some(Ok(info)) if info.size == size => Ok(info),
            // Not streamed, or the stream failed: upload the working copy (a second attempt in the latter case).
            _ => super::upload_file(storage, path, file, size, options).await,
        }
    }

    /// Forgets the pending version (unlinked or replaced): its record goes, and its data unless still working.
    pub(super) fn drop_pending(&self, st: &mut State) {
        let shares = st.shares_work();
        if let Some(old) = st.pending.take() {
            self.journal.remove(&old.local, shares);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        st.sequential.abandon();
        let journaled = st.pending.as_ref().map(|p| p.local.clone());
        if let Some(work) = st.work.take() {
            if journaled.as_ref() != Some(&work.local) {
                let _ = std::fs::remove_file(&work.local);
            }
        }
        if let Some(pending) = journaled {
            // Still acknowledged and not uploaded: the journal keeps it for the next mount.
            tracing::error!(
                "{}: an acknowledged version is not on the provider yet; kept at {} for the next mount",
                self.path().unwrap_or_default(),
                pending.display()
            );
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> WriteResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WriteError::Local(std::io::Error::other(e)))?
        .map_err(WriteError::Local)
}
