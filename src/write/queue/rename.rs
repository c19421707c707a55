//! Renames and unlinks of files written here: the files at the names involved held still (no upload of them
//! runs), then moved to their new names or detached from the tree.

use super::Uploads;
use crate::routing::is_within;
use crate::write::staged::{Staged, State};
use std::sync::Arc;

impl Uploads {
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
            // It streams to the old name; aborted before the rename returns, so nothing of it (a local provider's
            // temporary file keeps its folder) shows under the old name afterwards.
            st.sequential.abandon_and_wait().await;
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

pub(super) async fn detach(staged: &Arc<Staged>) {
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
