//! Publishing a staged file: `close` (journaled and queued on a write-back route), `commit` (uploaded now), the
//! background upload of a queued version, and the retry of every pending one.

use super::{Replay, Uploads};
use crate::write::staged::{Staged, State};
use crate::write::{WriteError, WriteResult};
use std::sync::Arc;

impl Uploads {
    /// `close` of a handle that wrote (or may have): on a write-back route the version is journaled and queued,
    /// else uploaded now (see [`Uploads::commit`]).
    pub async fn close(self: &Arc<Self>, staged: &Arc<Staged>) -> WriteResult<()> {
        self.close_when(staged, false).await
    }

    /// [`Uploads::close`]; `unopened`: only while no handle has the file open, checked under the file's state lock
    /// (the publish at the last release must not take the bytes of a writer that opened the file since).
    pub(super) async fn close_when(
        self: &Arc<Self>,
        staged: &Arc<Staged>,
        unopened: bool,
    ) -> WriteResult<()> {
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
            crate::write::upload_local(
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
        let info = crate::write::upload_local(
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
}
