//! The upload queue: the one owner of files written through the mount until their bytes are on the provider,
//! and the only thing that publishes a staged version and tells the tree what changed.
//!
//! It maps each path to the [`Staged`] file the tree shows for it — open for writing, or closed with a pending
//! upload — so every open, read, stat, append, truncate, rename, xattr and listing sees the newest acknowledged
//! bytes, also after a remount (pending versions are loaded from the journal before the mount serves).
//! `rename` and `unlink` move or detach the file itself, so data follows the open file, never the name it had.
//!
//! Publishing: `close` on a write-through route and `fsync` everywhere upload now ([`Uploads::commit`]); a
//! write-back `close` journals the version and queues it ([`Uploads::close`]); failed uploads stay pending and
//! are retried ([`Uploads::retry`]). After an upload the tree hears of it through the [`Published`] callback
//! (attributes, caches, image jobs) at once.
//!
//! This file holds the map of files and their lifecycle; `publish` closes, commits, queues and retries uploads;
//! `rename` holds files still for a rename or unlink and moves or detaches them.

mod publish;
mod rename;

pub use rename::Held;

use super::journal::Journal;
use super::staged::{Space, Staged, State};
use super::FileAttrs;
use super::WriteResult;
use crate::meta::posix::Posix;
use crate::routing::is_within;
use crate::storage::{FileInfo, Storage};
use rename::detach;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// A version now on its provider.
pub struct Published {
    pub path: String,
    pub info: FileInfo,
    pub posix: Posix,
    pub modified: SystemTime,
}

type OnPublished = Box<dyn Fn(Published) + Send + Sync>;

pub struct Uploads {
    storage: Arc<Storage>,
    journal: Arc<Journal>,
    files: Mutex<HashMap<String, Arc<Staged>>>,
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: crate::tasks::InFlight,
    on_published: OnceLock<OnPublished>,
    space: Option<Space>,
    /// How long a write-back version waits after its `close` before its upload starts (see
    /// [`Uploads::settle_for`]).
    settle: std::time::Duration,
}

/// Outcome of a retry pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    pub uploaded: Vec<String>,
    pub failed: Vec<String>,
}

impl Uploads {
    /// Background uploads in flight at once. 32: enough to hide per-request latency for small files (measured:
    /// 1,000 small puts reach full speed at 32 in flight), few enough not to flood a provider.
    const CONCURRENCY: usize = 32;

    pub fn new(storage: Arc<Storage>, staging_dir: &std::path::Path, space: Option<Space>) -> Self {
        Uploads {
            storage,
            journal: Arc::new(Journal::new(staging_dir)),
            files: Mutex::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(Self::CONCURRENCY)),
            in_flight: Default::default(),
            on_published: OnceLock::new(),
            space,
            settle: std::time::Duration::ZERO,
        }
    }

    /// Write-back uploads start `delay` after the `close` that queued them: the burst of changes programs make
    /// right after writing a file (`rsync`, `cp -p`, `tar x`: set times, mode, then rename into place) joins the
    /// journaled version, which is then uploaded once, under its final name. `fsync` uploads at once.
    pub fn settle_for(mut self, delay: std::time::Duration) -> Self {
        self.settle = delay;
        self
    }

    /// Where the tree hears of published versions (set once, before serving).
    pub fn on_published(&self, f: impl Fn(Published) + Send + Sync + 'static) {
        let _ = self.on_published.set(Box::new(f));
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn space(&self) -> &Option<Space> {
        &self.space
    }

    /// The file the tree shows at `path`, when it is written in this mount or waits for its upload.
    pub fn get(&self, path: &str) -> Option<Arc<Staged>> {
        self.files.lock().unwrap().get(path).cloned()
    }

    /// [`Uploads::get`], counting a new handle on it in the same step: [`Uploads::forget_if_done`] checks the
    /// handles under the same lock, so a file being opened is never dropped from the map between the two (its new
    /// bytes would then be invisible to lookups until uploaded).
    fn get_opened(&self, path: &str) -> Option<Arc<Staged>> {
        let files = self.files.lock().unwrap();
        let staged = files.get(path).cloned()?;
        staged.opened();
        Some(staged)
    }

    /// Paths of such files directly in directory `dir`.
    pub fn children(&self, dir: &str) -> Vec<(String, Arc<Staged>)> {
        self.files
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| parent_of(p) == dir)
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect()
    }

    /// Whether any such file lies at or below `dir`.
    pub fn any_under(&self, dir: &str) -> bool {
        self.files
            .lock()
            .unwrap()
            .keys()
            .any(|p| is_within(p, dir) && p != dir)
    }

    /// A new empty file at `path` (create, or open with O_TRUNC of a file not written here), one handle open.
    pub fn create(&self, path: &str, attrs: FileAttrs) -> WriteResult<Arc<Staged>> {
        let staged = Arc::new(Staged::empty(&self.journal, path, attrs)?);
        staged.opened();
        self.install(path, staged.clone());
        Ok(staged)
    }

    /// Opens `path` for writing: the file already written here (truncated if asked), else a working copy of the
    /// object (or an empty one with `truncate`). `posix`: the object's stored mode/owner/times.
    pub async fn open(&self, path: &str, truncate: bool, posix: Posix) -> WriteResult<Arc<Staged>> {
        if let Some(staged) = self.get_opened(path) {
            if truncate {
                if let Err(e) = staged.truncate(0, None, &self.space).await {
                    self.failed(&staged).await;
                    staged.closed();
                    return Err(e);
                }
            }
            return Ok(staged);
        }
        let staged = if truncate {
            // The bytes go; what the object carries besides (xattrs) stays, as on a local filesystem.
            let attrs = FileAttrs::of_object(&self.storage, path, posix).await?;
            Staged::empty(&self.journal, path, attrs)?
        } else {
            Staged::from_object(&self.journal, path, &self.storage, posix).await?
        };
        let staged = Arc::new(staged);
        staged.opened();
        // Another open may have raced this one: the first installed wins, so both share one file.
        let first = {
            let mut files = self.files.lock().unwrap();
            let first = files.get(path).cloned();
            if first.is_none() {
                files.insert(path.to_string(), staged.clone());
            }
            first
        };
        match first {
            Some(first) => {
                staged.closed();
                first.opened();
                Ok(first)
            }
            None => Ok(staged),
        }
    }

    /// A reader of `path` shares the file written here, if there is one.
    pub fn open_read(&self, path: &str) -> Option<Arc<Staged>> {
        self.get_opened(path)
    }

    fn install(&self, path: &str, staged: Arc<Staged>) {
        let old = self.files.lock().unwrap().insert(path.to_string(), staged);
        if let Some(old) = old {
            // A create over a file written here: the old one is replaced, like an unlinked file.
            tokio::spawn(async move { detach(&old).await });
        }
    }

    /// The last handle of `staged` closed. Changes made after its last `close` (attributes set between `close`
    /// and `release`) are published as if closed again.
    pub fn release(self: &Arc<Self>, staged: &Arc<Staged>) {
        if staged.closed() > 0 {
            return;
        }
        let this = self.clone();
        let staged = staged.clone();
        let running = self.in_flight.start();
        tokio::spawn(async move {
            let dirty = {
                let st = staged.state.lock().await;
                st.dirty && st.failed.is_none()
            };
            if dirty && staged.path().is_some() {
                if let Err(e) = this.close_when(&staged, true).await {
                    tracing::warn!(
                        "{}: changes made after close could not be stored: {e}",
                        staged.path().unwrap_or_default()
                    );
                }
            }
            this.forget_if_done(&staged).await;
            drop(running);
        });
    }

    /// Drops `staged` from the map once nothing holds it open and its bytes are on the provider.
    async fn forget_if_done(&self, staged: &Arc<Staged>) {
        let done = {
            let st = staged.state.lock().await;
            st.pending.is_none() && !st.dirty
        };
        if !done || staged.handles() > 0 {
            return;
        }
        let Some(path) = staged.path() else { return };
        let mut files = self.files.lock().unwrap();
        if files.get(&path).is_some_and(|s| Arc::ptr_eq(s, staged)) && staged.handles() == 0 {
            files.remove(&path);
        }
    }

    /// Removes `path` from the map if `staged` is what it maps to; whether it did.
    fn remove_if_current(&self, path: &str, staged: &Arc<Staged>) -> bool {
        let mut files = self.files.lock().unwrap();
        let current = files.get(path).is_some_and(|s| Arc::ptr_eq(s, staged));
        if current {
            files.remove(path);
        }
        current
    }

    /// A write of `staged` failed: the file leaves the tree (its provider keeps its previous version), or its
    /// acknowledged pending version takes its place.
    pub async fn failed(&self, staged: &Arc<Staged>) {
        let mut st = staged.state.lock().await;
        self.failed_locked(staged, &mut st);
    }

    fn failed_locked(&self, staged: &Arc<Staged>, st: &mut State) {
        let Some(path) = staged.path() else { return };
        self.remove_if_current(&path, staged);
        staged.set_path(None);
        if let Some(pending) = st.pending.take() {
            // The acknowledged version stays: a file of its own, uploaded as before.
            let entry = super::journal::Entry {
                local: pending.local.clone(),
                path: path.clone(),
                attrs: pending.attrs.clone(),
            };
            match Staged::from_journal(&self.journal, entry) {
                Ok(kept) => {
                    self.files.lock().unwrap().insert(path, Arc::new(kept));
                }
                Err(e) => tracing::error!(
                    "{path}: cannot reopen its acknowledged version at {}: {e}",
                    pending.local.display()
                ),
            }
        }
    }

    /// Loads the journal (before the mount serves): acknowledged versions of the last run are pending files of
    /// this one; bytes never acknowledged are removed. Returns how many were removed.
    pub fn recover(&self) -> usize {
        let (entries, discarded) = self.journal.recover();
        for entry in entries {
            let path = entry.path.clone();
            match Staged::from_journal(&self.journal, entry) {
                Ok(staged) => {
                    self.files.lock().unwrap().insert(path, Arc::new(staged));
                }
                Err(e) => {
                    tracing::error!("journal: cannot load the pending version of {path}: {e}")
                }
            }
        }
        discarded
    }

    /// Versions waiting for their upload.
    pub fn pending(&self) -> usize {
        self.journal.len()
    }

    /// Background uploads running now.
    pub fn running(&self) -> usize {
        self.in_flight.pending()
    }

    /// Waits until every queued upload has finished (or failed and been kept).
    pub async fn wait(&self) {
        self.in_flight.wait("background uploads").await
    }

    fn write_back(&self, path: &str) -> bool {
        self.storage
            .resolve(path)
            .is_ok_and(|(_, resolved, _)| resolved.route.write_back)
    }

    fn published(&self, staged: &Staged, path: String, info: FileInfo) {
        if let Some(tell) = self.on_published.get() {
            tell(Published {
                path,
                info,
                posix: staged.posix(),
                modified: staged.modified(),
            });
        }
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}
