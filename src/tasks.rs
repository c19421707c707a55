//! Counting background tasks so that unmount can wait for them: write-back uploads and image jobs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many tasks of one kind are in flight; each holds a [`Running`] guard while it runs.
#[derive(Default, Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

/// Held by one running task; dropping it counts the task as finished.
pub struct Running(InFlight);

impl InFlight {
    pub fn start(&self) -> Running {
        self.count.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    pub fn pending(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until none is in flight, logging how many are left once a second (`what` names them).
    pub async fn wait(&self, what: &str) {
        loop {
            let notified = self.idle.notified();
            let pending = self.pending();
            if pending == 0 {
                return;
            }
            tracing::warn!("waiting for {pending} {what} to finish");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
