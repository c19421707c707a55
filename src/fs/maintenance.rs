//! Work the mount does besides answering requests: replaying the journal before serving, and the maintenance pass
//! run every `heal_interval` (failed uploads retried, failover writes healed, image jobs resubmitted, the status
//! file written); also waiting for the background uploads at unmount.

use super::inode::Entry;
use super::Filesystem;
use std::path::Path;
use std::sync::Arc;

impl Filesystem {
    /// Before serving: drops staged data no program finished writing, then uploads every file whose data was
    /// acknowledged (close/fsync) but not yet uploaded when the previous mount stopped.
    pub async fn replay_journal(&self) -> crate::write::Replay {
        // The root's mode, owner and times (it is never looked up).
        match self.dir_posix("").await {
            Ok(posix) => {
                let root = Entry {
                    posix,
                    ..Entry::dir(self.mounted_at)
                };
                self.inodes.record("", root);
            }
            Err(e) => tracing::debug!("the root's stored attributes cannot be read: {e}"),
        }
        let aborted = self.storage.abort_orphaned_uploads().await;
        if aborted > 0 {
            tracing::warn!("aborted {aborted} multipart uploads the last run left unfinished");
        }
        let discarded = self.uploads.recover();
        if discarded > 0 {
            tracing::warn!(
                "journal: discarded {discarded} staged files that were never closed or fsynced"
            );
        }
        self.retry_pending_uploads().await
    }

    /// Retries journaled uploads whose files are not open in this mount (failed uploads are kept and retried).
    pub async fn retry_pending_uploads(&self) -> crate::write::Replay {
        self.storage.abort_orphaned_uploads().await;
        self.uploads.retry().await
    }

    /// Copies failover writes back to their primaries (see [`crate::storage::failover`]); healed paths are
    /// looked up again.
    pub async fn heal(&self) -> crate::storage::HealReport {
        let report = self
            .storage
            .heal_pending(|path| self.uploads.get(path).is_some())
            .await;
        for path in &report.healed {
            self.changed_on_provider(path);
            if let Some(images) = &self.images {
                images.submit(path); // transforms wait for the primary's copy
            }
        }
        report
    }

    /// One maintenance pass: copies failover writes back to primaries that answer again, resubmits image jobs
    /// that failed on an outage, writes `status_file` (provider health and counters, pending heals) and retries
    /// journaled uploads.
    pub async fn maintain(&self, status_file: &Path) {
        self.heal().await;
        if let Some(images) = &self.images {
            images.resubmit_pending();
        }
        if let Err(e) = self.storage.write_status(status_file) {
            tracing::debug!("cannot write {}: {e}", status_file.display());
        }
        let outcome = self.retry_pending_uploads().await;
        if !outcome.uploaded.is_empty() {
            tracing::warn!(
                "journal: {} pending uploads finished: {:?}",
                outcome.uploaded.len(),
                outcome.uploaded
            );
        }
    }

    /// Waits until every queued background upload has finished (or failed and been kept in the journal).
    pub async fn wait_for_uploads(&self) {
        self.uploads.wait().await
    }

    /// The image worker, when a route has transforms or variants.
    pub fn images(&self) -> Option<&Arc<crate::images::ImageWorker>> {
        self.images.as_ref()
    }
}
