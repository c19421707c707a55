//! The routed storage facade — zmount's public Rust API and what the filesystem is built on.
//!
//! Every call takes a mount path, routes it (see [`crate::routing`]) and talks to the providers the route names,
//! with the provider's prefix in front of the key: reads ask the primary, then the fallbacks; writes go to the
//! primary, or to a fallback when the route says `write = "failover"` and the primary is down (see [`failover`]).
//! Retries, timeouts and provider health live in each provider's client ([`crate::providers::guard`]), so a call
//! here is one logical operation. Errors are [`StorageError`]s that name the provider and path.

mod error;
pub mod failover;
mod info;
pub mod uploads;

pub use error::{Result, StorageError};
pub use failover::{HealRecord, HealReport};
pub use info::{
    check_metadata_value, check_tag, decode_tags, encode_tags, guess_content_type,
    normalize_metadata_key, same_content_type, FileInfo, UploadOptions, TAGS_MIRROR_KEY,
};

use crate::config::Config;
use crate::providers::guard::{with_fallback, Fallback};
use crate::providers::{ClientTuning, Provider};
use crate::routing::{is_within, normalize, Resolved, Route, Router};
use bytes::Bytes;
use failover::{first_holder_with, Heals};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStoreExt,
    PutOptions, PutPayload, WriteMultipart,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Name of the empty object the mount writes to keep a directory made with `mkdir` (object stores have no
/// directories). Hidden from listings.
pub const DIR_MARKER: &str = ".zmount-dir";

/// Part size for streamed uploads. 8 MiB: S3's minimum is 5 MiB; larger parts cut request count, smaller ones
/// bound memory (at most `UPLOAD_CONCURRENCY` parts are buffered).
pub const UPLOAD_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one streamed upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 4;

pub struct Storage {
    router: Router,
    providers: BTreeMap<String, Arc<Provider>>,
    cdn_domain: Option<String>,
    max_file_size: Option<u64>,
    heals: Heals,
    keep_fallback_copy: bool,
    open_uploads: Arc<crate::providers::OpenUploads>,
    /// The config file, as errors name it.
    config_file: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("providers", &self.providers.values())
            .field("router", &self.router)
            .finish()
    }
}

impl Storage {
    /// Builds every provider of `config` with the retry and timeout settings it gives.
    pub fn new(config: &Config) -> Result<Storage> {
        Self::with_tuning(config, &ClientTuning::from_settings(&config.settings))
    }

    pub fn with_tuning(config: &Config, tuning: &ClientTuning) -> Result<Storage> {
        let router = Router::new(config)?;
        let mut providers = BTreeMap::new();
        let open_uploads = Arc::new(crate::providers::OpenUploads::new(
            &config.settings.cache_dir.join("uploads"),
        ));
        for (name, pc) in &config.providers {
            let mut provider =
                Provider::build(name, pc, tuning).map_err(|message| StorageError::Setup {
                    provider: name.clone(),
                    kind: pc.kind(),
                    message,
                })?;
            provider.open_uploads = Some(open_uploads.clone());
            providers.insert(name.clone(), Arc::new(provider));
        }
        let cdn = &config.settings.cdn;
        Ok(Storage {
            router,
            providers,
            cdn_domain: cdn.enabled.then(|| cdn.domain.clone()).flatten(),
            max_file_size: config.settings.max_file_size.map(|s| s.0),
            heals: Heals::open(&config.settings.cache_dir.join("heal")),
            keep_fallback_copy: config.settings.failover.keep_fallback_copy,
            open_uploads,
            config_file: config.file.display().to_string(),
        })
    }

    /// Aborts multipart uploads a previous process (or a failed abort) left open; see [`uploads`].
    pub async fn abort_orphaned_uploads(&self) -> usize {
        self.open_uploads
            .abort_orphans(|name| self.providers.get(name))
            .await
    }

    /// Health and counters of every provider, plus the pending heals, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let providers: serde_json::Map<String, serde_json::Value> = self
            .providers
            .values()
            .map(|p| {
                let state = serde_json::json!({
                    "kind": p.kind,
                    "location": p.location,
                    "state": p.health.state(),
                    "counters": &p.health.counters,
                });
                (p.name.clone(), state)
            })
            .collect();
        let heals: Vec<_> = self.heals.records().into_iter().map(|r| r.path).collect();
        serde_json::json!({ "providers": providers, "pending_heals": heals })
    }

    /// Writes [`Storage::status`] to `file` (replaced atomically).
    pub fn write_status(&self, file: &std::path::Path) -> std::io::Result<()> {
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.status())?)?;
        std::fs::rename(tmp, file)
    }

    /// Failover writes waiting to be copied back to their primary.
    pub fn heals(&self) -> &Heals {
        &self.heals
    }

    /// The providers a read of `path` asks, in order: the route's primary, then its fallbacks — or, while a
    /// heal of `path` is pending, only the fallback holding its newest bytes (every other copy is older).
    pub fn read_order(&self, path: &str, route: &Route) -> Vec<&Arc<Provider>> {
        if let Some(holder) = self.heals.holder_of(path) {
            if let Some(p) = self.providers.get(&holder) {
                return vec![p];
            }
        }
        route
            .providers()
            .filter_map(|name| self.providers.get(name))
            .collect()
    }

    /// Where a write of the route goes, in order: the primary, then (for `write = "failover"`) every writable
    /// fallback.
    fn write_targets(&self, route: &Route) -> Vec<&Arc<Provider>> {
        let mut targets = vec![&self.providers[&route.provider]];
        if route.write == crate::config::WritePolicy::Failover {
            targets.extend(
                route
                    .fallback
                    .iter()
                    .map(|name| &self.providers[name])
                    .filter(|p| !p.read_only),
            );
        }
        targets
    }

    /// Runs the write `op` on the route's write targets in order until one takes it; a write that lands on a
    /// fallback is recorded for healing, and one that lands on the primary makes a pending heal moot.
    /// `restartable`: `op` may run again (on a fallback). `exclusive`: hold the path's lock (see
    /// [`Heals::lock_of`]) through the upload, so no heal of the path runs meanwhile.
    async fn write_routed<'a, F, Fut>(
        &'a self,
        path: &str,
        route: &Route,
        (restartable, exclusive): (bool, bool),
        mut op: F,
    ) -> Result<FileInfo>
    where
        F: FnMut(&'a Arc<Provider>) -> Fut,
        Fut: std::future::Future<Output = Result<FileInfo>>,
    {
        let lock = exclusive.then(|| self.heals.lock_of(path));
        let _exclusive = match &lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut targets = self.write_targets(route);
        if !restartable {
            targets.truncate(1);
        }
        let mut outage = None;
        let last = targets.len() - 1;
        for (i, provider) in targets.into_iter().enumerate() {
            let fallback = match i < last {
                true => Fallback::AfterRetries,
                false => Fallback::None,
            };
            match with_fallback(fallback, op(provider)).await {
                Ok(info) => {
                    self.after_write(path, route, provider).await?;
                    return Ok(info);
                }
                Err(e) if e.is_unavailable() => {
                    tracing::warn!("{e}");
                    outage = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(outage.expect("a route has at least one write target"))
    }

    async fn after_write(&self, path: &str, route: &Route, provider: &Provider) -> Result<()> {
        if provider.name == route.provider {
            if let Some(moot) = self.heals.forget(path) {
                self.remove_fallback_copy(path, &moot.holder).await;
            }
            return Ok(());
        }
        provider
            .health
            .counters
            .failover_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            "{path}: primary `{}` is down; written to fallback `{}`, to be copied back when the primary returns",
            route.provider,
            provider.name
        );
        self.heals
            .record(path, &provider.name, &route.provider)
            .map_err(|e| StorageError::Invalid {
                path: path.to_string(),
                what: "heal record",
                reason: format!("cannot record the failover write: {e}"),
            })
    }

    async fn remove_fallback_copy(&self, path: &str, holder: &str) {
        if self.keep_fallback_copy {
            return;
        }
        if let Some(p) = self.providers.get(holder) {
            match p.store.delete(&p.key_for(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!("{}", StorageError::from_store(p, path, e)),
            }
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    /// Normalizes `path` and routes it: (path, rule, primary provider).
    pub fn resolve(&self, path: &str) -> Result<(String, Resolved<'_>, &Arc<Provider>)> {
        let clean = normalize(path).map_err(|e| StorageError::Invalid {
            path: path.to_string(),
            what: "path",
            reason: e.to_string(),
        })?;
        let resolved = self
            .router
            .resolve(&clean)
            .ok_or_else(|| StorageError::NoRoute {
                path: clean.clone(),
                config: self.config_file.clone(),
            })?;
        let provider = &self.providers[&resolved.route.provider];
        Ok((clean, resolved, provider))
    }

    /// Largest file the route of `path` accepts, if limited.
    pub fn size_limit(&self, resolved: &Resolved<'_>) -> Option<u64> {
        resolved
            .route
            .max_file_size
            .map(|s| s.0)
            .or(self.max_file_size)
    }

    /// Stores `data` at `path`, replacing any object there.
    pub async fn upload(
        &self,
        path: &str,
        data: Bytes,
        options: UploadOptions,
    ) -> Result<FileInfo> {
        self.put_bytes(path, data, options, true).await
    }

    /// Holds the write locks of `paths` (see [`Heals::lock_of`]) until the guards drop: writes, deletes, heals and
    /// conditional uploads of those paths through this storage wait meanwhile. Taken in path order, so two callers
    /// never wait for each other in a circle.
    pub async fn lock_paths(&self, paths: &[&str]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut sorted = paths.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for path in sorted {
            guards.push(self.heals.lock_of(path).lock_owned().await);
        }
        guards
    }

    /// [`Storage::upload`], only while `path` holds what `expected` describes: that version (same ETag, size
    /// and modification time), or nothing at all for `None`. `Ok(None)` when it differs. The check and the upload
    /// happen under the path's write lock, so no write, delete or rename through this process comes between them
    /// (other clients of the provider can, in the moment between the check and the upload).
    pub async fn upload_if_unchanged(
        &self,
        path: &str,
        data: Bytes,
        options: UploadOptions,
        expected: Option<&FileInfo>,
    ) -> Result<Option<FileInfo>> {
        let clean = self.resolve(path)?.0;
        let lock = self.heals.lock_of(&clean);
        let _held = lock.lock().await;
        let now = match self.get_info(&clean).await {
            Ok(now) => Some(now),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let version = |i: &FileInfo| (i.etag.clone(), i.size, i.last_modified);
        if now.as_ref().map(version) != expected.map(version) {
            return Ok(None);
        }
        self.put_bytes(&clean, data, options, false).await.map(Some)
    }

    /// Gives the object at `path` new metadata, content type and tags (`options`) without moving its bytes, where
    /// the provider can (S3 and S3-compatible stores: a copy onto itself; objects up to 5 GiB), and only while it
    /// is the version `expected` describes, on the route's primary. `Ok(None)`: not done (another provider, another
    /// version, or a provider that cannot), and the caller writes the object again the ordinary way, which is
    /// always correct. Under the path's write lock, as [`Storage::upload_if_unchanged`].
    pub async fn replace_attributes(
        &self,
        path: &str,
        options: UploadOptions,
        expected: &FileInfo,
    ) -> Result<Option<FileInfo>> {
        let (clean, resolved, primary) = self.resolve(path)?;
        let Some(direct) = primary.s3_direct.as_ref() else {
            return Ok(None);
        };
        if expected.provider != primary.name
            || expected.size > crate::providers::COPY_MAX
            || resolved.route.write == crate::config::WritePolicy::Failover
        {
            return Ok(None);
        }
        let (attributes, tags) = self.upload_attributes(&clean, &options)?;
        Self::check_tags_supported(primary, &clean, &options)?;
        let mut headers = Vec::new();
        for (attribute, value) in attributes.iter() {
            let name = match attribute {
                Attribute::ContentType => "content-type".to_string(),
                Attribute::Metadata(key) => format!("x-amz-meta-{key}"),
                _ => continue, // zmount sets no others
            };
            headers.push((name, value.to_string()));
        }
        let tagging = tags.encoded();
        if !tagging.is_empty() {
            headers.push(("x-amz-tagging".to_string(), tagging.to_string()));
        }
        let lock = self.heals.lock_of(&clean);
        let _held = lock.lock().await;
        let key = primary.key_for(&clean);
        let started = std::time::Instant::now();
        let replaced = direct
            .replace_attributes(key.as_ref(), expected.etag.as_deref(), &headers)
            .await;
        let copy = crate::providers::guard::Op::Copy;
        primary.health.counters.record(copy, started.elapsed());
        match replaced {
            Ok(crate::providers::Replaced::Done(answered)) => {
                tracing::debug!(
                    "{clean}: attributes replaced on `{}` (no data moved)",
                    primary.name
                );
                // The version's ETag as reads see it: servers differ in what a copy's answer says (quoting, or
                // another value than GET and HEAD give), and reads are pinned to it (If-Match).
                let etag = match primary.store.head(&key).await {
                    Ok(meta) => meta.e_tag,
                    Err(_) => answered,
                };
                Ok(Some(self.uploaded_info(
                    primary,
                    clean,
                    expected.size,
                    etag,
                    options,
                )))
            }
            Ok(crate::providers::Replaced::Changed) => {
                tracing::debug!(
                    "{clean}: not replaced in place: `{}` no longer holds version {:?}",
                    primary.name,
                    expected.etag
                );
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(
                    "{clean}: attributes not replaced in place ({}); written again",
                    primary.redactor.redact(&e)
                );
                Ok(None)
            }
        }
    }

    /// `exclusive`: take the path's write lock (false when the caller holds it).
    async fn put_bytes(
        &self,
        path: &str,
        data: Bytes,
        options: UploadOptions,
        exclusive: bool,
    ) -> Result<FileInfo> {
        let (path, resolved, _) = self.resolve(path)?;
        self.check_size(&path, &resolved, data.len() as u64)?;
        let (attributes, tags) = self.upload_attributes(&path, &options)?;
        let size = data.len() as u64;
        self.write_routed(&path, resolved.route, (true, exclusive), |provider| {
            let opts = PutOptions {
                attributes: attributes.clone(),
                tags: tags.clone(),
                ..Default::default()
            };
            let (data, path, options) = (data.clone(), path.clone(), options.clone());
            async move {
                Self::check_tags_supported(provider, &path, &options)?;
                let result = provider
                    .store
                    .put_opts(&provider.key_for(&path), PutPayload::from(data), opts)
                    .await
                    .map_err(|e| StorageError::from_store(provider, &path, e))?;
                Ok(self.uploaded_info(provider, path, size, result.e_tag, options))
            }
        })
        .await
    }

    /// Stores a stream of chunks at `path` as a multipart upload with bounded memory; the object appears only when
    /// the stream ends without error. A stream cannot be replayed, so this writes to the primary only; use
    /// [`Storage::upload_from`] for failover writes.
    pub async fn upload_stream<S>(
        &self,
        path: &str,
        stream: S,
        options: UploadOptions,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        self.upload_stream_as(path, stream, options, true).await
    }

    /// [`Storage::upload_stream`] fed by a program's writes as they happen: it does not hold the path's lock
    /// (the program may unlink the file meanwhile), so the caller must not start it while a heal of `path` is
    /// pending, and heals skip files open for writing.
    pub(crate) async fn upload_stream_as<S>(
        &self,
        path: &str,
        stream: S,
        options: UploadOptions,
        exclusive: bool,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let (path, resolved, _) = self.resolve(path)?;
        let mut stream = Some(stream);
        self.write_routed(&path, resolved.route, (false, exclusive), |provider| {
            let stream = stream.take().expect("a stream is written once");
            self.upload_stream_to(provider, &path, &resolved, stream, options.clone())
        })
        .await
    }

    /// Like [`Storage::upload_stream`], from a source that can be read again (`make` opens it afresh), so the
    /// write can move on to a fallback when the route allows failover writes.
    pub async fn upload_from<S, F>(
        &self,
        path: &str,
        make: F,
        options: UploadOptions,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
        F: Fn() -> S,
    {
        let (path, resolved, _) = self.resolve(path)?;
        self.write_routed(&path, resolved.route, (true, true), |provider| {
            self.upload_stream_to(provider, &path, &resolved, make(), options.clone())
        })
        .await
    }

    async fn upload_stream_to<S>(
        &self,
        provider: &Arc<Provider>,
        path: &str,
        resolved: &Resolved<'_>,
        stream: S,
        options: UploadOptions,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let (attributes, tags) = self.upload_attributes(path, &options)?;
        Self::check_tags_supported(provider, path, &options)?;
        let opts = object_store::PutMultipartOptions {
            attributes,
            tags,
            ..Default::default()
        };
        let chunks = stream.map_err(|e| StorageError::Invalid {
            path: path.to_string(),
            what: "upload source",
            reason: e.to_string(),
        });
        let limit = self.size_limit(resolved);
        let (size, etag) = put_multipart(provider, path, opts, chunks, limit).await?;
        Ok(self.uploaded_info(provider, path.to_string(), size, etag, options))
    }

    /// Runs the read `op` on the providers that may hold `path`, in read order, until one has the object.
    async fn read_routed<'a, T, F, Fut>(&'a self, path: &str, op: F) -> Result<(T, String)>
    where
        F: FnMut(&'a Arc<Provider>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.read_routed_with(path, false, op).await
    }

    /// [`Storage::read_routed`]; `missing_concludes`: see [`failover::first_holder_with`].
    async fn read_routed_with<'a, T, F, Fut>(
        &'a self,
        path: &str,
        missing_concludes: bool,
        op: F,
    ) -> Result<(T, String)>
    where
        F: FnMut(&'a Arc<Provider>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (path, resolved, _) = self.resolve(path)?;
        let order = self.read_order(&path, resolved.route);
        let primary = &resolved.route.provider;
        let (value, _) = first_holder_with(&order, primary, &path, missing_concludes, op).await?;
        Ok((value, path))
    }

    /// The whole object.
    pub async fn download(&self, path: &str) -> Result<Bytes> {
        let clean = self.resolve(path)?.0;
        let (data, _) = self
            .read_routed(path, |provider| {
                let path = clean.clone();
                async move {
                    let fail = |e| StorageError::from_store(provider, &path, e);
                    let result = provider
                        .store
                        .get(&provider.key_for(&path))
                        .await
                        .map_err(fail)?;
                    result.bytes().await.map_err(fail)
                }
            })
            .await?;
        Ok(data)
    }

    /// The object as a stream of chunks, for large files.
    pub async fn download_stream(&self, path: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let clean = self.resolve(path)?.0;
        let (stream, _) = self
            .read_routed(path, |provider| {
                let path = clean.clone();
                async move {
                    let result = provider
                        .store
                        .get(&provider.key_for(&path))
                        .await
                        .map_err(|e| StorageError::from_store(provider, &path, e))?;
                    let provider = provider.clone();
                    Ok(result
                        .into_stream()
                        .map_err(move |e| StorageError::from_store(&provider, &path, e))
                        .boxed())
                }
            })
            .await?;
        Ok(stream)
    }

    /// Bytes `range` of the object (clamped to its end, like a file read).
    pub async fn download_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let clean = self.resolve(path)?.0;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let (data, _) = self
            .read_routed(path, |provider| {
                let (path, range) = (clean.clone(), range.clone());
                async move {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        ..Default::default()
                    };
                    let fail = |e| StorageError::from_store(provider, &path, e);
                    let result = provider
                        .store
                        .get_opts(&provider.key_for(&path), options)
                        .await
                        .map_err(fail)?;
                    result.bytes().await.map_err(fail)
                }
            })
            .await?;
        Ok(data)
    }

    /// Removes the object from the route's primary and from its fallbacks (a copy left on a fallback would
    /// reappear, since reads consult fallbacks). Idempotent: deleting a path that holds no object succeeds. Fails
    /// when the primary cannot be reached; a fallback that cannot be reached is logged.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let (path, resolved, provider) = self.resolve(path)?;
        let lock = self.heals.lock_of(&path);
        let _exclusive = lock.lock().await;
        delete_one(provider, &path).await?;
        self.heals.forget(&path);
        self.forget_fallback_copies(&path, resolved.route).await;
        Ok(())
    }

    /// Deletes `path` on every fallback of `route` (after the primary's copy was deleted or moved away).
    pub async fn forget_fallback_copies(&self, path: &str, route: &Route) {
        for name in &route.fallback {
            let p = &self.providers[name];
            if p.read_only {
                continue;
            }
            if let Err(e) = delete_one(p, path).await {
                tracing::warn!("{e} (while removing the fallback copy; it may reappear)");
            }
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.get_info(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Size, type, dates, ETag and user metadata of one object (`provider` says which provider answered).
    pub async fn get_info(&self, path: &str) -> Result<FileInfo> {
        self.get_info_with(path, false).await
    }

    /// [`Storage::get_info`] for an object whose absence only means "defaults" (a directory's marker): while the
    /// primary does not answer within its hedge delay, a fallback's "not found" stands.
    pub async fn get_info_or_defaults(&self, path: &str) -> Result<FileInfo> {
        self.get_info_with(path, true).await
    }

    async fn get_info_with(&self, path: &str, missing_concludes: bool) -> Result<FileInfo> {
        let clean = self.resolve(path)?.0;
        let (info, _) = self
            .read_routed_with(path, missing_concludes, |provider| {
                let path = clean.clone();
                async move {
                    let options = GetOptions {
                        head: true,
                        ..Default::default()
                    };
                    let result = provider
                        .store
                        .get_opts(&provider.key_for(&path), options)
                        .await
                        .map_err(|e| StorageError::from_store(provider, &path, e))?;
                    Ok(self.info_from(provider, path, &result.meta, Some(&result.attributes)))
                }
            })
            .await?;
        Ok(info)
    }

    /// Copies every pending failover write back to its primary (see [`failover`]); the ones that cannot be
    /// copied yet stay pending. Paths `busy` names (open for writing) and paths being written are left for the
    /// next pass.
    pub async fn heal_pending(&self, busy: impl Fn(&str) -> bool) -> HealReport {
        let mut report = HealReport::default();
        for record in self.heals.records() {
            let lock = self.heals.lock_of(&record.path);
            let Ok(_exclusive) = lock.try_lock() else {
                report.waiting.push(record.path);
                continue;
            };
            if busy(&record.path) {
                report.waiting.push(record.path);
                continue;
            }
            if self.heals.holder_of(&record.path).as_deref() != Some(record.holder.as_str()) {
                continue; // made moot, or replaced by a newer failover write, while this pass ran
            }
            match self.heal_one(&record).await {
                Ok(()) => {
                    self.heals.forget_done(&record);
                    report.healed.push(record.path);
                }
                Err(e) => {
                    tracing::debug!("heal of {} must wait: {e}", record.path);
                    report.waiting.push(record.path);
                }
            }
        }
        report
    }

    async fn heal_one(&self, record: &HealRecord) -> Result<()> {
        let missing = |name: &str| StorageError::Invalid {
            path: record.path.clone(),
            what: "heal record",
            reason: format!("provider `{name}` is no longer configured"),
        };
        let holder = self
            .providers
            .get(&record.holder)
            .ok_or_else(|| missing(&record.holder))?;
        let primary = self
            .providers
            .get(&record.primary)
            .ok_or_else(|| missing(&record.primary))?;
        let path = &record.path;
        let head = GetOptions {
            head: true,
            ..Default::default()
        };
        let on_primary = primary.store.get_opts(&primary.key_for(path), head).await;
        match on_primary {
            Ok(meta) if meta.meta.last_modified.timestamp_millis() > record.written_at_ms => {
                // Written on the primary by someone else after the failover write: a conflict. The primary's copy
                // stays; the fallback's is kept too (never deleted on the strength of two clocks), and logged.
                tracing::warn!(
                    "{path}: `{}` has a copy newer than the failover write; keeping both: the failover write stays on `{}` ({}) at {}",
                    primary.name, holder.name, holder.location, holder.key_for(path)
                );
                return Ok(());
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::from_store(primary, path, e)),
        }
        let source = match holder.store.get(&holder.key_for(path)).await {
            Ok(source) => source,
            Err(object_store::Error::NotFound { .. }) => return Ok(()), // deleted or moved meanwhile
            Err(e) => return Err(StorageError::from_store(holder, path, e)),
        };
        let size = source.meta.size;
        let info = self.info_from(holder, path.clone(), &source.meta, Some(&source.attributes));
        let options = UploadOptions {
            content_type: Some(info.content_type),
            metadata: info.metadata,
            tags: info.tags,
        };
        let holder_ = holder.clone();
        let chunks = source
            .into_stream()
            .map_err(move |e| std::io::Error::other(StorageError::from_store(&holder_, "", e)));
        let resolved = self.resolve(path)?.1;
        let written = self
            .upload_stream_to(primary, path, &resolved, chunks, options)
            .await?;
        if written.size != size {
            return Err(StorageError::Invalid {
                path: path.clone(),
                what: "heal",
                reason: format!("copied {} bytes of {size}", written.size),
            });
        }
        primary
            .health
            .counters
            .heals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "{path}: healed: copied {size} bytes from fallback `{}` back to `{}`",
            holder.name,
            primary.name
        );
        self.remove_fallback_copy(path, &holder.name).await;
        Ok(())
    }

    /// Every object at or below `prefix` (a directory path; "" for the whole tree), across all providers that
    /// routes send there, each shown once from the provider its route names, sorted by path. `limit` caps the count.
    pub async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<FileInfo>> {
        self.list_objects(prefix, limit, false).await
    }

    /// Every object at or below `prefix`, markers included, failing unless every provider answered (for moving
    /// a whole directory, which must not leave files behind).
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<FileInfo>> {
        self.list_inner(prefix, None, true, true).await
    }

    /// Like [`Storage::list`]; `with_markers` also returns the mount's directory markers ([`DIR_MARKER`]).
    pub async fn list_objects(
        &self,
        prefix: &str,
        limit: Option<usize>,
        with_markers: bool,
    ) -> Result<Vec<FileInfo>> {
        self.list_inner(prefix, limit, with_markers, false).await
    }

    /// `complete`: fail when any provider does not answer, even one a fallback stands in for.
    async fn list_inner(
        &self,
        prefix: &str,
        limit: Option<usize>,
        with_markers: bool,
        complete: bool,
    ) -> Result<Vec<FileInfo>> {
        let prefix = normalize(prefix).map_err(|e| StorageError::Invalid {
            path: prefix.to_string(),
            what: "path",
            reason: e.to_string(),
        })?;
        let names = self.router.providers_under(&prefix);
        let listings = futures::future::join_all(names.iter().map(|name| {
            let provider = &self.providers[*name];
            let key = (!prefix.is_empty() || !provider.prefix.is_empty())
                .then(|| provider.key_for(&prefix));
            let fallback = match self.listing_complete_without(&prefix, &[name]) {
                true => Fallback::AfterRetries,
                false => Fallback::None,
            };
            with_fallback(
                fallback,
                provider.store.list(key.as_ref()).try_collect::<Vec<_>>(),
            )
        }))
        .await;
        // Each path once, from the provider that ranks first for it in read order.
        let mut found: BTreeMap<String, (usize, FileInfo)> = BTreeMap::new();
        let mut failed: Vec<&str> = Vec::new();
        let mut first_error = None;
        for (name, listing) in names.iter().zip(listings) {
            let provider = &self.providers[*name];
            let listing = match listing {
                Ok(listing) => listing,
                Err(e) => {
                    let e = StorageError::from_store(provider, &prefix, e);
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    failed.push(name);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for meta in listing {
                let Some(path) = provider.path_of(&meta.location) else {
                    continue;
                };
                let marker = path.rsplit('/').next() == Some(DIR_MARKER);
                if !is_within(&path, &prefix) || (marker && !with_markers) {
                    continue;
                }
                let Some(rank) = self.read_rank(&path, &provider.name) else {
                    continue;
                };
                if found.get(&path).is_none_or(|(r, _)| rank < *r) {
                    let info = self.info_from(provider, path.clone(), &meta, None);
                    found.insert(path, (rank, info));
                }
            }
        }
        if let Some(e) = first_error {
            if complete || !self.listing_complete_without(&prefix, &failed) {
                return Err(e);
            }
            tracing::warn!("listing {prefix:?} without {failed:?}: {e}");
        }
        Ok(found
            .into_values()
            .map(|(_, info)| info)
            .take(limit.unwrap_or(usize::MAX))
            .collect())
    }

    /// Whether a listing of directory `dir` shows every file although the providers `failed` did not answer: a
    /// fallback answered for every route they are primary of there, and none of them holds a pending heal there
    /// (the only copy of a failover write).
    pub fn listing_complete_without(&self, dir: &str, failed: &[&str]) -> bool {
        let holders = self.heals.holders_under(dir);
        self.router.uncovered(dir, failed).is_none()
            && !failed.iter().any(|f| holders.iter().any(|h| h == f))
    }

    /// Where `provider` stands in the read order of `path` (0 = asked first), or None when no route sends
    /// `path` there (its object there is not part of the tree).
    pub fn read_rank(&self, path: &str, provider: &str) -> Option<usize> {
        let route = self.router.resolve(path)?.route;
        self.read_order(path, route)
            .iter()
            .position(|p| p.name == provider)
    }

    /// A URL a browser or `curl` can fetch the object from: the CDN URL when a CDN is configured, a signed URL
    /// valid for `expires` on cloud providers, or `base_url/path` on a local provider.
    pub async fn get_url(&self, path: &str, expires: Duration) -> Result<String> {
        let (path, _, provider) = self.resolve(path)?;
        if let Some(url) = self.public_url(provider, &path) {
            return Ok(url);
        }
        let signer = provider.signer.as_ref().ok_or_else(|| StorageError::NotSupported {
            provider: provider.name.clone(),
            path: path.clone(),
            what: "URLs without `base_url` (set base_url on the local provider, or enable [settings.cdn])".into(),
        })?;
        let url = signer
            .signed_url(http_method_get(), &provider.key_for(&path), expires)
            .await
            .map_err(|e| StorageError::from_store(provider, &path, e))?;
        Ok(url.to_string())
    }

    /// Whether [`Storage::get_url`] can give a URL for `path` (without making one, which may take a request).
    pub fn can_make_url(&self, path: &str) -> bool {
        self.resolve(path).is_ok_and(|(path, _, provider)| {
            self.public_url(provider, &path).is_some() || provider.signer.is_some()
        })
    }

    fn check_size(&self, path: &str, resolved: &Resolved<'_>, size: u64) -> Result<()> {
        match self.size_limit(resolved) {
            Some(limit) if size > limit => Err(StorageError::TooLarge {
                path: path.to_string(),
                size,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// The attributes (content type, metadata, tag mirror) and provider tags of an upload, validated.
    fn upload_attributes(
        &self,
        path: &str,
        options: &UploadOptions,
    ) -> Result<(Attributes, object_store::TagSet)> {
        let invalid = |reason| StorageError::Invalid {
            path: path.to_string(),
            what: "metadata",
            reason,
        };
        let mut attributes = Attributes::new();
        let content_type = options
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(path));
        attributes.insert(Attribute::ContentType, AttributeValue::from(content_type));
        let mut seen = BTreeSet::new();
        for (key, value) in &options.metadata {
            let key = normalize_metadata_key(key).map_err(invalid)?;
            check_metadata_value(&key, value).map_err(invalid)?;
            if key == TAGS_MIRROR_KEY || !seen.insert(key.clone()) {
                return Err(invalid(format!(
                    "metadata key {key:?} is reserved or given twice (keys are case-insensitive)"
                )));
            }
            attributes.insert(
                Attribute::Metadata(key.into()),
                AttributeValue::from(value.clone()),
            );
        }
        let mut tags = object_store::TagSet::default();
        for (key, value) in &options.tags {
            check_tag(key, value).map_err(invalid)?;
            tags.push(key, value);
        }
        if !options.tags.is_empty() {
            attributes.insert(
                Attribute::Metadata(TAGS_MIRROR_KEY.into()),
                AttributeValue::from(encode_tags(&options.tags)),
            );
        }
        Ok((attributes, tags))
    }

    /// Refuses tags on a provider that has none (GCS through object_store).
    fn check_tags_supported(
        provider: &Provider,
        path: &str,
        options: &UploadOptions,
    ) -> Result<()> {
        if options.tags.is_empty() || provider.supports_tags() {
            return Ok(());
        }
        Err(StorageError::NotSupported {
            provider: provider.name.clone(),
            path: path.to_string(),
            what: "object tags".into(),
        })
    }

    fn uploaded_info(
        &self,
        provider: &Provider,
        path: String,
        size: u64,
        etag: Option<String>,
        options: UploadOptions,
    ) -> FileInfo {
        let metadata = options
            .metadata
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        FileInfo {
            content_type: options
                .content_type
                .unwrap_or_else(|| guess_content_type(&path)),
            url: self.public_url(provider, &path),
            size,
            last_modified: chrono::Utc::now(),
            etag,
            metadata,
            tags: options.tags,
            provider: provider.name.clone(),
            path,
        }
    }

    fn info_from(
        &self,
        provider: &Provider,
        path: String,
        meta: &ObjectMeta,
        attributes: Option<&Attributes>,
    ) -> FileInfo {
        let mut content_type = None;
        let mut metadata = BTreeMap::new();
        let mut tags = BTreeMap::new();
        for (key, value) in attributes.into_iter().flat_map(|a| a.iter()) {
            match key {
                Attribute::ContentType => content_type = Some(value.to_string()),
                Attribute::Metadata(k) if k.eq_ignore_ascii_case(TAGS_MIRROR_KEY) => {
                    tags = decode_tags(value);
                }
                Attribute::Metadata(k) => {
                    metadata.insert(k.to_ascii_lowercase(), value.to_string());
                }
                _ => {}
            }
        }
        FileInfo {
            content_type: content_type.unwrap_or_else(|| guess_content_type(&path)),
            url: self.public_url(provider, &path),
            size: meta.size,
            last_modified: meta.last_modified,
            etag: meta.e_tag.clone(),
            metadata,
            tags,
            provider: provider.name.clone(),
            path,
        }
    }

    fn public_url(&self, provider: &Provider, path: &str) -> Option<String> {
        let encoded = encode_path(path);
        if let Some(domain) = &self.cdn_domain {
            let base = if domain.contains("://") {
                domain.clone()
            } else {
                format!("https://{domain}")
            };
            return Some(format!("{}/{encoded}", base.trim_end_matches('/')));
        }
        provider
            .base_url
            .as_ref()
            .map(|base| format!("{}/{encoded}", base.trim_end_matches('/')))
    }
}

/// Streams `chunks` into a multipart upload of `path` on `provider`, at most [`UPLOAD_CONCURRENCY`] parts in
/// flight, refusing to grow past `limit`; any error aborts the upload, so no partial object appears. Returns the
/// size and ETag of the object written.
pub(crate) async fn put_multipart<S>(
    provider: &Provider,
    path: &str,
    opts: object_store::PutMultipartOptions,
    mut chunks: S,
    limit: Option<u64>,
) -> Result<(u64, Option<String>)>
where
    S: futures::Stream<Item = Result<Bytes>> + Unpin,
{
    if let (Some(multipart), Some(journal)) = (&provider.multipart, &provider.open_uploads) {
        let tuning = (UPLOAD_PART_SIZE, UPLOAD_CONCURRENCY);
        return uploads::put_journaled(
            provider, multipart, journal, path, opts, chunks, limit, tuning,
        )
        .await;
    }
    let fail = |e| StorageError::from_store(provider, path, e);
    let upload = provider
        .store
        .put_multipart_opts(&provider.key_for(path), opts)
        .await
        .map_err(fail)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_SIZE);
    let mut size = 0u64;
    let outcome: Result<()> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if let Some(limit) = limit.filter(|l| size > *l) {
                let path = path.to_string();
                return Err(StorageError::TooLarge { path, size, limit });
            }
            writer
                .wait_for_capacity(UPLOAD_CONCURRENCY)
                .await
                .map_err(fail)?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = writer.abort().await;
        return Err(e);
    }
    let result = writer.finish().await.map_err(fail)?;
    Ok((size, result.e_tag))
}

/// Deletes one object; "not found" counts as done.
async fn delete_one(provider: &Provider, path: &str) -> Result<()> {
    match provider.store.delete(&provider.key_for(path)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(StorageError::from_store(provider, path, e)),
    }
}

fn http_method_get() -> object_store::signer::Method {
    object_store::signer::Method::GET
}

/// Percent-encodes each path component for use in a URL.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|part| {
            url::form_urlencoded::byte_serialize(part.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}
