//! URLs of objects: the CDN's, a provider's `base_url`, or a signed URL.

use super::*;

impl Storage {
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

    pub(super) fn public_url(&self, provider: &Provider, path: &str) -> Option<String> {
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

pub(super) fn http_method_get() -> object_store::signer::Method {
    object_store::signer::Method::GET
}

/// Percent-encodes each path component for use in a URL.
pub(super) fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|part| {
            url::form_urlencoded::byte_serialize(part.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}
