//! The guard on a provider's multipart uploads (object_store's uploads and the low-level API with upload ids) and
//! on its paginated listings: the same attempts, timeouts and health accounting as every other request.

use super::*;

/// Decides whether a failed multipart part is sent again (object_store asks after each failed part attempt).
#[derive(Debug)]
pub(super) struct PartRetry(pub(super) Guarded);

#[async_trait]
impl object_store::retry::RetryPolicy for PartRetry {
    async fn retry(&self, context: object_store::retry::RetryContext) -> bool {
        use object_store::retry::RetryFailure;
        let store = &self.0;
        let outage = match context.failure {
            RetryFailure::Status(status) => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 429)
            }
            RetryFailure::Transport(_) => true,
            _ => false,
        };
        if !outage {
            return false; // an answer (4xx): sending the part again cannot change it
        }
        store
            .health
            .failed(&format_args!("part upload failed: {:?}", context.failure));
        let attempt = context.attempt as u32;
        if attempt >= store.policy.attempts || store.health.is_open() {
            return false;
        }
        tokio::time::sleep(store.policy.backoff(attempt)).await;
        store.health.admit()
    }
}

/// A multipart upload whose parts and completion count toward the provider's health.
#[derive(Debug)]
pub(super) struct GuardedUpload {
    pub(super) inner: Box<dyn MultipartUpload>,
    pub(super) store: Guarded,
}

#[deny(clippy::missing_trait_methods)] // every method goes through the guard
#[async_trait]
impl MultipartUpload for GuardedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        let part = self.inner.put_part(data);
        let health = self.store.health.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let outcome = part.await;
            health.counters.record(Op::Part, started.elapsed());
            if outcome.is_ok() {
                health
                    .counters
                    .bytes_written
                    .fetch_add(len, Ordering::Relaxed);
            }
            if outcome.is_ok() {
                health.succeeded();
            }
            outcome
        })
    }

    /// One attempt: object_store's completion consumes the list of parts, so it cannot be sent again. A failed
    /// completion fails the upload, which the caller restarts (from the staged copy) or fails over.
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let health = &self.store.health;
        if !health.admit() && self.store.attempts != Attempts::Sole {
            return Err(health.unavailable());
        }
        let limit = self.store.policy.total;
        let outcome = match tokio::time::timeout(limit, self.inner.complete()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(outage(format!("no response within {limit:?}"))),
        };
        match &outcome {
            Err(e) if is_outage(e) => health.failed(e),
            _ => health.succeeded(),
        }
        outcome
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// A provider's paginated listings (one page per request) under the same attempts, timeouts and counters as
/// its store.
pub struct GuardedPages {
    store: Guarded,
    inner: Arc<dyn object_store::list::PaginatedListStore>,
}

impl GuardedPages {
    pub fn new(store: Guarded, inner: Arc<dyn object_store::list::PaginatedListStore>) -> Self {
        GuardedPages { store, inner }
    }
}

#[deny(clippy::missing_trait_methods)] // every method goes through the guard
#[async_trait]
impl object_store::list::PaginatedListStore for GuardedPages {
    async fn list_paginated(
        &self,
        prefix: Option<&str>,
        opts: object_store::list::PaginatedListOptions,
    ) -> object_store::Result<object_store::list::PaginatedListResult> {
        let store = &self.store;
        store
            .attempt(Op::List, store.policy.first_byte, || {
                self.inner.list_paginated(prefix, opts.clone())
            })
            .await
    }
}

/// The provider's low-level multipart API (upload ids the caller can journal), with the same retries, timeouts
/// and health accounting as every other request.
pub struct GuardedParts {
    store: Guarded,
    inner: Arc<dyn object_store::multipart::MultipartStore>,
}

impl fmt::Debug for GuardedParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuardedParts({})", self.store)
    }
}

impl GuardedParts {
    pub fn new(store: Guarded, inner: Arc<dyn object_store::multipart::MultipartStore>) -> Self {
        GuardedParts { store, inner }
    }
}

#[deny(clippy::missing_trait_methods)] // every method goes through the guard
#[async_trait]
impl object_store::multipart::MultipartStore for GuardedParts {
    async fn create_multipart(
        &self,
        path: &Path,
    ) -> object_store::Result<object_store::MultipartId> {
        self.create_multipart_opts(path, Default::default()).await
    }

    async fn create_multipart_opts(
        &self,
        path: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<object_store::MultipartId> {
        let store = &self.store;
        store
            .attempt(Op::Put, store.policy.first_byte, || {
                self.inner.create_multipart_opts(path, opts.clone())
            })
            .await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &object_store::MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<object_store::multipart::PartId> {
        let store = &self.store;
        let len = data.content_length() as u64;
        let part = store
            .attempt(Op::Part, store.policy.total, || {
                self.inner.put_part(path, id, part_idx, data.clone())
            })
            .await?;
        let written = &store.health.counters.bytes_written;
        written.fetch_add(len, Ordering::Relaxed);
        Ok(part)
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &object_store::MultipartId,
        parts: Vec<object_store::multipart::PartId>,
    ) -> object_store::Result<PutResult> {
        let store = &self.store;
        store
            .attempt(Op::Put, store.policy.total, || {
                self.inner.complete_multipart(path, id, parts.clone())
            })
            .await
    }

    async fn abort_multipart(
        &self,
        path: &Path,
        id: &object_store::MultipartId,
    ) -> object_store::Result<()> {
        let store = &self.store;
        store
            .attempt(Op::Delete, store.policy.first_byte, || {
                self.inner.abort_multipart(path, id)
            })
            .await
    }
}
