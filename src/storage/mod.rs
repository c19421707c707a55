//! The routed storage facade — zmount's public Rust API and what the filesystem is built on.
//!
//! Every call takes a mount path, routes it (see [`crate::routing`]) and talks to the provider the route names,
//! with the provider's prefix in front of the key. Retries with backoff happen inside each provider's HTTP client
//! (configured from `[settings.retry]`), so a call here is one logical operation. Errors are [`StorageError`]s that
//! name the provider and path.

mod error;
mod info;

pub use error::{Result, StorageError};
pub use info::{
    check_metadata_value, guess_content_type, normalize_metadata_key, FileInfo, UploadOptions,
};

use crate::config::Config;
use crate::providers::{ClientTuning, Provider};
use crate::routing::{is_within, normalize, Resolved, Router};
use bytes::Bytes;
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
        for (name, pc) in &config.providers {
            let provider =
                Provider::build(name, pc, tuning).map_err(|message| StorageError::Setup {
                    provider: name.clone(),
                    kind: pc.kind(),
                    message,
                })?;
            providers.insert(name.clone(), Arc::new(provider));
        }
        let cdn = &config.settings.cdn;
        Ok(Storage {
            router,
            providers,
            cdn_domain: cdn.enabled.then(|| cdn.domain.clone()).flatten(),
            max_file_size: config.settings.max_file_size.map(|s| s.0),
        })
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
        let (path, resolved, provider) = self.resolve(path)?;
        self.check_size(&path, &resolved, data.len() as u64)?;
        let attributes = self.upload_attributes(&path, &options)?;
        let size = data.len() as u64;
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        let result = provider
            .store
            .put_opts(&provider.key_for(&path), PutPayload::from(data), opts)
            .await
            .map_err(|e| StorageError::from_store(provider, &path, e))?;
        Ok(self.uploaded_info(provider, path, size, result.e_tag, options))
    }

    /// Stores a stream of chunks at `path` as a multipart upload with bounded memory; the object appears only when
    /// the stream ends without error.
    pub async fn upload_stream<S>(
        &self,
        path: &str,
        mut stream: S,
        options: UploadOptions,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let (path, resolved, provider) = self.resolve(path)?;
        let attributes = self.upload_attributes(&path, &options)?;
        let limit = self.size_limit(&resolved);
        let opts = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let key = provider.key_for(&path);
        let fail = |e| StorageError::from_store(provider, &path, e);
        let upload = provider
            .store
            .put_multipart_opts(&key, opts)
            .await
            .map_err(fail)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_SIZE);
        let mut size = 0u64;
        let outcome: Result<()> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::Invalid {
                    path: path.clone(),
                    what: "upload source",
                    reason: e.to_string(),
                })?;
                size += chunk.len() as u64;
                if let Some(limit) = limit.filter(|l| size > *l) {
                    return Err(StorageError::TooLarge {
                        path: path.clone(),
                        size,
                        limit,
                    });
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
        Ok(self.uploaded_info(provider, path, size, result.e_tag, options))
    }

    /// The whole object.
    pub async fn download(&self, path: &str) -> Result<Bytes> {
        let (path, _, provider) = self.resolve(path)?;
        let fail = |e| StorageError::from_store(provider, &path, e);
        let result = provider
            .store
            .get(&provider.key_for(&path))
            .await
            .map_err(fail)?;
        result.bytes().await.map_err(fail)
    }

    /// The object as a stream of chunks, for large files.
    pub async fn download_stream(&self, path: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let (path, _, provider) = self.resolve(path)?;
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

    /// Bytes `range` of the object (clamped to its end, like a file read).
    pub async fn download_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let (path, _, provider) = self.resolve(path)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
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

    /// Removes the object. Idempotent: deleting a path that holds no object succeeds on every provider.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let (path, _, provider) = self.resolve(path)?;
        match provider.store.delete(&provider.key_for(&path)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::from_store(provider, &path, e)),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        let (path, _, provider) = self.resolve(path)?;
        match provider.store.head(&provider.key_for(&path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::from_store(provider, &path, e)),
        }
    }

    /// Size, type, dates, ETag and user metadata of one object.
    pub async fn get_info(&self, path: &str) -> Result<FileInfo> {
        let (path, _, provider) = self.resolve(path)?;
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

    /// Every object at or below `prefix` (a directory path; "" for the whole tree), across all providers that
    /// routes send there, each shown once from the provider its route names, sorted by path. `limit` caps the count.
    pub async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<FileInfo>> {
        self.list_objects(prefix, limit, false).await
    }

    /// Like [`Storage::list`]; `with_markers` also returns the mount's directory markers ([`DIR_MARKER`]).
    pub async fn list_objects(
        &self,
        prefix: &str,
        limit: Option<usize>,
        with_markers: bool,
    ) -> Result<Vec<FileInfo>> {
        let prefix = normalize(prefix).map_err(|e| StorageError::Invalid {
            path: prefix.to_string(),
            what: "path",
            reason: e.to_string(),
        })?;
        let mut found: BTreeMap<String, FileInfo> = BTreeMap::new();
        for name in self.router.providers_under(&prefix) {
            let provider = &self.providers[name];
            let key = (!prefix.is_empty() || !provider.prefix.is_empty())
                .then(|| provider.key_for(&prefix));
            let mut listing = provider.store.list(key.as_ref());
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| StorageError::from_store(provider, &prefix, e))?;
                let Some(path) = provider.path_of(&meta.location) else {
                    continue;
                };
                let routed_here = self
                    .router
                    .resolve(&path)
                    .is_some_and(|r| r.route.provider == provider.name);
                let marker = path.rsplit('/').next() == Some(DIR_MARKER);
                if routed_here && is_within(&path, &prefix) && (with_markers || !marker) {
                    found.insert(path.clone(), self.info_from(provider, path, &meta, None));
                }
            }
        }
        Ok(found
            .into_values()
            .take(limit.unwrap_or(usize::MAX))
            .collect())
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

    fn upload_attributes(&self, path: &str, options: &UploadOptions) -> Result<Attributes> {
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
            if !seen.insert(key.clone()) {
                return Err(invalid(format!(
                    "metadata key {key:?} given twice (keys are case-insensitive)"
                )));
            }
            attributes.insert(
                Attribute::Metadata(key.into()),
                AttributeValue::from(value.clone()),
            );
        }
        Ok(attributes)
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
        for (key, value) in attributes.into_iter().flat_map(|a| a.iter()) {
            match key {
                Attribute::ContentType => content_type = Some(value.to_string()),
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
