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

use super::journal::Journal;
use super::staged::{Space, Staged, State};
use super::FileAttrs;
use super::{WriteError, WriteResult};
use crate::meta::posix::Posix;
use crate::routing::is_within;
use crate::storage::{FileInfo, Storage};
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

    /// `close` of a handle that wrote (or may have): on a write-back route the version is journaled and queued,
    /// else uploaded now (see [`Uploads::commit`]).
    pub async fn close(self: &Arc<Self>, staged: &Arc<Staged>) -> WriteResult<()> {
        self.close_when(staged, false).await
    }

    /// [`Uploads::close`]; `unopened`: only while no handle has the file open, checked under the file's state lock
    /// (the publish at the last release must not take the bytes of a writer that opened the file since).
    async fn close_when(self: &Arc<Self>, staged: &Arc<Staged>, unopened: bool) -> WriteResult<()> {
        let Some(path) = staged.path() else {
            let st = staged.state.lock().await;
            return st.check_failed(); // unlinked: never uploaded
        };
        if !self.write_back(&path) {
            return self.commit_when(staged, unopened).await;
        }
        let queued = {
            let mut st = staged.state.lock().await;
            if unopened && staged.handles() > 0 {
                return Ok(()); // opened again: that handle's close publishes
            }
            st.check_failed()?;
            self.journal_changes(staged, &mut st, &path).await?;
            st.pending.is_some()
        };
        if queued {
            self.publish_later(staged.clone());
        }
        Ok(())
    }

    /// Puts the file's newest version on the provider now (write-through `close`, `fsync`). A failed upload
    /// leaves the version journaled and pending (retried later, seen by every read) and returns the error.
    pub async fn commit(&self, staged: &Arc<Staged>) -> WriteResult<()> {
        self.commit_when(staged, false).await
    }

    /// [`Uploads::commit`]; `unopened`: see [`Uploads::close_when`].
    async fn commit_when(&self, staged: &Arc<Staged>, unopened: bool) -> WriteResult<()> {
        let _publishing = staged.publish.lock().await;
        let mut st = staged.state.lock().await;
        if unopened && staged.handles() > 0 {
            return Ok(()); // opened again: that handle's close publishes
        }
        st.check_failed()?;
        let Some(path) = staged.path() else {
            return Ok(());
        };
        let uploaded = if st.dirty {
            staged
                .upload_work(&mut st, &self.storage, &path)
                .await
                .map_err(WriteError::Storage)
        } else if let Some(pending) = st.pending.clone() {
            super::upload_local(
                &self.storage,
                &path,
                &pending.local,
                pending.size,
                &pending.attrs,
            )
            .await
        } else {
            return Ok(());
        };
        match uploaded {
            Ok(info) => {
                st.dirty = false;
                st.unclosed = false;
                staged.drop_pending(&mut st);
                drop(st);
                drop(_publishing);
                self.published(staged, path, info);
                self.forget_if_done(staged).await;
                Ok(())
            }
            // An outage passes: the version is journaled and retried, and every read sees it meanwhile.
            Err(e) if e.is_unavailable() => {
                tracing::error!("upload of {path} failed; kept and retried: {e}");
                self.journal_changes(staged, &mut st, &path).await?;
                Err(e)
            }
            // An answer (refused, invalid, too large) does not change with a retry: the program hears it, and
            // the provider keeps its previous version. An acknowledged older version stays pending.
            Err(e) => {
                tracing::error!(
                    "upload of {path} refused: {e}; the provider keeps its previous version"
                );
                if st.dirty {
                    let e = staged.fail(&mut st, e);
                    self.failed_locked(staged, &mut st);
                    return Err(e);
                }
                Err(e)
            }
        }
    }

    /// Journals the working copy's changes as the pending version; when that fails locally (disk full), the file
    /// fails (see [`Uploads::failed`]) and the error is returned.
    async fn journal_changes(
        &self,
        staged: &Arc<Staged>,
        st: &mut State,
        path: &str,
    ) -> WriteResult<()> {
        if !st.dirty {
            return Ok(());
        }
        if let Err(e) = staged.stage(st, path).await {
            let e = staged.fail(st, e);
            self.failed_locked(staged, st);
            return Err(e);
        }
        Ok(())
    }

    /// Queues the upload of the file's pending version.
    fn publish_later(self: &Arc<Self>, staged: Arc<Staged>) {
        let running = self.in_flight.start();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.settle).await;
            let _permit = this.permits.clone().acquire_owned().await;
            match this.publish_pending(&staged).await {
                Ok(_) => this.forget_if_done(&staged).await,
                Err(e) => tracing::warn!(
                    "background upload of {} failed, kept for retry: {e}",
                    staged.path().unwrap_or_default()
                ),
            }
            drop(running);
        });
    }

    /// Uploads the pending version from its (immutable) data file; writers meanwhile change their own copy.
    async fn publish_pending(&self, staged: &Arc<Staged>) -> WriteResult<bool> {
        let _publishing = staged.publish.lock().await;
        let Some(path) = staged.path() else {
            return Ok(false);
        };
        let mut st = staged.state.lock().await;
        let Some(pending) = st.pending.clone() else {
            return Ok(false); // published meanwhile
        };
        if st.sequential.is_uploading() && st.shares_work() && !st.dirty {
            // Written front to back and streamed while written: completing that upload is all that is left.
            let info = staged
                .upload_work(&mut st, &self.storage, &path)
                .await
                .map_err(WriteError::Storage)?;
            staged.drop_pending(&mut st);
            drop(st);
            self.published(staged, path, info);
            return Ok(true);
        }
        drop(st);
        let info = super::upload_local(
            &self.storage,
            &path,
            &pending.local,
            pending.size,
            &pending.attrs,
        )
        .await?;
        let mut st = staged.state.lock().await;
        if st.pending.as_ref().map(|p| p.generation) != Some(pending.generation) {
            return Ok(false); // a newer version was acknowledged meanwhile: it goes next
        }
        staged.drop_pending(&mut st);
        let current = !st.dirty;
        drop(st);
        if current {
            self.published(staged, path, info);
        }
        Ok(true)
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

    /// Holds the files at or below `from` and at `to` still (no upload of them runs) for a rename; see
    /// [`Held::finish`].
    pub async fn hold_for_rename(&self, from: &str, to: &str) -> Held {
        let mut files: Vec<(String, Arc<Staged>)> = self
            .files
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| is_within(p, from) || is_within(p, to))
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut guards = Vec::with_capacity(files.len());
        for (_, staged) in &files {
            guards.push(staged.publish.clone().lock_owned().await);
        }
        Held {
            files,
            _guards: guards,
        }
    }

    /// `unlink` of the held path: its file written here (if any) leaves the tree, keeps serving its open
    /// handles, and is never uploaded.
    pub async fn unlinked(&self, held: Held) {
        for (path, staged) in &held.files {
            self.remove_if_current(path, staged);
            let mut st = staged.state.lock().await;
            detach_locked(staged, &mut st);
        }
    }

    /// Moves the held files: those below `from` take their new names (pending uploads go there), those at or
    /// below `to` are replaced (detached, like unlinked files).
    pub async fn renamed(&self, held: Held, from: &str, to: &str) {
        for (path, staged) in &held.files {
            if is_within(path, from) {
                continue;
            }
            if self.remove_if_current(path, staged) {
                let mut st = staged.state.lock().await;
                detach_locked(staged, &mut st);
            }
        }
        for (path, staged) in &held.files {
            if !is_within(path, from) {
                continue;
            }
            let new_path = format!("{to}{}", &path[from.len()..]);
            let mut st = staged.state.lock().await;
            st.sequential.abandon(); // it streams to the old name
            if let Some(pending) = &st.pending {
                if let Err(e) = self
                    .journal
                    .record(&pending.local, &new_path, &pending.attrs)
                {
                    tracing::error!(
                        "{new_path}: cannot record the rename of a pending upload: {e}"
                    );
                }
            }
            staged.set_path(Some(new_path.clone()));
            drop(st);
            self.remove_if_current(path, staged);
            self.files.lock().unwrap().insert(new_path, staged.clone());
        }
        drop(held);
    }

    /// Uploads every pending version (failed or queued uploads); what still fails stays pending.
    pub async fn retry(&self) -> Replay {
        let pending: Vec<Arc<Staged>> = self.files.lock().unwrap().values().cloned().collect();
        let mut outcome = Replay::default();
        for staged in pending {
            let has_pending = staged.state.lock().await.pending.is_some();
            if !has_pending {
                continue;
            }
            let path = staged.path().unwrap_or_default();
            match self.publish_pending(&staged).await {
                Ok(_) => {
                    tracing::info!("journal: uploaded {path} (a pending version)");
                    outcome.uploaded.push(path);
                    self.forget_if_done(&staged).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "pending upload of {path} still fails, kept for a later try: {e}"
                    );
                    outcome.failed.push(path);
                }
            }
        }
        outcome
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

/// Files held still for a rename (their publish locks, in path order).
pub struct Held {
    files: Vec<(String, Arc<Staged>)>,
    _guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl Held {
    /// Whether a file written here lies at `path` (the rename's source may exist only in this mount).
    pub fn holds(&self, path: &str) -> bool {
        self.files.iter().any(|(p, _)| p == path)
    }

    /// Whether the file written here at `path` has an acknowledged version waiting for its upload: the object on
    /// the provider is older than it, so a rename need not copy that object, only remove it.
    pub async fn has_pending(&self, path: &str) -> bool {
        for (p, staged) in &self.files {
            if p == path && staged.state.lock().await.pending.is_some() {
                return true;
            }
        }
        false
    }
}

async fn detach(staged: &Arc<Staged>) {
    let _publishing = staged.publish.lock().await;
    let mut st = staged.state.lock().await;
    detach_locked(staged, &mut st);
}

fn detach_locked(staged: &Staged, st: &mut State) {
    staged.set_path(None);
    st.sequential.abandon();
    staged.drop_pending(st);
    st.dirty = false;
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}
