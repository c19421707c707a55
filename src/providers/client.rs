//! [`ProviderClient`]: the only way above `providers` to make a request of a provider. It takes mount paths (the
//! key mapping stays here), returns [`StorageError`] (so "not found", outages and refusals are told apart in one
//! place), treats "not found" as done where that is what a delete means, picks a single PUT or a multipart upload by
//! size, and carries the request's [`Attempts`] — how hard each request is tried is an argument of every request,
//! never ambient state.

use super::guard::{Attempts, Guarded, GuardedPages, GuardedParts};
use super::{uploads, Provider, Result, StorageError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{
    Attributes, GetOptions, GetRange, ListResult, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, WriteMultipart,
};
use std::ops::Range;
use std::sync::Arc;

/// Size of each part of a multipart upload (and the size above which uploads are multipart). Streams and large
/// files are uploaded part by part, so memory stays bounded (at most `UPLOAD_CONCURRENCY` parts are buffered).
pub const UPLOAD_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 4;

/// One provider, with the attempts every request through this handle gets. Made by [`Provider::client`].
#[derive(Clone)]
pub struct ProviderClient<'a> {
    provider: &'a Arc<Provider>,
    attempts: Attempts,
    store: Guarded,
}

/// An object read: its metadata and attributes, then its bytes (errors mapped to [`StorageError`]).
pub struct Object {
    result: object_store::GetResult,
    provider: Arc<Provider>,
    path: String,
}

impl Object {
    pub fn meta(&self) -> &ObjectMeta {
        &self.result.meta
    }

    pub fn attributes(&self) -> &Attributes {
        &self.result.attributes
    }

    /// All of the bytes, collected (a local file is read in one piece).
    pub async fn bytes(self) -> Result<Bytes> {
        let (provider, path) = (self.provider, self.path);
        self.result
            .bytes()
            .await
            .map_err(|e| StorageError::from_store(&provider, &path, e))
    }

    /// The bytes as they arrive.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        let (provider, path) = (self.provider, self.path);
        self.result
            .into_stream()
            .map_err(move |e| StorageError::from_store(&provider, &path, e))
            .boxed()
    }
}

impl Provider {
    /// The provider's object_store client itself (with its retries, timeouts and counters), for tests and
    /// benchmarks that write, inspect or time the provider directly. Nothing in zmount's own layers uses it.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.guarded.clone())
    }

    /// The provider's low-level multipart API (upload ids), for tests; see [`Provider::object_store`].
    pub fn multipart_store(&self) -> Option<Arc<dyn object_store::multipart::MultipartStore>> {
        let inner = self.multipart.clone()?;
        Some(Arc::new(GuardedParts::new(self.guarded.clone(), inner)))
    }

    /// A handle on this provider whose requests are tried as `attempts` says.
    pub fn client(self: &Arc<Self>, attempts: Attempts) -> ProviderClient<'_> {
        ProviderClient {
            provider: self,
            attempts,
            store: self.guarded.with_attempts(attempts),
        }
    }
}

impl<'a> ProviderClient<'a> {
    pub fn provider(&self) -> &'a Arc<Provider> {
        self.provider
    }

    pub fn attempts(&self) -> Attempts {
        self.attempts
    }

    /// The guarded store itself, for the pieces of `providers` that speak object_store.
    pub(super) fn store(&self) -> &Guarded {
        &self.store
    }

    /// The provider's paginated listings under the same attempts, where it has them.
    pub(super) fn pages(&self) -> Option<GuardedPages> {
        let inner = self.provider.paginated.clone()?;
        Some(GuardedPages::new(self.store.clone(), inner))
    }

    /// The provider's low-level multipart API under the same attempts, where it has one.
    pub(super) fn parts(&self) -> Option<Arc<dyn object_store::multipart::MultipartStore>> {
        let inner = self.provider.multipart.clone()?;
        Some(Arc::new(GuardedParts::new(self.store.clone(), inner)))
    }

    fn fail(&self, path: &str) -> impl Fn(object_store::Error) -> StorageError + 'a {
        let (provider, path) = (self.provider, path.to_string());
        move |e| StorageError::from_store(provider, &path, e)
    }

    /// Size, ETag and dates of `path`'s object.
    pub async fn head(&self, path: &str) -> Result<ObjectMeta> {
        let key = self.provider.key_for(path);
        self.store.head(&key).await.map_err(self.fail(path))
    }

    /// `path`'s object as `options` asks (a HEAD when `options.head`: then the body is empty).
    pub async fn get(&self, path: &str, options: GetOptions) -> Result<Object> {
        let key = self.provider.key_for(path);
        let result = self
            .store
            .get_opts(&key, options)
            .await
            .map_err(self.fail(path))?;
        Ok(Object {
            result,
            provider: self.provider.clone(),
            path: path.to_string(),
        })
    }

    /// The whole object, collected.
    pub async fn get_all(&self, path: &str) -> Result<Bytes> {
        self.get(path, GetOptions::default()).await?.bytes().await
    }

    /// Bytes `range` of the object (clamped to its end), collected.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        self.get(path, options).await?.bytes().await
    }

    /// One PUT of `payload` at `path`.
    pub async fn put(
        &self,
        path: &str,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let key = self.provider.key_for(path);
        self.store
            .put_opts(&key, payload, opts)
            .await
            .map_err(self.fail(path))
    }

    /// Deletes `path`'s object; "not found" counts as done.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let key = self.provider.key_for(path);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(path)(e)),
        }
    }

    /// Moves the object at `from` to `to` (one step on a local folder; a copy and a delete on object stores).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.provider.key_for(from), self.provider.key_for(to));
        self.store.rename(&src, &dst).await.map_err(self.fail(from))
    }

    /// Every object below `path` (the whole provider, below its prefix, for ""), with keys as stored.
    pub fn list(&self, path: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        let key = self.provider.listing_key(path);
        let (provider, path) = (self.provider.clone(), path.to_string());
        self.store
            .list(key.as_ref())
            .map_err(move |e| StorageError::from_store(&provider, &path, e))
            .boxed()
    }

    /// The objects and folders directly below `path` ("" for the provider's root, below its prefix). A missing
    /// bucket or container is "not found"; object stores list an empty folder as nothing.
    pub async fn list_level(&self, path: &str) -> Result<ListResult> {
        let key = self.provider.listing_key(path);
        let listed = self.store.list_with_delimiter(key.as_ref()).await;
        listed.map_err(self.fail(path))
    }

    /// Stores `chunks` at `path`: one PUT when they fit in one part (`size_hint` known and small), else a multipart
    /// upload with at most [`UPLOAD_CONCURRENCY`] parts in flight (journaled where the provider has the low-level
    /// API, so one cut short is aborted later), refusing to grow past `limit`. Any error aborts the upload, so no
    /// partial object appears. Returns the size and ETag of the object written.
    pub async fn put_stream<S>(
        &self,
        path: &str,
        opts: PutMultipartOptions,
        mut chunks: S,
        size_hint: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(u64, Option<String>)>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin,
    {
        if let Some(size) = size_hint.filter(|s| *s <= UPLOAD_PART_SIZE as u64) {
            let mut data = Vec::with_capacity(size as usize);
            while let Some(chunk) = chunks.next().await {
                data.extend_from_slice(&chunk?);
            }
            let size = data.len() as u64;
            if let Some(limit) = limit.filter(|l| size > *l) {
                let path = path.to_string();
                return Err(StorageError::TooLarge { path, size, limit });
            }
            let put = PutOptions {
                attributes: opts.attributes,
                tags: opts.tags,
                extensions: opts.extensions,
                ..Default::default()
            };
            let result = self.put(path, data.into(), put).await?;
            return Ok((size, result.e_tag));
        }
        if let (Some(multipart), Some(journal)) = (self.parts(), &self.provider.open_uploads) {
            let tuning = (UPLOAD_PART_SIZE, UPLOAD_CONCURRENCY);
            return uploads::put_journaled(
                self.provider,
                &multipart,
                journal,
                path,
                opts,
                chunks,
                limit,
                tuning,
            )
            .await;
        }
        let fail = self.fail(path);
        let key = self.provider.key_for(path);
        let upload = self
            .store
            .put_multipart_opts(&key, opts)
            .await
            .map_err(&fail)?;
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
                    .map_err(&fail)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = writer.abort().await;
            return Err(e);
        }
        let result = writer.finish().await.map_err(&fail)?;
        Ok((size, result.e_tag))
    }
}
