//! The mount's image queue: paths whose upload completed are submitted; jobs run in the background, at most
//! `settings.images.workers` at once, so `close` never waits for image work.
//!
//! One job per path at a time: a path submitted while its job runs is run once more after it (so the last write
//! always gets its variants, and an older job can never overwrite a newer one's variants); a path submitted while
//! it waits is not queued twice. Only one lock (`state`), never held across an await.

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
}

impl ImageWorker {
    pub fn new(storage: Arc<Storage>, limits: ImageSettings) -> Arc<ImageWorker> {
        Arc::new(ImageWorker {
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
        let running = self.in_flight.start();
        let (this, path) = (self.clone(), path.to_string());
        tokio::spawn(async move {
            let _permit = this.permits.acquire().await;
            this.set_state(&path, JobState::Running);
            loop {
                // A panic must not leave the path marked running (its later submits would be swallowed).
                let run = std::panic::AssertUnwindSafe(this.run(&path));
                if futures::FutureExt::catch_unwind(run).await.is_err() {
                    this.failed(&path, &ImageError::Internal("the job panicked".into()));
                }
                if !this.again(&path) {
                    break;
                }
            }
            drop(running);
        });
    }

    fn set_state(&self, path: &str, state: JobState) {
        self.state.lock().unwrap().insert(path.to_string(), state);
    }

    /// After a run: whether `path` was submitted again meanwhile (then it stays Running); else it is forgotten.
    fn again(&self, path: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.get(path) == Some(&JobState::RunningAgain) {
            state.insert(path.to_string(), JobState::Running);
            return true;
        }
        state.remove(path);
        false
    }

    async fn run(&self, path: &str) {
        match process(&self.storage, &self.limits, path).await {
            Ok(report) => {
                if let Some(why) = report.nothing_because {
                    tracing::debug!("image {path}: nothing to do, {why}");
                    return;
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
            Err(e) => self.failed(path, &e),
        }
    }

    fn failed(&self, path: &str, e: &ImageError) {
        if e.is_bad_input() {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("image {path}: skipped, {e}; the file itself is kept as written");
        } else {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "image {path}: variants/transforms not made: {e}; the file itself is kept as written \
                 (`zmount variants` makes them later)"
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
