//! Provider health, retries and per-attempt timeouts: every provider's object_store client is wrapped in a
//! [`Guarded`] store, so each request zmount makes — from the mount, the storage API or a heal — is governed the
//! same way.
//!
//! * **Retry.** object_store's own retry is switched off; here each request gets `[settings.retry]` attempts with
//!   exponential backoff and jitter. Only outages are retried (connection errors, timeouts, 5xx, 429): an answer
//!   such as "not found", "forbidden" or "precondition failed" cannot change by asking again.
//! * **Timeouts.** Every attempt is bounded: `first_byte` until a response begins (GET, HEAD, LIST, DELETE, COPY),
//!   `total` for a whole upload request. A provider that accepts connections and never answers is down, too.
//! * **Health.** A circuit breaker per provider ([`Health`]): after `failure_threshold` failed attempts in a row
//!   it opens, and requests fail at once (so callers go straight to a fallback) for `cooldown`; then a single
//!   probe request is let through: success closes the breaker, failure opens it again. Retries stop as soon as
//!   the breaker opens, so a dead provider costs its callers a few milliseconds, not the whole retry schedule.
//!   State changes are logged once each (warn when a provider goes down, info when it is back).
//!   Failing fast only helps a caller that has somewhere else to go: a request made without one
//!   ([`Attempts::Sole`]) still gets one attempt while the breaker is open, so a route without fallbacks works
//!   again as soon as its provider does, not one cool-down later.
//! * **Fast read failover.** A read that another provider can serve with the same bytes makes
//!   `failover.primary_read_attempts` attempts (default 1) before moving on, instead of waiting out the backoff:
//!   the fallback is its retry. Writes, listings and "not found" conclusions keep the full retry schedule (a blip
//!   must not make files vanish from a listing or land on a fallback).
//!
//! Here: [`Attempts`], [`GuardPolicy`] and [`Guarded`]; the breaker and counters in `health.rs`; multipart uploads
//! and paginated listings in `parts.rs`.

use crate::config::{FailoverSettings, RetrySettings, TimeoutSettings};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode, UploadPart,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard one request is tried: it depends on where its caller can go when this provider fails, and the caller
/// says so with each request (through [`crate::providers::Provider::client`]). Nothing else changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attempts {
    /// This provider is the only place the request can go: full retries, and one attempt even while the provider
    /// is marked down (so a route without fallbacks works again as soon as its provider does).
    Sole,
    /// Another provider, but only once this one is really down (a write, a listing, a lookup about to conclude
    /// "not found"): full retries, and none while marked down.
    Full,
    /// Another provider holds the same bytes (a block of an open file): `primary_read_attempts`, and none while
    /// marked down.
    Fast,
}

impl Attempts {
    pub const ALL: [Attempts; 3] = [Attempts::Sole, Attempts::Full, Attempts::Fast];

    /// [`Attempts::Sole`] when the caller has nowhere else to go, else `otherwise`.
    pub fn unless_sole(has_fallback: bool, otherwise: Attempts) -> Attempts {
        match has_fallback {
            true => otherwise,
            false => Attempts::Sole,
        }
    }
}

/// Longest wait between two attempts, whatever the backoff computes.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How requests to one provider are retried, timed and judged.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    pub attempts: u32,
    /// Attempts of a read that another provider can serve.
    pub read_attempts: u32,
    pub delay: Duration,
    pub exponential: bool,
    /// No new attempt starts this long after a request's first one.
    pub budget: Duration,
    pub first_byte: Duration,
    pub total: Duration,
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

impl GuardPolicy {
    pub fn new(
        retry: &RetrySettings,
        timeouts: &TimeoutSettings,
        failover: &FailoverSettings,
    ) -> Self {
        GuardPolicy {
            attempts: retry.attempts.max(1),
            read_attempts: failover
                .primary_read_attempts
                .clamp(1, retry.attempts.max(1)),
            delay: Duration::from_secs_f64(retry.delay.max(0.0)),
            exponential: retry.exponential,
            budget: Duration::from_secs_f64(retry.budget.max(0.0)),
            first_byte: timeouts.first_byte(),
            total: timeouts.total(),
            failure_threshold: failover.failure_threshold.max(1),
            cooldown: failover.cooldown(),
        }
    }

    /// The wait before attempt `failed + 1`: `delay`, doubled per failure when exponential, capped at
    /// [`MAX_BACKOFF`], then scaled by a random factor in [0.5, 1) so that many clients retrying together spread out.
    pub fn backoff(&self, failed: u32) -> Duration {
        let factor = if self.exponential {
            2f64.powi(failed.saturating_sub(1).min(30) as i32)
        } else {
            1.0
        };
        let base = self.delay.mul_f64(factor).min(MAX_BACKOFF);
        base.mul_f64(0.5 + jitter() / 2.0)
    }
}

/// A number in [0, 1) that differs between calls (xorshift over the clock and a counter).
fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

mod health;
mod parts;
#[cfg(test)]
mod tests;

pub(crate) use health::http_status;
use health::{is_busy, outage};
pub use health::{is_outage, Counters, Health, HealthState, Op, Outage, LATENCY_BUCKETS};
pub use parts::{GuardedPages, GuardedParts};
use parts::{GuardedUpload, PartRetry};

/// An object_store client with retries, timeouts and a circuit breaker (see the module note).
#[derive(Debug, Clone)]
pub struct Guarded {
    inner: Arc<dyn ObjectStore>,
    health: Arc<Health>,
    policy: Arc<GuardPolicy>,
    /// How hard this handle tries each request (see [`Attempts`]); [`Guarded::with_attempts`] makes the others.
    attempts: Attempts,
    /// The inner store renames in one step (a local folder): renames go to it whole. Object stores have no rename;
    /// theirs is a copy and a delete, each attempted on its own (a lost answer to a delete is then harmless).
    native_rename: bool,
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guarded({})", self.inner)
    }
}

impl Guarded {
    pub fn new(inner: Arc<dyn ObjectStore>, health: Arc<Health>, policy: GuardPolicy) -> Self {
        Guarded {
            inner,
            health,
            policy: Arc::new(policy),
            attempts: Attempts::Sole,
            native_rename: false,
        }
    }

    /// The same store, trying each request as `attempts` says.
    pub fn with_attempts(&self, attempts: Attempts) -> Self {
        Guarded {
            attempts,
            ..self.clone()
        }
    }

    /// See [`Guarded::native_rename`](struct@Guarded).
    pub fn with_native_rename(mut self) -> Self {
        self.native_rename = true;
        self
    }

    /// Runs `op` until it succeeds, answers, or fails with an outage `attempts` times; each attempt bounded by
    /// `limit`. Stops early (failing at once) when the breaker is open.
    async fn attempt<T, F, Fut>(&self, kind: Op, limit: Duration, op: F) -> object_store::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let sole = self.attempts == Attempts::Sole;
        let attempts = match self.attempts {
            Attempts::Fast => self.policy.read_attempts,
            Attempts::Sole | Attempts::Full => self.policy.attempts,
        };
        let mut failed = 0;
        // The provider answered the last attempt with "busy" (5xx, 429): it is up, so a request with nowhere else
        // to go keeps trying within its budget even when the breaker has opened meanwhile.
        let mut busy = false;
        let first = std::time::Instant::now();
        loop {
            let persist = busy && sole;
            let last_try = !self.health.admit() && !persist;
            if last_try && (failed > 0 || !sole) {
                return Err(self.health.unavailable());
            }
            let started = std::time::Instant::now();
            let outcome = match tokio::time::timeout(limit, op()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(outage(format!("no response within {limit:?}"))),
            };
            let took = started.elapsed();
            self.health.counters.record(kind, took);
            if outcome.is_ok() && matches!(kind, Op::Get | Op::Head | Op::List) {
                self.health.pace.observe(took);
            }
            match outcome {
                Err(e) if is_outage(&e) => {
                    self.health.failed(&e);
                    failed += 1;
                    busy = is_busy(&e);
                    let persist = busy && sole;
                    let wait = self.policy.backoff(failed);
                    if last_try
                        || failed >= attempts
                        || (self.health.is_open() && !persist)
                        || first.elapsed() + wait > self.policy.budget
                    {
                        return Err(e);
                    }
                    tracing::debug!("retrying after: {e}");
                    self.health.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                other => {
                    self.health.succeeded();
                    return other;
                }
            }
        }
    }

    /// A listing made by `make`, retried until its first entry (or its end) arrives.
    fn guarded_listing(
        &self,
        make: impl Fn() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + Sync + 'static,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        futures::stream::once(async move {
            let first = this
                .attempt(Op::List, this.policy.first_byte, || {
                    let mut listing = make();
                    async move {
                        match listing.next().await {
                            Some(Err(e)) => Err(e),
                            first => Ok((first, listing)),
                        }
                    }
                })
                .await;
            match first {
                // An ended listing must not be polled again.
                Ok((None, _)) => futures::stream::empty().boxed(),
                Ok((Some(first), rest)) => futures::stream::iter([first]).chain(rest).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    /// Counts failures of a streamed response body against the provider's health.
    fn watch_body(&self, mut result: GetResult) -> GetResult {
        if let GetResultPayload::Stream(stream) = result.payload {
            let health = self.health.clone();
            result.payload = GetResultPayload::Stream(
                stream
                    .inspect(move |chunk| match chunk {
                        Ok(bytes) => {
                            let read = &health.counters.bytes_read;
                            read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) if is_outage(e) => health.failed(e),
                        Err(_) => {}
                    })
                    .boxed(),
            );
        }
        result
    }
}

// Every method is forwarded through the guard: a default method would reach the inner store around it (or, like
// the default `list_with_offset`, list everything and filter).
#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl ObjectStore for Guarded {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.health
            .counters
            .bytes_written
            .fetch_add(payload.content_length() as u64, Ordering::Relaxed);
        self.attempt(Op::Put, self.policy.total, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let opts = opts.with_retry_policy(Arc::new(PartRetry(self.clone())));
        let inner = self
            .attempt(Op::Put, self.policy.first_byte, || {
                self.inner.put_multipart_opts(location, opts.clone())
            })
            .await?;
        Ok(Box::new(GuardedUpload {
            inner,
            store: self.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let result = self
            .attempt(op, self.policy.first_byte, || {
                self.inner.get_opts(location, options.clone())
            })
            .await?;
        Ok(self.watch_body(result))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |path| {
                let this = this.clone();
                async move {
                    this.attempt(Op::Delete, this.policy.first_byte, || {
                        let one = futures::stream::iter([Ok(path.clone())]).boxed();
                        let mut results = this.inner.delete_stream(one);
                        let path = path.clone();
                        async move { results.next().await.unwrap_or(Ok(path)) }
                    })
                    .await
                }
            })
            .boxed()
    }

    /// Retries until the first entry (or the end) arrives; a failure later in a long listing is returned as is.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        self.guarded_listing(move || inner.list(prefix.as_ref()))
    }

    /// [`Guarded::list`] from a start key, by the provider's own listing from that key (S3's `start-after`).
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, prefix, offset) = (self.inner.clone(), prefix.cloned(), offset.clone());
        self.guarded_listing(move || inner.list_with_offset(prefix.as_ref(), &offset))
    }

    /// Several ranges of one object in one call (the inner store may coalesce them); bounded by `total`, as the
    /// answer includes the bytes.
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let got = self
            .attempt(Op::Get, self.policy.total, || {
                self.inner.get_ranges(location, ranges)
            })
            .await?;
        let read: usize = got.iter().map(bytes::Bytes::len).sum();
        let counted = &self.health.counters.bytes_read;
        counted.fetch_add(read as u64, Ordering::Relaxed);
        Ok(got)
    }

    /// Bounded by `total`: a large directory takes many pages.
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.attempt(Op::List, self.policy.total, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.attempt(Op::Copy, self.policy.total, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        if from == to {
            // A rename onto itself changes nothing (as rename(2)); as a copy and a delete it would lose the object.
            return object_store::ObjectStoreExt::head(self, from)
                .await
                .map(|_| ());
        }
        if self.native_rename {
            return self
                .attempt(Op::Copy, self.policy.total, || {
                    self.inner.rename_opts(from, to, options.clone())
                })
                .await;
        }
        let mode = match options.target_mode {
            RenameTargetMode::Overwrite => object_store::CopyMode::Overwrite,
            RenameTargetMode::Create => object_store::CopyMode::Create,
        };
        let copy = CopyOptions {
            mode,
            extensions: options.extensions,
        };
        self.copy_opts(from, to, copy).await?;
        self.delete_stream(futures::stream::iter([Ok(from.clone())]).boxed())
            .next()
            .await
            .unwrap_or(Ok(from.clone()))
            .map(|_| ())
    }
}
