//! Reads of the storage facade: whole objects, streams, ranges and object information, from the first provider in
//! read order that holds the object.

use super::*;
use object_store::{Attribute, Attributes, GetOptions, ObjectMeta};

impl Storage {
    /// Runs the read `op` on the providers that may hold `path`, in read order, until one has the object.
    pub(super) async fn read_routed<'a, T, F, Fut>(
        &'a self,
        path: &str,
        op: F,
    ) -> Result<(T, String)>
    where
        F: FnMut(ProviderClient<'a>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.read_routed_with(path, false, op).await
    }

    /// [`Storage::read_routed`]; `missing_concludes`: see [`failover::first_holder_with`].
    pub(super) async fn read_routed_with<'a, T, F, Fut>(
        &'a self,
        path: &str,
        missing_concludes: bool,
        op: F,
    ) -> Result<(T, String)>
    where
        F: FnMut(ProviderClient<'a>) -> Fut,
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
            .read_routed(path, |client| {
                let path = clean.clone();
                async move { client.get_all(&path).await }
            })
            .await?;
        Ok(data)
    }

    /// The object as a stream of chunks, for large files.
    pub async fn download_stream(&self, path: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let clean = self.resolve(path)?.0;
        let (stream, _) = self
            .read_routed(path, |client| {
                let path = clean.clone();
                async move {
                    let object = client.get(&path, GetOptions::default()).await?;
                    Ok(object.into_stream())
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
            .read_routed(path, |client| {
                let (path, range) = (clean.clone(), range.clone());
                async move { client.get_range(&path, range).await }
            })
            .await?;
        Ok(data)
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

    pub(super) async fn get_info_with(
        &self,
        path: &str,
        missing_concludes: bool,
    ) -> Result<FileInfo> {
        let clean = self.resolve(path)?.0;
        let (info, _) = self
            .read_routed_with(path, missing_concludes, |client| {
                let path = clean.clone();
                async move {
                    let options = GetOptions {
                        head: true,
                        ..Default::default()
                    };
                    let head = client.get(&path, options).await?;
                    let provider = client.provider();
                    Ok(self.info_from(provider, path, head.meta(), Some(head.attributes())))
                }
            })
            .await?;
        Ok(info)
    }

    pub(super) fn info_from(
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
}
