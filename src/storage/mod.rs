//! The routed storage facade — zmount's public Rust API and what the filesystem is built on.
//!
//! Every call takes a mount path, routes it (see [`crate::routing`]) and talks to the providers the route names,
//! with the provider's prefix in front of the key: reads ask the primary, then the fallbacks; writes go to the
//! primary, or to a fallback when the route says `write = "failover"` and the primary is down (see [`failover`]).
//! Retries, timeouts and provider health live in each provider's client ([`crate::providers::guard`]), so a call
//! here is one logical operation. Errors are [`StorageError`]s that name the provider and path.
//!
//! This file holds the facade, resolution, read order and the routed write every upload goes through; by concern:
//! `writes` (uploads, in-place attribute changes, deletes), `reads` (downloads, object information), `lists`,
//! `urls`, `uploads` (journaled multipart uploads), `failover` (failover writes and their heals).

pub mod failover;
mod info;
mod lists;
mod reads;
mod urls;
mod writes;

pub use crate::providers::error::{Result, StorageError};
pub use failover::{HealRecord, HealReport};
pub use info::{
    check_metadata_value, check_tag, decode_tags, encode_tags, guess_content_type,
    normalize_metadata_key, same_content_type, FileInfo, UploadOptions, TAGS_MIRROR_KEY,
};

use crate::config::Config;
use crate::providers::{Attempts, ClientTuning, Provider, ProviderClient};
use crate::routing::{is_within, normalize, Resolved, Route, Router};
use bytes::Bytes;
use failover::{first_holder_with, Heals};
use futures::stream::{BoxStream, TryStreamExt};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Name of the empty object the mount writes to keep a directory made with `mkdir` (object stores have no
/// directories). Hidden from listings.
pub const DIR_MARKER: &str = ".zmount-dir";

pub use crate::providers::{UPLOAD_CONCURRENCY, UPLOAD_PART_SIZE};

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
        Self::from_parts(config, tuning, Vec::new())
    }

    /// A storage over `config`'s routes and settings in which each provider of `given` stands in for the
    /// configured provider of the same name (the others are built from `config`). The seam for tests that hand
    /// the core a store of their own ([`Provider::from_store`]); a given name `config` does not define is refused.
    pub fn from_parts(
        config: &Config,
        tuning: &ClientTuning,
        given: Vec<Provider>,
    ) -> Result<Storage> {
        let router = Router::new(config)?;
        let mut given: BTreeMap<String, Provider> =
            given.into_iter().map(|p| (p.name.clone(), p)).collect();
        if let Some(name) = given.keys().find(|n| !config.providers.contains_key(*n)) {
            return Err(StorageError::Setup {
                provider: name.clone(),
                kind: "memory",
                message: "no provider of this name in the config".into(),
            });
        }
        let mut providers = BTreeMap::new();
        let open_uploads = Arc::new(crate::providers::OpenUploads::new(
            &config.settings.cache_dir.join("uploads"),
        ));
        for (name, pc) in &config.providers {
            let mut provider = match given.remove(name) {
                Some(provider) => provider,
                None => {
                    Provider::build(name, pc, tuning).map_err(|message| StorageError::Setup {
                        provider: name.clone(),
                        kind: pc.kind(),
                        message,
                    })?
                }
            };
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
        F: FnMut(ProviderClient<'a>) -> Fut,
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
            match op(provider.client(Attempts::unless_sole(i < last, Attempts::Full))).await {
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
            if let Err(e) = p.client(Attempts::Sole).delete(path).await {
                tracing::warn!("{e}");
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
}
