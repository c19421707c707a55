//! The mount's image queue: paths whose upload completed are submitted; jobs run in the background, at most
//! `settings.images.workers` at once, so `close` never waits for image work.
//!
//! One job per path at a time: a path submitted while its job runs is run once more after it (so the last write
//! always gets its variants, and an older job can never overwrite a newer one's variants); a path submitted while
//! it waits is not queued twice. Only one lock (`state`), never held across an await (a job's record file is removed
//! under it; see `again`).
//!
//! Pending jobs are remembered on disk (`<cache_dir>/images/<sha256 of the path>`, holding the path) from submit
//! until they end: a daemon killed with jobs queued runs them at its next mount, and a job that failed because a
//! provider did not answer is run again at every maintenance pass (`failover.heal_interval`) until it succeeds.
//! The files are not fsynced: they survive a killed daemon, not a power cut (`zmount variants` covers that).

use super::{process, ImageError};
use crate::config::ImageSettings;
use crate::storage::Storage;
use crate::tasks::InFlight;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What the image work did since the mount started (metrics endpoint, unmount log line).
#[derive(Debug, Default)]
pub struct ImageCounters {
    /// Stored files replaced by their transformed version.
    pub transformed: AtomicU64,
    /// Variant objects written.
    pub variants: AtomicU64,
    /// Files skipped as not images, corrupt, or over the limits.
    pub skipped: AtomicU64,
    /// Jobs that failed for another reason (a provider error, an encoder error).
    pub failed: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued,
    Running,
    /// Submitted again while running: run once more when done.
    RunningAgain,
}

type OnChange = Box<dyn Fn(&str) + Send + Sync>;

pub struct ImageWorker {
    storage: Arc<Storage>,
    limits: ImageSettings,
    permits: tokio::sync::Semaphore,
    state: Mutex<HashMap<String, JobState>>,
    in_flight: InFlight,
    pub counters: ImageCounters,
    /// Told about every path a job wrote, so the mount's caches show it at once.
    on_change: OnceLock<OnChange>,
    /// Where pending jobs are remembered.
    pending_dir: std::path::PathBuf,
}

impl ImageWorker {
    pub fn new(
        storage: Arc<Storage>,
        limits: ImageSettings,
        pending_dir: std::path::PathBuf,
    ) -> Arc<ImageWorker> {
        if let Err(e) = std::fs::create_dir_all(&pending_dir) {
            tracing::warn!("cannot create {}: {e}", pending_dir.display());
        }
        Arc::new(ImageWorker {
            pending_dir,
            permits: tokio::sync::Semaphore::new(limits.workers),
            storage,
            limits,
            state: Mutex::default(),
            in_flight: InFlight::default(),
            counters: ImageCounters::default(),
            on_change: OnceLock::new(),
        })
    }

    pub fn set_on_change(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    /// Whether `path` gets image work at all: its route has image options and it is not a variant's name.
    pub fn wants(&self, path: &str) -> bool {
        let resolved = self.storage.router().resolve(path);
        resolved
            .and_then(|r| r.route.images.as_ref())
            .is_some_and(|images| !super::is_variant(path, images) && !super::is_hidden(path))
    }

    /// An upload of `path` with `size` bytes completed. Empty files are no images: programs that `dup2` their
    /// output (shell redirections) close, and so upload, the still-empty file once before writing it.
    pub fn uploaded(self: &Arc<Self>, path: &str, size: u64) {
        if size > 0 {
            self.submit(path);
        }
    }

    /// Queues `path`; returns at once.
    pub fn submit(self: &Arc<Self>, path: &str) {
        if !self.wants(path) {
            return;
        }
        {
            let mut state = self.state.lock().unwrap();
            match state.get(path).copied() {
                None => {
                    state.insert(path.to_string(), JobState::Queued);
                }
                Some(JobState::Running) => {
                    state.insert(path.to_string(), JobState::RunningAgain);
                    return;
                }
                Some(JobState::Queued | JobState::RunningAgain) => return,
            }
        }
        self.remember(path);
        let running = self.in_flight.start();
        let (this, path) = (self.clone(), path.to_string());
        tokio::spawn(async move {
            let _permit = this.permits.acquire().await;
            this.set_state(&path, JobState::Running);
            loop {
                // A panic must not leave the path marked running (its later submits would be swallowed).
                let run = std::panic::AssertUnwindSafe(this.run(&path));
                let retry = match futures::FutureExt::catch_unwind(run).await {
                    Ok(retry) => retry,
                    Err(_) => {
                        this.failed(&path, &ImageError::Internal("the job panicked".into()));
                        false
                    }
                };
                if !this.again(&path, retry) {
                    break;
                }
            }
            drop(running);
        });
    }

    /// Submits every remembered job that is not queued or running (at mount, and at each maintenance pass).
    pub fn resubmit_pending(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.pending_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(path) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if !self.wants(&path) {
                let _ = std::fs::remove_file(entry.path()); // its route has no image options any more
                continue;
            }
            let idle = !self.state.lock().unwrap().contains_key(&path);
            if idle {
                self.submit(&path);
            }
        }
    }

    fn pending_file(&self, path: &str) -> std::path::PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, path.as_bytes());
        let name: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.pending_dir.join(name)
    }

    fn remember(&self, path: &str) {
        if let Err(e) = std::fs::write(self.pending_file(path), path) {
            tracing::warn!(
                "image {path}: cannot remember the job in {}: {e}",
                self.pending_dir.display()
            );
        }
    }

    fn forget(&self, path: &str) {
        let _ = std::fs::remove_file(self.pending_file(path));
    }

    fn set_state(&self, path: &str, state: JobState) {
        self.state.lock().unwrap().insert(path.to_string(), state);
    }

    /// After a run: whether `path` was submitted again meanwhile (then it stays Running); else it is forgotten.
    /// When not, its record is removed too (unless `retry`), under the same lock, so that a submit right after
    /// cannot have its fresh record removed by this older job.
    fn again(&self, path: &str, retry: bool) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.get(path) == Some(&JobState::RunningAgain) {
            state.insert(path.to_string(), JobState::Running);
            return true;
        }
        state.remove(path);
        if !retry {
            self.forget(path);
        }
        false
    }

    /// Runs one job; true when it should be run again later (a provider did not answer).
    async fn run(&self, path: &str) -> bool {
        match process(&self.storage, &self.limits, path).await {
            Ok(report) => {
                if let Some(why) = report.nothing_because {
                    tracing::debug!("image {path}: nothing to do, {why}");
                    return false;
                }
                let c = &self.counters;
                c.variants
                    .fetch_add(report.variants.len() as u64, Ordering::Relaxed);
                if report.transformed {
                    c.transformed.fetch_add(1, Ordering::Relaxed);
                    self.changed(path);
                }
                report.variants.iter().for_each(|v| self.changed(v));
                for other in &report.not_overwritten {
                    tracing::warn!(
                        "image {path}: variant not written: {other} is another file, not a variant of it"
                    );
                }
                if let Some(why) = report.not_transformed_because {
                    tracing::info!("image {path}: not transformed: {why}");
                }
                tracing::info!(
                    "image {path}: {}{} variant(s) written",
                    if report.transformed {
                        "transformed, "
                    } else {
                        ""
                    },
                    report.variants.len()
                );
            }
            Err(e) => {
                self.failed(path, &e);
                return e.is_outage();
            }
        }
        false
    }

    fn failed(&self, path: &str, e: &ImageError) {
        if e.is_bad_input() {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("image {path}: skipped, {e}; the file itself is kept as written");
        } else {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let later = match e.is_outage() {
                true => "tried again at every maintenance pass",
                false => "`zmount variants` makes them later",
            };
            tracing::warn!(
                "image {path}: variants/transforms not made: {e}; the file itself is kept as written ({later})"
            );
        }
    }

    fn changed(&self, path: &str) {
        if let Some(f) = self.on_change.get() {
            f(path);
        }
    }

    pub fn pending(&self) -> usize {
        self.in_flight.pending()
    }

    /// Waits until every submitted job has finished (unmount), reporting progress.
    pub async fn wait(&self) {
        self.in_flight.wait("image jobs").await
    }
}
