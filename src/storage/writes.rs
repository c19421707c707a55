//! Writes of the storage facade: whole objects, streams (multipart, journaled where the provider allows), in-place
//! attribute changes, deletes, and the checks and attributes every upload carries.

use super::*;
use object_store::{Attribute, AttributeValue, Attributes, PutOptions, PutPayload};
use std::collections::BTreeSet;

impl Storage {
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
                let etag = match primary.client(Attempts::Sole).head(&clean).await {
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
    pub(super) async fn put_bytes(
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
        self.write_routed(&path, resolved.route, (true, exclusive), |client| {
            let opts = PutOptions {
                attributes: attributes.clone(),
                tags: tags.clone(),
                ..Default::default()
            };
            let (data, path, options) = (data.clone(), path.clone(), options.clone());
            async move {
                let provider = client.provider();
                Self::check_tags_supported(provider, &path, &options)?;
                let result = client.put(&path, PutPayload::from(data), opts).await?;
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
        self.write_routed(&path, resolved.route, (false, exclusive), |client| {
            let stream = stream.take().expect("a stream is written once");
            self.upload_stream_to(client, &path, &resolved, stream, options.clone())
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
        self.write_routed(&path, resolved.route, (true, true), |client| {
            self.upload_stream_to(client, &path, &resolved, make(), options.clone())
        })
        .await
    }

    pub(super) async fn upload_stream_to<S>(
        &self,
        client: ProviderClient<'_>,
        path: &str,
        resolved: &Resolved<'_>,
        stream: S,
        options: UploadOptions,
    ) -> Result<FileInfo>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        let provider = client.provider();
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
        let (size, etag) = client.put_stream(path, opts, chunks, None, limit).await?;
        Ok(self.uploaded_info(provider, path.to_string(), size, etag, options))
    }

    /// Removes the object from the route's primary and from its fallbacks (a copy left on a fallback would
    /// reappear, since reads consult fallbacks). Idempotent: deleting a path that holds no object succeeds. Fails
    /// when the primary cannot be reached; a fallback that cannot be reached is logged.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let (path, resolved, provider) = self.resolve(path)?;
        let lock = self.heals.lock_of(&path);
        let _exclusive = lock.lock().await;
        provider.client(Attempts::Sole).delete(&path).await?;
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
            if let Err(e) = p.client(Attempts::Sole).delete(path).await {
                tracing::warn!("{e} (while removing the fallback copy; it may reappear)");
            }
        }
    }

    pub(super) fn check_size(&self, path: &str, resolved: &Resolved<'_>, size: u64) -> Result<()> {
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
    pub(super) fn upload_attributes(
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
    pub(super) fn check_tags_supported(
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

    pub(super) fn uploaded_info(
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
}
