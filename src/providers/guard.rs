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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    /// Serving; `failures` attempts in a row have failed.
    Closed { failures: u32 },
    /// Down: requests fail at once until `until`.
    Open { until: Instant },
    /// One probe request is on its way; others fail at once until it answers (or, if it never reports, `until`).
    Probing { until: Instant },
}

/// What the outside world can read about a provider's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Up,
    Down,
    Probing,
}

/// Kinds of request, for counts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Head,
    Put,
    Part,
    List,
    Delete,
    Copy,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Get,
        Op::Head,
        Op::Put,
        Op::Part,
        Op::List,
        Op::Delete,
        Op::Copy,
    ];

    pub fn name(self) -> &'static str {
        ["get", "head", "put", "part", "list", "delete", "copy"][self as usize]
    }
}

/// Upper bounds (seconds) of the request-latency histogram buckets: from a fast local answer to a slow upload.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters of one provider, since the mount started.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Attempts sent (retries included).
    pub requests: AtomicU64,
    /// Attempts by kind (indexed by [`Op`]).
    #[serde(skip)]
    pub by_op: [AtomicU64; 7],
    /// Body bytes received and sent.
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Attempts by latency bucket ([`LATENCY_BUCKETS`], cumulative counts computed when exported; the last slot
    /// counts attempts slower than every bound), and the sum of latencies in microseconds.
    #[serde(skip)]
    pub latency: [AtomicU64; 13],
    #[serde(skip)]
    pub latency_sum_us: AtomicU64,
    /// Attempts that failed with an outage (connection error, timeout, 5xx).
    pub failures: AtomicU64,
    /// Attempts refused without asking the provider because its breaker was open.
    pub refused: AtomicU64,
    /// Attempts sent again after an outage.
    pub retries: AtomicU64,
    /// Reads also sent to another provider because this one had not answered within its hedge delay.
    pub hedges: AtomicU64,
    /// Of those, the ones the other provider answered first.
    pub hedges_won: AtomicU64,
    /// Requests of a race dropped because the other answered first.
    pub hedges_cancelled: AtomicU64,
    /// Times the breaker opened.
    pub trips: AtomicU64,
    /// Reads (blocks, heads, listings) this provider answered for a route whose primary it is not.
    pub served_as_fallback: AtomicU64,
    /// Writes this provider took for a route whose primary was down.
    pub failover_writes: AtomicU64,
    /// Failover writes copied back to this provider (as primary).
    pub heals: AtomicU64,
}

impl Counters {
    /// One request of `op` that took `took` (requests made beside the wrapped store count here too).
    pub(crate) fn record(&self, op: Op, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.by_op[op as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Health of one provider: circuit breaker plus counters.
#[derive(Debug)]
pub struct Health {
    name: String,
    location: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<Breaker>,
    pub counters: Counters,
    /// Answer times and the slow mark (see [`super::hedge`]).
    pub pace: super::hedge::Pace,
}

impl Health {
    pub fn new(name: &str, location: &str, policy: &GuardPolicy) -> Self {
        Health {
            name: name.to_string(),
            location: location.to_string(),
            threshold: policy.failure_threshold,
            cooldown: policy.cooldown,
            state: Mutex::new(Breaker::Closed { failures: 0 }),
            counters: Counters::default(),
            pace: super::hedge::Pace::new(name, policy.cooldown),
        }
    }

    pub fn state(&self) -> HealthState {
        match *self.state.lock().unwrap() {
            Breaker::Closed { .. } => HealthState::Up,
            Breaker::Open { .. } => HealthState::Down,
            Breaker::Probing { .. } => HealthState::Probing,
        }
    }

    /// Whether a request may go to the provider now. After the cool-down, the first caller becomes the probe.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        match *state {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } | Breaker::Probing { until } if now >= until => {
                // A probe that never reported (its caller gave up) is replaced after one more cool-down.
                *state = Breaker::Probing {
                    until: now + self.cooldown,
                };
                tracing::info!(
                    "provider `{}` ({}): probing whether it is back",
                    self.name,
                    self.location
                );
                true
            }
            Breaker::Open { .. } | Breaker::Probing { .. } => false,
        }
    }

    /// The provider answered (any answer, "not found" included).
    pub fn succeeded(&self) {
        let mut state = self.state.lock().unwrap();
        if !matches!(*state, Breaker::Closed { .. }) {
            tracing::info!(
                "provider `{}` ({}) is back; its requests go to it again",
                self.name,
                self.location
            );
        }
        *state = Breaker::Closed { failures: 0 };
    }

    /// An attempt failed with an outage.
    pub fn failed(&self, error: &dyn fmt::Display) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap();
        let open = Breaker::Open {
            until: Instant::now() + self.cooldown,
        };
        match *state {
            Breaker::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                self.counters.trips.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "provider `{}` ({}) is down after {} failed attempts in a row (last: {error}); its requests go to fallbacks for {:?}",
                    self.name, self.location, failures + 1, self.cooldown
                );
            }
            Breaker::Closed { failures } => {
                *state = Breaker::Closed {
                    failures: failures + 1,
                }
            }
            Breaker::Probing { .. } => {
                *state = open;
                tracing::debug!(
                    "provider `{}`: probe failed ({error}); still down",
                    self.name
                );
            }
            Breaker::Open { .. } => {}
        }
    }

    fn is_open(&self) -> bool {
        !matches!(*self.state.lock().unwrap(), Breaker::Closed { .. })
    }

    fn unavailable(&self) -> object_store::Error {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        outage(format!(
            "provider is marked down after repeated failures; it is tried again after a cool-down of {:?}",
            self.cooldown
        ))
    }
}

/// An outage zmount itself detected: a timeout, or a provider whose breaker is open.
#[derive(Debug)]
pub struct Outage(pub String);

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Outage {}

fn outage(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "zmount",
        source: Box::new(Outage(message)),
    }
}

/// True when `error` means the provider could not answer (connection refused or reset, timeout, 5xx, 429), as
/// opposed to an answer such as "not found". Outages are retried, count against health and trigger failover.
pub fn is_outage(error: &object_store::Error) -> bool {
    let object_store::Error::Generic { source, .. } = error else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(err) = cause {
        if err.is::<Outage>() || err.is::<object_store::client::HttpError>() {
            return true;
        }
        cause = err.source();
    }
    http_status(&error.to_string()).is_some_and(|s| s >= 500 || s == 429 || s == 408)
}

/// The provider answered, asking to be asked again later (5xx, 429): it is up but busy, unlike a refused
/// connection or a timeout.
fn is_busy(error: &object_store::Error) -> bool {
    http_status(&error.to_string()).is_some_and(|s| s >= 500 || s == 429)
}

/// The HTTP status object_store put in an error message ("... status code: 503 ..."), if any.
pub(crate) fn http_status(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}

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
        let (this, prefix) = (self.clone(), prefix.cloned());
        futures::stream::once(async move {
            let first = this
                .attempt(Op::List, this.policy.first_byte, || {
                    let mut listing = this.inner.list(prefix.as_ref());
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

/// Decides whether a failed multipart part is sent again (object_store asks after each failed part attempt).
#[derive(Debug)]
struct PartRetry(Guarded);

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
struct GuardedUpload {
    inner: Box<dyn MultipartUpload>,
    store: Guarded,
}

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

/// Bytes of a whole small object, for tests of this module.
#[cfg(test)]
fn payload(text: &str) -> PutPayload {
    PutPayload::from(bytes::Bytes::from(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn policy(threshold: u32, cooldown: Duration) -> GuardPolicy {
        GuardPolicy {
            attempts: 3,
            read_attempts: 1,
            delay: Duration::from_millis(1),
            exponential: true,
            budget: Duration::from_secs(30),
            first_byte: Duration::from_secs(5),
            total: Duration::from_secs(5),
            failure_threshold: threshold,
            cooldown,
        }
    }

    #[test]
    fn breaker_opens_after_threshold_failures_and_closes_after_a_good_probe() {
        let p = policy(3, Duration::from_millis(50));
        let h = Health::new("s3", "http://x", &p);
        h.failed(&"boom");
        h.failed(&"boom");
        assert_eq!(
            h.state(),
            HealthState::Up,
            "two failures are below the threshold"
        );
        h.succeeded();
        for _ in 0..3 {
            h.failed(&"boom");
        }
        assert_eq!(h.state(), HealthState::Down);
        assert!(!h.admit(), "requests fail fast while the breaker is open");
        assert_eq!(h.counters.trips.load(Ordering::Relaxed), 1);
        std::thread::sleep(Duration::from_millis(60)); // let the cool-down pass (the clock is the thing tested)
        assert!(h.admit(), "after the cool-down one probe goes through");
        assert_eq!(h.state(), HealthState::Probing);
        assert!(!h.admit(), "only one probe at a time");
        h.failed(&"still down");
        assert_eq!(
            h.state(),
            HealthState::Down,
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.admit());
        h.succeeded();
        assert_eq!(h.state(), HealthState::Up);
        assert!(h.admit());
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let mut p = policy(3, Duration::from_secs(1));
        p.delay = Duration::from_millis(100);
        for failed in 1..=4u32 {
            let base = 100.0 * 2f64.powi(failed as i32 - 1);
            let d = p.backoff(failed).as_secs_f64() * 1000.0;
            assert!(
                d >= base * 0.5 && d < base,
                "attempt {failed}: {d} ms vs base {base}"
            );
        }
        assert!(p.backoff(40) <= MAX_BACKOFF);
        p.exponential = false;
        assert!(p.backoff(4) < Duration::from_millis(100));
    }

    #[test]
    fn outages_are_told_apart_from_answers() {
        let not_found = object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        };
        assert!(!is_outage(&not_found));
        assert!(is_outage(&outage("no response within 1s".into())));
        let status = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        };
        assert!(is_outage(&status(
            "Server returned non-2xx status code: 503 Service Unavailable: "
        )));
        assert!(!is_outage(&status(
            "Server returned non-2xx status code: 400 Bad Request: nope"
        )));
    }

    /// Attempts of one request against a provider failing its first `failures` attempts with `error`.
    async fn attempts_until_answered(
        store: &Guarded,
        failures: u32,
        error: fn() -> object_store::Error,
    ) -> (object_store::Result<()>, u32) {
        let tries = AtomicU64::new(0);
        let result = store
            .attempt(Op::Head, Duration::from_secs(5), || {
                let n = tries.fetch_add(1, Ordering::Relaxed) as u32;
                async move {
                    if n < failures {
                        Err(error())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        (result, tries.load(Ordering::Relaxed) as u32)
    }

    fn busy() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable: SlowDown".into(),
        }
    }

    fn refused() -> object_store::Error {
        outage("connection refused".into())
    }

    /// A provider answering 503 is up but busy: a request with nowhere else to go keeps asking it (within its
    /// attempts and budget) even after the breaker opened; a provider refusing connections is down, and the same
    /// request stops at the open breaker.
    #[tokio::test]
    async fn a_busy_provider_is_retried_and_a_dead_one_is_not() {
        let mut p = policy(2, Duration::from_secs(60));
        p.attempts = 10;
        let health = Arc::new(Health::new("mem", "memory", &p));
        let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p.clone());
        let (result, tries) = attempts_until_answered(&store, 6, busy).await;
        assert!(
            result.is_ok(),
            "answered on the seventh attempt: {result:?}"
        );
        assert_eq!(tries, 7);
        assert_eq!(health.counters.retries.load(Ordering::Relaxed), 6);

        let health = Arc::new(Health::new("mem", "memory", &p));
        let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p.clone());
        let (result, tries) = attempts_until_answered(&store, 6, refused).await;
        assert!(result.is_err());
        assert_eq!(tries, 2, "the breaker opened after two refused connections");

        // The budget ends a request's retries even with attempts left.
        p.delay = Duration::from_millis(40);
        p.budget = Duration::from_millis(100);
        let store = Guarded::new(
            Arc::new(InMemory::new()),
            Arc::new(Health::new("m", "m", &p)),
            p,
        );
        let (result, tries) = attempts_until_answered(&store, 9, busy).await;
        assert!(result.is_err());
        assert!(tries < 9, "stopped by the budget after {tries} attempts");
    }

    #[tokio::test]
    async fn answers_pass_through_and_a_down_provider_fails_fast() {
        let p = policy(1, Duration::from_secs(60));
        let health = Arc::new(Health::new("mem", "memory", &p));
        let store = Guarded::new(Arc::new(InMemory::new()), health.clone(), p);
        store.put(&Path::from("a"), payload("hi")).await.unwrap();
        assert_eq!(
            store
                .get(&Path::from("a"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            "hi"
        );
        let missing = store.head(&Path::from("b")).await.unwrap_err();
        assert!(matches!(missing, object_store::Error::NotFound { .. }));
        assert_eq!(health.state(), HealthState::Up, "not found is an answer");
        health.failed(&"connection refused");
        let e = store
            .with_attempts(Attempts::Fast)
            .head(&Path::from("a"))
            .await
            .unwrap_err();
        assert!(
            is_outage(&e),
            "with a fallback to go to, a down provider fails at once: {e}"
        );
        assert_eq!(health.counters.refused.load(Ordering::Relaxed), 1);
        store
            .head(&Path::from("a"))
            .await
            .expect("without one, it is tried (and here answers)");
        assert_eq!(
            health.state(),
            HealthState::Up,
            "an answer closes the breaker"
        );
    }
}
