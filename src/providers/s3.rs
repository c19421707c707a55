//! `s3` and `wasabi`: AWS S3 and every S3-compatible store (MinIO, R2, SeaweedFS, Wasabi...).
//!
//! Wasabi is S3 with its endpoint derived from the region (`https://s3.<region>.wasabisys.com`); an explicit
//! `endpoint` overrides that, which is also how tests point a "wasabi" provider at a local S3 server.

use super::{BuiltStore, ClientTuning};
use crate::config::{Redactor, S3Config};
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredentialProvider, S3CopyIfNotExists};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, ReqwestConnector};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn wasabi_endpoint(region: &str) -> String {
    format!("https://s3.{region}.wasabisys.com")
}

pub fn build(config: &S3Config, wasabi: bool, tuning: &ClientTuning) -> Result<BuiltStore, String> {
    let endpoint = match (&config.endpoint, wasabi) {
        (Some(e), _) => Some(e.trim_end_matches('/').to_string()),
        (None, true) => Some(wasabi_endpoint(&config.region)),
        (None, false) => None,
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(config.virtual_hosted)
        // Rename/create-if-absent without a lock service: S3 conditional multipart completion.
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .with_retry(tuning.retry.clone())
        .with_client_options(tuning.client(endpoint.as_deref()));
    let mut redactor = Redactor::default();
    if let Some(endpoint) = &endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &config.access_key {
        builder = builder.with_access_key_id(key.expose());
        redactor.add(key);
    }
    if let Some(secret) = &config.secret_key {
        builder = builder.with_secret_access_key(secret.expose());
        redactor.add(secret);
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token.expose());
        redactor.add(token);
    }
    let store = Arc::new(
        builder
            .build()
            .map_err(|e| redactor.redact(&e.to_string()))?,
    );
    let dir_objects = DirObjects::new(
        config,
        endpoint.as_deref(),
        store.credentials().clone(),
        tuning,
    );
    let endpoint =
        endpoint.unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
    Ok(BuiltStore {
        store: store.clone(),
        multipart: Some(store.clone()),
        paginated: Some(store.clone()),
        dir_objects: dir_objects.map(Arc::new),
        signer: Some(store),
        location: format!("{endpoint} (bucket {})", config.bucket),
        redactor,
    })
}

/// Directory objects as s3fs writes them: a key ending in `/` (`photos/`) whose metadata holds the directory's
/// mode, owner and times. object_store cannot name such a key (its paths never end in `/`), so this signs and sends
/// the one request zmount needs — a HEAD — itself, with object_store's own signer and HTTP client.
#[derive(Debug)]
pub struct DirObjects {
    /// `https://host/bucket` (path style) or `https://bucket.host` (virtual-hosted).
    base: String,
    region: String,
    credentials: AwsCredentialProvider,
    client: HttpClient,
}

impl DirObjects {
    fn new(
        config: &S3Config,
        endpoint: Option<&str>,
        credentials: AwsCredentialProvider,
        tuning: &ClientTuning,
    ) -> Option<DirObjects> {
        let base = match (endpoint, config.virtual_hosted) {
            (Some(e), false) => format!("{e}/{}", config.bucket),
            (Some(e), true) => e.to_string(),
            (None, false) => format!(
                "https://s3.{}.amazonaws.com/{}",
                config.region, config.bucket
            ),
            (None, true) => format!(
                "https://{}.s3.{}.amazonaws.com",
                config.bucket, config.region
            ),
        };
        let client = ReqwestConnector::default()
            .connect(&tuning.client(endpoint))
            .ok()?;
        Some(DirObjects {
            base,
            region: config.region.clone(),
            credentials,
            client,
        })
    }

    /// The user metadata (lowercase keys, without `x-amz-meta-`) of the object `key/`, or None when there is none.
    pub async fn metadata(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let url = format!("{}/{}/", self.base, encode_key(key));
        let mut request: HttpRequest = http::Request::builder()
            .method(http::Method::HEAD)
            .uri(&url)
            .body(bytes::Bytes::new().into())
            .map_err(|e| e.to_string())?;
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .with_sign_payload(false)
            .try_authorize(&mut request, None)
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => Ok(Some(
                response
                    .headers()
                    .iter()
                    .filter_map(|(name, value)| {
                        let key = name.as_str().strip_prefix("x-amz-meta-")?;
                        Some((key.to_ascii_lowercase(), value.to_str().ok()?.to_string()))
                    })
                    .collect(),
            )),
            404 => Ok(None),
            status => Err(format!("HEAD {url}: status {status}")),
        }
    }
}

/// RFC 3986 encoding of an object key for a URL path, `/` kept (what S3 signs and expects).
pub fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
